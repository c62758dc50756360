package core

// The DATA framer, in two halves.
//
// The decoder reads the client's message data the way RFC 5321 4.5.2 does,
// with one extension that Postfix also makes (smtpd_forbid_bare_newline =
// normalize): a bare LF ends a content line too. It never ends the data:
// the end of data is CRLF "." CRLF only. Precisely:
//
//   - A line ends at LF. When a CR stands directly before the LF, the pair is
//     the line end (CRLF); otherwise the LF alone is (a bare LF). Any other
//     CR is a content byte: "X\r\r\n" is the content line "X\r".
//   - Only a line that follows a CRLF (or opens the data) is read for the
//     dot: "." CRLF there is the end of data; any other leading dot is
//     removed (dot-unstuffing). ".\rX" is the content "\rX".
//   - The one exception, from SPEC section 4: a line that is exactly "."
//     ended by a bare LF is the content line ".", so that a client's
//     "\n.\n" or "\r\n.\n" can never be taken for an end of data by anyone.
//   - A line that follows a bare LF is content as written, leading dot
//     included: in RFC 5321's reading it is not a line start at all.
//
// The decoder carries O(1) state across chunks, so a content line of any
// length streams through in pieces and is never held whole.
//
// The encoder writes content lines to the upstream canonically: every line
// ends in CRLF and every line that begins with "." gets one more, so the
// only end of data the upstream can see is the one the proxy writes.

import "bytes"

// tokKind is what the decoder found.
type tokKind uint8

const (
	tokNone    tokKind = iota // nothing yet; all input consumed
	tokContent                // content bytes of the current line
	tokLineEnd                // the current content line ended
	tokEnd                    // end of data (CRLF "." CRLF)
)

type token struct {
	kind    tokKind
	content []byte // tokContent: the bytes; valid until the input changes
	bareLF  bool   // tokLineEnd: the line ended in LF without CR
}

type decState uint8

const (
	decBOL   decState = iota // start of a line that follows CRLF: dot-sensitive
	decDot                   // a dot at decBOL, undecided
	decDotCR                 // ".\r" at decBOL, undecided
	decMid                   // inside a line (or at the start of a line after a bare LF)
	decCR                    // a CR inside a line, undecided
	decDone                  // after the end of data
)

var (
	contentDot = []byte{'.'}
	contentCR  = []byte{'\r'}
)

// decoder reads client message data; the zero value is at the start of
// the data, right after the DATA command's line end.
type decoder struct {
	st decState
}

// done reports whether the end of data has been read.
func (d *decoder) done() bool { return d.st == decDone }

// endOfData is the end of data as the decoder reads it at a line start
// that follows a CRLF, and as the encoder writes it between lines.
var endOfData = []byte(".\r\n")

// finish records that the caller found the end of data (endOfData at a
// line start) itself.
func (d *decoder) finish() { d.st = decDone }

