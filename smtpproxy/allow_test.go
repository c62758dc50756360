package smtpproxy

import (
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"

	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
)

// dialFrom connects to addr from the local address ip.
func dialFrom(t *testing.T, addr, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second)) // a hang guard, not a timing assertion
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A peer outside -allow-client gets one 554 5.7.1 line and is closed; no
// upstream connection is opened for it, and it is logged once. An allowed
// peer of the same proxy relays as always.
func TestPeerOutsideAllowListRefused(t *testing.T) {
	u := smtptest.StartUpstream(t)
	allow, err := allowlist.Parse("127.0.0.1/32")
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(u)
	cfg.AllowClient = allow
	obs := &recordingObserver{}
	cfg.Observer = obs
	p := startProxy(t, cfg)

	refused := dialFrom(t, p.addr, "127.0.0.2")
	got, err := io.ReadAll(refused)
	if err != nil {
		t.Fatalf("reading the refusal: %v", err)
	}
	if want := "554 5.7.1 not authorized to use this service\r\n"; string(got) != want {
		t.Fatalf("refused peer got %q, want %q", got, want)
	}

	c := dialClient(t, p.addr)
	c.ExpectReply(greeting)
	c.Expect("MAIL FROM:<s@x>", ok)
	c.Expect("RCPT TO:<a@x>", ok)
	c.Expect("DATA", local354)
	c.Expect("Subject: s\r\n\r\nbody\r\n.", queued)
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	c.ExpectEOF()
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if n := u.Accepted(); n != 1 {
		t.Errorf("the upstream accepted %d connections, want 1 (the allowed peer's alone)", n)
	}
	obs.mu.Lock()
	peers, started := obs.peers, obs.started
	obs.mu.Unlock()
	if peers != 1 || started != 1 {
		t.Errorf("observer: %d peers refused, %d sessions started; want 1 and 1", peers, started)
	}
	refusals := logRecords(t, p.logs.String(), "client not allowed")
	if len(refusals) != 1 || !strings.HasPrefix(refusals[0]["peer"].(string), "127.0.0.2:") {
		t.Errorf("want one log line naming the peer 127.0.0.2: %v", refusals)
	}
}

// The default list is loopback: 127.0.0.0/8 and ::1 are served.
func TestDefaultAllowsLoopback(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p := startProxy(t, baseConfig(u))
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.3.4.5"} {
		conn := dialFrom(t, p.addr, ip)
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || line != greeting {
			t.Errorf("peer %s: got %q (%v), want the greeting", ip, line, err)
		}
	}
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	p6 := serveProxy(t, baseConfig(u), ln)
	conn := dialFrom(t, p6.addr, "::1")
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != greeting {
		t.Errorf("peer ::1: got %q (%v), want the greeting", line, err)
	}
}

// The exemption reads XFORWARD ADDR as Postfix writes it: IPv4 as is, IPv6
// after "IPv6:"; an unavailable address ([UNAVAILABLE]) is no client.
func TestExemptFunc(t *testing.T) {
	if exemptFunc(nil) != nil || exemptFunc(&allowlist.List{}) != nil {
		t.Fatal("an empty list exempts")
	}
	l, err := allowlist.Parse("192.0.2.0/24,2001:db8::/32")
	if err != nil {
		t.Fatal(err)
	}
	exempt := exemptFunc(l)
	for addr, want := range map[string]bool{
		"192.0.2.9":          true,
		"IPv6:2001:db8::1":   true,
		"ipv6:2001:DB8::1":   true,
		"198.51.100.1":       false,
		"IPv6:2001:db9::1":   false,
		"2001:db8::1":        true,
		"[UNAVAILABLE]":      false,
		"":                   false,
		"IPv6:":              false,
		"192.0.2.9 trailing": false,
	} {
		if got := exempt(addr); got != want {
			t.Errorf("exempt(%q) = %v, want %v", addr, got, want)
		}
	}
}
