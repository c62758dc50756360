// Package address parses mail addresses as they appear in SMTP commands
// (RFC 5321 paths) and in header fields (RFC 5322 address lists), and
// computes the normalised key under which two spellings of one mailbox
// compare equal.
//
// It is the one place where the loop check decides that two addresses are
// the same mailbox, so it is deliberately lenient on input and exact on
// output:
//
//   - ParsePath is as lenient as Postfix's smtpd with
//     strict_rfc821_envelopes=no for every address shape a mail system
//     hands out (it splits the argument the way smtpd's command tokenizer
//     does and reads the address the way its RFC 822 parser does), and
//     names what is wrong when it refuses a path.
//   - ParseList never fails: a header field value that is not a valid
//     address list still yields every token that is a plausible addr-spec.
//   - Addr.Key is total and deterministic for any Addr, and idempotent for
//     every Addr the parsers return: the key parsed back and keyed again is
//     the same key.
//
// Every function is pure (no I/O, no global mutable state) and runs in time
// linear in its input, whatever the input holds: unterminated quotes,
// comments nested 100 000 deep, 100 000 commas. Memory beyond the result is
// a bounded scratch buffer per call.
package address

// Addr is an addr-spec as written: Local may be quoted ("a b"), Domain may be
// an address literal ([192.0.2.1]) and is empty when the address has none
// (a bare local part, or <Postmaster>).
//
// The parsers fill Local and Domain with the tokens as written, comments and
// folding whitespace removed; an unterminated quoted string or literal is
// closed so that String re-parses to the same address.
type Addr struct {
	Local  string
	Domain string
}

// String returns Local@Domain, or Local when Domain is empty.
func (a Addr) String() string {
	if a.Domain == "" {
		return a.Local
	}
	return a.Local + "@" + a.Domain
}

// Path is a parsed SMTP path with its parameters.
type Path struct {
	Addr          // the mailbox; zero for the null path <>
	Route  string // source route as written (@a,@b), without the colon; dropped from Addr
	Params string // ESMTP parameters after the path, as written, trimmed
	Null   bool   // the null reverse-path <>
}
