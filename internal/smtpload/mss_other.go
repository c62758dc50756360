//go:build !unix

package smtpload

import "net"

// tcpMSS is loopbackMSS: the MSS is not read here.
func tcpMSS(*net.TCPConn) int { return loopbackMSS }
