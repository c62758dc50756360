package core

// The header section of a message is held in a bounded buffer until it
// is judged (SPEC section 4). It ends where Postfix ends it: at the first
// line that is neither a header field nor a continuation (an empty line
// included), or at the end of data. The proxy's capture and the check
// subcommand (HeaderSection) read it with the same code, so both refuse
// exactly the same messages as too large.

import (
	"bytes"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
)

// DefaultMaxHeaderBytes is the default bound of the header section buffer
// (SPEC section 4): far above any real header section (Postfix's own
// header_size_limit is 100 KiB), small enough for 1000 sessions.
const DefaultMaxHeaderBytes = 1 << 20

// HeaderLookahead is how far past MaxHeaderBytes the line after the header
// section may run before it shows it is no header line ("Subj..." could
// still become "Subject:"). With it the verdict does not depend on where
// the client's data happened to be cut into chunks.
const HeaderLookahead = 4 << 10

// captureStep bounds the bytes given to the header classifier at once, so
// the line that ends the header section adds at most this much to the
// header buffer beyond its limit.
const captureStep = 4 << 10

// headerCapture holds a header section as its content lines arrive, each
// as pieces of content and a line end, line ends written CRLF.
type headerCapture struct {
	cls       header.Classifier
	buf       []byte // the section, then the start of the line that ended it
	lineStart int    // offset in buf of the current line
	max       int    // the limit (Config.MaxHeaderBytes)
}

// captured is what a piece did to the header section.
type captured uint8

const (
	captureMore     captured = iota // the section goes on
	captureEnd                      // it has ended: buf[:lineStart] is the section
	captureTooLarge                 // it is over the limit; buf is unchanged
)

// step is the most input the next piece of content may come from. An
// undecided line may hold at most max+HeaderLookahead bytes; the
// classifier gets no more than one byte past that room, so a piece that
// would cross it is seen to cross it: given more, it could decide the line
// within the piece and skip the check, and the verdict would depend on how
// the client's bytes were cut.
func (c *headerCapture) step() int {
	return max(min(captureStep, c.max+HeaderLookahead-len(c.buf)+1), 1)
}

// limit is the most buf may hold while the current line is of the given
// kind: a header line counts in full; an undecided one may run into the
// lookahead.
func (c *headerCapture) limit(kind header.LineKind) int {
	if kind == header.Undecided {
		return c.max + HeaderLookahead
	}
	return c.max
}

// content takes a piece of the current line's content, at most step()
// bytes.
func (c *headerCapture) content(p []byte) captured {
	kind := c.cls.Feed(p)
	if kind != header.End && len(c.buf)+len(p) > c.limit(kind) {
		return captureTooLarge
	}
	c.buf = append(c.buf, p...)
	if kind == header.End {
		return captureEnd
	}
	return captureMore
}

// lineEnd ends the current line.
func (c *headerCapture) lineEnd() captured {
	kind := c.cls.EndLine()
	if kind != header.End && len(c.buf)+2 > c.max {
		return captureTooLarge
	}
	c.buf = append(c.buf, '\r', '\n')
	if kind == header.End {
		return captureEnd
	}
	c.lineStart = len(c.buf)
	return captureMore
}

// section returns the header section once capture has ended.
func (c *headerCapture) section() []byte { return c.buf[:c.lineStart] }

// HeaderCaptureMax is the most a session's header buffer ever holds with
// the header limit max: the limit, the lookahead an undecided line may
// run into, and one capture step past it with a line end.
func HeaderCaptureMax(max int) int { return max + HeaderLookahead + captureStep + 2 }

// HeaderReadLimit is how much of a message HeaderSection needs at most to
// decide, with the header limit max: the limit, the lookahead, and two
// bytes more (one more content byte, or a CR that may be a line end).
func HeaderReadLimit(max int) int { return max + HeaderLookahead + 2 }

// HeaderSection reads the header section of msg, a message as saved (not
// dot-stuffed; lines ended by CRLF or LF; a last line without one is ended
// by the end of msg), as a session with the header limit max captures it:
// section is what the loop check judges, with CRLF line ends, and ok is
// false when a session refuses the message as too large (552 5.3.4).
// msg may be cut after its first HeaderReadLimit(max) bytes: the answer
// is decided within them.
func HeaderSection(msg []byte, max int) (section []byte, ok bool) {
	c := headerCapture{max: max}
	for off := 0; off < len(msg); {
		line, next := msg[off:], len(msg)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line, next = bytes.TrimSuffix(line[:i], []byte("\r")), off+i+1
		}
		off = next
		r := captureMore
		for len(line) > 0 && r == captureMore {
			piece := line[:min(len(line), c.step())]
			line = line[len(piece):]
			r = c.content(piece)
		}
		if r == captureMore {
			r = c.lineEnd()
		}
		switch r {
		case captureTooLarge:
			return nil, false
		case captureEnd:
			return c.section(), true
		}
	}
	return c.buf, true
}
