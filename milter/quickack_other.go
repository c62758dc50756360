//go:build !linux

package milter

import "net"

// acker would acknowledge reads at once (see quickack_linux.go);
// elsewhere the kernel's ACK timing stays as it is.
type acker struct{}

func newAcker(net.Conn) *acker { return nil }

func (*acker) ack() {}
