package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run the real command as a real process: built into
// t.TempDir(), started on loopback ports in front of a scripted upstream,
// and stopped with a real SIGTERM (SPEC section 6).

// hangGuard bounds every wait of these tests so that a bug fails them
// instead of hanging CI; it asserts no duration.
const hangGuard = 60 * time.Second

// buildCommand builds this command into a temporary directory.
func buildCommand(t *testing.T) string {
	t.Helper()
	gotool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		t.Fatalf("no go command to build the proxy with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "smtpprox-loopprevent")
	out, err := exec.Command(gotool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// process is the running command. Its JSON log lines are kept and the
// addresses it logs as it starts listening are picked up, so it can listen
// on port 0 and no test races for a free port.
type process struct {
	cmd     *exec.Cmd
	logs    *logWatcher
	listen  string
	metrics string
	exited  chan struct{}
	exitErr error
}

type logWatcher struct {
	mu      sync.Mutex
	all     strings.Builder
	partial []byte
	addrs   chan [2]string // msg, listen
}

func (w *logWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := strings.IndexByte(string(w.partial), '\n')
		if i < 0 {
			break
		}
		var rec struct{ Msg, Listen string }
		if json.Unmarshal(w.partial[:i], &rec) == nil && rec.Listen != "" {
			select {
			case w.addrs <- [2]string{rec.Msg, rec.Listen}:
			default:
			}
		}
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *logWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// startProcess runs bin as the proxy with JSON logs and -metrics-listen
// on loopback port 0, the given flags, LISTEN 127.0.0.1:0 and upstream,
// and waits until both listeners are up.
func startProcess(t *testing.T, bin, upstream string, flags ...string) *process {
	t.Helper()
	args := append([]string{"-log-format=json", "-metrics-listen=127.0.0.1:0"}, flags...)
	return startCommand(t, "the proxy", bin, append(args, "127.0.0.1:0", upstream)...)
}

// startCommand runs bin with args, which must ask for JSON logs and a
// metrics listener, and waits until it logs both listeners' addresses.
// name says what it is in failure messages.
func startCommand(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	p := &process{
		cmd:    exec.Command(bin, args...),
		logs:   &logWatcher{addrs: make(chan [2]string, 4)},
		exited: make(chan struct{}),
	}
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill() // only if a test failed before it exited
		<-p.exited
	})
	guard := time.After(hangGuard)
	for p.listen == "" || p.metrics == "" {
		select {
		case a := <-p.logs.addrs:
			switch a[0] {
			case "listening":
				p.listen = a[1]
			case "metrics listening":
				p.metrics = a[1]
			}
		case <-p.exited:
			t.Fatalf("%s exited at start (%v); stderr:\n%s", name, p.exitErr, p.logs)
		case <-guard:
			t.Fatalf("%s did not start listening; stderr:\n%s", name, p.logs)
		}
	}
	return p
}

func (p *process) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// wait returns the process's exit error (nil: exit status 0).
func (p *process) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.exitErr
	case <-time.After(hangGuard):
		t.Fatalf("the proxy did not exit; stderr:\n%s", p.logs)
		return nil
	}
}

func (p *process) healthz(t *testing.T) (int, string) {
	t.Helper()
	c := http.Client{Timeout: hangGuard}
	resp, err := c.Get("http://" + p.metrics + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *process) metric(t *testing.T, series string) string {
	t.Helper()
	c := http.Client{Timeout: hangGuard}
	resp, err := c.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v
		}
	}
	t.Fatalf("%s not in the scrape", series)
	return ""
}

// heldUpstream is a scripted after-filter smtpd on loopback. It answers
// like Postfix; a message from <hold@example.org> gets its end-of-data
// reply only once release is closed. It records what each connection
// received and how it ended.
type heldUpstream struct {
	ln      net.Listener
	release chan struct{}
	dots    chan string // the sender of each message whose final dot arrived
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns []*upRecord
}

type upRecord struct {
	raw       strings.Builder
	messages  []string
	cutInData bool // the connection ended inside message data, before the dot
}

const upQueued = "250 2.0.0 Ok: queued as 4BcD9\r\n"

