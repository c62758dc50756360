package address

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePath(t *testing.T) {
	addr := func(local, domain string) Path { return Path{Addr: Addr{local, domain}} }
	with := func(p Path, route, params string) Path {
		p.Route, p.Params = route, params
		return p
	}
	tests := []struct {
		arg  string
		want Path
	}{
		// The RCPT spellings of reference/original.md.
		{"<user@example.com>", addr("user", "example.com")},
		{"<user@example.com> NOTIFY=NEVER", with(addr("user", "example.com"), "", "NOTIFY=NEVER")},
		{"user@example.com", addr("user", "example.com")},
		{"< user@example.com >", addr("user", "example.com")},
		{"<User@Example.COM>", addr("User", "Example.COM")},
		// Space after the colon, and Postfix's other white space.
		{" <x@y>", addr("x", "y")},
		{"\t <x@y>", addr("x", "y")},
		{"   x@y", addr("x", "y")},
		// Parameters, as written and trimmed.
		{"<x@y> SIZE=12345 BODY=8BITMIME SMTPUTF8", with(addr("x", "y"), "", "SIZE=12345 BODY=8BITMIME SMTPUTF8")},
		{"<x@y> ORCPT=rfc822;x@y NOTIFY=SUCCESS,FAILURE  ", with(addr("x", "y"), "", "ORCPT=rfc822;x@y NOTIFY=SUCCESS,FAILURE")},
		{"x@y NOTIFY=NEVER", with(addr("x", "y"), "", "NOTIFY=NEVER")},
		{"<x@y>\tRET=HDRS ENVID=QQ", with(addr("x", "y"), "", "RET=HDRS ENVID=QQ")},
		// Null path.
		{"<>", Path{Null: true}},
		{"<> SIZE=100 BODY=7BIT", Path{Null: true, Params: "SIZE=100 BODY=7BIT"}},
		{"< >", Path{Null: true}},
		{"<(nobody)>", Path{Null: true}},
		// Postmaster and other local parts without a domain.
		{"<Postmaster>", addr("Postmaster", "")},
		{"<POSTMASTER>", addr("POSTMASTER", "")},
		{"postmaster", addr("postmaster", "")},
		// Source routes.
		{"<@a.example:x@y>", with(addr("x", "y"), "@a.example", "")},
		{"<@a,@b:x@y> SIZE=1", with(addr("x", "y"), "@a,@b", "SIZE=1")},
		{"< @a , @b : x@y >", with(addr("x", "y"), "@a , @b", "")},
		{"<@a:@b:x@y>", with(addr("x", "y"), "@a:@b", "")},
		{",@a:x@y", with(addr("x", "y"), "@a", "")},
		{",@a:@b:x@y", with(addr("x", "y"), "@a:@b", "")}, // as <@a:@b:x@y> reads
		// Found by FuzzPath: an escaped space ends the route and stays.
		{`@:@\ :`, Path{Route: `@:@\ `, Null: true}},
		{`<@a\  :x@y>`, with(addr("x", "y"), `@a\ `, "")},
		{"Name<@a:x@y>", with(addr("x", "y"), "@a", "")},
		{"<<x@y>>", addr("x", "y")},
		{"Name <x@y>", with(addr("Name", ""), "", "<x@y>")}, // split as Postfix splits: a parameter
		// Quoted local parts and quoted pairs.
		{`<"a b"@x>`, addr(`"a b"`, "x")},
		{`<"a\"b"@x>`, addr(`"a\"b"`, "x")},
		{`<"a>b"@x> NOTIFY=NEVER`, with(addr(`"a>b"`, "x"), "", "NOTIFY=NEVER")},
		{`"a b"@x SIZE=1`, with(addr(`"a b"`, "x"), "", "SIZE=1")},
		{`<""@x>`, addr(`""`, "x")},
		{`<"first".last@x>`, addr(`"first".last`, "x")},
		{`<a\ b@x>`, addr(`a\ b`, "x")},
		// Address literals.
		{"<x@[192.0.2.1]>", addr("x", "[192.0.2.1]")},
		{"<x@[IPv6:2001:db8::1]>", addr("x", "[IPv6:2001:db8::1]")},
		{"<x@[tag:general content]>", addr("x", "[tag:general content]")},
		// UTF-8 (RFC 6531).
		{"<用户@例子.广告> SMTPUTF8", with(addr("用户", "例子.广告"), "", "SMTPUTF8")},
		{"<δοκιμή@παράδειγμα.δοκιμή>", addr("δοκιμή", "παράδειγμα.δοκιμή")},
		// What Postfix's RFC 822 parser tolerates.
		{"<x@y (comment)>", addr("x", "y")},
		{"<(c)x@y>", addr("x", "y")},
		{"<x . y @ z . w>", addr("x.y", "z.w")},
		{"Name<x@y>", addr("x", "y")},
		{`"Joe Q"<x@y> SIZE=2`, with(addr("x", "y"), "", "SIZE=2")},
		{"<x@y>>", addr("x", "y")},
		{"<x@y,>", addr("x", "y")},
		{"<a@b@c>", addr("a@b", "c")},
		{"<a%b@c>", addr("a%b", "c")},
		{"<x@y.>", addr("x", "y.")},
		{"<x@y (comment>", addr("x", "y")},
		{"<x@[1.2.3.4>", addr("x", "[1.2.3.4]")},
		{"<user+ext@example.com>", addr("user+ext", "example.com")},
		{`<us"er"@x>`, addr(`us"er"`, "x")},
	}
	for _, tc := range tests {
		got, err := ParsePath(tc.arg)
		if err != nil {
			t.Errorf("ParsePath(%q): %v", tc.arg, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParsePath(%q) mismatch (-want +got):\n%s", tc.arg, diff)
		}
	}
}

func TestParsePathErrors(t *testing.T) {
	tests := []struct{ arg, msg string }{
		{"", "missing address"},
		{"   ", "missing address"},
		{"<x@y", "missing closing '>'"},
		{"<<x@y>", "missing closing '>'"},
		{`<"x@y>`, "unterminated quoted string"},
		{`"x@y`, "unterminated quoted string"},
		{"<x@y\x00>", "NUL in address"},
		{"<x@y> SIZE=\x00", "NUL in address"},
		{"<@y>", "empty local part"},
		{"<.@y>", "local part without a word"},
		{". ", "local part without a word"},
		{"<@a:@y>", "empty local part"},
		{"<x@>", "empty domain"},
		{"<x@.>", "domain without a label"},
		{"<x@ (comment)>", "empty domain"},
		{"<a b@c>", "space between words of the local part"},
		{`<"a" b@c>`, "space between words of the local part"},
		{"<x@a b>", "space in the domain"},
		{"<x@[1.2.3.4].com>", "unexpected '.' after the address literal"},
		{"<x@y\"q\">", "unexpected quoted string in the domain"},
		{"<[1.2.3.4]@y>", "address literal in the local part"},
		{"<a@b,c@d>", "more than one address"},
		{"<a@b;c@d>", "more than one address"},
		{"x<a<b@c>>", "nested '<'"},
		{"Name <x@y> more", ""}, // 'more' is a parameter: accepted
		{"<x@y>foo", "unexpected word \"foo\" after '>'"},
		{"a@b<x@y>", "unexpected '@' before '<'"},
		{"<x)@y>", "unexpected ')' in the local part"},
		{"Name<@a(c:d):x@y>", "':' inside the source route"},
		// Found by FuzzPath: the route "@<" cannot be written back
		// inside <...>.
		{"@<:0>", "angle bracket in the source route"},
		{"<@a>:x@y>", "angle bracket in the source route"},
		{"0<@(>):0>", "angle bracket in the source route"},
		// Found by FuzzPath: "@0:" after a route is more route, so
		// nothing is left for the local part.
		{",@:@0:@0", "empty local part"},
		{",@a(b:c):x@y", "':' inside the source route"},
		{"<x@y (>)", "missing closing '>'"}, // the '>' is in a comment
		{"[192.0.2.1]<x@y>", "unexpected address literal before '<'"},
		{"<x@y>" + strings.Repeat("w", 50), `unexpected word "` + strings.Repeat("w", 40) + `"... after '>'`},
		{"<@a,@(b>):x@y>", "angle bracket in the source route"},
		// Found by FuzzPath: cut at the first colon, the route "@0\""
		// holds an open quote, which written back as <@0":0> swallows the
		// rest of the path.
		{"@0\":0(00\"0", "open quoted string, comment or literal in the source route"},
		{"@a(b:c)x@y", "open quoted string, comment or literal in the source route"},
		{"@[a:b]x@y", "open quoted string, comment or literal in the source route"},
	}
	for _, tc := range tests {
		_, err := ParsePath(tc.arg)
		if tc.msg == "" {
			if err != nil {
				t.Errorf("ParsePath(%q): %v, want success", tc.arg, err)
			}
			continue
		}
		var pe *PathError
		if !errors.As(err, &pe) {
			t.Errorf("ParsePath(%q) error = %v, want a *PathError %q", tc.arg, err, tc.msg)
			continue
		}
		if pe.Msg != tc.msg || pe.Arg != tc.arg {
			t.Errorf("ParsePath(%q) error = {Arg %q, Msg %q}, want Msg %q", tc.arg, pe.Arg, pe.Msg, tc.msg)
		}
	}
}

func TestPathErrorText(t *testing.T) {
	_, err := ParsePath("<x@y")
	if got, want := err.Error(), `bad SMTP path "<x@y": missing closing '>'`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	long := "<" + string(make([]byte, 0)) + repeat("a", 500)
	_, err = ParsePath(long)
	if got := err.Error(); len(got) > maxErrorArg+100 {
		t.Errorf("Error() is %d bytes for a %d-byte argument; want it bounded", len(got), len(long))
	}
}

func repeat(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}