// next reads from p until it has a token. It returns the token and the
// number of bytes of p consumed; a tokContent may report bytes held over
// from an earlier call (a CR or dot) and then consume nothing. After
// tokEnd it consumes nothing more.
func (d *decoder) next(p []byte) (tok token, n int) {
	for n < len(p) {
		c := p[n]
		switch d.st {
		case decBOL:
			if c == '.' {
				d.st = decDot
				n++
				continue
			}
			d.st = decMid
		case decDot:
			switch c {
			case '\r':
				d.st = decDotCR
				n++
				continue
			case '\n':
				// "." ended by a bare LF: the content line ".".
				d.st = decMid
				return token{kind: tokContent, content: contentDot}, n
			}
			d.st = decMid // the dot was stuffing: dropped
		case decDotCR:
			if c == '\n' {
				d.st = decDone
				return token{kind: tokEnd}, n + 1
			}
			d.st = decMid // ".\rX": the dot was stuffing, the CR is content
			return token{kind: tokContent, content: contentCR}, n
		case decCR:
			if c == '\n' {
				d.st = decBOL
				return token{kind: tokLineEnd}, n + 1
			}
			d.st = decMid
			return token{kind: tokContent, content: contentCR}, n
		case decMid:
			// Only the LF and a CR right before it end a line; any other
			// CR is content. So the search is for LF alone (IndexByte is
			// vectorised; a search for either byte is not).
			q := p[n:]
			i := bytes.IndexByte(q, '\n')
			switch {
			case i < 0:
				k := len(q)
				if q[k-1] == '\r' {
					k-- // may be the CR of a CRLF: held until the next byte
				}
				if k > 0 {
					return token{kind: tokContent, content: q[:k]}, n + k
				}
				d.st = decCR
				n++
			case i == 0:
				// Bare LF: the next line is read as written.
				return token{kind: tokLineEnd, bareLF: true}, n + 1
			case q[i-1] != '\r':
				return token{kind: tokContent, content: q[:i]}, n + i
			case i > 1:
				return token{kind: tokContent, content: q[:i-1]}, n + i - 1
			default: // CRLF
				d.st = decBOL
				return token{kind: tokLineEnd}, n + 2
			}
		case decDone:
			return token{}, n
		}
	}
	return token{}, n
}

// atLineStart reports whether the decoder is at the start of a line that
// follows a CRLF (or opens the data).
func (d *decoder) atLineStart() bool { return d.st == decBOL }

// verbatimLines returns the length of the longest prefix of p made of whole
// lines that the decoder passes on unchanged: each ends in CRLF and none
// begins with "." (such a line is unstuffed, and may be the end of data:
// the token path reads it). Any other byte, a bare CR included, is content
// that goes upstream as it came. Valid only at the start of a line
// (atLineStart); the decoder stays there after the prefix.
//
// This scan reads every byte of canonical message data, so it is the
// proxy's own cost per megabyte: on amd64 it compares 32 or 16 bytes at
// once (lfBlocks), elsewhere, and with the purego build tag, it looks for
// each line's LF with IndexByte. Both give the same answer
// (TestVerbatimLinesImplementationsAgree, FuzzVerbatimLines).
func verbatimLines(p []byte) int {
	if haveLFBlocks {
		return verbatimLinesBlocks(p)
	}
	return verbatimLinesByLine(p)
}

// verbatimLinesByLine is verbatimLines one line at a time.
func verbatimLinesByLine(p []byte) int {
	n := 0
	for n < len(p) && p[n] != '.' {
		i := bytes.IndexByte(p[n:], '\n')
		if i <= 0 || p[n+i-1] != '\r' {
			break // an unfinished line, or one ended by a bare LF
		}
		n += i + 1
	}
	return n
}

// verbatimLinesBlocks is verbatimLines from the first LF that ends no
// CRLF or that a dot follows: every line before it passes.
func verbatimLinesBlocks(p []byte) int {
	if len(p) == 0 || p[0] == '.' {
		return 0
	}
	b := firstBadLF(p)
	switch {
	case b < 0:
		// Every line passes, up to the last line end.
		return bytes.LastIndexByte(p, '\n') + 1
	case b == 0 || p[b-1] != '\r':
		// A bare LF: the line it ends is for the token path.
		return bytes.LastIndexByte(p[:b], '\n') + 1
	default:
		// A CRLF the next line's leading dot follows: the line it
		// ends passes, the next one is for the token path.
		return b + 1
	}
}

// firstBadLF returns the position of the first LF in p that does not end
// a CRLF within p or that a '.' follows, or -1 if there is none.
func firstBadLF(p []byte) int {
	if len(p) > 0 && p[0] == '\n' {
		return 0
	}
	next, bad := lfBlocks(p)
	if bad {
		return next
	}
	for i := max(next, 1); i < len(p); i++ {
		if badLF(p, i) {
			return i
		}
	}
	return -1
}

