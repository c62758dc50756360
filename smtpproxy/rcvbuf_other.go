//go:build !linux

package smtpproxy

// streamRcvbuf is 0 outside Linux, with no complaint: the proxy leaves a
// client socket's receive buffer to the kernel (see streamSocketBuffer
// for why Linux gets a fixed one).
func streamRcvbuf() (int, error) { return 0, nil }
