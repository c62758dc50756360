package address

import (
	"fmt"
	"strings"
)

// smtpSpace is the white space that separates the words of an SMTP command
// in Postfix's smtpd (C isspace), so the path and its parameters split where
// Postfix splits them.
const smtpSpace = " \t\n\v\f\r"

// maxErrorArg bounds how much of the argument an error message quotes, so a
// 2048-octet command does not make a 2 KiB log line; the argument itself is
// kept whole in PathError.Arg.
const maxErrorArg = 200

// PathError reports an SMTP path that ParsePath refuses.
type PathError struct {
	Arg string // the argument as given to ParsePath
	Msg string // what is wrong, e.g. "missing closing '>'"
}

func (e *PathError) Error() string {
	arg := e.Arg
	if len(arg) > maxErrorArg {
		arg = arg[:maxErrorArg] + "..."
	}
	return fmt.Sprintf("bad SMTP path %q: %s", arg, e.Msg)
}

// ParsePath parses the argument of MAIL FROM: or RCPT TO: (the text after
// the colon, leading spaces allowed). The error says what is wrong.
//
// It accepts what Postfix's smtpd accepts for any address a mail system
// would hand out, and refuses some shapes Postfix's RFC 822 parser would glue
// into one address: a literal or ')' in the local part, text after a domain
// literal, '<' inside <...>, an empty local part or domain. A caller that
// must not lose a recipient its upstream accepted reads a refused argument
// with ParseList instead, as loopcheck does.
//
// The argument is split into the path and its parameters the way Postfix's
// smtpd splits a command: at the first white space that is not inside <...>
// (which nests) or a quoted string, a backslash escaping the next byte. So
// "< x@y >" is one path and "x@y NOTIFY=NEVER" a path and a parameter.
// Within the path it accepts what Postfix's RFC 822 parser accepts for one
// address: angle brackets or none, a source route (dropped from Addr, kept in
// Route), comments and white space around dots and '@', quoted strings mixed
// with atoms, a display name before <...> ("Name<x@y>"), stray closing
// brackets after the address, and a local part without a domain
// (<Postmaster>). A local part holding '@' ("a@b"@c written without quotes
// as a@b@c) ends at the last '@', as Postfix resolves it. The null path (<>,
// or brackets holding only white space and comments) sets Null.
func ParsePath(arg string) (Path, error) {
	fail := func(msg string) (Path, error) {
		return Path{}, &PathError{Arg: arg, Msg: msg}
	}
	if strings.IndexByte(arg, 0) >= 0 {
		return fail("NUL in address")
	}
	s := strings.TrimLeft(arg, smtpSpace)
	if s == "" {
		return fail("missing address")
	}
	word, rest, msg := splitCommandWord(s)
	if msg != "" {
		return fail(msg)
	}
	p := Path{Params: strings.Trim(rest, smtpSpace)}

	text := word
	if len(text) >= 2 && text[0] == '<' && text[len(text)-1] == '>' {
		text = text[1 : len(text)-1]
	}
	// A source route leads the path: @a,@b:mailbox. Postfix cuts it at the
	// first colon before parsing anything; so do we.
	if t := strings.TrimLeft(text, " \t\r\n"); strings.HasPrefix(t, "@") {
		if i := strings.IndexByte(t, ':'); i >= 0 {
			p.Route = trimRouteSpace(t[:i])
			text = t[i+1:]
			if !closedRoute(p.Route) {
				return fail("open quoted string, comment or literal in the source route")
			}
		}
	}

	lx := newLexer([]byte(text))
	var toks []token
	for {
		t := lx.next()
		if t.kind == tokEOF {
			break
		}
		// A comment or literal left open runs to the end, as in Postfix's
		// parser (smtpd accepts "<x@y (comment>"); a quote left open is
		// refused, as smtpd's command tokenizer refuses it.
		if t.kind == tokQuoted && !t.closed {
			return fail("unterminated quoted string")
		}
		toks = append(toks, t)
	}

	mbox, route, msg := unwrapAngle(&lx, toks)
	if msg != "" {
		return fail(msg)
	}
	p.Route = joinRoute(p.Route, route)

	// Empty list elements around the mailbox are harmless (Postfix accepts
	// "<x@y,>"); two mailboxes are not.
	var el []token
	start := 0
	for i := 0; i <= len(mbox); i++ {
		if i < len(mbox) && !isSpecial(mbox[i], ',') && !isSpecial(mbox[i], ';') {
			continue
		}
		if i > start {
			if el != nil {
				return fail("more than one address")
			}
			el = mbox[start:i]
		}
		start = i + 1
	}
	// A route can also open a later list element: ",@a:x@y".
	el, route, msg = cutRoute(&lx, el)
	if msg != "" {
		return fail(msg)
	}
	p.Route = joinRoute(p.Route, route)
	// A route is "@domain,@domain"; an angle bracket in it, bare ("@<:x")
	// or in a comment ("<@(>):x>"), is no route, and written back as
	// <Route:...> it would open or close the path in the wrong place.
	if strings.ContainsAny(p.Route, "<>") {
		return fail("angle bracket in the source route")
	}
	if len(el) == 0 {
		p.Null = true
		return p, nil
	}
	a, msg := mailbox(&lx, el)
	if msg != "" {
		return fail(msg)
	}
	p.Addr = a
	return p, nil
}

