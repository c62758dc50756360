// Package loopcheck decides whether a message is a mail-forwarding loop for
// its accepted envelope recipients (SPEC section 5). It is the one verdict
// that every front-end shares: the proxy at end-of-DATA, the offline `check`
// command, and a later milter.
//
// A message is a loop when some Delivered-To: field of its header section
// holds an address whose normalised key (address.Addr.Key) equals the key of
// an accepted recipient. Every Delivered-To: field counts, in any position;
// every address of a field counts; field values are unfolded and read as
// lenient address lists; the first physical line of a folded value is also
// read on its own, as local(8) reads it. The result is a superset of what Postfix's local(8)
// bounces as "mail forwarding loop" for the same envelope recipient: local(8)
// compares the first physical line of the value exactly, after case folding,
// so everything it matches has the same key here.
//
// A recipient may also carry its expansion (Recipient.WithExpansion): the
// addresses Postfix will compare with Delivered-To: after cleanup(8) has
// rewritten it (canonical and virtual alias maps) and local(8) has expanded
// its aliases. Package loopcheck does no lookups itself; a front-end gets
// the expansion from package expand and hands it over. A loop found through
// the expansion names the recipient as the client spelled it and, in
// Verdict.Via, the expanded address that matched. With the addresses
// Postfix delivers the recipient to (Recipient.WithDeliveries), Loops
// also says whether every one of them loops (Match.Whole): what a
// front-end must know before it removes the recipient from a message.
//
// An expansion given as Postfix's own judgement (-loops=postfix) is
// compared as local(8) and pipe(8) flag D compare, not leniently
// (global/delivered_hdr.c): a field counts by the first physical line of
// its value, leading white space skipped, case-folded, with no address
// parsing, and it equals an address only when that line is exactly the
// address in Postfix's external form (quote_822_local), case-folded; only
// the first 1000 fields count. So <user@x>, "user"@x,
// user@x. and a list naming user@x never match user@x there, exactly as
// Postfix delivers such a message.
//
// Guarantees: Check reads only the header section (up to header.SectionEnd),
// takes time linear in its length, allocates in proportion to the recipients
// (with their expansions) and to the longest Delivered-To value, and never
// panics.
package loopcheck

import (
	"bytes"
	"slices"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
)

// FieldName is the header field that records a delivery (RFC 9228), written
// by Postfix's local(8) and pipe(8) and by most other delivery agents.
const FieldName = "Delivered-To"

// Verdict is the result of Check.
type Verdict struct {
	Loop bool
	// Recipient is the first accepted recipient (in the order given) that
	// matched, as the client spelled it: the mailbox only, without brackets,
	// route or parameters.
	Recipient string
	// Via is the address of the recipient's expansion that matched, when
	// the recipient did not match as spelled; empty otherwise.
	Via string
}

// Match is one looping recipient, from Loops.
type Match struct {
	// Index is the recipient's position in the list given to Loops.
	Index int
	// Via is as in Verdict.
	Via string
	// Whole says that every address Postfix delivers the recipient to
	// (Recipient.WithDeliveries) matched a Delivered-To: field, compared
	// as the recipient's own keys are (exactly under -loops=postfix): the
	// recipient loops in all it stands for. False when those addresses
	// are not known.
	Whole bool
}

// Recipient is an accepted envelope recipient prepared for the check.
type Recipient struct {
	// Mailbox is the recipient as the client spelled it, without brackets,
	// source route or ESMTP parameters; it is what a loop reply names.
	Mailbox string
	// keys are the normalised keys the recipient matches: one for a path
	// that parses, every plausible address for one that does not, then
	// those of its expansion.
	keys []matchKey
	// postfix: the keys are compared as Postfix compares (WithExpansion's
	// postfix), and so are the deliveries.
	postfix bool
	// deliveries are every address Postfix delivers the recipient to
	// (WithDeliveries), keyed when judged as the keys are; nil when they
	// are not known.
	deliveries []address.Addr
}

// matchKey is one key of a recipient; via is the expanded address it came
// from, empty for the recipient as spelled. exact: key is a postfixKey,
// compared with the fields' postfix keys; otherwise it is a normalised key
// (address.Addr.Key), compared with every address the fields hold.
type matchKey struct {
	key, via string
	exact    bool
}

// NewRecipient prepares the argument of a RCPT TO: command (the text after
// the colon, parameters included). It never fails: the upstream has accepted
// the recipient, so a path our parser refuses must still be checked. Such a
// path is read as a lenient address list instead and matches every plausible
// address in it; its Mailbox is the argument without surrounding space.
func NewRecipient(rcptArg string) Recipient {
	if p, err := address.ParsePath(rcptArg); err == nil && !p.Null {
		return Recipient{Mailbox: p.Addr.String(), keys: []matchKey{{key: p.Addr.Key()}}}
	}
	r := Recipient{Mailbox: strings.TrimSpace(rcptArg)}
	for _, a := range address.ParseList([]byte(rcptArg)) {
		r.keys = append(r.keys, matchKey{key: a.Key()})
	}
	return r
}

