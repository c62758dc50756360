//go:build linux

package smtpproxy

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"golang.org/x/sys/unix"
)

// unacked is the number of segments c has sent that its peer has not
// acknowledged yet (TCP_INFO's tcpi_unacked).
func unacked(t *testing.T, c net.Conn) uint32 {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("TCP_INFO: %v", ierr)
	}
	return info.Unacked
}

// unackedAfterDeferral is unacked, looked at again for up to 20 ms while
// it is not 0. The proxy's ACK leaves before the data it forwards, but a
// loaded kernel may hand loopback packets to ksoftirqd, on another CPU
// than the data's; 20 ms covers that and stays below Linux's 40 ms
// minimum delayed-ACK time (TCP_DELACK_MIN), so a delayed ACK still fails
// the test.
func unackedAfterDeferral(t *testing.T, c net.Conn) uint32 {
	t.Helper()
	n := unacked(t, c)
	for deadline := time.Now().Add(20 * time.Millisecond); n != 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		n = unacked(t, c)
	}
	return n
}

// TestMessageDataAckedAtOnce checks that message data the proxy has read
// and sent on is already acknowledged to the client: by then the client
// has nothing left in flight. The proxy has written replies on the
// connection, so without TCP_QUICKACK Linux delays the ACK (by up to
// 40 ms), and a client with Nagle's algorithm on, as Postfix's smtpd is,
// holds its last short segment that long (dataAcker).
func TestMessageDataAckedAtOnce(t *testing.T) {
	u := smtptest.StartUpstream(t)
	seen := make(chan string, 10)
	u.DataHook = func(c *smtptest.Conn, line string) bool {
		seen <- line
		return false
	}
	_, c := openSession(t, baseConfig(u))
	if got := c.Cmd("EHLO front.example"); !strings.HasPrefix(got, "250-") {
		t.Fatalf("EHLO got %q", got)
	}
	c.StartMessage("<s@x>", "<a@x>")
	// next is the next content line the upstream got.
	next := func() string {
		t.Helper()
		select {
		case line := <-seen:
			return line
		case <-time.After(10 * time.Second): // a hang guard, not a timing assertion
			t.Fatal("the upstream got no more message data")
			return ""
		}
	}
	c.Send("Subject: s\r\n\r\nfirst\r\n")
	for _, want := range []string{"Subject: s\r\n", "\r\n", "first\r\n"} {
		if got := next(); got != want {
			t.Fatalf("upstream got %q, want %q", got, want)
		}
	}
	// Each short segment of the body, once the upstream has it, has been
	// acknowledged to the client.
	for i := range 5 {
		line := strings.Repeat("x", i+1) + "\r\n"
		c.Send(line)
		if got := next(); got != line {
			t.Fatalf("upstream got %q, want %q", got, line)
		}
		if n := unackedAfterDeferral(t, c.Conn); n != 0 {
			t.Fatalf("segment %d: %d segments still unacknowledged after the upstream got the data", i+1, n)
		}
	}
	c.Send(".\r\n")
	c.ExpectReply("250 2.0.0 Ok: queued as 4XyZ1\r\n")
}

// TestDataAckerNotTCP: a connection that is not TCP (a Unix socket, a
// pipe) gets no acker, and a nil acker does nothing.
func TestDataAckerNotTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if acker := newDataAcker(a); acker != nil {
		t.Fatalf("acker for a non-TCP connection: %+v", acker)
	}
	var none *dataAcker
	if err := none.Ack(); err != nil {
		t.Fatalf("nil acker: %v", err)
	}
}
