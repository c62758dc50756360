package expand

import (
	"strings"
)

// This file follows cleanup(8)'s table lookups of a recipient:
// global/mail_addr_find.c (which keys are tried, in which order),
// global/mail_addr_map.c and global/mail_addr_crunch.c (what a value
// becomes), cleanup/cleanup_map11.c (canonical maps) and
// cleanup/cleanup_map1n.c (virtual alias maps).

// The lookup strategy of mail_addr_find_opt (global/mail_addr_find.h
// MA_FIND_*).
type findStrategy int

const (
	findFull             findStrategy = 1 << iota // user+ext@domain
	findNoExt                                     // user@domain, when the address has an extension
	findLocalpartIfLocal                          // user+ext, then user, for a local domain
	findAtDomain                                  // @domain
	findDomain                                    // domain (transport_maps)
	findPDMS                                      // with findDomain: parent domains, "example.com"
	findPDDMDS                                    // with findDomain: parent domains, ".example.com"

	// findDefault is MA_FIND_DEFAULT, the strategy of canonical and
	// virtual alias lookups.
	findDefault = findFull | findNoExt | findLocalpartIfLocal | findAtDomain
)

// splitExtension is util/split_addr.c split_addr(): the local part cut at
// its first recipient_delimiter character, unless it is postmaster,
// mailer-daemon or the double-bounce sender, or (with a '-' delimiter and
// owner_request_special) owner-x or x-request, or it has no delimiter
// past its first character. ext starts after the delimiter ("user+" has
// the empty extension).
func (c *Config) splitExtension(local string) (user, ext string, ok bool) {
	if c.RecipientDelimiter == "" {
		return local, "", false
	}
	if strings.EqualFold(local, "postmaster") || strings.EqualFold(local, "mailer-daemon") ||
		foldKey(local) == foldKey(c.DoubleBounceSender) {
		return local, "", false
	}
	if strings.Contains(c.RecipientDelimiter, "-") && c.OwnerRequestSpecial {
		if len(local) >= 6 && strings.EqualFold(local[:6], "owner-") {
			return local, "", false
		}
		if n := len(local) - 8; n > 0 && strings.EqualFold(local[n:], "-request") {
			return local, "", false
		}
	}
	i := strings.IndexAny(local, c.RecipientDelimiter)
	if i <= 0 {
		return local, "", false
	}
	return local[:i], local[i+1:], true
}

// stripAddr is global/strip_addr.c strip_addr_internal(): the address
// without its extension (bare), and the extension with its delimiter
// (ext, "+foo"); ok is false when there is none.
func (c *Config) stripAddr(full string) (bare, ext string, ok bool) {
	if c.RecipientDelimiter == "" || !strings.ContainsAny(full, c.RecipientDelimiter) {
		return "", "", false
	}
	local, domain := splitAt(full)
	user, _, ok := c.splitExtension(local)
	if !ok {
		return "", "", false
	}
	ext = local[len(user):]
	if hasAt(full) {
		return user + "@" + domain, ext, true
	}
	return user, ext, true
}

// findKey is find_addr(): one key in the form the query asks for. Keys
// are looked up in external (quoted) form; externalFirst then also asks
// the internal form when it differs (MA_FORM_EXTERNAL_FIRST, the legacy
// strategy of transport_maps).
func (r *run) findKey(tables []string, key string, partial, withDomain, externalFirst bool) (string, bool, error) {
	ext := quote822(key, !withDomain)
	v, found, err := r.mapsFind(tables, ext, partial)
	if found || err != nil || !externalFirst || ext == key {
		return v, found, err
	}
	return r.mapsFind(tables, key, partial)
}