// WithExpansion returns r judged by the addresses of its expansion as well:
// the addresses Postfix will compare with Delivered-To: for it, each
// compared with normalisation like the recipient as spelled. An address
// that has the key of one r already holds adds nothing.
//
// With postfix, r is judged by addrs alone and no longer as spelled (a
// recipient whose expansion is empty then never loops), each address
// compared exactly as Postfix's local(8) and pipe(8) flag D compare it
// (see the package comment): that is how a front-end judges only what
// Postfix itself would bounce. r itself is not changed.
func (r Recipient) WithExpansion(addrs []address.Addr, postfix bool) Recipient {
	out := Recipient{Mailbox: r.Mailbox, postfix: postfix, deliveries: r.deliveries}
	if !postfix {
		out.keys = append(out.keys, r.keys...)
	}
	has := func(keys []matchKey, k string, exact bool) bool {
		return slices.ContainsFunc(keys, func(m matchKey) bool { return m.key == k && m.exact == exact })
	}
	for _, a := range addrs {
		lenient := a.Key()
		k := lenient
		if postfix {
			k = postfixRcptKey(a)
		}
		switch {
		case has(out.keys, k, postfix):
		case has(r.keys, lenient, false):
			// The recipient as spelled is among its expansion: a match
			// there is no detour.
			out.keys = append(out.keys, matchKey{key: k, exact: postfix})
		default:
			out.keys = append(out.keys, matchKey{key: k, via: a.String(), exact: postfix})
		}
	}
	return out
}

// WithDeliveries returns r with every address Postfix delivers it to:
// all the addresses of its complete expansion, whatever transport
// delivers them, each of which the verdict judges r by. Loops then says
// whether each of them matched (Match.Whole), compared as r's own keys
// are: exactly, when r was given its expansion as Postfix's judgement
// (WithExpansion's postfix). This is for a front-end that can remove a
// recipient from a message: Postfix removes the recipient with all it
// expanded to, so removing it loses nothing only when every one of those
// addresses loops. An empty list leaves them unknown. r itself is not
// changed.
func (r Recipient) WithDeliveries(addrs []address.Addr) Recipient {
	out := r
	out.deliveries = nil
	if len(addrs) > 0 {
		out.deliveries = slices.Clone(addrs)
	}
	return out
}

// HasDeliveries reports whether r carries the addresses Postfix delivers
// it to (WithDeliveries).
func (r Recipient) HasDeliveries() bool { return r.deliveries != nil }

// Postfix's bounds on what local(8) reads of Delivered-To: fields.
const (
	// postfixFieldLimit is DELIVERED_HDR_LIMIT (global/delivered_hdr.c):
	// delivered_hdr_init stops reading the header once its table holds
	// this many fields (htable_enter counts a repeated key again); a
	// field after them is never compared.
	postfixFieldLimit = 1000
	// postfixLineLimit is line_length_limit's default: cleanup(8) stores
	// a header line in records of at most this many bytes
	// (cleanup/cleanup_out.c cleanup_out), and delivered_hdr_init keys a
	// field on its first record only.
	postfixLineLimit = 2048
)

// postfixRcptKey is delivered_hdr_find's key of a recipient: its internal
// form written in external form (quote_822_local: the local part quoted
// unless it is a dot-atom), case-folded (fold_addr).
func postfixRcptKey(a address.Addr) string {
	return address.FoldPostfix(address.FromText(a.LocalText(), a.Domain).String())
}

// postfixFieldKey is delivered_hdr_init's key of a Delivered-To: field
// whose value (Field.Value) is raw, as local(8) reads it from the queue
// file: the first physical line of the value, cut where cleanup(8) ends its
// first record, with every CR turned into a space (cleanup's
// cleanup_replace_stray_cr_lf, Postfix 3.7.10 and later; CR and white
// space differ from every address character either way), read up to a NUL
// (a C string), leading white space (isspace) skipped, case-folded. The
// field name before it is as long as FieldName whatever its case, and
// cleanup has removed white space before the colon.
func postfixFieldKey(raw []byte) string {
	line := raw
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = bytes.TrimSuffix(line[:i], []byte("\r"))
	}
	if n := postfixLineLimit - len(FieldName) - 1; len(line) > n {
		line = line[:n]
	}
	if i := bytes.IndexByte(line, 0); i >= 0 {
		line = line[:i]
	}
	for len(line) > 0 && isCSpace(line[0]) {
		line = line[1:]
	}
	return address.FoldPostfix(strings.ReplaceAll(string(line), "\r", " "))
}

// isCSpace is C's isspace in the C locale.
func isCSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// Check judges a message against the accepted recipients, each given as the
// client sent its RCPT TO: argument (the text after the colon, parameters
// included). msg is the message (dot-unstuffed, CRLF or LF line ends) or any
// prefix of it that holds its whole header section; bytes past the header
// section are never read.
func Check(rcptArgs []string, msg []byte) Verdict {
	rcpts := make([]Recipient, len(rcptArgs))
	for i, arg := range rcptArgs {
		rcpts[i] = NewRecipient(arg)
	}
	return CheckRecipients(rcpts, msg)
}

