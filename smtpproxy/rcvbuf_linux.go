//go:build linux

package smtpproxy

import (
	"fmt"
	"os"
)

// rmemMaxPath holds the largest SO_RCVBUF a process without
// CAP_NET_ADMIN may set; the kernel silently caps larger requests.
const rmemMaxPath = "/proc/sys/net/core/rmem_max"

// streamRcvbuf is the SO_RCVBUF a client socket gets once a message body
// streams (streamSocketBuffer); or 0, and why, when net.core.rmem_max
// would cap it below that or cannot be read: a capped buffer would be
// smaller than what the kernel's own sizing reaches, so the proxy then
// leaves the buffer to the kernel.
func streamRcvbuf() (int, error) {
	b, err := os.ReadFile(rmemMaxPath)
	if err != nil {
		return 0, fmt.Errorf("net.core.rmem_max unknown: %w", err)
	}
	return rcvbufWithin(string(b))
}
