package conformance

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
)

// dialScripted starts a scripted upstream and connects to it.
func dialScripted(t *testing.T, script string) (*upstreamServer, net.Conn, *bufio.Reader) {
	t.Helper()
	s, err := parseUpstream(script)
	if err != nil {
		t.Fatal(err)
	}
	u, err := startUpstream(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.stop)
	c, err := net.Dial("tcp", u.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return u, c, bufio.NewReader(c)
}

// exchange writes a command and reads one whole reply.
func exchange(t *testing.T, c net.Conn, r *bufio.Reader, send string) string {
	t.Helper()
	if send != "" {
		if _, err := io.WriteString(c, send); err != nil {
			t.Fatal(err)
		}
	}
	var reply strings.Builder
	for {
		line, err := r.ReadString('\n')
		reply.WriteString(line)
		if err != nil {
			return reply.String() + "<" + err.Error() + ">"
		}
		if len(line) < 4 || line[3] != '-' {
			return reply.String()
		}
	}
}

// record waits until the scripted connection has ended and returns what it read.
func record(t *testing.T, u *upstreamServer) string {
	t.Helper()
	rec, err := u.first(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.wait(context.Background(), func(_ []byte, closed bool) bool { return closed }); err != nil {
		t.Fatal(err)
	}
	got, _ := rec.snapshot()
	return string(got)
}

func TestScriptedUpstreamDefaultsAndRules(t *testing.T) {
	u, c, r := dialScripted(t, `
on RCPT#2
  550 5.1.1 no
on *#6
  250-multi
  250 line
`)
	steps := []struct{ send, want string }{
		{"", defaultGreeting},
		{"EHLO x\r\n", defaultEHLO},
		{"MAIL FROM:<>\r\n", "250 2.1.0 Ok\r\n"},
		{"rcpt TO:<a>\r\n", "250 2.1.5 Ok\r\n"},
		{"RCPT TO:<b>\n", "550 5.1.1 no\r\n"}, // bare LF ends a command line
		{"XYZZY\r\n", defaultUnknownReply},
		{"NOOP\r\n", "250-multi\r\n250 line\r\n"}, // the sixth command line
		{"DATA\r\n", "354 End data with <CR><LF>.<CR><LF>\r\n"},
		{"a\n.\r\n..\r\n.\r\n", "250 2.0.0 Ok: queued as 1\r\n"},
		{"DATA\r\n", "354 End data with <CR><LF>.<CR><LF>\r\n"},
		{".\r\n", "250 2.0.0 Ok: queued as 2\r\n"},
		{"QUIT\r\n", "221 2.0.0 Bye\r\n"},
		{"", "<EOF>"}, // QUIT closes
	}
	for _, s := range steps {
		if got := exchange(t, c, r, s.send); got != s.want {
			t.Fatalf("after %q: got %q, want %q", s.send, got, s.want)
		}
	}
	want := "EHLO x\r\nMAIL FROM:<>\r\nrcpt TO:<a>\r\nRCPT TO:<b>\nXYZZY\r\nNOOP\r\nDATA\r\na\n.\r\n..\r\n.\r\nDATA\r\n.\r\nQUIT\r\n"
	if got := record(t, u); got != want {
		t.Errorf("record %q, want %q", got, want)
	}
}

func TestScriptedUpstreamCloseAfter(t *testing.T) {
	u, c, r := dialScripted(t, "on content close-after 10\n")
	exchange(t, c, r, "")
	if got := exchange(t, c, r, "DATA\r\n"); !strings.HasPrefix(got, "354") {
		t.Fatalf("DATA: %q", got)
	}
	io.WriteString(c, "0123456789abcdef\r\n.\r\n")
	if got := exchange(t, c, r, ""); !strings.HasPrefix(got, "<") {
		t.Errorf("after the data: %q, want the connection closed", got)
	}
	if got, want := record(t, u), "DATA\r\n0123456789"; got != want {
		t.Errorf("record %q, want %q", got, want)
	}
}

func TestScriptedUpstreamCloseAfterBeyondMessage(t *testing.T) {
	u, c, r := dialScripted(t, "on content close-after 1000\n")
	exchange(t, c, r, "")
	exchange(t, c, r, "DATA\r\n")
	if got := exchange(t, c, r, "short\r\n.\r\nNOOP\r\n"); !strings.HasPrefix(got, "<") {
		t.Errorf("after the data: %q, want the connection closed without a reply", got)
	}
	if got, want := record(t, u), "DATA\r\nshort\r\n.\r\n"; got != want {
		t.Errorf("record %q, want %q", got, want)
	}
}

func TestScriptedUpstreamStallKeepsReading(t *testing.T) {
	u, c, r := dialScripted(t, "on MAIL stall\n")
	exchange(t, c, r, "")
	io.WriteString(c, "MAIL FROM:<>\r\nRCPT TO:<a>\r\npartial")
	c.(*net.TCPConn).CloseWrite()
	if got := exchange(t, c, r, ""); got != "<EOF>" {
		t.Errorf("a stalled upstream answered %q", got)
	}
	if got, want := record(t, u), "MAIL FROM:<>\r\nRCPT TO:<a>\r\npartial"; got != want {
		t.Errorf("record %q, want %q", got, want)
	}
}

func TestScriptedUpstreamCloseWithReply(t *testing.T) {
	u, c, r := dialScripted(t, "greeting\n  220 hi\non EHLO close\n  421 4.3.2 bye\n")
	if got := exchange(t, c, r, ""); got != "220 hi\r\n" {
		t.Fatalf("greeting %q", got)
	}
	if got := exchange(t, c, r, "EHLO x\r\nNOOP\r\n"); got != "421 4.3.2 bye\r\n" {
		t.Fatalf("EHLO: %q", got)
	}
	if got := exchange(t, c, r, ""); !strings.HasPrefix(got, "<") {
		t.Errorf("after 421: %q, want the connection closed", got)
	}
	// The NOOP arrived after the upstream chose to close: not received.
	if got, want := record(t, u), "EHLO x\r\n"; got != want {
		t.Errorf("record %q, want %q", got, want)
	}
}

func TestScriptedUpstreamGreetingFaults(t *testing.T) {
	_, c, r := dialScripted(t, "greeting close\n")
	if got := exchange(t, c, r, ""); got != "<EOF>" {
		t.Errorf("greeting close: got %q", got)
	}
	u, c, r := dialScripted(t, "greeting stall\n")
	io.WriteString(c, "EHLO x\r\n")
	c.(*net.TCPConn).CloseWrite()
	if got := exchange(t, c, r, ""); got != "<EOF>" {
		t.Errorf("greeting stall: got %q", got)
	}
	if got := record(t, u); got != "EHLO x\r\n" {
		t.Errorf("greeting stall record %q", got)
	}
}