// CheckRecipients is Check with recipients already prepared by NewRecipient,
// for callers that keep them across messages or add them one at a time.
func CheckRecipients(rcpts []Recipient, msg []byte) Verdict {
	m := scan(rcpts, msg, false)
	if len(m) == 0 {
		return Verdict{}
	}
	return Verdict{Loop: true, Recipient: rcpts[m[0].Index].Mailbox, Via: m[0].Via}
}

// Loops returns every looping recipient, in the order given: for a
// front-end that can refuse recipients one by one.
func Loops(rcpts []Recipient, msg []byte) []Match {
	return scan(rcpts, msg, true)
}

// scan finds the looping recipients: with all, every one in the order
// given; without, the first in that order only.
func scan(rcpts []Recipient, msg []byte, all bool) []Match {
	if len(rcpts) == 0 {
		return nil
	}
	// refs maps a key to the recipients holding it, in the order given, so
	// the result follows the client's order whatever the order of the
	// fields.
	type ref struct {
		index int
		via   string
	}
	refs := make(map[string][]ref, len(rcpts))  // normalised keys
	exact := make(map[string][]ref, len(rcpts)) // postfix keys
	for i, r := range rcpts {
		for _, k := range r.keys {
			if k.exact {
				exact[k.key] = append(exact[k.key], ref{i, k.via})
			} else {
				refs[k.key] = append(refs[k.key], ref{i, k.via})
			}
		}
	}
	// With all, delivered[i][p] says whether the p-th delivery of
	// recipient i matched (for Match.Whole); drefs and dexact map a key
	// to the deliveries that have it, normalised or exact.
	type dpos struct{ index, pos int }
	var drefs, dexact map[string][]dpos
	var delivered [][]bool
	if all {
		for i, r := range rcpts {
			if len(r.deliveries) == 0 {
				continue
			}
			if delivered == nil {
				drefs, dexact = make(map[string][]dpos), make(map[string][]dpos)
				delivered = make([][]bool, len(rcpts))
			}
			delivered[i] = make([]bool, len(r.deliveries))
			for p, a := range r.deliveries {
				if r.postfix {
					k := postfixRcptKey(a)
					dexact[k] = append(dexact[k], dpos{i, p})
				} else {
					k := a.Key()
					drefs[k] = append(drefs[k], dpos{i, p})
				}
			}
		}
	}
	deliver := func(ds []dpos) {
		for _, d := range ds {
			delivered[d.index][d.pos] = true
		}
	}
	// found[i] is the key through which recipient i loops; ok[i] whether
	// it does. best is the first looping recipient.
	found := make([]string, len(rcpts))
	ok := make([]bool, len(rcpts))
	best := -1
	match := func(rs []ref) {
		for _, r := range rs {
			if ok[r.index] && (found[r.index] == "" || r.via != "") {
				continue // a match as spelled beats one through the expansion
			}
			ok[r.index], found[r.index] = true, r.via
			if best < 0 || r.index < best {
				best = r.index
			}
		}
	}
	filed := 0 // the fields local(8) has filed (delivered_hdr_init)
	var value []byte
	var addrs []address.Addr
	for f := range header.Fields(msg[:header.SectionEnd(msg)]) {
		if !f.NameIs(FieldName) {
			continue
		}
		raw := f.Value()
		if len(refs) > 0 || len(drefs) > 0 {
			value = header.Unfold(value[:0], raw)
			addrs = address.AppendList(addrs[:0], value)
			// local(8) compares the first physical line of the value
			// alone, up to where cleanup(8) ends its first record, so
			// read that line, and that cut, on its own too: what a
			// continuation line adds ("user@x" then " junk"), or what
			// follows the cut, must not hide an address it would match.
			line := raw
			if i := bytes.IndexByte(raw, '\n'); i >= 0 {
				line = raw[:i]
				addrs = address.AppendList(addrs, line)
			}
			if n := postfixLineLimit - len(FieldName) - 1; len(line) > n {
				addrs = address.AppendList(addrs, line[:n])
			}
			for _, a := range addrs {
				k := a.Key()
				match(refs[k])
				deliver(drefs[k])
			}
		}
		if (len(exact) > 0 || len(dexact) > 0) && filed < postfixFieldLimit {
			filed++
			k := postfixFieldKey(raw)
			match(exact[k])
			deliver(dexact[k])
		}
		if !all && best == 0 && found[0] == "" {
			break // nothing can come before it
		}
	}
	if best < 0 {
		return nil
	}
	if !all {
		return []Match{{Index: best, Via: found[best]}}
	}
	var m []Match
	for i := range rcpts {
		if ok[i] {
			whole := delivered != nil && delivered[i] != nil && !slices.Contains(delivered[i], false)
			m = append(m, Match{Index: i, Via: found[i], Whole: whole})
		}
	}
	return m
}
