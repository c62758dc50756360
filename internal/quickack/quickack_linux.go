//go:build linux

// Package quickack sends a TCP connection's pending ACK at once
// (TCP_QUICKACK, Linux), for a reader whose peer writes with Nagle's
// algorithm on: Nagle holds a segment shorter than the MSS until what
// went before is acknowledged, and Linux delays that ACK, up to 40 ms,
// once the reader has written on the connection. Postfix writes so to a
// before-queue filter (the proxy) and to a milter; the callers say why
// each needs it. Elsewhere than Linux an Acker does nothing.
package quickack

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Acker sends a connection's pending ACKs. The zero value and nil do
// nothing.
type Acker struct {
	rc     syscall.RawConn
	set    func(fd uintptr) // built once: Control's argument would else allocate per call
	setErr error
}

// New returns the Acker of c, or nil when c is not TCP (a Unix socket has
// no ACKs to hurry).
func New(c net.Conn) *Acker {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	a := &Acker{rc: rc}
	a.set = func(fd uintptr) {
		a.setErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
	}
	return a
}

// Ack sends the pending ACK now: one setsockopt(2). It is best effort: a
// connection that failed shows it on its next read, and one refusal turns
// the Acker off (the error is returned once, for a debug log).
func (a *Acker) Ack() error {
	if a == nil || a.rc == nil {
		return nil
	}
	err := a.rc.Control(a.set)
	if err == nil {
		err = a.setErr
	}
	if err != nil {
		a.rc = nil
	}
	return err
}
