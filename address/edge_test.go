package address

import "testing"

// TestLexerEdgesReadBack: the lexer's corner cases give addresses that
// read back as themselves: a literal's '"', '<' and '>' are escaped (so
// that <local@[...]> still ends where it should), an unterminated literal
// or quoted string is closed and a dangling backslash dropped, a lone
// backslash at the end stands for nothing, and a domain of escaped dots
// keeps an escape (or it would read back as no domain).
func TestLexerEdgesReadBack(t *testing.T) {
	cases := []struct {
		in   string
		want Addr
		key  string
	}{
		{`x@[1.2"3<4>]`, Addr{"x", `[1.2\"3\<4\>]`}, `x@[1.2\"3\<4\>]`},
		{`x@[1.2\]3`, Addr{"x", `[1.2\]3]`}, `x@[1.2\]3]`},
		{`x@[1.2\`, Addr{"x", `[1.2]`}, `x@[1.2]`},
		{`"ab\`, Addr{`"ab"`, ""}, `ab`},
		{`a@b \`, Addr{"a", "b"}, `a@b`},
		{`a@\.`, Addr{"a", `\.`}, `a@\.`},
		{`a@\.\.`, Addr{"a", `\.\.`}, `a@\..`},
	}
	for _, c := range cases {
		got := ParseList([]byte(c.in))
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("ParseList(%q) = %#v, want [%#v]", c.in, got, c.want)
			continue
		}
		if k := got[0].Key(); k != c.key {
			t.Errorf("ParseList(%q) key %q, want %q", c.in, k, c.key)
		}
		if again := ParseList([]byte(got[0].String())); len(again) != 1 || again[0] != c.want {
			t.Errorf("%q (from %q) reads back as %#v", got[0].String(), c.in, again)
		}
	}
	// The same literal in a path: the escaped '>' does not end the path.
	p, err := ParsePath(`<x@[1.2\>]>`)
	if err != nil || p.Addr != (Addr{"x", `[1.2\>]`}) {
		t.Errorf(`ParsePath("<x@[1.2\>]>") = %#v, %v`, p, err)
	}
}
