package expand

import "strings"

// This file follows Postfix's RFC 822 address-list parser,
// global/tok822_parse.c (tok822_scan_limit, tok822_parse_limit,
// tok822_internalize), and trivial-rewrite/rewrite.c rewrite_tree, which
// works on its tokens. Postfix reads every table value that holds
// addresses with it: virtual and canonical results (mail_addr_crunch.c
// mail_addr_crunch_opt), aliases(5) values and :include: lines
// (local/token.c deliver_token_string). Its rules differ from a strict RFC
// 5322 reading, and the differences decide which addresses Postfix
// delivers to: "user loopuser" is two addresses (the parser adds the
// missing comma), and so is "|cmd arg" (a command, then the address
// "arg").

// Token types above the single-character operators (global/tok822.h
// TOK822_MINTOK and up).
const (
	tokAtom     = 256 + iota // TOK822_ATOM
	tokQString               // TOK822_QSTRING: text without the quotes
	tokComment               // TOK822_COMMENT: text with its parentheses
	tokDomLit                // TOK822_DOMLIT: text without the brackets
	tokAddr                  // TOK822_ADDR: an address, its tokens below
	tokStartGrp              // TOK822_STARTGRP: the ':' that opens a group
)

// tok822OpChars are tok822_opchar: RFC 822's specials plus '|', '%' and
// '!', each a token of its own (a backslash outside quotes escapes the
// next character instead).
const tok822OpChars = `|%!()<>@,;:\".[]`

// tok is one token of an address: an operator (its character) or a word.
type tok struct {
	typ  int
	text string
}

// tokNode is a token in tok822_parse's doubly linked list; an address node
// holds its tokens as a sublist (head).
type tokNode struct {
	tok
	prev, next *tokNode
	head       *tokNode
}