func startHeldUpstream(t *testing.T) *heldUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &heldUpstream{ln: ln, release: make(chan struct{}), dots: make(chan string, 16)}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			rec := &upRecord{}
			u.mu.Lock()
			u.conns = append(u.conns, rec)
			u.mu.Unlock()
			u.wg.Add(1)
			go u.serve(conn, rec)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.releaseAll()
		u.wg.Wait()
	})
	return u
}

func (u *heldUpstream) releaseAll() {
	u.mu.Lock()
	defer u.mu.Unlock()
	select {
	case <-u.release:
	default:
		close(u.release)
	}
}

func (u *heldUpstream) serve(conn net.Conn, rec *upRecord) {
	defer u.wg.Done()
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(hangGuard))
	r := bufio.NewReader(conn)
	read := func() (string, error) {
		line, err := r.ReadString('\n')
		u.mu.Lock()
		rec.raw.WriteString(line)
		u.mu.Unlock()
		return line, err
	}
	io.WriteString(conn, "220 after.example ESMTP\r\n")
	sender := ""
	for {
		line, err := read()
		if err != nil {
			return
		}
		switch verb := strings.ToUpper(strings.Fields(line + " x")[0]); verb {
		case "MAIL":
			sender = strings.TrimSpace(line[len("MAIL FROM:"):])
			io.WriteString(conn, "250 2.1.0 Ok\r\n")
		case "DATA":
			io.WriteString(conn, "354 End data with <CR><LF>.<CR><LF>\r\n")
			var msg strings.Builder
			for {
				line, err := read()
				if err != nil {
					u.mu.Lock()
					rec.cutInData = true
					u.mu.Unlock()
					return
				}
				if line == ".\r\n" {
					break
				}
				msg.WriteString(line)
			}
			u.mu.Lock()
			rec.messages = append(rec.messages, msg.String())
			u.mu.Unlock()
			u.dots <- sender
			if sender == "<hold@example.org>" {
				<-u.release
			}
			io.WriteString(conn, upQueued)
		case "QUIT":
			io.WriteString(conn, "221 2.0.0 Bye\r\n")
			return
		default:
			io.WriteString(conn, "250 2.0.0 Ok\r\n")
		}
	}
}

// records waits until every upstream connection has ended and returns
// what they received.
func (u *heldUpstream) records() []*upRecord {
	u.ln.Close()
	u.releaseAll()
	u.wg.Wait()
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*upRecord(nil), u.conns...)
}

// smtpConn is a raw client of the proxy.
type smtpConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialSMTP(t *testing.T, addr string) *smtpConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(hangGuard))
	t.Cleanup(func() { conn.Close() })
	c := &smtpConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.expect("", "220 after.example ESMTP\r\n")
	return c
}

func (c *smtpConn) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// reply reads one reply line; "" at the end of the connection.
func (c *smtpConn) reply() string {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		c.t.Fatalf("read: %v (got %q)", err, line)
	}
	return line
}

func (c *smtpConn) expect(send, want string) {
	c.t.Helper()
	if send != "" {
		c.send(send)
	}
	if got := c.reply(); got != want {
		c.t.Fatalf("after %q got %q, want %q", send, got, want)
	}
}

// startMessage opens a transaction and gets the proxy's 354.
func (c *smtpConn) startMessage(sender string) {
	c.t.Helper()
	c.expect("MAIL FROM:"+sender+"\r\n", "250 2.1.0 Ok\r\n")
	c.expect("RCPT TO:<user@example.net>\r\n", "250 2.0.0 Ok\r\n")
	c.expect("DATA\r\n", "354 End data with <CR><LF>.<CR><LF>\r\n")
}

// SIGTERM to the real process, with messages in flight (SPEC section 6),
// and SIGHUP, which ends nothing.
func TestSignalShutdown(t *testing.T) {
	bin := buildCommand(t)
	t.Run("drain completes", func(t *testing.T) { testDrainCompletes(t, bin) })
	t.Run("drain deadline", func(t *testing.T) { testDrainDeadline(t, bin) })
	t.Run("SIGHUP", func(t *testing.T) { testHangup(t, bin) })
}

