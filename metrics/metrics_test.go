package metrics

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// startUpstream starts an after-filter smtpd in miniature: it answers
// like Postfix, and drops the connection after the data of a message from
// <fail@example.org>.
func startUpstream(t *testing.T) *smtptest.Upstream {
	u := smtptest.StartUpstream(t)
	var mu sync.Mutex
	failing := map[*smtptest.Conn]bool{}
	u.Hook = func(c *smtptest.Conn, cmd string) bool {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasPrefix(cmd, "MAIL"):
			failing[c] = strings.Contains(cmd, "<fail@example.org>")
		case cmd == "DATA" && failing[c]:
			c.Send(smtptest.Data354)
			c.ReadData()
			c.Close()
			return true
		}
		return false
	}
	return u
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
	stopServe := smtptest.Serve(t, srv, ln)
	return ln.Addr().String(), func() {
		if err := stopServe(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
}

func dial(t *testing.T, addr string) *smtptest.Client { return smtptest.Dial(t, "tcp", addr) }

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
	up := startUpstream(t)
	addr, stop := serveProxy(t, m, smtpproxy.Config{Upstream: up.Addr(), MaxSessions: 2})

	// Every series of the fixed label sets is there, at zero, before any
	// traffic.
	before := scrape(t, web.URL+"/metrics")
	for _, v := range []string{"pass", "loop", "dry-run-loop", "header-too-large", "bare-lf", "upstream-refused", "upstream-failed", "check-failed", "aborted"} {
		checkSamples(t, before, map[string]float64{`smtpprox_transactions_total{frontend="proxy",verdict="` + v + `"}`: 0})
	}
	for _, k := range []string{KindConnect, KindTimeout, KindClosed, KindProtocol, KindOther} {
		checkSamples(t, before, map[string]float64{`smtpprox_upstream_errors_total{frontend="proxy",kind="` + k + `"}`: 0})
	}

	s1, s2 := dial(t, addr), dial(t, addr)
	s1.ExpectReply(smtptest.Greeting)
	s2.ExpectReply(smtptest.Greeting)
	over := dial(t, addr)
	over.ExpectReply("421 4.3.2 too many connections\r\n")
	checkSamples(t, scrape(t, web.URL+"/metrics"), map[string]float64{
		`smtpprox_sessions_active{frontend="proxy"}`:        2,
		`smtpprox_sessions_total{frontend="proxy"}`:         2,
		`smtpprox_sessions_refused_total{frontend="proxy"}`: 1,
	})

	pass := "Subject: hello\r\n\r\nbody\r\n"
	loop := "Delivered-To: User@Example.NET\r\nSubject: loop\r\n\r\nbody\r\n"
	s1.StartMessage("<s@example.org>", "<user@example.net>")
	s1.Send(pass + ".\r\n")
	s1.ExpectReply(smtptest.Queued)
	s1.StartMessage("<s@example.org>", "<user@example.net>")
	s1.Send(loop + ".\r\n")
	s1.ExpectReply("554 5.4.6 mail forwarding loop for user@example.net\r\n")
	s1.Expect("QUIT", smtptest.Bye)

	dropped := "Subject: dropped\r\n\r\nbody\r\n"
	s2.StartMessage("<fail@example.org>", "<user@example.net>")
	s2.Send(dropped + ".\r\n")
	s2.ExpectReply("451 4.4.2 upstream " + up.Addr() + " closed the connection\r\n")
	s2.Expect("QUIT", "421 4.4.2 upstream "+up.Addr()+" closed the connection\r\n")

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
	s3.ExpectReply("421 4.4.1 upstream " + downAddr + " unreachable: connection refused\r\n")

	// A third proxy, reporting to the same Metrics, that serves no
	// loopback peer.
	others, err := allowlist.Parse("192.0.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	addr3, stop3 := serveProxy(t, m, smtpproxy.Config{Upstream: up.Addr(), AllowClient: others})
	s4 := dial(t, addr3)
	s4.ExpectReply(core.ReplyNotAllowed)

	stop()
	stop2()
	stop3() // every session has ended: the gauges and counters are final
	got := scrape(t, web.URL+"/metrics")
	checkSamples(t, got, map[string]float64{
		`smtpprox_sessions_active{frontend="proxy"}`:                                      0,
		`smtpprox_sessions_total{frontend="proxy"}`:                                       3,
		`smtpprox_sessions_refused_total{frontend="proxy"}`:                               1,
		`smtpprox_clients_refused_total{frontend="proxy"}`:                                1,
		`smtpprox_transactions_total{frontend="proxy",verdict="pass"}`:                    1,
		`smtpprox_transactions_total{frontend="proxy",verdict="loop"}`:                    1,
		`smtpprox_transactions_total{frontend="proxy",verdict="upstream-failed"}`:         1,
		`smtpprox_transactions_total{frontend="proxy",verdict="dry-run-loop"}`:            0,
		`smtpprox_transactions_total{frontend="proxy",verdict="header-too-large"}`:        0,
		`smtpprox_upstream_errors_total{frontend="proxy",kind="connect"}`:                 1,
		`smtpprox_upstream_errors_total{frontend="proxy",kind="closed"}`:                  1,
		`smtpprox_upstream_errors_total{frontend="proxy",kind="timeout"}`:                 0,
		`smtpprox_message_bytes_total{frontend="proxy"}`:                                  float64(len(pass) + len(loop) + len(dropped)),
		`smtpprox_relayed_bytes_total{direction="to_client",frontend="proxy"}`:            float64(s1.Received() + s2.Received() + s3.Received()), // not s4: no session
		`smtpprox_relayed_bytes_total{direction="to_upstream",frontend="proxy"}`:          float64(len(up.Raw())),
		`smtpprox_transaction_duration_seconds_count{frontend="proxy"}`:                   3,
		`smtpprox_upstream_reply_seconds_count{frontend="proxy",phase="data"}`:            3, // 354 and 250 of the pass, 354 of the dropped one
		`smtpprox_upstream_reply_seconds_count{frontend="proxy",phase="command"}`:         10,
		`smtpprox_upstream_reply_seconds_bucket{frontend="proxy",phase="data",le="+Inf"}`: 3,
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
	checkSamples(t, scrape(t, wa.URL+"/metrics"), map[string]float64{`smtpprox_sessions_refused_total{frontend="proxy"}`: 1})
	checkSamples(t, scrape(t, wb.URL+"/metrics"), map[string]float64{`smtpprox_sessions_refused_total{frontend="proxy"}`: 0})
}
