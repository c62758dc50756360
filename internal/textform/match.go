package textform

import (
	"bytes"
	"fmt"
	"strings"
)

// diffContext is how many bytes of each side a difference report shows.
const diffContext = 72

// Mismatch describes the first difference between an expectation and the
// bytes received: the furthest point any way of matching got to.
type Mismatch struct {
	off  int    // offset in the received bytes
	want []byte // what the expectation wanted from there (nil: the end)
	more bool   // the expectation goes on after want (a wildcard follows)
}

type matcher struct {
	got  []byte
	best Mismatch
	seen bool
}

func (m *matcher) fail(off int, want []byte, more bool) {
	if !m.seen || off > m.best.off {
		m.best = Mismatch{off: off, want: want, more: more}
		m.seen = true
	}
}

// Match reports whether got is one of the byte strings p stands for.
// When it is not, the Mismatch says where the best attempt failed.
func (p Pattern) Match(got []byte) (bool, Mismatch) {
	m := &matcher{got: got}
	if m.match(p.segs, 0) {
		return true, Mismatch{}
	}
	return false, m.best
}

func (m *matcher) match(segs []seg, pos int) bool {
	if len(segs) == 0 {
		if pos == len(m.got) {
			return true
		}
		m.fail(pos, nil, false)
		return false
	}
	s, rest := segs[0], segs[1:]
	switch s.kind {
	case segLit:
		n := commonPrefix(m.got[pos:], s.lit)
		if n < len(s.lit) {
			m.fail(pos+n, s.lit[n:], len(rest) > 0)
			return false
		}
		return m.match(rest, pos+len(s.lit))
	case segAnyText:
		end := pos
		for end < len(m.got) && m.got[end] != '\r' && m.got[end] != '\n' {
			end++
		}
		for j := end; j >= pos; j-- {
			if m.match(rest, j) {
				return true
			}
		}
		return false
	case segOptional:
		with := make([]seg, 0, len(s.sub)+len(rest))
		with = append(append(with, s.sub...), rest...)
		return m.match(with, pos) || m.match(rest, pos)
	case segPrefix:
		tail := m.got[pos:]
		n := commonPrefix(tail, s.lit)
		if n == len(tail) {
			return true
		}
		if n == len(s.lit) {
			m.fail(pos+n, nil, false)
		} else {
			m.fail(pos+n, s.lit[n:], false)
		}
		return false
	}
	panic(fmt.Sprintf("textform: unknown segment kind %d", s.kind))
}

func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// Describe renders a Mismatch for a person: the line of the received
// bytes where it is, what was received there and what was wanted, both
// from the start of that line and written with the case-file escapes.
func (d Mismatch) Describe(got []byte) string {
	lineStart := bytes.LastIndexByte(got[:d.off], '\n') + 1
	lineNo := bytes.Count(got[:lineStart], []byte("\n")) + 1
	same := got[lineStart:d.off]
	gotText := quoteBytes(got[lineStart:], diffContext)
	if lineStart == len(got) {
		gotText = "(end)"
	}
	var wantText string
	switch {
	case d.want == nil && len(same) == 0:
		wantText = "(end)"
	case d.want == nil:
		wantText = quoteBytes(same, diffContext) + " then the end"
	default:
		w := append(append([]byte(nil), same...), d.want...)
		wantText = quoteBytes(w, diffContext)
		if d.more && len(w) <= diffContext {
			wantText += "…"
		}
	}
	return fmt.Sprintf("line %d (byte %d): got %s, want %s", lineNo, d.off, gotText, wantText)
}

// Quote writes b as a difference report does: on one line, in double
// quotes, escaped, cut after a line's worth of bytes.
func Quote(b []byte) string { return quoteBytes(b, diffContext) }

// quoteBytes writes b on one line in double quotes, every CR, LF and
// control byte escaped, cut after limit bytes.
func quoteBytes(b []byte, limit int) string {
	cut := len(b) > limit
	if cut {
		b = b[:limit]
	}
	var out strings.Builder
	out.WriteByte('"')
	for _, c := range b {
		switch c {
		case '"':
			out.WriteString(`\"`)
		case '\t':
			out.WriteString(`\t`)
		case ' ':
			out.WriteByte(' ')
		default:
			out.WriteString(escapeByte(c, false))
		}
	}
	out.WriteByte('"')
	if cut {
		out.WriteString("…")
	}
	return out.String()
}