// SIGHUP cuts no session: an open transaction completes with the
// upstream's 250, an idle session goes on, the process logs the signal
// and keeps serving new connections.
func testHangup(t *testing.T, bin string) {
	up := startHeldUpstream(t)
	p := startProcess(t, bin, up.ln.Addr().String())
	idle := dialSMTP(t, p.listen)
	sending := dialSMTP(t, p.listen)
	sending.startMessage("<s@example.org>")
	sending.send("Subject: across a SIGHUP\r\n\r\nfirst part\r\n")

	// Twice, the second once the first is handled (signals sent at once
	// may merge): each one is handled.
	for n := 1; n <= 2; n++ {
		p.signal(t, syscall.SIGHUP)
		deadline := time.Now().Add(hangGuard)
		for strings.Count(p.logs.String(), "SIGHUP received") < n {
			if time.Now().After(deadline) {
				t.Fatalf("no log line for SIGHUP %d; stderr:\n%s", n, p.logs)
			}
			time.Sleep(time.Millisecond)
		}
	}
	sending.send("second part\r\n.\r\n")
	sending.expect("", upQueued)
	idle.expect("NOOP\r\n", "250 2.0.0 Ok\r\n")
	fresh := dialSMTP(t, p.listen)
	fresh.expect("NOOP\r\n", "250 2.0.0 Ok\r\n")
	for _, c := range []*smtpConn{sending, idle, fresh} {
		c.expect("QUIT\r\n", "221 2.0.0 Bye\r\n")
	}
	p.signal(t, syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v, want status 0; stderr:\n%s", err, p.logs)
	}
	var got []string
	for _, rec := range up.records() {
		got = append(got, rec.messages...)
	}
	if len(got) != 1 || got[0] != "Subject: across a SIGHUP\r\n\r\nfirst part\r\nsecond part\r\n" {
		t.Fatalf("upstream messages %q", got)
	}
}

// Every message finishes within the drain time: a session between
// transactions gets 421 4.3.2 at once, new connections are refused,
// /healthz turns 503 while metrics are still served, a message the client
// is still sending completes with the upstream's own 250, so does one
// whose end-of-data reply the upstream holds, each session then gets
// 421 4.3.2, and the process exits 0.
func testDrainCompletes(t *testing.T, bin string) {
	up := startHeldUpstream(t)
	p := startProcess(t, bin, up.ln.Addr().String())

	idle := dialSMTP(t, p.listen)
	sending := dialSMTP(t, p.listen) // the client is mid-message at the signal
	sending.startMessage("<s@example.org>")
	first := "Subject: in flight\r\n\r\nfirst part\r\n"
	sending.send(first)
	held := dialSMTP(t, p.listen) // the upstream holds its end-of-data reply
	held.startMessage("<hold@example.org>")
	heldMsg := "Subject: held\r\n\r\nbody\r\n"
	held.send(heldMsg + ".\r\n")
	if s := <-up.dots; s != "<hold@example.org>" {
		t.Fatalf("upstream got the final dot of %s first", s)
	}
	if code, body := p.healthz(t); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz before the signal: %d %q", code, body)
	}

	p.signal(t, syscall.SIGTERM)
	idle.expect("", "421 4.3.2 shutting down\r\n")
	idle.expect("", "")
	if conn, err := net.Dial("tcp", p.listen); err == nil {
		conn.Close()
		t.Fatal("a new connection was accepted after SIGTERM")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("a new connection after SIGTERM: %v, want connection refused", err)
	}
	if code, body := p.healthz(t); code != http.StatusServiceUnavailable || body != "not live: shutting down\n" {
		t.Fatalf("/healthz while draining: %d %q", code, body)
	}
	// The idle session's end is counted just after its connection closes.
	for v := p.metric(t, `smtpprox_sessions_active{frontend="proxy"}`); v != "2"; v = p.metric(t, `smtpprox_sessions_active{frontend="proxy"}`) {
		if v != "3" {
			t.Fatalf("sessions active while draining: %s, want 2", v)
		}
		time.Sleep(time.Millisecond)
	}

	up.releaseAll()
	held.expect("", upQueued)
	held.expect("", "421 4.3.2 shutting down\r\n")
	held.expect("", "")
	rest := "second part\r\n"
	sending.send(rest + ".\r\n")
	sending.expect("", upQueued)
	sending.expect("", "421 4.3.2 shutting down\r\n")
	sending.expect("", "")

	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v, want status 0; stderr:\n%s", err, p.logs)
	}
	var got []string
	for _, rec := range up.records() {
		got = append(got, rec.messages...)
		if rec.cutInData {
			t.Errorf("an upstream connection was cut inside message data: %q", rec.raw.String())
		}
	}
	if len(got) != 2 || !(got[0] == heldMsg && got[1] == first+rest || got[1] == heldMsg && got[0] == first+rest) {
		t.Fatalf("upstream messages %q, want the held one and the one in flight, each once", got)
	}
	logs := p.logs.String()
	if strings.Count(logs, `"verdict":"pass"`) != 2 || !strings.Contains(logs, `"msg":"shutting down"`) || !strings.Contains(logs, `"msg":"stopped"`) {
		t.Fatalf("logs:\n%s", logs)
	}
}

