//go:build unix

package smtpload

import (
	"net"
	"syscall"
)

// tcpMSS is the connection's MSS as Postfix reads it (TCP_MAXSEG), or
// loopbackMSS when it cannot be read.
func tcpMSS(c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return loopbackMSS
	}
	mss := 0
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		mss, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG)
	}); err != nil || gerr != nil || mss <= 0 {
		return loopbackMSS
	}
	return mss
}
