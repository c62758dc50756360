package core

// Command lines from the client (SPEC section 3): a line ends at CRLF or
// at a bare LF, as Postfix reads it; one over the limit, or holding a NUL
// or a bare CR, is marked faulty and refused whole, never forwarded. The
// reader holds at most one line of the limit it is given.

import "bytes"

// MaxCommandLine is the longest command line taken, without its line end:
// Postfix's line_length_limit (2048). A longer line is refused whole.
const MaxCommandLine = 2048

// MaxSASLLine is the longest SASL continuation line (the client's answer
// to a 334 reply), without its line end: Postfix's
// smtpd_sasl_response_limit (12288).
const MaxSASLLine = 12288

// lineFault says why a command line is refused before it is forwarded.
type lineFault uint8

const (
	lineOK      lineFault = iota
	lineTooLong           // over the limit; the rest was discarded
	lineNUL               // holds a NUL byte
	lineBareCR            // holds a CR that is not part of the line end
)

// lineReader cuts client bytes into command lines. A line ends at LF, with
// or without a CR before it, so that the proxy and an upstream that (like
// Postfix) also takes a bare LF as a line end always agree on where a
// command ends. It holds at most limit bytes.
type lineReader struct {
	buf    []byte
	fault  lineFault
	lastCR bool // the last byte taken was a CR (maybe the start of CRLF)
}

// feed consumes bytes of p up to and including the end of one line. It
// returns the number of bytes consumed and whether a line is complete;
// then line() and fault() describe it until reset.
func (r *lineReader) feed(p []byte, limit int) (n int, done bool) {
	i := bytes.IndexByte(p, '\n')
	chunk := p
	if i >= 0 {
		chunk = p[:i]
	}
	for _, c := range chunk {
		// A CR is held back until the next byte shows whether it ends
		// the line; any byte after it makes it a bare CR.
		if r.lastCR {
			r.take('\r', limit)
			if r.fault == lineOK {
				r.fault = lineBareCR
			}
		}
		r.lastCR = c == '\r'
		if !r.lastCR {
			r.take(c, limit)
		}
	}
	if i < 0 {
		return len(p), false
	}
	r.lastCR = false
	return i + 1, true
}

func (r *lineReader) take(c byte, limit int) {
	if r.fault == lineTooLong {
		return
	}
	if len(r.buf) >= limit {
		r.fault = lineTooLong
		r.buf = r.buf[:0]
		return
	}
	if c == 0 && r.fault == lineOK {
		r.fault = lineNUL
	}
	r.buf = append(r.buf, c)
}

// line returns the completed line without its line end.
func (r *lineReader) line() []byte { return r.buf }

func (r *lineReader) reset() {
	r.buf = r.buf[:0]
	r.fault = lineOK
	r.lastCR = false
}

// upperASCII upper-cases the ASCII letters of s and nothing else. SMTP
// verbs, EHLO keywords and xtext names are ASCII and compare
// case-insensitively as ASCII, as Postfix compares them: Unicode case
// mapping would make "quıt" (dotless i) QUIT and "ſtarttls" STARTTLS,
// words the upstream reads as unknown.
func upperASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'a' <= s[i] && s[i] <= 'z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'a' <= b[j] && b[j] <= 'z' {
					b[j] -= 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// equalFoldASCII reports whether a and b are equal under ASCII case
// folding (see upperASCII for why not Unicode's).
func equalFoldASCII(a, b string) bool {
	return len(a) == len(b) && upperASCII(a) == upperASCII(b)
}
