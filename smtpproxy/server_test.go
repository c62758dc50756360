package smtpproxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
)

const (
	greeting     = smtptest.Greeting
	ok           = smtptest.OK
	queued       = smtptest.Queued
	local354     = smtptest.Data354
	filteredEHLO = "250-after.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n"
)

func baseConfig(u *smtptest.Upstream) Config {
	return Config{Upstream: u.Addr(), Check: smtptest.CheckDeliveredTo}
}

func TestPassAndLoopOverTCP(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p, c := openSession(t, baseConfig(u))
	c.Expect("EHLO front.example", filteredEHLO)
	c.Expect("XFORWARD NAME=client.example ADDR=192.0.2.9 PORT=4000", ok)
	c.StartMessage("<s@example.org>", "<r@example.net>")
	msg := "Delivered-To: other@example.net\r\nSubject: hi\r\n\r\n..stuffed\r\nbody\r\n"
	c.Send(msg + ".\r\n")
	c.ExpectReply(queued)
	c.StartMessage("<s@example.org>", "<r@example.net>")
	c.Send("Delivered-To: r@example.net\r\n\r\nloop body\r\n.\r\n")
	c.ExpectReply("554 5.4.6 mail forwarding loop for r@example.net\r\n")
	c.Expect("NOOP", ok)
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	c.ExpectEOF()
	u.WaitEnded(t)
	if diff := cmp.Diff([]string{msg}, u.Messages()); diff != "" {
		t.Fatalf("upstream messages (-want +got):\n%s", diff)
	}
	if strings.Contains(u.Raw(), "loop body") {
		t.Fatal("loop content reached the upstream")
	}
	want := []string{"EHLO front.example", "XFORWARD NAME=client.example ADDR=192.0.2.9 PORT=4000",
		"MAIL FROM:<s@example.org>", "RCPT TO:<r@example.net>", "DATA",
		"MAIL FROM:<s@example.org>", "RCPT TO:<r@example.net>", "RSET", "NOOP", "QUIT"}
	if diff := cmp.Diff(want, u.Commands()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	// One log line per transaction, with the XFORWARD client.
	p.stop()
	txs := logRecords(t, p.logs.String(), "transaction")
	if len(txs) != 2 {
		t.Fatalf("%d transaction log lines:\n%s", len(txs), p.logs.String())
	}
	if txs[0]["client"] != "client.example[192.0.2.9]" || txs[0]["verdict"] != "pass" ||
		txs[0]["upstream_reply"] != strings.TrimSuffix(queued, "\r\n") || txs[0]["sender"] != "s@example.org" {
		t.Fatalf("pass transaction logged as %v", txs[0])
	}
	if txs[1]["verdict"] != "loop" || txs[1]["loop_recipient"] != "r@example.net" ||
		!slices.Equal(anyStrings(txs[1]["recipients"]), []string{"r@example.net"}) {
		t.Fatalf("loop transaction logged as %v", txs[1])
	}
	for _, k := range []string{"size", "header_bytes", "duration", "reply", "session"} {
		if _, ok := txs[1][k]; !ok {
			t.Fatalf("transaction log lacks %q: %v", k, txs[1])
		}
	}
	if n := len(logRecords(t, p.logs.String(), "session start")); n != 1 {
		t.Fatalf("%d session start lines", n)
	}
	if n := len(logRecords(t, p.logs.String(), "session end")); n != 1 {
		t.Fatalf("%d session end lines", n)
	}
}

func anyStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// logRecords returns the JSON log lines whose msg is msg; all of them for
// an empty msg.
func logRecords(t *testing.T, logs, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if msg == "" || m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func TestUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := startProxy(t, Config{Upstream: dead})
	c := dialClient(t, p.addr)
	c.ExpectReply("421 4.4.1 upstream " + dead + " unreachable: connection refused\r\n")
	c.ExpectEOF()
	// One failure, one WARN line, with the error's detail.
	p.stop()
	var warns []map[string]any
	for _, rec := range logRecords(t, p.logs.String(), "") {
		if rec["level"] == "WARN" {
			warns = append(warns, rec)
		}
	}
	if len(warns) != 1 || warns[0]["msg"] != "upstream error" || warns[0]["error"] != "connect: connection refused" ||
		!strings.Contains(fmt.Sprint(warns[0]["detail"]), "connection refused") {
		t.Fatalf("want one WARN line naming the failure and its detail, got %v", warns)
	}
}

func TestUpstreamClosesDuringCommand(t *testing.T) {
	u := smtptest.StartUpstream(t)
	u.Hook = func(c *smtptest.Conn, cmd string) bool {
		if strings.HasPrefix(cmd, "MAIL") {
			c.Close()
			return true
		}
		return false
	}
	_, c := openSession(t, baseConfig(u))
	c.Expect("MAIL FROM:<s@x>", "421 4.4.2 upstream "+u.Addr()+" closed the connection\r\n")
	c.ExpectEOF()
}

func TestUpstreamClosesMidDATA(t *testing.T) {
	u := smtptest.StartUpstream(t)
	u.DataHook = func(c *smtptest.Conn, line string) bool {
		if strings.HasPrefix(line, "first") {
			c.Close()
			return true
		}
		return false
	}
	_, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("Subject: s\r\n\r\nfirst line\r\n")
	u.WaitEnded(t)
	// The rest of the message after the upstream is gone: drained.
	c.Send(strings.Repeat("more body\r\n", 1000) + ".\r\n")
	got := c.Reply()
	if !strings.HasPrefix(got, "451 4.4.2 upstream "+u.Addr()+" ") {
		t.Fatalf("end of data got %q, want 451 4.4.2", got)
	}
	if got := c.Cmd("MAIL FROM:<s@x>"); !strings.HasPrefix(got, "421 4.4.2 ") {
		t.Fatalf("next command got %q, want 421 4.4.2", got)
	}
	c.ExpectEOF()
}

func TestUpstreamRefusesDATA(t *testing.T) {
	u := smtptest.StartUpstream(t)
	u.Replies["DATA"] = "554 5.5.1 Error: no valid recipients\r\n"
	_, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("Subject: s\r\n\r\nRSET\r\nMAIL FROM:<evil@x>\r\n.\r\n")
	c.ExpectReply("554 5.5.1 Error: no valid recipients\r\n")
	c.Expect("NOOP", ok)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "DATA", "RSET", "NOOP"}
	if diff := cmp.Diff(want, u.Commands()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}

func TestSessionLimit(t *testing.T) {
	u := smtptest.StartUpstream(t)
	cfg := baseConfig(u)
	cfg.MaxSessions = 1
	p := startProxy(t, cfg)
	c1 := dialClient(t, p.addr)
	c1.ExpectReply(greeting)
	c2 := dialClient(t, p.addr)
	c2.ExpectReply("421 4.3.2 too many connections\r\n")
	c2.ExpectEOF()
	c1.Expect("NOOP", ok) // the first session is unaffected
	c1.Expect("QUIT", "221 2.0.0 Bye\r\n")
	c1.ExpectEOF()
	u.WaitEnded(t)
	// Its slot is free again (the count drops when the session ends).
	deadline := time.Now().Add(10 * time.Second)
	for {
		c3 := dialClient(t, p.addr)
		got := c3.Reply()
		if got == greeting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot never freed: %q", got)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestClientDisconnectMidDATA(t *testing.T) {
	u := smtptest.StartUpstream(t)
	_, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("Subject: s\r\n\r\npartial\r\n")
	c.Conn.Close()
	u.WaitEnded(t)
	raw := u.Raw()
	if !strings.Contains(raw, "partial\r\n") {
		t.Fatalf("the streamed part did not arrive: %q", raw)
	}
	if strings.Contains(raw, "\r\n.\r\n") || len(u.Messages()) != 0 {
		t.Fatalf("the upstream saw an end of data: %q", raw)
	}
}

func TestGracefulShutdownBetweenTransactions(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p, c := openSession(t, baseConfig(u))
	c.Expect("EHLO x", filteredEHLO)
	stopped := make(chan error, 1)
	go func() { stopped <- p.stop() }()
	c.ExpectReply("421 4.3.2 shutting down\r\n")
	c.ExpectEOF()
	// Serve returns once the connection is closed on both sides.
	if err := <-stopped; err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	if _, err := net.Dial("tcp", p.addr); err == nil {
		t.Fatal("new connections still accepted after shutdown")
	}
}

func TestGracefulShutdownFinishesTransaction(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("Subject: s\r\n\r\nbody\r\n")
	stopped := make(chan error, 1)
	go func() { stopped <- p.stop() }()
	// Serve is waiting for this session: finish the message.
	c.Send(".\r\n")
	c.ExpectReply(queued)
	c.ExpectReply("421 4.3.2 shutting down\r\n")
	c.ExpectEOF()
	if err := <-stopped; err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	if len(u.Messages()) != 1 {
		t.Fatal("message lost in shutdown")
	}
}

func TestDebugTrace(t *testing.T) {
	u := smtptest.StartUpstream(t)
	dir := t.TempDir()
	cfg := baseConfig(u)
	cfg.DebugTrace = filepath.Join(dir, "trace")
	p, c := openSession(t, cfg)
	c.Expect("NOOP", ok)
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	c.ExpectEOF()
	p.stop()
	files, _ := filepath.Glob(cfg.DebugTrace + ".*")
	if len(files) != 1 {
		t.Fatalf("trace files: %v", files)
	}
	if want := "trace." + strings.Split(filepath.Base(files[0]), ".")[1]; !strings.HasPrefix(filepath.Base(files[0]), want) {
		t.Fatalf("trace file name %q", files[0])
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) == 3 && f[1] != "---" {
			dirs = append(dirs, f[1]+" "+f[2])
		}
	}
	want := []string{
		`U>P "220 after.example ESMTP Postfix\r\n"`,
		`P>C "220 after.example ESMTP Postfix\r\n"`,
		`C>P "NOOP\r\n"`,
		`P>U "NOOP\r\n"`,
		`U>P "250 2.0.0 Ok\r\n"`,
		`P>C "250 2.0.0 Ok\r\n"`,
		`C>P "QUIT\r\n"`,
		`P>U "QUIT\r\n"`,
		`U>P "221 2.0.0 Bye\r\n"`,
		`P>C "221 2.0.0 Bye\r\n"`,
	}
	if diff := cmp.Diff(want, dirs); diff != "" {
		t.Fatalf("transcript (-want +got):\n%s\n%s", diff, data)
	}
}

func TestListenIPv6AndUnix(t *testing.T) {
	u := smtptest.StartUpstream(t)
	// Upstream over a Unix socket, client over IPv6 loopback.
	sock := filepath.Join(t.TempDir(), "up.sock")
	uln, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	u.ServeListener(uln)
	ln, err := Listen("[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	p := serveProxy(t, Config{Upstream: "unix:" + sock, Check: smtptest.CheckDeliveredTo}, ln)
	if !strings.HasPrefix(p.addr, "[::1]:") {
		t.Fatalf("listening on %s", p.addr)
	}
	c := dialClient(t, p.addr)
	c.ExpectReply(greeting)
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	// A Unix listener replaces a stale socket but no other file.
	if _, err := Listen("unix:" + sock); err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	plain := filepath.Join(t.TempDir(), "file")
	os.WriteFile(plain, nil, 0o600)
	if _, err := Listen("unix:" + plain); err == nil {
		t.Fatal("a regular file was replaced by a socket")
	}
}

func TestSplitAddr(t *testing.T) {
	cases := []struct{ in, network, addr string }{
		{"127.0.0.1:10025", "tcp", "127.0.0.1:10025"},
		{"[::1]:10025", "tcp", "[::1]:10025"},
		{"localhost:25", "tcp", "localhost:25"},
		{"unix:/run/proxy.sock", "unix", "/run/proxy.sock"},
	}
	for _, c := range cases {
		n, a, err := SplitAddr(c.in)
		if err != nil || n != c.network || a != c.addr {
			t.Errorf("SplitAddr(%q) = %q, %q, %v", c.in, n, a, err)
		}
	}
	for _, bad := range []string{"", "10025", "::1:25", "unix:", "host:"} {
		if _, _, err := SplitAddr(bad); err == nil {
			t.Errorf("SplitAddr(%q) accepted", bad)
		}
	}
}

// A refused connection to an upstream address literal reads "dial tcp
// ADDR: ..." with no ":0->" source for an unset local address (which
// DialTCP would report), since operators read it in the log.
func TestDialLiteralErrorNamesUpstreamOnly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: the dial is refused
	dial, err := (&Config{Upstream: addr}).dialer()
	if err != nil {
		t.Fatal(err)
	}
	c, err := dial(t.Context())
	if err == nil {
		c.Close()
		t.Skipf("%s accepted a connection after its listener closed", addr)
	}
	if want := "dial tcp " + addr + ": "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("dial error %q, want it to start %q", err, want)
	}
}

// A client that sends its last command or message and half-closes at
// once (as Postfix's front smtpd does with QUIT) still gets the reply.
func TestClientHalfCloseGetsReply(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("Subject: s\r\n\r\nbody\r\n.\r\n")
	c.Conn.(*net.TCPConn).CloseWrite()
	c.ExpectReply(queued)
	c.ExpectEOF()
	if len(u.Messages()) != 1 {
		t.Fatal("message not delivered")
	}

	c = dialClient(t, p.addr)
	c.ExpectReply(greeting)
	c.Send("QUIT\r\n")
	c.Conn.(*net.TCPConn).CloseWrite()
	c.ExpectReply("221 2.0.0 Bye\r\n")
	c.ExpectEOF()
}
