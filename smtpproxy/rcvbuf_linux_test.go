//go:build linux

package smtpproxy

import (
	"net"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"golang.org/x/sys/unix"
)

// acceptRecorder is a listener that hands each connection it accepts,
// unwrapped, to conns as well.
type acceptRecorder struct {
	net.Listener
	conns chan *net.TCPConn
}

func (l acceptRecorder) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		l.conns <- tc
	}
	return c, err
}

// rcvbuf is c's SO_RCVBUF as the kernel reports it (twice what was set).
func rcvbuf(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var gerr error
	if err := rc.Control(func(fd uintptr) { n, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatalf("SO_RCVBUF: %v", gerr)
	}
	return n
}

// TestStreamingBodyFixesReceiveBuffer: once a message body streams, the
// client's socket has the Server's fixed receive buffer
// (streamSocketBuffer), not the kernel's growing one; before, it has the
// kernel's. The size here is the test's, below any net.core.rmem_max, so
// the kernel takes it as it is.
func TestStreamingBodyFixesReceiveBuffer(t *testing.T) {
	const size = 96 << 10
	u := smtptest.StartUpstream(t)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := acceptRecorder{tcp, make(chan *net.TCPConn, 1)}
	p := serveTuned(t, baseConfig(u), ln, func(s *Server) { s.streamRcvbuf = size })
	c := dialClient(t, p.addr)
	c.ExpectReply(greeting)
	accepted := <-ln.conns
	if got := c.Cmd("EHLO front.example"); !strings.HasPrefix(got, "250-") {
		t.Fatalf("EHLO got %q", got)
	}
	c.StartMessage("<s@x>", "<a@x>")
	if got := rcvbuf(t, accepted); got == 2*size {
		t.Fatalf("SO_RCVBUF is %d before any message data", got)
	}
	c.Send("Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 1<<14) + ".\r\n")
	c.ExpectReply("250 2.0.0 Ok: queued as 4XyZ1\r\n")
	if got := rcvbuf(t, accepted); got != 2*size {
		t.Fatalf("after a 1.6 MiB body SO_RCVBUF is %d, want %d", got, 2*size)
	}
}
