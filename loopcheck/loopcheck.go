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
// Guarantees: Check reads only the header section (up to header.SectionEnd),
// takes time linear in its length, allocates in proportion to the recipients
// and to the longest Delivered-To value, and never panics.
package loopcheck

import (
	"bytes"
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
}

// Recipient is an accepted envelope recipient prepared for the check.
type Recipient struct {
	// Mailbox is the recipient as the client spelled it, without brackets,
	// source route or ESMTP parameters; it is what a loop reply names.
	Mailbox string
	// keys are the normalised keys the recipient matches: one for a path
	// that parses, every plausible address for one that does not.
	keys []string
}

// NewRecipient prepares the argument of a RCPT TO: command (the text after
// the colon, parameters included). It never fails: the upstream has accepted
// the recipient, so a path our parser refuses must still be checked. Such a
// path is read as a lenient address list instead and matches every plausible
// address in it; its Mailbox is the argument without surrounding space.
func NewRecipient(rcptArg string) Recipient {
	if p, err := address.ParsePath(rcptArg); err == nil && !p.Null {
		return Recipient{Mailbox: p.Addr.String(), keys: []string{p.Addr.Key()}}
	}
	r := Recipient{Mailbox: strings.TrimSpace(rcptArg)}
	for _, a := range address.ParseList([]byte(rcptArg)) {
		r.keys = append(r.keys, a.Key())
	}
	return r
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
	if len(rcpts) == 0 {
		return Verdict{}
	}
	// first maps a key to the index of the first recipient holding it, so
	// the verdict names the first recipient in the client's order whatever
	// the order of the fields.
	first := make(map[string]int, len(rcpts))
	for i, r := range rcpts {
		for _, k := range r.keys {
			if _, ok := first[k]; !ok {
				first[k] = i
			}
		}
	}
	best := -1
	var value []byte
	var addrs []address.Addr
	for f := range header.Fields(msg[:header.SectionEnd(msg)]) {
		if !f.NameIs(FieldName) {
			continue
		}
		raw := f.Value()
		value = header.Unfold(value[:0], raw)
		addrs = address.AppendList(addrs[:0], value)
		// local(8) compares the first physical line of the value alone, so
		// read that line on its own too: what a continuation line adds
		// ("user@x" then " junk") must not hide an address it would match.
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			addrs = address.AppendList(addrs, raw[:i])
		}
		for _, a := range addrs {
			i, ok := first[a.Key()]
			if ok && (best < 0 || i < best) {
				best = i
				if best == 0 {
					return Verdict{Loop: true, Recipient: rcpts[0].Mailbox}
				}
			}
		}
	}
	if best < 0 {
		return Verdict{}
	}
	return Verdict{Loop: true, Recipient: rcpts[best].Mailbox}
}
