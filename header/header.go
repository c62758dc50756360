// Package header reads the header section of an Internet message
// (RFC 5322 section 2.2) the way Postfix's cleanup(8) and local(8) read it.
//
// Input is raw message content, already dot-unstuffed. A line ends at LF; a
// CR immediately before that LF belongs to the line end, any other CR is a
// content byte ("X\r\r\n" is the line "X\r"). The header section is the run
// of lines from the start of the message up to, not including, the first
// line that ends it: an empty line, or a line that is neither a field line
// nor a continuation line. Without such a line the whole input is header
// section.
//
// # Which lines belong to the section
//
// Observed in the Postfix source (3.12; the same code since 2.x), described
// here in our words:
//
//   - A field line is a name of one or more printable US-ASCII bytes other
//     than ':' (0x21-0x7E), then optional SP/HTAB, then ':'. That is
//     is_header_buf() in src/global/is_header.c: a control byte, DEL, NUL,
//     an 8-bit byte or WSP inside the name, a leading WSP or a leading ':'
//     make the line a non-field line. So "From foo@bar Mon ..." (an mbox
//     From_ line) is not a field line, nor is "Sübject: x".
//   - A line that starts with SP or HTAB continues the section after a field
//     line (mime_state_update() in src/global/mime_state.c appends it to the
//     field being collected). As the first line of a message it ends the
//     section: mime_state has no field to append it to, and smtpd(8) even
//     writes an empty line in front of such content so that it is not taken
//     as a continuation of its own Received: field (the "ugly kluge" in
//     smtpd.c). So a leading WSP line gives an empty section.
//   - cleanup(8) replaces every stray CR in a content line by a space
//     before it classifies the line (cleanup_replace_stray_cr_lf: Postfix
//     3.9, 3.8.5, 3.7.10, 3.6.14, 3.5.24 and later, default yes, off with
//     receive_override_options=no_header_body_checks). So a CR counts as
//     WSP here: "Subject\r: x" is a field line, and a line that starts with
//     CR is a continuation line (local(8) reads past it either way).
//   - local(8), which makes the loop verdict we must anticipate
//     (delivered_hdr_init() in src/global/delivered_hdr.c), re-reads the
//     queued message and does not stop where cleanup stopped: it reads on
//     past every line that starts with a C isspace() byte (SP, HTAB, VT, FF,
//     CR) and takes every field line it meets until the first line that is
//     neither, or an empty line. A line "\vx" ends cleanup's header block,
//     yet a Delivered-To: field after it still makes local(8) bounce the
//     message as a loop, and the front smtpd passes such a line to us
//     unchanged. So a line that starts with VT, FF or CR continues the
//     section wherever it stands, also as the first line (local(8) reads it
//     after the Received: field the after-filter smtpd puts first).
//
// The section found here is therefore the union of what cleanup(8) and
// local(8) read as header: never shorter than either, so a loop check on it
// rejects at least what local(8) would bounce (SPEC section 5), and equal to
// cleanup's reading on every message that has no VT, FF or stray CR at the
// start of a line.
//
// One Postfix limit is deliberately not copied: smtpd(8) cuts lines into
// records of line_length_limit (default 2048) bytes and cleanup classifies
// only the first record, so a line whose name and WSP fill 2048 bytes is a
// non-field line to Postfix. The limit is a setting of the after-filter we
// cannot see; ending the section there could let a loop through on a Postfix
// with a larger limit. Here a name may be of any length.
//
// Field names compare ASCII case-insensitively. Field values are kept as
// written, 8-bit bytes included; Unfold removes the line ends of folds.
//
// Guarantees: every function takes time linear in its input and never
// panics. Classifier holds O(1) state whatever the line length, and decides
// a line as early as its bytes allow. SectionEnd and Fields do not allocate
// per line (Fields allocates its iterator once); the slices in a Field point
// into the caller's bytes and are capped, so appending to them never
// overwrites the section.
package header

import (
	"bytes"
	"iter"
)

// LineKind says what one line of a message is, seen from the header section.
type LineKind uint8

const (
	// Undecided: the bytes seen so far do not yet decide the line's kind.
	Undecided LineKind = iota
	// FieldStart: the line starts a header field (name, optional WSP, colon).
	FieldStart
	// Continuation: the line continues the header section without starting
	// a field: it starts with SP or HTAB after a field or continuation line,
	// or with VT, FF or CR anywhere (see the package comment for why).
	Continuation
	// End: the line is not part of the header section (an empty line, or a
	// line that is neither a field nor a continuation); it and everything
	// after it is the body.
	End
)

// String names the kind, for test failures and logs.
func (k LineKind) String() string {
	switch k {
	case Undecided:
		return "Undecided"
	case FieldStart:
		return "FieldStart"
	case Continuation:
		return "Continuation"
	case End:
		return "End"
	}
	return "LineKind(invalid)"
}

