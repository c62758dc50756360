// Package address parses mail addresses as they appear in SMTP commands
// (RFC 5321 paths) and in header fields (RFC 5322 address lists), and
// computes the normalised key under which two spellings of one mailbox
// compare equal.
//
// CONTRACT STUB: the exported API below is fixed; the bodies are being written.
package address

// Addr is an addr-spec as written: Local may be quoted ("a b"), Domain may be
// an address literal ([192.0.2.1]) and is empty when the address has none
// (a bare local part, or <Postmaster>).
type Addr struct {
	Local  string
	Domain string
}

// String returns Local@Domain, or Local when Domain is empty.
func (a Addr) String() string { panic("unimplemented") }

// Key returns the normalised comparison key: equal keys mean the same
// mailbox for the loop check (SPEC section 5).
func (a Addr) Key() string { panic("unimplemented") }

// Path is a parsed SMTP path with its parameters.
type Path struct {
	Addr          // the mailbox; zero for the null path <>
	Route  string // source route as written (@a,@b), without the colon; dropped from Addr
	Params string // ESMTP parameters after the path, as written, trimmed
	Null   bool   // the null reverse-path <>
}

// ParsePath parses the argument of MAIL FROM: or RCPT TO: (the text after
// the colon, leading spaces allowed). The error says what is wrong.
func ParsePath(arg string) (Path, error) { panic("unimplemented") }

// ParseList returns every address of a header field value (unfolded or not),
// leniently: see SPEC section 5. It never fails; a value with no plausible
// address yields none.
func ParseList(value []byte) []Addr { panic("unimplemented") }

// AppendList is ParseList appending to dst, for callers that reuse a slice.
func AppendList(dst []Addr, value []byte) []Addr { panic("unimplemented") }