// badLF reports whether p[i], i > 0, is an LF that does not end a CRLF or
// that a '.' follows: where verbatimLines stops.
func badLF(p []byte, i int) bool {
	return p[i] == '\n' && (p[i-1] != '\r' || i+1 < len(p) && p[i+1] == '.')
}

// verbatimRun is the fast path for canonical data, the common case, which
// SPEC 2.6 relays verbatim. From the decoder's and encoder's state it
// reads the longest prefix of p that they together pass on unchanged, and
// leaves them as the token path would have: the rest of a line begun
// (when its content went upstream as it came), whole CRLF lines that do
// not begin with ".", and then the start of a line that p cuts before its
// end, if it does not begin with "." either. It returns the bytes passed
// (p[:pass], unchanged) and read: one more when p ends in a CR, which the
// decoder holds as the token path does, since it may be the CR of a CRLF.
// It stops at anything else for the token path (a line ended by a bare
// LF, a leading dot, the end of data) and reads nothing in any other
// state (a held CR or dot, the line after a bare LF).
func verbatimRun(d *decoder, e *encoder, p []byte) (pass, read int) {
	switch {
	case len(p) == 0:
		return 0, 0
	case d.st == decMid && e.inLine:
		// The rest of a line whose content went upstream as it came.
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return passUnfinished(d, e, p)
		}
		if i == 0 || p[i-1] != '\r' {
			return 0, 0 // a bare LF ends it
		}
		pass = i + 1
		d.st, e.inLine = decBOL, false
	case d.st != decBOL || e.inLine:
		return 0, 0
	}
	pass += verbatimLines(p[pass:])
	if rest := p[pass:]; len(rest) > 0 && rest[0] != '.' && bytes.IndexByte(rest, '\n') < 0 {
		k, r := passUnfinished(d, e, rest)
		return pass + k, pass + r
	}
	return pass, pass
}

// passUnfinished reads p, the start or the rest of a content line (no LF,
// and no leading dot at a line start), the way the token path does: its
// content goes upstream as it came, but a final CR, which the decoder
// holds.
func passUnfinished(d *decoder, e *encoder, p []byte) (pass, read int) {
	pass, d.st = len(p), decMid
	if p[pass-1] == '\r' {
		pass--
		d.st = decCR
	}
	if pass > 0 {
		e.inLine = true
	}
	return pass, len(p)
}

// encoder frames content lines for the upstream; the zero value is at the
// start of the data.
type encoder struct {
	inLine bool // some content of the current line has been written
}

// content appends a piece of the current content line, stuffing a leading
// dot.
func (e *encoder) content(dst, p []byte) []byte {
	if len(p) == 0 {
		return dst
	}
	if !e.inLine {
		e.inLine = true
		if p[0] == '.' {
			dst = append(dst, '.')
		}
	}
	return append(dst, p...)
}

// lineEnd appends the CRLF that ends the current content line.
func (e *encoder) lineEnd(dst []byte) []byte {
	e.inLine = false
	return append(dst, '\r', '\n')
}

// end appends the end of data, ending an unfinished line first so the dot
// always stands alone on its line.
func (e *encoder) end(dst []byte) []byte {
	if e.inLine {
		dst = e.lineEnd(dst)
	}
	return append(dst, '.', '\r', '\n')
}

// encodeCaptured appends captured content (lines ended by CRLF, as the
// header capture stores them; content never holds an LF of its own, and a
// last line may be unfinished) framed for the upstream.
func (e *encoder) encodeCaptured(dst, captured []byte) []byte {
	for len(captured) > 0 {
		i := bytes.IndexByte(captured, '\n')
		if i < 0 {
			return e.content(dst, captured)
		}
		// captured[i-1] is the CR of the CRLF the capture wrote.
		dst = e.content(dst, captured[:i-1])
		dst = e.lineEnd(dst)
		captured = captured[i+1:]
	}
	return dst
}
