// Package allowlist says which peers may use a listener: the proxy's, whose
// upstream trusts whoever speaks through it (the after-filter smtpd lets its
// peers relay and set the client's identity with XFORWARD), and the
// milter's.
//
// A List holds network prefixes (CIDR). Its zero value allows nobody;
// Loopback allows 127.0.0.0/8 and ::1, the default of both front-ends.
// Peers that are not IP addresses are always allowed: for a Unix-domain
// socket the socket's file mode governs who may connect. An IPv4 peer seen on an IPv6 socket
// (::ffff:192.0.2.1) is judged as the IPv4 address it is.
//
// RequireLoopback refuses to serve on a listener that can be reached from
// another host (a wildcard or routable address) when the operator has not
// named the peers explicitly: a proxy that anyone on the network may relay
// through, with forgeable logs, must never start by accident.
package allowlist

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// List is a set of network prefixes. It implements flag.Value: each Set
// adds one prefix or a comma-separated list of them.
type List struct {
	prefixes []netip.Prefix
}

// Loopback returns the default list: 127.0.0.0/8 and ::1/128.
func Loopback() *List {
	return &List{prefixes: []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("::1/128"),
	}}
}

// Parse reads prefixes: CIDR ("192.0.2.0/24", "2001:db8::/32") or single
// addresses ("192.0.2.7", "::1"), each value one prefix or a comma list.
func Parse(values ...string) (*List, error) {
	l := &List{}
	for _, v := range values {
		if err := l.Set(v); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Set adds the prefixes of v (flag.Value).
func (l *List) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := parsePrefix(f)
		if err != nil {
			return err
		}
		l.prefixes = append(l.prefixes, p)
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a network prefix (CIDR such as 192.0.2.0/24 or 2001:db8::/32)", s)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: a zone is not allowed in a prefix", s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
		}
		return unmapPrefix(p), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or a network prefix (CIDR)", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// unmapPrefix turns ::ffff:a.b.c.d/n (n >= 96) into a.b.c.d/(n-96), so
// that mapped and plain IPv4 peers are judged alike.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// String lists the prefixes, comma-separated (flag.Value).
func (l *List) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(l.prefixes))
	for i, p := range l.prefixes {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// Empty reports whether the list holds no prefix.
func (l *List) Empty() bool { return l == nil || len(l.prefixes) == 0 }

// Contains reports whether ip is in one of the prefixes.
func (l *List) Contains(ip netip.Addr) bool {
	if l == nil {
		return false
	}
	ip = ip.Unmap().WithZone("")
	for _, p := range l.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Allows reports whether the peer of a connection may use the listener.
// An IP peer is allowed when it is in the list. A peer that is not an IP
// address (a Unix-domain socket, whose file mode decides who may connect;
// an in-memory pipe) is always allowed. A nil peer is refused.
func (l *List) Allows(peer net.Addr) bool {
	switch a := peer.(type) {
	case nil:
		return false
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ok && l.Contains(ip)
	case *net.UnixAddr:
		return true
	}
	if ap, err := netip.ParseAddrPort(peer.String()); err == nil {
		return l.Contains(ap.Addr())
	}
	return true
}

// RequireLoopback returns an error when a listener bound to local (its
// Addr) can be reached from another host: a wildcard address (0.0.0.0,
// ::) or any address that is not loopback. flag names the option that
// allows it and risk says what an outside peer could do, for the message.
// Unix-domain listeners are never refused.
func RequireLoopback(local net.Addr, flag, risk string) error {
	var ip netip.Addr
	switch a := local.(type) {
	case *net.TCPAddr:
		var ok bool
		if ip, ok = netip.AddrFromSlice(a.IP); !ok {
			return fmt.Errorf("listening address %s cannot be read", local)
		}
	default:
		return nil
	}
	ip = ip.Unmap()
	where := "which is not a loopback address"
	switch {
	case ip.IsLoopback():
		return nil
	case ip.IsUnspecified():
		where = "every interface"
	}
	return fmt.Errorf("refusing to listen on %s (%s) without %s: %s; listen on 127.0.0.1, or name the peers allowed to connect with %s CIDR (for example %s 192.0.2.10/32)",
		local, where, flag, risk, flag, flag)
}
