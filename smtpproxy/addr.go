package smtpproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
)

// SplitAddr reads a LISTEN or UPSTREAM argument: host:port,
// [v6addr]:port or unix:/path. It returns the network ("tcp" or "unix")
// and the address for package net.
func SplitAddr(addr string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return "", "", fmt.Errorf("address %q: empty socket path", addr)
		}
		return "unix", path, nil
	}
	if !strings.HasPrefix(addr, "[") && strings.Count(addr, ":") > 1 {
		return "", "", fmt.Errorf("address %q: an IPv6 address needs brackets: [v6addr]:port", addr)
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return "", "", fmt.Errorf("address %q: want host:port, [v6addr]:port or unix:/path", addr)
	}
	return "tcp", addr, nil
}

// Listen opens the listening socket for addr (see SplitAddr). A stale
// Unix socket left by an earlier run is removed first; any other file in
// its place is an error.
func Listen(addr string) (net.Listener, error) {
	network, address, err := SplitAddr(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if fi, err := os.Lstat(address); err == nil {
			if fi.Mode().Type() != fs.ModeSocket {
				return nil, fmt.Errorf("listen on %s: %s exists and is not a socket", addr, address)
			}
			if err := os.Remove(address); err != nil {
				return nil, fmt.Errorf("listen on %s: removing the old socket: %w", addr, err)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// dialer returns the function that connects to the upstream.
func (c *Config) dialer() (func(ctx context.Context) (net.Conn, error), error) {
	if c.Dial != nil {
		return c.Dial, nil
	}
	network, address, err := SplitAddr(c.Upstream)
	if err != nil {
		return nil, err
	}
	// DialContext, not DialTCP with an unset local address: that one
	// binds the socket to port 0 before connecting, a system call more per
	// message, and bind(2) picks a port no other socket holds at all,
	// where connect(2) needs it unused only towards this upstream. An
	// address literal costs the resolver no lookup.
	var d net.Dialer
	return func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, network, address)
	}, nil
}