func isSpaceTabCRLF(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// tok822Scan is tok822_scan_limit without a limit: the tokens of an
// external-form string, as a list. The C string ends at a NUL byte.
func tok822Scan(s string) (first, last *tokNode) {
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	var b strings.Builder
	// collect is the COLLECT macro: characters while cond holds, a
	// backslash taking the next character whatever it is, white space
	// turned into a space.
	collect := func(i int, cond func(byte) bool) int {
		b.Reset()
		for i < len(s) {
			c := s[i]
			if c == '\\' {
				if i++; i >= len(s) {
					break
				}
				c = s[i]
			} else if !cond(c) {
				break
			}
			if isSpaceTabCRLF(c) {
				c = ' '
			}
			b.WriteByte(c)
			i++
		}
		return i
	}
	add := func(n *tokNode) {
		if first == nil {
			first, last = n, n
			return
		}
		last.next, n.prev = n, last
		last = n
	}
	for i := 0; i < len(s); {
		c := s[i]
		i++
		switch {
		case isSpaceTabCRLF(c):
			continue
		case c == '(':
			var text string
			text, i = tok822Comment(s, i)
			add(&tokNode{tok: tok{tokComment, text}})
		case c == '[':
			i = collect(i, func(c byte) bool { return c != ']' })
			if i < len(s) {
				i++
			}
			add(&tokNode{tok: tok{tokDomLit, b.String()}})
		case c == '"':
			i = collect(i, func(c byte) bool { return c != '"' })
			if i < len(s) {
				i++
			}
			add(&tokNode{tok: tok{tokQString, b.String()}})
		case c != '\\' && strings.IndexByte(tok822OpChars, c) >= 0:
			add(&tokNode{tok: tok{int(c), ""}})
		default:
			i = collect(i-1, func(c byte) bool {
				return !isSpaceTabCRLF(c) && strings.IndexByte(tok822OpChars, c) < 0
			})
			add(&tokNode{tok: tok{tok822QuoteAtom(b.String()), b.String()}})
		}
	}
	return first, last
}

// tok822QuoteAtom is tok822_quote_atom: an atom holding a space, a control
// character or an operator (written with a backslash) is a quoted string.
func tok822QuoteAtom(text string) int {
	for i := 0; i < len(text); i++ {
		if c := text[i]; c == ' ' || c < 0x20 || c == 0x7f || strings.IndexByte(tok822OpChars, c) >= 0 {
			return tokQString
		}
	}
	return tokAtom
}

// tok822Comment is tok822_comment: a comment, nested ones included, kept
// in external form with its parentheses; i is just past the '('.
func tok822Comment(s string, i int) (string, int) {
	var b strings.Builder
	b.WriteByte('(')
	for level := 1; i < len(s); {
		c := s[i]
		b.WriteByte(c)
		i++
		if c == '(' {
			level++
		} else if c == ')' {
			if level--; level == 0 {
				break
			}
		} else if c == '\\' {
			if i >= len(s) {
				break
			}
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), i
}

// tokUnlink is tok822_unlink: n taken out of its list; it returns n's
// predecessor.
func tokUnlink(n *tokNode) *tokNode {
	prev, next := n.prev, n.next
	if prev != nil {
		prev.next = next
	}
	if next != nil {
		next.prev = prev
	}
	n.prev, n.next = nil, nil
	return prev
}

// tokPrepend is tok822_prepend for one token: n inserted left of at; it
// returns n.
func tokPrepend(at, n *tokNode) *tokNode {
	prev := at.prev
	if prev != nil {
		prev.next = n
	}
	n.prev, n.next, at.prev = prev, at, n
	return n
}

// tokAppend is tok822_append for one token: n inserted right of at.
func tokAppend(at, n *tokNode) {
	next := at.next
	at.next, n.prev, n.next = n, at, next
	if next != nil {
		next.prev = n
	}
}

// tokGroup is tok822_group: the tokens strictly between left and right
// clustered under an address node, and, with addComma, a ',' inserted
// after left (the missing comma). It returns left.
func tokGroup(left, right *tokNode, addComma bool) *tokNode {
	first := left.next
	if left == right || first == right {
		return left
	}
	right.prev.next = nil
	first.prev = nil
	group := &tokNode{tok: tok{typ: tokAddr}, head: first}
	left.next, group.prev = group, left
	group.next, right.prev = right, group
	if addComma {
		tokAppend(left, &tokNode{tok: tok{typ: ','}})
	}
	return left
}

// tok822Parse is tok822_parse: the addresses of an external-form address
// list, each as its tokens, in order. Only the list's top-level address
// nodes count (tok822_grep, and deliver_token_string, do not descend):
// display names, comments, brackets and group names are not addresses.
// The parse runs from right to left; two words with nothing but white
// space or a comment between them belong to different addresses ("Add
// missing commas on the fly").
func tok822Parse(s string) [][]tok {
	var out [][]tok
	for n := tok822Tree(s); n != nil; n = n.next {
		if n.typ != tokAddr {
			continue
		}
		var toks []tok
		for c := n.head; c != nil; c = c.next {
			toks = append(toks, c.tok)
		}
		out = append(out, toks)
	}
	return out
}

// tok822Tree is tok822_parse's tree: the top-level list, addresses holding
// their tokens.
func tok822Tree(s string) *tokNode {
	first, last := tok822Scan(s)
	if first == nil {
		return nil
	}
	head, tail := &tokNode{}, &tokNode{} // the sentinels, type 0
	head.next, first.prev = first, head
	last.next, tail.prev = tail, last

	const (
		doWord  = 1 << 0 // finding a word is fine here
		doGroup = 1 << 1 // inside an address group
	)
	state := doWord
	right := tail
	tp := tail.prev
	// skip moves tp left while cond holds, up to the left sentinel.
	skip := func(cond func(*tokNode) bool) {
		for tp.typ != 0 && cond(tp) {
			tp = tp.prev
		}
	}
	for tp.typ != 0 {
		switch {
		case tp.typ == tokComment: // moved out to the right
			prev := tokUnlink(tp)
			right = tokPrepend(right, tp)
			tp = prev
			continue
		case tp.typ == ';': // right-hand side of a named group
			right = tokGroup(tp, right, true)
			state = doGroup | doWord
		case tp.typ == ':' && state&doGroup != 0:
			tp.typ = tokStartGrp
			tokGroup(tp, right, false)
			skip(func(n *tokNode) bool { return n.typ != ',' })
			right = tp
			continue
		case tp.typ == '>': // right-hand side of <route>
			right = tokGroup(tp, right, true)
			for tp.typ != 0 && tp.typ != '<' {
				if tp.typ == tokComment {
					prev := tokUnlink(tp)
					right = tokPrepend(right, tp)
					tp = prev
					continue
				}
				tp = tp.prev
			}
			tokGroup(tp, right, false)
			skip(func(n *tokNode) bool { return n.typ > 0xff || strings.IndexByte(">;,:", byte(n.typ)) < 0 })
			right = tp
			state |= doWord
			continue
		case tp.typ == tokAtom || tp.typ == tokQString || tp.typ == tokDomLit:
			if state&doWord == 0 {
				right = tokGroup(tp, right, true).next
			}
			state &^= doWord
		case tp.typ == ',':
			right = tokGroup(tp, right, false)
			state |= doWord
		default:
			state |= doWord
		}
		tp = tp.prev
	}
	tokGroup(tp, right, false)
	if head.next == tail {
		return nil
	}
	first = head.next
	first.prev = nil
	tail.prev.next = nil
	return first
}

// tokText is tok822_internalize of an address's tokens: their text in
// internal form (quoted strings without quotes, domain literals in
// brackets), with no space between them (the tokens of an address node
// get none).
func tokText(toks []tok) string {
	var b strings.Builder
	for _, t := range toks {
		switch t.typ {
		case tokAtom, tokQString, tokComment:
			b.WriteString(t.text)
		case tokDomLit:
			b.WriteByte('[')
			b.WriteString(t.text)
			b.WriteByte(']')
		case tokStartGrp:
			b.WriteByte(':')
		case tokAddr:
		default:
			b.WriteByte(byte(t.typ))
		}
	}
	return b.String()
}

// isOp reports whether t is the operator c.
func (t tok) isOp(c byte) bool { return t.typ == int(c) }

// rewriteTokens is rewrite_tree() in the local context (REWRITE_CANON) of
// an address's tokens, returning the result in internal form
// (canon_addr_external, then unquote_822_local):
//
//   - the empty address ("" or a lone @) stays empty;
//   - a source route (@a,@b:) is dropped;
//   - without an @ operator: "site!user" becomes user@site
//     (swap_bangpath), else the last % operator becomes @
//     (allow_percent_hack), else @$myorigin is appended
//     (append_at_myorigin);
//   - a domain without a '.' operator or a domain literal gets
//     .$mydomain (append_dot_mydomain);
//   - one trailing '.' is removed, but not after '.' or '@'.
//
// Operators are tokens: a '!', '%' or '@' inside a quoted string is text.
func (c *Config) rewriteTokens(toks []tok) string {
	if len(toks) == 1 && (toks[0].typ == tokQString && toks[0].text == "" || toks[0].isOp('@')) {
		return ""
	}
	if len(toks) > 0 && toks[0].isOp('@') {
		for i, t := range toks {
			if t.isOp(':') {
				if i != len(toks)-1 {
					toks = toks[i+1:]
				}
				break
			}
		}
	}
	toks = append([]tok(nil), toks...)
	find := func(from int, c byte) int {
		for i := from; i < len(toks); i++ {
			if toks[i].isOp(c) {
				return i
			}
		}
		return -1
	}
	rfind := func(c byte) int {
		for i := len(toks) - 1; i >= 0; i-- {
			if toks[i].isOp(c) {
				return i
			}
		}
		return -1
	}
	if rfind('@') < 0 {
		if bang := find(0, '!'); c.SwapBangpath && bang >= 0 {
			local := toks[bang+1:]
			site := toks[:bang]
			toks = append(append(append([]tok(nil), local...), tok{typ: '@'}), site...)
		} else if pct := rfind('%'); c.AllowPercentHack && pct >= 0 {
			toks[pct].typ = '@'
		} else if c.AppendAtMyorigin && c.MyOrigin != "" {
			toks = append(toks, tok{typ: '@'})
			toks = appendScanned(toks, c.MyOrigin)
		}
	}
	if at := rfind('@'); c.AppendDotMydomain && c.MyDomain != "" && at >= 0 && at != len(toks)-1 {
		plain := true
		for _, t := range toks[at:] {
			if t.typ == tokDomLit || t.isOp('.') {
				plain = false
				break
			}
		}
		if plain {
			toks = append(toks, tok{typ: '.'})
			toks = appendScanned(toks, c.MyDomain)
		}
	}
	if n := len(toks); n >= 2 && toks[n-1].isOp('.') && !toks[n-2].isOp('.') && !toks[n-2].isOp('@') {
		toks = toks[:n-1]
	}
	return tokText(toks)
}

// appendScanned appends the tokens of s (tok822_scan).
func appendScanned(toks []tok, s string) []tok {
	for n, _ := tok822Scan(s); n != nil; n = n.next {
		toks = append(toks, n.tok)
	}
	return toks
}
