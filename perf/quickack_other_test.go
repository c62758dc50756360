//go:build !linux

package perf

import "net"

// ackingConn leaves the kernel's ACK timing as it is where TCP_QUICKACK
// does not exist (see quickack_linux_test.go).
type ackingConn struct{ net.Conn }
