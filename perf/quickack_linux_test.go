//go:build linux

package perf

import (
	"net"

	"golang.org/x/sys/unix"
)

// ackingConn acknowledges every read at once (TCP_QUICKACK), as package
// milter does with the MTA's events (milter/quickack_linux.go), so that
// the null milter meets Postfix's Nagle-held writes as the milter does.
type ackingConn struct{ net.Conn }

func (c ackingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if tc, ok := c.Conn.(*net.TCPConn); ok && n > 0 {
		if rc, err := tc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1) })
		}
	}
	return n, err
}