// splitCommandWord splits s (not starting with white space) after its first
// word, the way Postfix's smtpd_token does: white space ends the word except
// inside <...> (nesting) or "...", and a backslash escapes the next byte.
// It returns a message when a bracket or quote is left open.
func splitCommandWord(s string) (word, rest, msg string) {
	depth := 0
	inQuote := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			i++
		case inQuote:
			if c == '"' {
				inQuote = false
			}
		case c == '"':
			inQuote = true
		case c == '<':
			depth++
		case depth > 0:
			if c == '>' {
				depth--
			}
		case strings.IndexByte(smtpSpace, c) >= 0:
			return s[:i], s[i:], ""
		}
	}
	switch {
	case inQuote:
		return "", "", "unterminated quoted string"
	case depth > 0:
		return "", "", "missing closing '>'"
	}
	return s, "", ""
}

// unwrapAngle returns the tokens of the mailbox: those inside <...> when the
// path has them (a display name before is allowed, stray '>' after), and a
// source route that opens them, as written.
func unwrapAngle(lx *lexer, toks []token) (mbox []token, route, msg string) {
	lt := -1
	for i, t := range toks {
		if isSpecial(t, '<') {
			lt = i
			break
		}
	}
	if lt < 0 {
		for len(toks) > 0 && isSpecial(toks[len(toks)-1], '>') {
			toks = toks[:len(toks)-1]
		}
		return toks, "", ""
	}
	for _, t := range toks[:lt] {
		if !isWord(t) && !isSpecial(t, '.') {
			return nil, "", "unexpected " + describe(lx, t) + " before '<'"
		}
	}
	gt := -1
	for i := lt + 1; i < len(toks); i++ {
		if isSpecial(toks[i], '<') {
			return nil, "", "nested '<'"
		}
		if isSpecial(toks[i], '>') {
			gt = i
			break
		}
	}
	if gt < 0 {
		return nil, "", "missing closing '>'"
	}
	for _, t := range toks[gt+1:] {
		if !isSpecial(t, '>') {
			return nil, "", "unexpected " + describe(lx, t) + " after '>'"
		}
	}
	return cutRoute(lx, toks[lt+1:gt])
}

// cutRoute splits a source route (@a,@b:) off the front of toks and returns
// it as written. Routes written one after another (@a:@b:) are all cut, as
// a path written back as <Route:Mailbox> would cut them: what follows a
// route and starts with '@' again is more route, never a local part.
func cutRoute(lx *lexer, toks []token) (rest []token, route, msg string) {
	for len(toks) > 0 && isSpecial(toks[0], '@') {
		colon := -1
		for i, t := range toks {
			if isSpecial(t, ':') {
				colon = i
				break
			}
		}
		if colon < 0 {
			break
		}
		r := string(lx.in[toks[0].start:toks[colon].start])
		r = trimRouteSpace(r)
		if strings.IndexByte(r, ':') >= 0 {
			// A ':' in a comment or quoted string: written back as
			// <route:mailbox>, the route would end there.
			return nil, "", "':' inside the source route"
		}
		route = joinRoute(route, r)
		toks = toks[colon+1:]
	}
	return toks, route, ""
}

