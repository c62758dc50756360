package metrics

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// scriptUpstream is an after-filter smtpd in miniature: it answers like
// Postfix, and drops the connection after the data of a message from
// <fail@example.org>. It counts every octet it reads.
type scriptUpstream struct {
	ln    net.Listener
	mu    sync.Mutex
	octet int
	wg    sync.WaitGroup
}

func startScriptUpstream(t *testing.T) *scriptUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &scriptUpstream{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Add(1)
			go u.serve(conn)
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *scriptUpstream) octets() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.octet
}

func (u *scriptUpstream) serve(conn net.Conn) {
	defer u.wg.Done()
	defer conn.Close()
	r := bufio.NewReader(conn)
	readLine := func() (string, error) {
		line, err := r.ReadString('\n')
		u.mu.Lock()
		u.octet += len(line)
		u.mu.Unlock()
		return line, err
	}
	io.WriteString(conn, "220 after.example ESMTP\r\n")
	fail := false
	for {
		line, err := readLine()
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "MAIL":
			fail = strings.Contains(line, "<fail@example.org>")
			io.WriteString(conn, "250 2.1.0 Ok\r\n")
		case "DATA":
			io.WriteString(conn, "354 End data with <CR><LF>.<CR><LF>\r\n")
			for line != ".\r\n" {
				if line, err = readLine(); err != nil {
					return
				}
			}
			if fail {
				return
			}
			io.WriteString(conn, "250 2.0.0 Ok: queued as 3ZxQ1\r\n")
		case "QUIT":
			io.WriteString(conn, "221 2.0.0 Bye\r\n")
			return
		default:
			io.WriteString(conn, "250 2.0.0 Ok\r\n")
		}
	}
}

// serveProxy runs an smtpproxy.Server reporting to m; stop shuts it down
// and returns when every session has ended.
func serveProxy(t *testing.T, m *Metrics, cfg smtpproxy.Config) (addr string, stop func()) {
	cfg.Observer = m
	srv, err := smtpproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// smtpClient reads whole replies and counts the octets it received.
type smtpClient struct {
	t     *testing.T
	conn  net.Conn
	r     *bufio.Reader
	octet int
}

func dial(t *testing.T, addr string) *smtpClient {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &smtpClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *smtpClient) reply() string {
	c.t.Helper()
	var b strings.Builder
	for {
		line, err := c.r.ReadString('\n')
		b.WriteString(line)
		c.octet += len(line)
		if err != nil || len(line) < 4 || line[3] != '-' {
			return b.String()
		}
	}
}

func (c *smtpClient) expect(send, wantPrefix string) {
	c.t.Helper()
	if send != "" {
		if _, err := io.WriteString(c.conn, send); err != nil {
			c.t.Fatalf("write %q: %v", send, err)
		}
	}
	if got := c.reply(); !strings.HasPrefix(got, wantPrefix) {
		c.t.Fatalf("after %q got %q, want %q...", send, got, wantPrefix)
	}
}

// scrape fetches url and returns each sample line's value by its series
// ("name{labels}").
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("GET %s: %s, Content-Type %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	samples := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("sample line %q does not parse", line)
		}
		samples[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return samples
}

func checkSamples(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		g, ok := got[series]
		if !ok {
			t.Errorf("%s: missing from the scrape", series)
		} else if g != v {
			t.Errorf("%s = %v, want %v", series, g, v)
		}
	}
}

