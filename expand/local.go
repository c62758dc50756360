package expand

import (
	"errors"
	"io/fs"
	"strings"
)

// This file follows one recipient from cleanup(8) to its delivery, and
// through local(8)'s aliases(5) levels: cleanup/cleanup_addr.c
// cleanup_addr_recipient, cleanup/cleanup_out_recipient.c, qmgr's resolve,
// local/recipient.c deliver_recipient and deliver_switch, local/alias.c
// deliver_alias, local/token.c deliver_token, local/include.c
// deliver_include, local/resolve.c deliver_resolve_tree.

// submit follows a recipient as cleanup(8) receives it, in internal form
// and already rewritten in the local context: the recipient of the SMTP
// transaction (hops 0), or one local(8) forwards as a new message
// (deliver_indirect, local/forward.c; hops counts those forwardings).
// Canonical maps, then masquerading, then virtual aliases, then each
// resulting queue recipient is delivered.
func (r *run) submit(addr string, hops int) error {
	if hops >= r.cfg.HopcountLimit {
		// Each forwarding adds a Received: header; cleanup refuses the
		// message past hopcount_limit (5.4.0 "too many hops"), so nothing
		// is delivered further down.
		return nil
	}
	if h, ok := r.submitted[addr]; ok && h <= hops {
		return nil
	}
	r.submitted[addr] = hops
	c := r.cfg
	var err error
	if c.RecipientCanonicalEnvelope && len(c.RecipientCanonicalMaps) > 0 {
		if addr, err = r.map11(c.RecipientCanonicalMaps, addr, c.PropagateCanonical); err != nil {
			return err
		}
	}
	if c.CanonicalEnvelope && len(c.CanonicalMaps) > 0 {
		if addr, err = r.map11(c.CanonicalMaps, addr, c.PropagateCanonical); err != nil {
			return err
		}
	}
	if c.masquerades() {
		if addr, err = r.masquerade(addr); err != nil {
			return err
		}
	}
	rcpts := []string{addr}
	if len(c.VirtualAliasMaps) > 0 {
		if rcpts, err = r.map1n(c.VirtualAliasMaps, addr, c.PropagateVirtual); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for _, rcpt := range rcpts {
		if k := foldKey(rcpt); !seen[k] {
			seen[k] = true
			if err := r.deliver(rcpt, hops); err != nil {
				return err
			}
		}
	}
	return nil
}

// deliver hands a queue recipient to its transport, as qmgr(8) does after
// resolving it (qmgr_message_resolve updates the recipient to the
// resolver's form). local(8) goes on with aliases(5).
func (r *run) deliver(rcpt string, hops int) error {
	res, err := r.resolve(rcpt)
	if err != nil {
		return err
	}
	svc, known := r.cfg.Services[res.transport]
	checks := known && svc.ChecksLoops()
	transport := res.transport
	if res.unknown {
		// The transport depends on the sender: judge the address as one
		// that may be compared (a loop Postfix would bounce must never
		// pass).
		checks, transport = true, ""
	}
	if err := r.addTarget(res.rcpt, transport, checks); err != nil {
		return err
	}
	if known && svc.Command == "local" {
		return r.deliverRecipient(localState{relay: res.transport, hops: hops}, res.rcpt)
	}
	return nil
}

// localState is what local(8) carries down its recursion (LOCAL_STATE and
// its msg_attr).
type localState struct {
	level     int    // recursion level (state.level)
	relay     string // the transport this local(8) delivers for (msg_attr.relay)
	hops      int    // forwardings before this delivery
	expFrom   string // the alias being expanded (msg_attr.exp_from)
	owner     bool   // an owner- alias or an :include: file set the owner: targets are forwarded
	include   bool   // expanding an :include: file (EXPAND_TYPE_INCL)
	unmatched string // the extension to splice into alias targets, when splice
	splice    bool   // msg_attr.unmatched is set ("user+" splices an empty extension)
	delim     string // the delimiter that preceded the extension in the recipient
}

// key identifies what the expansion of a local recipient depends on.
func (st localState) key(addr string) string {
	k := addr + "\x00" + st.relay
	if st.owner {
		k += "\x00owner"
	}
	if st.include {
		k += "\x00include"
	}
	if st.expFrom != "" {
		k += "\x00from=" + st.expFrom
	}
	return k
}

// deliverRecipient is deliver_recipient(): the nesting limit, then the
// Delivered-To: check (the address is a target that checks loops), then
// deliver_switch.
func (r *run) deliverRecipient(st localState, addr string) error {
	st.level++
	if st.level > localNestingLimit {
		return nil // bounced: "recipient nesting limit exceeded", no check
	}
	if l, ok := r.local[st.key(addr)]; ok && l <= st.level {
		return nil // duplicate filter: this address was followed already
	}
	r.local[st.key(addr)] = st.level
	if err := r.addTarget(addr, st.relay, true); err != nil {
		return err
	}
	folded := foldKey(addr)
	local, _ := splitAt(folded)
	user, ext, hasExt := r.cfg.splitExtension(local)
	if hasExt && strings.Contains(ext, "/") {
		// "address with illegal extension": the extension is dropped.
		local, hasExt = user, false
	}
	if user == "" {
		return nil // bounced: null username
	}
	st.delim = ""
	if hasExt {
		st.delim = local[len(user) : len(user)+1]
	}
	return r.deliverSwitch(st, addr, local, user, ext, hasExt)
}

// deliverSwitch is deliver_switch(): aliases(5) first under the full local
// part, then under the local part without its extension; then mail for an
// alias with an owner, or from an :include: file, is forwarded (it goes
// through cleanup again); else .forward and the mailbox, which this
// package cannot follow (home directories are out of its reach).
func (r *run) deliverSwitch(st localState, addr, local, user, ext string, hasExt bool) error {
	st.level++
	if strings.HasPrefix(addr, `\`) {
		return nil // \user: mailbox delivery, no aliases
	}
	st.unmatched, st.splice = "", false
	if found, err := r.deliverAlias(st, local); found || err != nil {
		return err
	}
	if hasExt {
		if r.cfg.PropagateAlias {
			st.unmatched, st.splice = ext, true
		}
		if found, err := r.deliverAlias(st, user); found || err != nil {
			return err
		}
	}
	if st.owner || st.include {
		return r.submit(addr, st.hops+1)
	}
	return nil
}

// deliverAlias is deliver_alias(): the alias tables are asked in order
// for name (the folded local part; get_alias asks in external form, then
// in internal form when it differs); the first that has it gives the
// targets. An alias whose value names itself is not expanded again at
// the next level (exp_from). An owner-name alias makes local(8) forward
// the targets.
func (r *run) deliverAlias(st localState, name string) (bool, error) {
	st.level++
	if st.expFrom != "" && foldKey(st.expFrom) == foldKey(name) {
		return false, nil
	}
	if st.level > localNestingLimit {
		return true, nil // bounced: "alias database loop"
	}
	st.expFrom = name
	for _, table := range r.cfg.AliasMaps {
		key := quote822(name, true)
		value, found, err := r.lookup(table, key)
		if err == nil && !found && key != name {
			value, found, err = r.lookup(table, name)
		}
		if err != nil {
			return true, err
		}
		if !found {
			continue
		}
		st.include = false
		if r.cfg.OwnerRequestSpecial {
			_, owner, err := r.mapsFind(r.cfg.AliasMaps, "owner-"+name, false)
			if err != nil {
				return true, err
			}
			st.owner = st.owner || owner
		}
		for _, tok := range aliasTokens(value) {
			if err := r.deliverToken(st, tok); err != nil {
				return true, err
			}
		}
		return true, nil
	}
	return false, nil
}

// aliasToken is one element of an aliases(5) value or :include: line:
// one address node of tok822_parse.
type aliasToken struct {
	text string // internal form (tok822_internalize)
	toks []tok  // the address's tokens, when it is an address
}

// aliasTokens splits an alias value into its elements as
// deliver_token_string does (local/token.c): every address node of
// tok822_parse, in order. An element whose internal form begins with '/',
// '~', '|' or ":include:" is a file, command or include, written quoted
// or not; any other is an address. tok822_parse adds the commas a value
// lacks, so "user loopuser" is two addresses, and "|cmd arg" the command
// "cmd" and the address "arg".
func aliasTokens(value string) []aliasToken {
	var out []aliasToken
	for _, toks := range tok822Parse(value) {
		text := tokText(toks)
		if strings.ContainsAny(text[:min(len(text), 1)], "/~|") || len(text) >= 9 && strings.EqualFold(text[:9], ":include:") {
			out = append(out, aliasToken{text: text})
			continue
		}
		out = append(out, aliasToken{text: text, toks: toks})
	}
	return out
}

// deliverToken is deliver_token(): files and commands are deliveries
// without an address; :include: reads a file of targets; an address is
// resolved.
func (r *run) deliverToken(st localState, tok aliasToken) error {
	if tok.toks != nil {
		return r.deliverResolveTree(st, tok.toks)
	}
	if path, ok := cutPrefixFold(tok.text, ":include:"); ok {
		return r.deliverInclude(st, path)
	}
	return nil // /file, ~/file or |command: no address to compare
}

// deliverInclude is deliver_include(): the file's lines (but comment
// lines) are alias values. Its targets are forwarded, and keep the
// unmatched extension only with "include" in
// propagate_unmatched_extensions. A file that does not exist, is not a
// regular file or is world-writable makes local(8) bounce the recipient
// (nothing in it is compared); one that exists but cannot be read here,
// or not before the expansion ends, makes the expansion incomplete.
func (r *run) deliverInclude(st localState, path string) error {
	st.level++
	if st.level > localNestingLimit || !strings.HasPrefix(path, "/") {
		return nil // bounced: nesting limit, or a relative path
	}
	b, err := r.read(r.ctx, path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errIncludeRefused) {
		return nil
	}
	if err != nil {
		cause := CauseLookup
		if r.ctx.Err() != nil {
			cause = causeOf(r.ctx.Err())
		}
		return &LookupError{Backend: "file", Table: path, Cause: cause, Err: err}
	}
	st.include, st.owner = true, true
	if !r.cfg.PropagateInclude {
		st.unmatched, st.splice = "", false
	}
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, tok := range aliasTokens(line) {
			if err := r.deliverToken(st, tok); err != nil {
				return err
			}
		}
	}
	return nil
}

// deliverResolveTree is deliver_resolve_tree(): the target is rewritten
// in the local context and resolved, gets the unmatched extension back,
// and is delivered by this local(8) when it resolves to the same
// transport (deliver_recipient: compared at the next level), else
// forwarded as a new message (deliver_indirect).
func (r *run) deliverResolveTree(st localState, toks []tok) error {
	st.level++
	res, err := r.resolve(r.cfg.rewriteTokens(toks))
	if err != nil {
		return err
	}
	rcpt := res.rcpt
	if st.splice {
		if local, domain := splitAt(rcpt); hasAt(rcpt) {
			rcpt = local + st.delim + st.unmatched + "@" + domain
		} else {
			rcpt += st.delim + st.unmatched
		}
	}
	if res.transport == st.relay {
		return r.deliverRecipient(st, rcpt)
	}
	return r.submit(rcpt, st.hops+1)
}