// lineState is how far into the current line a classification has got
// while the line is still undecided.
type lineState uint8

const (
	atStart     lineState = iota // no byte of the line seen yet
	inName                       // one or more name bytes seen
	inNameSpace                  // name bytes, then one or more WSP bytes
)

// isNameByte reports whether c may appear in a field name: printable
// US-ASCII other than ':' (is_header_buf accepts any byte that is ASCII, not
// a control, not SP/HTAB and not ':').
func isNameByte(c byte) bool {
	return c > ' ' && c < 0x7f && c != ':'
}

// isNameSpace reports whether c may stand between a name and its colon:
// SP and HTAB (RFC 5322 obsolete syntax, accepted by Postfix), and a stray
// CR, which cleanup(8) turns into a space before it looks.
func isNameSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r'
}

// continuesAnywhere reports whether a line starting with c continues the
// header section even as the first line: VT, FF and CR (local(8) reads past
// them; see the package comment).
func continuesAnywhere(c byte) bool {
	return c == '\v' || c == '\f' || c == '\r'
}

// continues reports whether a line starting with c continues the header
// section, given whether the section already holds a line.
func continues(c byte, inSection bool) bool {
	return continuesAnywhere(c) || inSection && (c == ' ' || c == '\t')
}

// step advances the classification of one line by the byte c. It returns
// the new state and the line's kind, Undecided while the bytes so far leave
// it open. Classifier and the slice functions share it, so the streamed and
// the whole-buffer readings cannot drift apart.
func step(s lineState, c byte, inSection bool) (lineState, LineKind) {
	switch s {
	case atStart:
		switch {
		case isNameByte(c):
			return inName, Undecided
		case continues(c, inSection):
			return s, Continuation
		}
		return s, End
	case inName:
		switch {
		case isNameByte(c):
			return inName, Undecided
		case c == ':':
			return s, FieldStart
		case isNameSpace(c):
			return inNameSpace, Undecided
		}
		return s, End
	default: // inNameSpace
		switch {
		case isNameSpace(c):
			return inNameSpace, Undecided
		case c == ':':
			return s, FieldStart
		}
		return s, End
	}
}

// scan advances the classification of one line over p. It returns the new
// state, the line's kind (Undecided when p does not decide it) and the index
// of the byte that decided it (len(p) when none did). The run of name bytes
// that makes up most of a field line, and all of a hostile long one, is
// skipped in a tight loop; every other byte goes through step.
func scan(s lineState, p []byte, inSection bool) (lineState, LineKind, int) {
	for i := 0; i < len(p); i++ {
		if s == inName {
			for i < len(p) && isNameByte(p[i]) {
				i++
			}
			if i == len(p) {
				break
			}
		}
		var k LineKind
		if s, k = step(s, p[i], inSection); k != Undecided {
			return s, k, i
		}
	}
	return s, Undecided, len(p)
}

// classifyLine decides the kind of one whole line (its content, without
// the line end) and, for a field line, the length of its name.
func classifyLine(line []byte, inSection bool) (kind LineKind, nameLen int) {
	_, k, i := scan(atStart, line, inSection)
	switch k {
	case Undecided:
		// The line ended undecided: empty, or a name with no colon after it.
		return End, 0
	case FieldStart:
		return k, nameLength(line[:i])
	}
	return k, 0
}

// nameLength is the length of the name in the part of a field line before
// its colon (the name followed by optional WSP).
func nameLength(beforeColon []byte) int {
	n := len(beforeColon)
	for n > 0 && isNameSpace(beforeColon[n-1]) {
		n--
	}
	return n
}

// nextLine splits msg at off into the content of the line starting there
// (without its line end) and the offset of the next line.
func nextLine(msg []byte, off int) (content []byte, next int) {
	i := bytes.IndexByte(msg[off:], '\n')
	if i < 0 {
		return msg[off:], len(msg)
	}
	content = msg[off : off+i]
	if len(content) > 0 && content[len(content)-1] == '\r' {
		content = content[:len(content)-1]
	}
	return content, off + i + 1
}

// Classifier decides, line by line and byte by byte, where the header
// section of a streamed message ends. The zero value is at the start of a
// message. It holds O(1) state.
//
// The caller splits lines: Feed never gets the line end, and a CR is part
// of a line only when no LF follows it, so a caller that has a CR as the
// last byte it holds must keep it back until it sees the next byte.
type Classifier struct {
	state     lineState // progress through the current, undecided line
	kind      LineKind  // the current line's kind once decided; End is sticky
	inSection bool      // a field or continuation line has been seen
}

// Feed takes the next bytes of the current line (never containing the line
// end). It returns the line's kind as soon as it is decided, Undecided before.
// After a decided kind, further Feed calls for the same line return it again.
func (c *Classifier) Feed(p []byte) LineKind {
	if c.kind != Undecided {
		return c.kind
	}
	var k LineKind
	c.state, k, _ = scan(c.state, p, c.inSection)
	c.kind = k
	return k
}