// mailbox reads one address from its tokens: a local part, and a domain
// after the last '@' if there is one.
func mailbox(lx *lexer, el []token) (Addr, string) {
	at := -1
	for i, t := range el {
		if isSpecial(t, '@') {
			at = i
		}
	}
	local, domain := el, []token(nil)
	if at >= 0 {
		local, domain = el[:at], el[at+1:]
	}
	if len(local) == 0 {
		return Addr{}, "empty local part"
	}
	prevWord, words := false, 0
	for _, t := range local {
		switch {
		case isWord(t):
			if prevWord && t.spaceBefore {
				return Addr{}, "space between words of the local part"
			}
			prevWord = true
			words++
		case t.kind == tokLiteral:
			return Addr{}, "address literal in the local part"
		case isSpecial(t, '.'), isSpecial(t, '@'), isSpecial(t, ':'):
			prevWord = false
		default:
			return Addr{}, "unexpected " + describe(lx, t) + " in the local part"
		}
	}
	if words == 0 {
		return Addr{}, "local part without a word"
	}
	var a Addr
	var buf []byte
	for _, t := range local {
		buf = lx.rawText(buf, t)
	}
	a.Local = string(buf)
	if at < 0 {
		return a, ""
	}
	if len(domain) == 0 {
		return Addr{}, "empty domain"
	}
	if domain[0].kind == tokLiteral {
		if len(domain) > 1 {
			return Addr{}, "unexpected " + describe(lx, domain[1]) + " after the address literal"
		}
	} else {
		prevAtom, atoms := false, 0
		for _, t := range domain {
			switch {
			case t.kind == tokAtom:
				if prevAtom {
					return Addr{}, "space in the domain"
				}
				prevAtom = true
				atoms++
			case isSpecial(t, '.'):
				prevAtom = false
			default:
				return Addr{}, "unexpected " + describe(lx, t) + " in the domain"
			}
		}
		if atoms == 0 {
			return Addr{}, "domain without a label"
		}
	}
	buf = buf[:0]
	for _, t := range domain {
		buf = lx.rawText(buf, t)
	}
	a.Domain = string(buf)
	return a, ""
}

// closedRoute reports whether a route cut off at the first colon leaves no
// quoted string, comment or address literal open. One that does ("@a\"" of
// @a":x(y"z) reads differently when the path is written back as
// <Route:mailbox>: the open quote there swallows the ':' and the rest.
func closedRoute(r string) bool {
	lx := newLexer([]byte(r))
	for {
		t := lx.next()
		switch {
		case t.kind == tokEOF:
			return !lx.openComment
		case (t.kind == tokQuoted || t.kind == tokLiteral) && !t.closed:
			return false
		}
	}
}

// joinRoute joins a route cut off the front of the text with one found
// after it (@a:@b:x@y): written back, the colon separates them again.
// trimRouteSpace removes the white space that ends a route, but not a
// space a backslash escapes ("@a\ "): cut off, its backslash would be left
// to escape the ':' of the path written back.
func trimRouteSpace(r string) string {
	for n := len(r); n > 0 && strings.IndexByte(" \t\r\n", r[n-1]) >= 0; n = len(r) {
		escapes := 0
		for i := n - 2; i >= 0 && r[i] == '\\'; i-- {
			escapes++
		}
		if escapes%2 == 1 {
			break
		}
		r = r[:n-1]
	}
	return r
}

func joinRoute(outer, inner string) string {
	if outer == "" {
		return inner
	}
	if inner == "" {
		return outer
	}
	return outer + ":" + inner
}

func isSpecial(t token, c byte) bool { return t.kind == tokSpecial && t.ch == c }

func isWord(t token) bool { return t.kind == tokAtom || t.kind == tokQuoted }

// describe names a token for an error message.
func describe(lx *lexer, t token) string {
	switch t.kind {
	case tokSpecial:
		return fmt.Sprintf("'%c'", t.ch)
	case tokQuoted:
		return "quoted string"
	case tokLiteral:
		return "address literal"
	}
	w := lx.in[t.start:t.end]
	const maxWord = 40 // enough to recognise the word in a log line
	if len(w) > maxWord {
		return fmt.Sprintf("word %q...", w[:maxWord])
	}
	return fmt.Sprintf("word %q", w)
}
