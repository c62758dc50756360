package smtpproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
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
	var d net.Dialer
	if ap, err := netip.ParseAddrPort(address); err == nil && network == "tcp" {
		// An address literal needs no lookup: dialing it directly spares
		// every connection (one per message) the resolver's work.
		return func(ctx context.Context) (net.Conn, error) {
			c, err := d.DialTCP(ctx, network, netip.AddrPort{}, ap)
			if err != nil {
				// DialTCP names the unset local address as a source
				// (":0->127.0.0.1:10026"); the log reads as DialContext's.
				var op *net.OpError
				if errors.As(err, &op) {
					op.Source = nil
				}
				return nil, err
			}
			return c, nil
		}, nil
	}
	return func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, network, address)
	}, nil
}
