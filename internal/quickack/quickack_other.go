//go:build !linux

// Package quickack would send a TCP connection's pending ACK at once
// (TCP_QUICKACK); elsewhere than Linux the kernel's ACK timing stays as
// it is and an Acker does nothing.
package quickack

import "net"

// Acker does nothing here.
type Acker struct{}

// New returns nil.
func New(net.Conn) *Acker { return nil }

// Ack does nothing.
func (*Acker) Ack() error { return nil }