// mailAddrFind is mail_addr_find_opt(): it looks up an internal-form
// address under the keys of strategy, in Postfix's order, and stops at the
// first table that answers or fails:
//
//  1. user+ext@domain (full key; every table);
//  2. user@domain (partial key; fixed-string tables only);
//  3. user+ext, then user, when domain is $myorigin or resolve_local()
//     says it is local (partial);
//  4. @domain (partial);
//  5. domain and its parents (transport_maps; partial).
//
// ext is the extension with its delimiter when a key without it matched
// ("the unmatched extension"), "" otherwise.
func (r *run) mailAddrFind(tables []string, full string, strategy findStrategy, externalFirst bool) (value, ext string, found bool, err error) {
	bare, saved, hasExt := "", "", false
	if strategy&findNoExt != 0 {
		bare, saved, hasExt = r.cfg.stripAddr(full)
	}
	if strategy&findFull != 0 {
		if value, found, err = r.findKey(tables, full, false, true, externalFirst); found || err != nil {
			return value, "", found, err
		}
	}
	if hasExt {
		if value, found, err = r.findKey(tables, bare, true, true, externalFirst); found || err != nil {
			return value, saved, found, err
		}
	}
	local, domain := splitAt(full)
	at := hasAt(full)
	if at && strategy&findLocalpartIfLocal != 0 {
		isLocal := foldKey(domain) == foldKey(r.cfg.MyOrigin)
		if !isLocal {
			if isLocal, err = r.resolveLocal(domain); err != nil {
				return "", "", false, err
			}
		}
		if isLocal {
			if value, found, err = r.findKey(tables, local, true, false, externalFirst); found || err != nil {
				return value, "", found, err
			}
			if hasExt {
				bareLocal, _ := splitAt(bare)
				if value, found, err = r.findKey(tables, bareLocal, true, false, externalFirst); found || err != nil {
					return value, saved, found, err
				}
			}
		}
	}
	if at && strategy&findAtDomain != 0 {
		if value, found, err = r.mapsFind(tables, "@"+domain, true); found || err != nil {
			return value, "", found, err
		}
	}
	if at && strategy&findDomain != 0 {
		for name := domain; name != ""; {
			if value, found, err = r.mapsFind(tables, name, true); found || err != nil {
				return value, "", found, err
			}
			if strategy&(findPDMS|findPDDMDS) == 0 || len(name) < 2 {
				break
			}
			i := strings.IndexByte(name[1:], '.')
			if i < 0 {
				break
			}
			name = name[i+1:]
			if strategy&findPDDMDS == 0 {
				name = name[1:]
			}
		}
	}
	return "", "", false, nil
}

// errNonAddress is a table value that holds no address: mail_addr_map
// reports it as a lookup problem ("returns non-address result").
type errNonAddress string

func (e errNonAddress) Error() string { return "non-address result " + string(e) }

// mailAddrMap is global/mail_addr_map.c mail_addr_map_opt() with
// MA_FIND_DEFAULT: the addresses an internal-form address maps to, nil
// when no table has it. A value "@other" stands for the address's own
// local part at other (without the unmatched extension); every result is
// rewritten to canonical form and, with propagate, gets the unmatched
// extension back (mail_addr_crunch_opt).
func (r *run) mailAddrMap(tables []string, addr string, propagate bool) ([]string, error) {
	value, ext, found, err := r.mailAddrFind(tables, addr, findDefault, false)
	if err != nil || !found {
		return nil, err
	}
	if strings.HasPrefix(value, "@") {
		local, _ := splitAt(addr)
		local = local[:len(local)-len(ext)]
		value = quote822(local+value, false)
	}
	if !propagate {
		ext = ""
	}
	out := r.crunch(value, ext)
	if len(out) == 0 {
		return nil, &LookupError{Backend: "expand", Table: strings.Join(tables, " "), Key: addr, Cause: CauseLookup, Err: errNonAddress(value)}
	}
	return out, nil
}

// crunch is mail_addr_crunch_opt(): the addresses of a table value, read
// as tok822_parse reads an address list ("" and "<>" stand for the null
// address; words separated by white space only are separate addresses),
// each rewritten in the local context (canon_addr_external) and given the
// extension ext (with its delimiter) before its '@'.
func (r *run) crunch(value, ext string) []string {
	if value == "" || value == "<>" {
		value = `""`
	}
	var out []string
	for _, toks := range tok822Parse(value) {
		s := r.cfg.rewriteTokens(toks)
		if ext != "" {
			if local, domain := splitAt(s); hasAt(s) {
				s = local + ext + "@" + domain
			} else {
				s += ext
			}
		}
		out = append(out, s)
	}
	return out
}

