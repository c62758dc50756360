// Package header reads the header section of an Internet message
// (RFC 5322 section 2.2) the way Postfix's cleanup(8) and local(8) read it.
//
// CONTRACT STUB: the exported API below is fixed; the bodies are being written.
package header

import "iter"

// LineKind says what one line of a message is, seen from the header section.
type LineKind uint8

const (
	// Undecided: the bytes seen so far do not yet decide the line's kind.
	Undecided LineKind = iota
	// FieldStart: the line starts a header field (name, optional WSP, colon).
	FieldStart
	// Continuation: the line starts with SP or HTAB and follows a field line.
	Continuation
	// End: the line is not part of the header section (an empty line, or a
	// line that is neither a field nor a continuation); it and everything
	// after it is the body.
	End
)

// Classifier decides, line by line and byte by byte, where the header
// section of a streamed message ends. The zero value is at the start of a
// message. It holds O(1) state.
type Classifier struct{}

// Feed takes the next bytes of the current line (never containing the line
// end). It returns the line's kind as soon as it is decided, Undecided before.
// After a decided kind, further Feed calls for the same line return it again.
func (c *Classifier) Feed(p []byte) LineKind { panic("unimplemented") }

// EndLine ends the current line and returns its kind (never Undecided).
// After End, the classifier stays at End.
func (c *Classifier) EndLine() LineKind { panic("unimplemented") }

// SectionEnd returns the length of the header section of msg: the offset of
// the first byte of the line that ends it (the empty line or the first
// non-header line), or len(msg) when the whole of msg is header section.
// Lines end in LF, optionally preceded by CR.
func SectionEnd(msg []byte) int { panic("unimplemented") }

// Field is one header field of a section, pointing into the section's bytes.
type Field struct {
	Name []byte // the field name as written, without WSP before the colon
	Raw  []byte // the whole field: name, colon, value, continuation lines, line ends
}

// Value returns the field body as written: everything after the colon,
// folds (line ends followed by WSP) included, the final line end excluded.
func (f Field) Value() []byte { panic("unimplemented") }

// NameIs reports whether the field's name equals name, ASCII case-insensitively.
func (f Field) NameIs(name string) bool { panic("unimplemented") }

// Fields yields the fields of section (the bytes up to SectionEnd) in order.
func Fields(section []byte) iter.Seq[Field] { panic("unimplemented") }

// Unfold appends value to dst with every fold (CRLF or LF followed by WSP)
// replaced by the WSP alone (RFC 5322 2.2.3), and returns the extended slice.
func Unfold(dst, value []byte) []byte { panic("unimplemented") }