// Real sessions through real proxies, then the endpoint scraped over
// HTTP: a message passed, a loop refused, a connection over the session
// limit, an upstream that drops a message, and an unreachable upstream
// each show up in their counter with the exact value.
func TestScrapeAfterRealSessions(t *testing.T) {
	m := New()
	web := httptest.NewServer(m.Handler(nil))
	defer web.Close()
	up := startScriptUpstream(t)
	addr, stop := serveProxy(t, m, smtpproxy.Config{Upstream: up.ln.Addr().String(), MaxSessions: 2})

	// Every series of the fixed label sets is there, at zero, before any
	// traffic.
	before := scrape(t, web.URL+"/metrics")
	for _, v := range []string{"pass", "loop", "dry-run-loop", "header-too-large", "bare-lf", "upstream-refused", "upstream-failed", "check-failed", "aborted"} {
		checkSamples(t, before, map[string]float64{`smtpprox_transactions_total{verdict="` + v + `"}`: 0})
	}
	for _, k := range []string{KindConnect, KindTimeout, KindClosed, KindProtocol, KindOther} {
		checkSamples(t, before, map[string]float64{`smtpprox_upstream_errors_total{kind="` + k + `"}`: 0})
	}

	s1, s2 := dial(t, addr), dial(t, addr)
	s1.expect("", "220 after.example")
	s2.expect("", "220 after.example")
	over := dial(t, addr)
	over.expect("", "421 4.3.2 too many connections")
	checkSamples(t, scrape(t, web.URL+"/metrics"), map[string]float64{
		"smtpprox_sessions_active":        2,
		"smtpprox_sessions_total":         2,
		"smtpprox_sessions_refused_total": 1,
	})

	pass := "Subject: hello\r\n\r\nbody\r\n"
	loop := "Delivered-To: User@Example.NET\r\nSubject: loop\r\n\r\nbody\r\n"
	s1.expect("MAIL FROM:<s@example.org>\r\n", "250 ")
	s1.expect("RCPT TO:<user@example.net>\r\n", "250 ")
	s1.expect("DATA\r\n", "354 ")
	s1.expect(pass+".\r\n", "250 2.0.0 Ok: queued as 3ZxQ1")
	s1.expect("MAIL FROM:<s@example.org>\r\n", "250 ")
	s1.expect("RCPT TO:<user@example.net>\r\n", "250 ")
	s1.expect("DATA\r\n", "354 ")
	s1.expect(loop+".\r\n", "554 5.4.6 mail forwarding loop for user@example.net")
	s1.expect("QUIT\r\n", "221 ")

	dropped := "Subject: dropped\r\n\r\nbody\r\n"
	s2.expect("MAIL FROM:<fail@example.org>\r\n", "250 ")
	s2.expect("RCPT TO:<user@example.net>\r\n", "250 ")
	s2.expect("DATA\r\n", "354 ")
	s2.expect(dropped+".\r\n", "451 4.4.2 upstream")
	s2.expect("QUIT\r\n", "421 4.4.2 upstream")

	// A second proxy, reporting to the same Metrics, whose after-filter
	// is down.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := closed.Addr().String()
	closed.Close()
	addr2, stop2 := serveProxy(t, m, smtpproxy.Config{Upstream: downAddr})
	s3 := dial(t, addr2)
	s3.expect("", "421 4.4.1 upstream "+downAddr+" unreachable")

	stop()
	stop2() // every session has ended: the gauges and counters are final
	got := scrape(t, web.URL+"/metrics")
	checkSamples(t, got, map[string]float64{
		"smtpprox_sessions_active":                                       0,
		"smtpprox_sessions_total":                                        3,
		"smtpprox_sessions_refused_total":                                1,
		`smtpprox_transactions_total{verdict="pass"}`:                    1,
		`smtpprox_transactions_total{verdict="loop"}`:                    1,
		`smtpprox_transactions_total{verdict="upstream-failed"}`:         1,
		`smtpprox_transactions_total{verdict="dry-run-loop"}`:            0,
		`smtpprox_transactions_total{verdict="header-too-large"}`:        0,
		`smtpprox_upstream_errors_total{kind="connect"}`:                 1,
		`smtpprox_upstream_errors_total{kind="closed"}`:                  1,
		`smtpprox_upstream_errors_total{kind="timeout"}`:                 0,
		"smtpprox_message_bytes_total":                                   float64(len(pass) + len(loop) + len(dropped)),
		`smtpprox_relayed_bytes_total{direction="to_client"}`:            float64(s1.octet + s2.octet + s3.octet),
		`smtpprox_relayed_bytes_total{direction="to_upstream"}`:          float64(up.octets()),
		"smtpprox_transaction_duration_seconds_count":                    3,
		`smtpprox_upstream_reply_seconds_count{phase="data"}`:            3, // 354 and 250 of the pass, 354 of the dropped one
		`smtpprox_upstream_reply_seconds_count{phase="command"}`:         10,
		`smtpprox_upstream_reply_seconds_bucket{phase="data",le="+Inf"}`: 3,
	})
	for _, series := range []string{"go_goroutines", "process_resident_memory_bytes", "process_open_fds"} {
		if _, ok := got[series]; !ok {
			t.Errorf("%s missing: the runtime and process collectors are registered", series)
		}
	}
}

func TestHealthz(t *testing.T) {
	var mu sync.Mutex
	var state error
	web := httptest.NewServer(New().Handler(func() error { mu.Lock(); defer mu.Unlock(); return state }))
	defer web.Close()
	get := func() (int, string) {
		resp, err := http.Get(web.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("live: %d %q", code, body)
	}
	mu.Lock()
	state = errors.New("shutting down")
	mu.Unlock()
	if code, body := get(); code != http.StatusServiceUnavailable || body != "not live: shutting down\n" {
		t.Fatalf("shutting down: %d %q", code, body)
	}
	resp, err := http.Get(web.URL + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/nothing: %s", resp.Status)
	}
}

// Kind gives each kind of upstream failure the core reports a label of
// its own, and a kind it does not know the label "other".
func TestKind(t *testing.T) {
	want := map[core.UpstreamFailure]string{
		core.FailConnect:  KindConnect,
		core.FailTimeout:  KindTimeout,
		core.FailClosed:   KindClosed,
		core.FailProtocol: KindProtocol,
	}
	kinds := core.UpstreamFailures()
	if len(kinds) != len(want) {
		t.Fatalf("the core reports %d kinds, this test knows %d", len(kinds), len(want))
	}
	for _, k := range kinds {
		if got := Kind(k); got != want[k] {
			t.Errorf("Kind(%v) = %q, want %q", k, got, want[k])
		}
	}
	if got := Kind(core.FailUnknown); got != KindOther {
		t.Errorf("Kind(%v) = %q, want %q", core.FailUnknown, got, KindOther)
	}
}

// The per-registry design: two Metrics never share a series.
func TestRegistriesAreSeparate(t *testing.T) {
	a, b := New(), New()
	a.SessionRefused()
	wa := httptest.NewServer(a.Handler(nil))
	defer wa.Close()
	wb := httptest.NewServer(b.Handler(nil))
	defer wb.Close()
	checkSamples(t, scrape(t, wa.URL+"/metrics"), map[string]float64{"smtpprox_sessions_refused_total": 1})
	checkSamples(t, scrape(t, wb.URL+"/metrics"), map[string]float64{"smtpprox_sessions_refused_total": 0})
}
