//go:build unix

package smtpload

import (
	"net"
	"syscall"
)

// tcpOption reads the IPPROTO_TCP option opt of c.
func tcpOption(c *net.TCPConn, opt int) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, opt) }); err != nil {
		return 0, err
	}
	return v, gerr
}

// tcpMSS is the connection's MSS as Postfix reads it (TCP_MAXSEG), or
// loopbackMSS when it cannot be read.
func tcpMSS(c *net.TCPConn) int {
	mss, err := tcpOption(c, syscall.TCP_MAXSEG)
	if err != nil || mss <= 0 {
		return loopbackMSS
	}
	return mss
}