// EndLine ends the current line and returns its kind (never Undecided).
// After End, the classifier stays at End.
func (c *Classifier) EndLine() LineKind {
	k := c.kind
	if k == Undecided || k == End {
		// An undecided line at its end is empty or a name without colon.
		c.kind = End
		return End
	}
	c.state, c.kind, c.inSection = atStart, Undecided, true
	return k
}

// SectionEnd returns the length of the header section of msg: the offset of
// the first byte of the line that ends it (the empty line or the first
// non-header line), or len(msg) when the whole of msg is header section.
// Lines end in LF, optionally preceded by CR.
func SectionEnd(msg []byte) int {
	inSection := false
	for off := 0; off < len(msg); {
		line, next := nextLine(msg, off)
		if k, _ := classifyLine(line, inSection); k == End {
			return off
		}
		inSection, off = true, next
	}
	return len(msg)
}

// Field is one header field of a section, pointing into the section's bytes.
type Field struct {
	Name []byte // the field name as written, without WSP before the colon
	Raw  []byte // the whole field: name, colon, value, continuation lines, line ends
}

// Value returns the field body as written: everything after the colon,
// folds (line ends followed by WSP) included, the final line end excluded.
// The nameless field Fields yields for continuation lines at the start of a
// section has no value: Value returns nil for it.
func (f Field) Value() []byte {
	if len(f.Name) == 0 || len(f.Raw) < len(f.Name) {
		return nil
	}
	i := len(f.Name)
	for i < len(f.Raw) && isNameSpace(f.Raw[i]) {
		i++
	}
	if i == len(f.Raw) || f.Raw[i] != ':' {
		return nil // not a field Fields made
	}
	v := f.Raw[i+1:]
	if n := len(v); n > 0 && v[n-1] == '\n' {
		v = v[:n-1]
		if n := len(v); n > 0 && v[n-1] == '\r' {
			v = v[:n-1]
		}
	}
	return v[:len(v):len(v)]
}

// NameIs reports whether the field's name equals name, ASCII case-insensitively.
func (f Field) NameIs(name string) bool {
	if len(f.Name) != len(name) {
		return false
	}
	for i := range len(name) {
		if lowerASCII(f.Name[i]) != lowerASCII(name[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

// Fields yields the fields of section (the bytes up to SectionEnd) in order.
// Given more than the section, it stops at the section's end, so
// Fields(msg) yields what Fields(msg[:SectionEnd(msg)]) yields.
//
// Every line of the section belongs to exactly one field, so the Raw bytes
// of the fields, concatenated, are the section. Continuation lines at the
// very start (possible only with VT, FF or CR, see the package comment)
// have no field to belong to; they form a first field with an empty Name.
func Fields(section []byte) iter.Seq[Field] {
	return func(yield func(Field) bool) {
		start, nameLen := -1, 0 // the field being collected, if start >= 0
		emit := func(end int) bool {
			return yield(Field{
				Name: section[start : start+nameLen : start+nameLen],
				Raw:  section[start:end:end],
			})
		}
		off := 0
		for inSection := false; off < len(section); inSection = true {
			line, next := nextLine(section, off)
			k, n := classifyLine(line, inSection)
			if k == End {
				break
			}
			if k == FieldStart {
				if start >= 0 && !emit(off) {
					return
				}
				start, nameLen = off, n
			} else if start < 0 { // a continuation with no field before it
				start, nameLen = off, 0
			}
			off = next
		}
		if start >= 0 {
			emit(off)
		}
	}
}

// startsContinuation reports whether rest, the bytes after a line end,
// begin a line that continues a field. A CR counts only as content, not
// when it is the start of the next CRLF line end (then the line is empty).
func startsContinuation(rest []byte) bool {
	if len(rest) == 0 {
		return false
	}
	if rest[0] == '\r' {
		return len(rest) == 1 || rest[1] != '\n'
	}
	return continues(rest[0], true)
}

// Unfold appends value to dst with every fold (CRLF or LF followed by WSP)
// replaced by the WSP alone (RFC 5322 2.2.3), and returns the extended slice.
//
// Besides RFC 5322's WSP (SP, HTAB), a line end followed by VT, FF or CR is
// a fold too: those lines continue a field here (see the package comment),
// so the unfolded value of any field Fields yields holds no LF.
func Unfold(dst, value []byte) []byte {
	start := 0 // value[start:] is not yet copied
	for i := 0; i < len(value); {
		j := bytes.IndexByte(value[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		if startsContinuation(value[j+1:]) {
			end := j
			if end > start && value[end-1] == '\r' {
				end--
			}
			dst = append(dst, value[start:end]...)
			start = j + 1
		}
		i = j + 1
	}
	return append(dst, value[start:]...)
}
