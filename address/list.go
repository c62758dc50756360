package address

// ParseList returns every address of a header field value (unfolded or not),
// leniently: see SPEC section 5. It never fails; a value with no plausible
// address yields none.
func ParseList(value []byte) []Addr { return AppendList(nil, value) }

// AppendList is ParseList appending to dst, for callers that reuse a slice.
// The addresses copy what they need: value may be reused afterwards.
//
// The value is read as an RFC 5322 address-list, obsolete forms included,
// with CR, LF and WSP all taken as white space. Rather than a grammar that
// gives up on the first error, it is one left-to-right pass that finds
// addr-specs wherever they stand, so a valid list and the wreck of one are
// read alike:
//
//   - An addr-spec is a local part (words, that is atoms or quoted strings,
//     joined by dots, white space and comments allowed around the dots;
//     words written together like us"er" join too) followed by '@' and a
//     domain (atoms joined by dots, or an address literal). The local part
//     is the run of words before '@' only: in `foo bar@x` it is bar.
//   - Display names, group names, comments, angle brackets and source
//     routes (<@a,@b:x@y>) are whatever is left around addr-specs; a
//     display name holding '@' (john@doe <x@y>) yields both addresses.
//   - A list element that is a local part alone and nothing else (the whole
//     value "postmaster", or "<postmaster>", or a group member) yields that
//     local part without a domain.
//   - Unterminated quoted strings, comments and literals run to the end of
//     the value, and what they swallowed is read once more, with quotes,
//     parentheses and brackets as plain separators, for the addr-specs it
//     holds (garbage "unterminated user@x yields user@x); an unterminated
//     <... yields what it holds.
//   - A NUL separates tokens, as it ends the string for Postfix.
func AppendList(dst []Addr, value []byte) []Addr {
	dst, _ = appendList(dst, value)
	return dst
}

// appendList is AppendList that also reports the work done: bytes the
// lexer examined plus tokens the parser handled, for the test that proves
// the work linear without timing anything.
func appendList(dst []Addr, value []byte) ([]Addr, int) {
	p := listParser{lx: newLexer(value), dst: dst}
	p.run()
	work := p.lx.steps + p.tokens
	if open := p.lx.open; open >= 0 {
		// An unterminated quoted string, comment or literal swallowed the
		// rest of the value; read that rest once more with nothing able to
		// swallow anything, for the addr-specs it holds. One extra pass at
		// most, so the work stays linear.
		rest := listParser{lx: newLexer(value[open+1:]), dst: p.dst, fallback: true}
		rest.lx.flat = true
		rest.run()
		return rest.dst, work + rest.lx.steps + rest.tokens
	}
	return p.dst, work
}

// listParser is the state of one pass over a value. Besides dst it holds
// only scratch reused across the addresses of the value, never longer than
// the longest candidate address.
type listParser struct {
	lx       lexer
	dst      []Addr
	fallback bool // the flat re-reading: no bare local parts from garbage
	tokens   int  // tokens handled, a measure of work
	peeked   token
	hasPeek  bool

	// The local-part candidate: the words and dots read since the last token
	// that cannot be in a local part.
	local     []byte
	words     int  // words in the candidate
	afterDot  bool // the candidate's last token is a dot
	candidate bool // local holds a candidate (words may still be 0: ".")

	// The current list element, for the bare local part rule: it began
	// after open (0 for the start of the value) and is pure while every
	// token in it belongs to the one candidate.
	open     byte
	pure     bool
	elemSeen bool // the element has had a token
	inAngle  bool

	domain []byte
}

func (p *listParser) next() token {
	if p.hasPeek {
		p.hasPeek = false
		return p.peeked
	}
	p.tokens++
	return p.lx.next()
}

func (p *listParser) unread(t token) {
	p.peeked = t
	p.hasPeek = true
}

func (p *listParser) resetCandidate() {
	p.local = p.local[:0]
	p.words = 0
	p.afterDot = false
	p.candidate = false
}

func (p *listParser) run() {
	p.pure = true
	for {
		t := p.next()
		switch {
		case t.kind == tokEOF:
			p.closeElement(0)
			return
		case isWord(t):
			continuing := p.candidate && (p.afterDot || !t.spaceBefore)
			if !continuing {
				if p.elemSeen {
					p.pure = false
				}
				p.resetCandidate()
				p.candidate = true
			}
			p.local = p.lx.rawText(p.local, t)
			p.words++
			p.afterDot = false
			p.elemSeen = true
		case isSpecial(t, '.'):
			if !p.candidate {
				if p.elemSeen {
					p.pure = false
				}
				p.candidate = true
			}
			p.local = append(p.local, '.')
			p.afterDot = true
			p.elemSeen = true
		case isSpecial(t, '@'):
			p.pure = false
			p.elemSeen = true
			if p.words > 0 && p.readDomain() {
				p.dst = append(p.dst, Addr{Local: string(p.local), Domain: string(p.domain)})
			}
			p.resetCandidate()
		case isSpecial(t, ','), isSpecial(t, ';'), isSpecial(t, ':'), isSpecial(t, '<'), isSpecial(t, '>'):
			p.closeElement(t.ch)
			switch t.ch {
			case '<':
				p.inAngle = true
			case '>':
				p.inAngle = false
			}
			p.open = t.ch
		default: // a literal out of place, a stray ')' or ']'
			p.pure = false
			p.elemSeen = true
			p.resetCandidate()
		}
	}
}

// readDomain reads the domain after '@' into p.domain and reports whether
// there is one. A token that cannot continue the domain is left unread.
func (p *listParser) readDomain() bool {
	p.domain = p.domain[:0]
	t := p.next()
	if t.kind == tokLiteral {
		p.domain = p.lx.rawText(p.domain, t)
		return true
	}
	// Leading dots (x@.example) are kept, as Postfix keeps them, but the
	// domain needs a label.
	for isSpecial(t, '.') {
		p.domain = append(p.domain, '.')
		t = p.next()
	}
	if t.kind != tokAtom {
		p.unread(t)
		return false
	}
	p.domain = p.lx.rawText(p.domain, t)
	afterDot := false
	for {
		t := p.next()
		switch {
		case isSpecial(t, '.'):
			p.domain = append(p.domain, '.')
			afterDot = true
		case t.kind == tokAtom && afterDot:
			p.domain = p.lx.rawText(p.domain, t)
			afterDot = false
		default:
			p.unread(t)
			return true
		}
	}
}

// closeElement ends the current list element at the separator closer (0 for
// the end of the value) and emits it as a bare local part when it is one.
func (p *listParser) closeElement(closer byte) {
	pure := p.pure && p.words > 0
	p.pure = true
	p.elemSeen = false
	defer p.resetCandidate()
	if !pure || p.fallback {
		return
	}
	var ok bool
	if p.inAngle {
		// <postmaster>, or <@route:postmaster>.
		ok = (p.open == '<' || p.open == ':') && (closer == '>' || closer == 0)
	} else {
		// A whole value, list member or group member; not a group name
		// (closed by ':') nor a display name (closed by '<').
		ok = (p.open == 0 || p.open == ',' || p.open == ';' || p.open == ':') &&
			(closer == ',' || closer == ';' || closer == 0)
	}
	if ok {
		p.dst = append(p.dst, Addr{Local: string(p.local)})
	}
}
