package expand

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// This file follows trivial-rewrite(8): the rewriting of an address in the
// "local" context that cleanup(8) applies to every envelope recipient and
// local(8) to every alias target (trivial-rewrite/rewrite.c rewrite_tree),
// and the resolving of an address to its delivery transport that qmgr(8)
// and local(8) ask for (trivial-rewrite/resolve.c resolve_addr,
// trivial-rewrite/transport.c transport_lookup).

// rewriteLocal is rewrite_tree() in the local context (REWRITE_CANON) of a
// parsed address, returning it in internal form:
//
//   - an address without a domain: "site!user" becomes user@site
//     (swap_bangpath), else "user%domain" becomes user@domain
//     (allow_percent_hack), else @$myorigin is appended
//     (append_at_myorigin);
//   - a domain without a dot gets .$mydomain (append_dot_mydomain);
//   - one trailing dot of the domain is removed.
//
// A source route has already been dropped by the parser (address.ParsePath
// and ParseList keep only the mailbox). The empty address stays empty.
// Routing operators inside a quoted local part are not operators
// (tok822 sees one quoted-string token), so "a!b" written with quotes is
// kept as a local part.
func (c *Config) rewriteLocal(a address.Addr) string {
	return c.rewrite(a.LocalText(), a.Domain, a.Domain != "", strings.ContainsAny(a.Local, `"\`))
}

// rewrite is rewriteLocal of an address given as its internal-form parts;
// quoted says the local part was a quoted string, so it holds no routing
// operators.
func (c *Config) rewrite(local, domain string, hasDomain, quoted bool) string {
	if !hasDomain {
		if local == "" {
			return ""
		}
		if i := strings.IndexByte(local, '!'); c.SwapBangpath && !quoted && i >= 0 {
			local, domain, hasDomain = local[i+1:], local[:i], true
		} else if i := strings.LastIndexByte(local, '%'); c.AllowPercentHack && !quoted && i >= 0 {
			local, domain, hasDomain = local[:i], local[i+1:], true
		} else if c.AppendAtMyorigin && c.MyOrigin != "" {
			domain, hasDomain = c.MyOrigin, true
		}
	}
	if !hasDomain {
		return local
	}
	if c.AppendDotMydomain && c.MyDomain != "" && domain != "" &&
		!strings.HasPrefix(domain, "[") && !strings.Contains(domain, ".") {
		domain += "." + c.MyDomain
	}
	return local + "@" + stripDomainDot(domain)
}

// stripDomainDot removes one trailing dot of a domain, not from "." alone
// nor from "a.." (rewrite_tree: "but not dot-dot or @-dot").
func stripDomainDot(d string) string {
	if n := len(d); n >= 2 && d[n-1] == '.' && d[n-2] != '.' {
		return d[:n-1]
	}
	return d
}

// The address classes of trivial-rewrite(8) (global/resolve_clnt.h
// RESOLVE_CLASS_*).
type addrClass int

const (
	classLocal addrClass = iota
	classAlias
	classVirtual
	classRelay
	classDefault
)

// resolved is what resolve returns for one address.
type resolved struct {
	rcpt      string // the recipient as qmgr(8) updates it (RECIPIENT_UPDATE)
	class     addrClass
	transport string // the channel: a master.cf service name
	unknown   bool   // the transport depends on the sender (sender_dependent_default_transport_maps)
}

// resolveLoopLimit is resolve_addr's bound on its rewriting loop, beyond
// the address length: "giving up after N iterations".
const resolveLoopLimit = 100

// resolve is resolve_addr(): it strips every local domain off the address,
// turns what routing operators remain ('@' in the local part, '%', '!')
// into a new domain, and repeats until the domain left is remote or none is
// left (then the last local domain is put back). The class follows from
// the domain, the transport from the class and transport_maps.
func (r *run) resolve(addr string) (resolved, error) {
	c := r.cfg
	var saved string
	haveSaved, remote := false, false
	loopMax := len(addr) + resolveLoopLimit
	for n := 0; ; n++ {
		if n > loopMax {
			return resolved{}, &LimitError{Limit: "resolve_addr iterations", Value: loopMax, Addr: addr}
		}
		if hasAt(addr) {
			local, domain := splitAt(addr)
			addr = local + "@" + stripDomainDot(domain)
			if _, domain = splitAt(addr); domain != "" {
				ok, err := r.resolveLocal(domain)
				if err != nil {
					return resolved{}, err
				}
				if !ok {
					remote = true
					break
				}
			}
			addr, saved, haveSaved = local, domain, true
		}
		// With resolve_dequoted_address (the default) routing operators
		// count inside a quoted local part too.
		if hasAt(addr) {
			local, domain := splitAt(addr)
			addr = c.rewrite(local, domain, true, false)
			continue
		}
		if c.SwapBangpath && strings.Contains(addr, "!") || c.AllowPercentHack && strings.Contains(addr, "%") {
			addr = c.rewrite(addr, "", false, false)
			continue
		}
		if addr == "" {
			addr = c.EmptyAddressRecip
			continue
		}
		if !haveSaved && !hasAt(addr) {
			addr += "@" + c.MyHostname
			continue
		}
		break
	}
	res := resolved{rcpt: addr}
	var domain string
	if remote {
		_, domain = splitAt(addr)
	} else {
		if haveSaved {
			domain = saved
		} else {
			domain = c.MyHostname
		}
		res.rcpt = addr + "@" + domain
	}
	channel := ""
	if !remote {
		res.class, channel = classLocal, c.LocalTransport
	} else {
		fd := foldKey(domain)
		switch ok, err := r.listMatch(c.VirtualAliasDomains, fd); {
		case err != nil:
			return resolved{}, err
		case ok:
			res.class, channel = classAlias, "error"
		}
		if channel == "" {
			switch ok, err := r.listMatch(c.VirtualMailboxDomains, fd); {
			case err != nil:
				return resolved{}, err
			case ok:
				res.class, channel = classVirtual, c.VirtualTransport
			}
		}
		if channel == "" {
			switch ok, err := r.listMatch(c.RelayDomains, fd); {
			case err != nil:
				return resolved{}, err
			case ok:
				res.class, channel = classRelay, c.RelayTransport
			default:
				res.class, channel = classDefault, c.DefaultTransport
				res.unknown = c.SenderDependentDefaultTransport
			}
		}
	}
	channel, _, _ = strings.Cut(channel, ":")
	if len(c.TransportMaps) > 0 && res.class != classAlias {
		ch, found, err := r.transportLookup(res.rcpt, domain)
		if err != nil {
			return resolved{}, err
		}
		if found {
			res.unknown = false
			if ch != "" {
				channel = ch
			}
		}
	}
	res.transport = channel
	return res, nil
}

// resolveLocal is global/resolve_local.c resolve_local(): whether a domain
// is this host's (mydestination, or an address literal of inet_interfaces
// or proxy_interfaces). One trailing dot is ignored; "a.." is not local.
func (r *run) resolveLocal(domain string) (bool, error) {
	d, ok := strings.CutSuffix(domain, ".")
	if domain == "" || ok && (d == "" || strings.HasSuffix(d, ".")) {
		return false, nil
	}
	if !ok {
		d = domain
	}
	match, err := r.listMatch(r.cfg.MyDestination, foldKey(d))
	if err != nil || match {
		return match, err
	}
	if lit, ok := strings.CutPrefix(d, "["); ok {
		lit, ok = strings.CutSuffix(lit, "]")
		if !ok {
			return false, nil
		}
		if v6, ok := cutPrefixFold(lit, "ipv6:"); ok {
			lit = v6
		}
		ip, err := netip.ParseAddr(lit)
		if err != nil {
			return false, nil
		}
		ip = ip.Unmap()
		return slices.Contains(r.cfg.InetInterfaces, ip) || slices.Contains(r.cfg.ProxyInterfaces, ip), nil
	}
	return false, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// listMatch is util/match_list.c match_list_match() for one folded name:
// the first entry that matches decides ('!' negates); no match is false.
// A string list (match_string) matches a name exactly or by table lookup;
// a domain list (match_hostname) also matches parent domains: with Parent,
// "example.com" matches sub.example.com, else ".example.com" does; a
// fixed-string table is asked for each parent domain as well.
func (r *run) listMatch(l List, name string) (bool, error) {
	for _, e := range l.Entries {
		if e.Err != nil {
			return false, &LookupError{Backend: "file", Table: "match list", Key: name, Cause: CauseLookup, Err: e.Err}
		}
		m, err := r.entryMatch(l, e, name)
		if err != nil {
			return false, err
		}
		if m {
			return !e.Negate, nil
		}
	}
	return false, nil
}

func (r *run) entryMatch(l List, e ListEntry, name string) (bool, error) {
	if e.Table != "" {
		fixed := false
		if l.Domain {
			var err error
			if fixed, err = r.isFixed(e.Table); err != nil {
				return false, err
			}
		}
		for entry := name; entry != ""; {
			if entry == name || fixed {
				_, found, err := r.lookup(e.Table, entry)
				if err != nil || found {
					return found, err
				}
			}
			if !l.Domain {
				return false, nil
			}
			i := strings.IndexByte(entry[1:], '.')
			if i < 0 {
				return false, nil
			}
			entry = entry[i+1:]
			if l.Parent {
				entry = entry[1:]
			}
		}
		return false, nil
	}
	if name == e.Name {
		return true, nil
	}
	if l.Domain {
		if l.Parent {
			return strings.HasSuffix(name, "."+e.Name), nil
		}
		return strings.HasPrefix(e.Name, ".") && len(name) > len(e.Name) && strings.HasSuffix(name, e.Name), nil
	}
	return false, nil
}

// transportLookup is trivial-rewrite/transport.c transport_lookup(): the
// full address, the address without its extension, the domain and its
// parents (MA_FIND_FULL | MA_FIND_NOEXT | MA_FIND_DOMAIN with MA_FIND_PDMS
// or MA_FIND_PDDMDS), then the "*" wildcard. It returns the channel of the
// entry found ("" when the entry keeps the class's transport, as ":nexthop"
// does).
func (r *run) transportLookup(addr, domain string) (string, bool, error) {
	strategy := findFull | findNoExt | findDomain | findPDDMDS
	if r.cfg.TransportParent {
		strategy = findFull | findNoExt | findDomain | findPDMS
	}
	v, _, found, err := r.mailAddrFind(r.cfg.TransportMaps, addr, strategy, true)
	if err != nil {
		return "", false, err
	}
	if !found {
		if v, found, err = r.mapsFind(r.cfg.TransportMaps, "*", false); err != nil || !found {
			return "", false, err
		}
	}
	ch, _, _ := strings.Cut(v, ":")
	return ch, true, nil
}