// map11 is cleanup_map11_internal(): canonical mapping, one address to
// one (the first of a multi-valued result), repeated on the result until
// no table has it, it maps to itself (ignoring case), or
// map11Recursion rounds have run; cleanup then keeps what it has. A lookup
// error makes cleanup defer the message.
func (r *run) map11(tables []string, addr string, propagate bool) (string, error) {
	for range map11Recursion {
		res, err := r.mailAddrMap(tables, addr, propagate)
		if err != nil {
			return addr, err
		}
		if res == nil {
			return addr, nil
		}
		self := foldKey(res[0]) == foldKey(addr)
		addr = res[0]
		if self {
			return addr, nil
		}
	}
	return addr, nil
}

// map1n is cleanup_map1n_internal(): virtual alias expansion, one address
// to many. The list is rewritten in place: each result replaces the
// address it came from (the first) or is appended (the others), and is
// looked up again, until no table has it. An address that maps to itself
// (ignoring case) is expanded once only. Cleanup defers the message when
// the list grows past virtual_alias_expansion_limit, when one address
// nests past virtual_alias_recursion_limit, when a result is longer than
// virtual_alias_address_length_limit, or when a lookup fails.
func (r *run) map1n(tables []string, addr string, propagate bool) ([]string, error) {
	c := r.cfg
	argv := []string{addr}
	beenHere := map[string]bool{}
	for arg := 0; arg < len(argv); arg++ {
		if len(argv) > c.VirtualAliasExpansionLimit {
			return nil, &LimitError{Limit: "virtual_alias_expansion_limit", Value: c.VirtualAliasExpansionLimit, Addr: addr}
		}
		for count := 0; ; count++ {
			if beenHere[foldKey(argv[arg])] {
				break
			}
			if count >= c.VirtualAliasRecursionLimit {
				return nil, &LimitError{Limit: "virtual_alias_recursion_limit", Value: c.VirtualAliasRecursionLimit, Addr: addr}
			}
			res, err := r.mailAddrMap(tables, argv[arg], propagate)
			if err != nil {
				return nil, err
			}
			if res == nil {
				break
			}
			lhs := argv[arg]
			for i, a := range res {
				if len(a) > c.VirtualAliasAddressLengthLimit {
					return nil, &LimitError{Limit: "virtual_alias_address_length_limit", Value: c.VirtualAliasAddressLengthLimit, Addr: addr}
				}
				if i == 0 {
					argv[arg] = a
				} else {
					argv = append(argv, a)
				}
				if foldKey(lhs) == foldKey(a) {
					beenHere[foldKey(lhs)] = true
				}
			}
		}
	}
	return argv, nil
}

// masquerades reports whether cleanup(8) masquerades envelope recipients
// (cleanup_addr.c cleanup_addr_recipient: masquerade_domains set and
// envelope_recipient in masquerade_classes).
func (c *Config) masquerades() bool {
	return c.MasqueradeEnvelope && len(c.MasqueradeDomains) > 0
}

// masquerade is cleanup/cleanup_masquerade.c cleanup_masquerade_internal
// on an internal-form address: unless its local part (in external form)
// is in masquerade_exceptions, the first entry of masquerade_domains that
// is the domain or a parent of it decides: a parent replaces the domain
// (user@host.example.com becomes user@example.com), the domain itself or
// a "!"-entry leaves the address alone. Names compare case-folded; the
// result carries the entry's folded spelling. A lookup error of the
// exceptions makes cleanup defer the message.
func (r *run) masquerade(addr string) (string, error) {
	if !hasAt(addr) {
		return addr, nil
	}
	local, domain := splitAt(addr)
	if len(r.cfg.MasqueradeExceptions.Entries) > 0 {
		excluded, err := r.listMatch(r.cfg.MasqueradeExceptions, foldKey(quote822(local, true)))
		if err != nil || excluded {
			return addr, err
		}
	}
	d := foldKey(domain)
	for _, m := range r.cfg.MasqueradeDomains {
		truncate := true
		for strings.HasPrefix(m, "!") {
			m, truncate = m[1:], !truncate
		}
		m = foldKey(m)
		switch {
		case m == "":
			continue
		case m == d:
			return addr, nil
		case len(m) < len(d) && d[len(d)-len(m)-1] == '.' && strings.HasSuffix(d, m):
			if truncate {
				return local + "@" + m, nil
			}
			return addr, nil
		}
	}
	return addr, nil
}
