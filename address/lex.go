package address

// The lexer below is shared by the path and the list parser. It reads the
// lexical tokens of RFC 5322 section 3.2 leniently, the way Postfix's
// tok822 scanner does: a backslash escapes the next byte anywhere (also in
// atoms), 8-bit bytes are ordinary atom bytes, and an unterminated quoted
// string, domain literal or comment runs to the end of the input instead of
// failing. Comments are skipped; they and whitespace only separate tokens.
//
// Every byte of the input is examined a bounded number of times, and no
// state grows with nesting (comment depth is a counter), so lexing is linear
// in the input whatever it holds.

type tokKind uint8

const (
	tokEOF     tokKind = iota
	tokAtom            // a run of atom bytes, backslash escapes included as written
	tokQuoted          // "..." as written, quotes included
	tokLiteral         // [...] as written, brackets included
	tokSpecial         // one of < > @ , ; : . ) ] as the byte ch
)

// token is one lexical token; raw is in[start:end].
type token struct {
	kind        tokKind
	ch          byte // the byte of a tokSpecial
	start, end  int
	spaceBefore bool // whitespace or a comment separates it from the previous token
	closed      bool // a quoted string or literal found its closing byte
}

type lexer struct {
	in  []byte
	pos int
	// openComment reports that a comment ran to the end of the input.
	openComment bool
	// open is the offset of the quoted string, literal or comment that ran
	// to the end of the input, or -1 (set by newLexer).
	open int
	// flat makes '(' ')' '"' '[' ']' plain separators, so that nothing runs
	// to the end of the input: the fallback reading of what an unterminated
	// quote or comment swallowed.
	flat bool
	// steps counts bytes examined; tests use it to prove linear work
	// without timing anything.
	steps int
}

func newLexer(in []byte) lexer { return lexer{in: in, open: -1} }

// isWSP reports the bytes that separate tokens: RFC 5322 white space and
// the line breaks of folding, and NUL, which ends a C string and so ends the
// address for Postfix too (ParsePath refuses NUL before lexing).
func isWSP(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == 0 }

// isSpecialByte reports the bytes that end an atom. The backslash is not
// among them: it escapes the next byte inside the atom, as in Postfix.
func isSpecialByte(c byte) bool {
	switch c {
	case '(', ')', '<', '>', '[', ']', ':', ';', '@', ',', '.', '"':
		return true
	}
	return isWSP(c)
}

// next returns the next token, tokEOF at the end of the input.
func (lx *lexer) next() token {
	space := false
	for lx.pos < len(lx.in) {
		c := lx.in[lx.pos]
		lx.steps++
		switch {
		case isWSP(c) || lx.flat && isFlatSeparator(c):
			lx.pos++
			space = true
		case c == '(':
			start := lx.pos
			lx.skipComment()
			if lx.openComment && lx.open < 0 {
				lx.open = start
			}
			space = true
		default:
			return lx.scan(space)
		}
	}
	return token{kind: tokEOF, start: lx.pos, end: lx.pos, spaceBefore: space}
}

func isFlatSeparator(c byte) bool {
	switch c {
	case '(', ')', '"', '[', ']':
		return true
	}
	return false
}

// skipComment skips a comment, nested comments and quoted pairs included.
func (lx *lexer) skipComment() {
	depth := 0
	for lx.pos < len(lx.in) {
		c := lx.in[lx.pos]
		lx.pos++
		lx.steps++
		switch c {
		case '\\':
			if lx.pos < len(lx.in) {
				lx.pos++
			}
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return
			}
		}
	}
	lx.openComment = true
}

func (lx *lexer) scan(space bool) token {
	t := token{start: lx.pos, spaceBefore: space}
	c := lx.in[lx.pos]
	switch c {
	case '"':
		t.kind = tokQuoted
		t.closed = lx.until('"')
	case '[':
		t.kind = tokLiteral
		t.closed = lx.until(']')
	case ')', '<', '>', ']', ':', ';', '@', ',', '.':
		t.kind = tokSpecial
		t.ch = c
		lx.pos++
	default:
		t.kind = tokAtom
		for lx.pos < len(lx.in) {
			c := lx.in[lx.pos]
			if c == '\\' {
				lx.pos += 2
				lx.steps += 2
				if lx.pos > len(lx.in) {
					lx.pos = len(lx.in)
				}
				continue
			}
			if isSpecialByte(c) || lx.flat && isFlatSeparator(c) {
				break
			}
			lx.pos++
			lx.steps++
		}
	}
	t.end = lx.pos
	if t.kind == tokAtom && t.end-t.start == 1 && c == '\\' {
		// A lone backslash at the end of the input escapes nothing and
		// stands for nothing.
		t.kind = tokEOF
		t.start = t.end
	}
	if (t.kind == tokQuoted || t.kind == tokLiteral) && !t.closed && lx.open < 0 {
		lx.open = t.start
	}
	return t
}

// until consumes from the opening byte at pos to the closing byte end,
// honouring quoted pairs, and reports whether end was found.
func (lx *lexer) until(end byte) bool {
	lx.pos++
	for lx.pos < len(lx.in) {
		c := lx.in[lx.pos]
		lx.pos++
		lx.steps++
		if c == '\\' {
			if lx.pos < len(lx.in) {
				lx.pos++
			}
			continue
		}
		if c == end {
			return true
		}
	}
	return false
}

// rawText returns the token as it should appear in an Addr: as written,
// except that an unterminated quoted string or literal is closed (dropping a
// dangling backslash first), so that the result re-parses to the same thing.
//
// A literal's '"', '<' and '>' get a backslash (a quoted pair means the same
// byte): unescaped, they would change where Postfix's SMTP command
// tokenizer, and ParsePath, end the path <local@[...]>.
func (lx *lexer) rawText(dst []byte, t token) []byte {
	raw := lx.in[t.start:t.end]
	if t.kind == tokLiteral {
		closed := t.closed
		if !closed && danglingBackslash(raw) {
			raw = raw[:len(raw)-1]
		}
		for i := 0; i < len(raw); i++ {
			switch c := raw[i]; c {
			case '\\':
				dst = append(dst, raw[i:min(i+2, len(raw))]...)
				i++
			case '"', '<', '>':
				dst = append(dst, '\\', c)
			default:
				dst = append(dst, c)
			}
		}
		if !closed {
			dst = append(dst, ']')
		}
		return dst
	}
	if t.kind == tokQuoted && !t.closed {
		if danglingBackslash(raw) {
			raw = raw[:len(raw)-1]
		}
		dst = append(dst, raw...)
		return append(dst, '"')
	}
	if t.kind == tokAtom && danglingBackslash(raw) {
		// A backslash at the very end of the input escapes nothing; Postfix
		// drops it.
		raw = raw[:len(raw)-1]
	}
	return append(dst, raw...)
}

// danglingBackslash reports whether s ends in an odd run of backslashes,
// that is, in a backslash that escapes nothing.
func danglingBackslash(s []byte) bool {
	n := 0
	for i := len(s) - 1; i >= 0 && s[i] == '\\'; i-- {
		n++
	}
	return n%2 == 1
}
