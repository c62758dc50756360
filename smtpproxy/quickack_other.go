//go:build !linux

package smtpproxy

import "net"

// dataAcker would acknowledge message data at once (see
// quickack_linux.go); elsewhere the kernel's ACK timing stays as it is.
type dataAcker struct{}

func newDataAcker(net.Conn) *dataAcker { return nil }

func (*dataAcker) ack() error { return nil }
