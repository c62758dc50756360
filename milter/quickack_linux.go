//go:build linux

package milter

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// acker acknowledges what the session has just read from the MTA at once
// (TCP_QUICKACK), instead of letting the kernel delay the ACK.
//
// Why: Postfix writes to a milter with Nagle's algorithm on
// (vstream_tweak_tcp keeps it) and flushes each milter command on its
// own. With the no-reply options most events get no answer, so nothing
// carries an ACK back: Nagle holds the MTA's next short packet (the event
// after its macros, the second header field) until the first is
// acknowledged, and Linux delays that ACK, up to 40 ms, once the session
// has written a reply (the negotiation). Acknowledging every read lets
// the next event go at once. A reply needs no help: it carries its ACK.
type acker struct {
	rc     syscall.RawConn
	set    func(fd uintptr) // built once, so that Control does not allocate per call
	setErr error
}

// newAcker returns the acker for c, or nil when c is not TCP (a Unix
// socket has no ACKs to hurry).
func newAcker(c net.Conn) *acker {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	a := &acker{rc: rc}
	a.set = func(fd uintptr) {
		a.setErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
	}
	return a
}

// ack sends the pending ACK now. It is best effort: after one refusal it
// is off for the session.
func (a *acker) ack() {
	if a == nil || a.rc == nil {
		return
	}
	if err := a.rc.Control(a.set); err != nil || a.setErr != nil {
		a.rc = nil
	}
}