// The drain time runs out (a tiny -drain-timeout): a message the client
// had not finished and one whose end-of-data reply the upstream still held
// both get 421 4.3.2 and never a 2xx; the upstream never saw the first
// one's final dot; the process exits 0.
func testDrainDeadline(t *testing.T, bin string) {
	up := startHeldUpstream(t)
	p := startProcess(t, bin, up.ln.Addr().String(), "-drain-timeout=200ms")

	cut := dialSMTP(t, p.listen)
	cut.startMessage("<s@example.org>")
	cut.send("Subject: never finished\r\n\r\nfirst part\r\n")
	held := dialSMTP(t, p.listen)
	held.startMessage("<hold@example.org>")
	held.send("Subject: held\r\n\r\nbody\r\n.\r\n")
	if s := <-up.dots; s != "<hold@example.org>" {
		t.Fatalf("upstream got the final dot of %s first", s)
	}

	p.signal(t, syscall.SIGTERM)
	// Past the drain deadline each session gets the 421 and is closed;
	// nothing else comes, in particular no 2xx.
	for _, c := range []*smtpConn{cut, held} {
		c.expect("", "421 4.3.2 shutting down\r\n")
		c.expect("", "")
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v, want status 0; stderr:\n%s", err, p.logs)
	}
	var cutRecs int
	for _, rec := range up.records() {
		raw := rec.raw.String()
		if strings.Contains(raw, "MAIL FROM:<s@example.org>") {
			cutRecs++
			if !rec.cutInData || len(rec.messages) != 0 || strings.Contains(raw, "\r\n.\r\n") {
				t.Errorf("the unfinished message's upstream connection: cut in data %v, messages %q, received %q",
					rec.cutInData, rec.messages, raw)
			}
			if !strings.Contains(raw, "first part\r\n") {
				t.Errorf("the unfinished message was not being streamed: %q", raw)
			}
		}
	}
	if cutRecs != 1 {
		t.Fatalf("%d upstream connections for the unfinished message, want 1", cutRecs)
	}
	logs := p.logs.String()
	if strings.Count(logs, `"verdict":"aborted"`) != 2 || strings.Contains(logs, `"verdict":"pass"`) {
		t.Fatalf("logs:\n%s", logs)
	}
}

// Whether loops are refused or only logged shows at start and as a
// metric, so that an administrator can confirm enforcement after the
// rollout step "remove -dry-run".
func TestDryRunVisible(t *testing.T) {
	bin := buildCommand(t)
	up := startHeldUpstream(t)
	for _, tc := range []struct {
		flags  []string
		loops  string
		gauge  string
		warned bool
	}{
		{nil, "refuse", "0", false},
		{[]string{"-dry-run"}, "log only (dry run)", "1", true},
	} {
		p := startProcess(t, bin, up.ln.Addr().String(), tc.flags...)
		if got := p.metric(t, `smtpprox_dry_run{frontend="proxy"}`); got != tc.gauge {
			t.Errorf("%q: smtpprox_dry_run %s, want %s", tc.flags, got, tc.gauge)
		}
		p.signal(t, syscall.SIGTERM)
		if err := p.wait(t); err != nil {
			t.Fatalf("exit: %v", err)
		}
		logs := p.logs.String()
		if !strings.Contains(logs, `"msg":"listening"`) || !strings.Contains(logs, `"loops":"`+tc.loops+`"`) {
			t.Errorf("%q: the listening line does not say loops=%q:\n%s", tc.flags, tc.loops, logs)
		}
		if warned := strings.Contains(logs, `"level":"WARN","msg":"dry run: loops are logged`); warned != tc.warned {
			t.Errorf("%q: dry-run warning %v, want %v:\n%s", tc.flags, warned, tc.warned, logs)
		}
	}
}
