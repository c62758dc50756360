package address

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseList(t *testing.T) {
	a := func(local, domain string) Addr { return Addr{local, domain} }
	tests := []struct {
		value string
		want  []Addr
	}{
		// Plain values as Postfix writes them.
		{"user@local.test", []Addr{a("user", "local.test")}},
		{"user+ext@local.test", []Addr{a("user+ext", "local.test")}},
		{`"a b"@local.test`, []Addr{a(`"a b"`, "local.test")}},
		{"  user@local.test  \t", []Addr{a("user", "local.test")}},
		{"USER@LOCAL.TEST", []Addr{a("USER", "LOCAL.TEST")}},
		// The header spellings of reference/original.md.
		{"<user@local.test>", []Addr{a("user", "local.test")}},
		{`"Name" <user@local.test> (fwd)`, []Addr{a("user", "local.test")}},
		{"user@local.test (comment)", []Addr{a("user", "local.test")}},
		{"a@other.test, user@local.test", []Addr{a("a", "other.test"), a("user", "local.test")}},
		{"Some Body\r\n <user@local.test>", []Addr{a("user", "local.test")}},
		{"\"Some\r\n Body\" <user@local.test>", []Addr{a("user", "local.test")}},
		{"user@local.test.", []Addr{a("user", "local.test.")}},
		{`"user"@local.test`, []Addr{a(`"user"`, "local.test")}},
		// Display names.
		{"Joe Q. Public <john.q.public@example.com>", []Addr{a("john.q.public", "example.com")}},
		{`"Joe Q. Public" <john.q.public@example.com>`, []Addr{a("john.q.public", "example.com")}},
		{"J\xc3\xb6rg <j@example.com>", []Addr{a("j", "example.com")}},
		{"=?utf-8?q?J=C3=B6rg?= <j@example.com>", []Addr{a("j", "example.com")}},
		{`"a@b" <c@d>`, []Addr{a("c", "d")}},
		{"john@doe <x@y>", []Addr{a("john", "doe"), a("x", "y")}},
		// Comments, nested and with quoted pairs.
		{"(a (nested (deep)) comment) user@local.test (x)", []Addr{a("user", "local.test")}},
		{`user@local.test (a \) b)`, []Addr{a("user", "local.test")}},
		{"user(c)@(c)local(c).(c)test", []Addr{a("user", "local.test")}},
		// Groups.
		{"undisclosed: a@b, c@d;", []Addr{a("a", "b"), a("c", "d")}},
		{"undisclosed-recipients:;", nil},
		{"g1: a@b;, g2: c@d;", []Addr{a("a", "b"), a("c", "d")}},
		{"g: postmaster;", []Addr{a("postmaster", "")}},
		// Obsolete forms.
		{"<@r1,@r2:user@local.test>", []Addr{a("user", "local.test")}},
		{"first . last @ example . com", []Addr{a("first.last", "example.com")}},
		{`"first".last@example.com`, []Addr{a(`"first".last`, "example.com")}},
		{"a@b,,c@d", []Addr{a("a", "b"), a("c", "d")}},
		{", ,a@b, ,", []Addr{a("a", "b")}},
		// Literals and UTF-8.
		{"u@[192.0.2.1]", []Addr{a("u", "[192.0.2.1]")}},
		{"u@[IPv6:2001:db8::1]", []Addr{a("u", "[IPv6:2001:db8::1]")}},
		{"用户@例子.广告", []Addr{a("用户", "例子.广告")}},
		// Bare local parts.
		{"postmaster", []Addr{a("postmaster", "")}},
		{"<Postmaster>", []Addr{a("Postmaster", "")}},
		{"postmaster (the boss)", []Addr{a("postmaster", "")}},
		{"a@b, postmaster", []Addr{a("a", "b"), a("postmaster", "")}},
		{"Undisclosed recipients", nil},
		{"Name <x@y> trailing", []Addr{a("x", "y")}},
		// Nothing there.
		{"", nil},
		{"   ", nil},
		{"<>", nil},
		{"(only a comment)", nil},
		{"@", nil},
		{"x@", nil},
		{"@y", nil},
		{"x@.", nil},
		{"x@.example", []Addr{a("x", ".example")}},
		// Invalid values: the fallback still finds the addr-specs.
		{"foo bar@x <baz@y", []Addr{a("bar", "x"), a("baz", "y")}},
		{"<<user@local.test", []Addr{a("user", "local.test")}},
		{"user@local.test>>", []Addr{a("user", "local.test")}},
		{`garbage "unterminated user@local.test <junk`, []Addr{a("user", "local.test")}},
		{"(unterminated comment user@local.test", []Addr{a("user", "local.test")}},
		{"((( deep user@local.test", []Addr{a("user", "local.test")}},
		{"x@[unterminated user@local.test", []Addr{a("x", "[unterminated user@local.test]"), a("user", "local.test")}},
		{"a@b@c", []Addr{a("a", "b")}},
		{"a@b c@d", []Addr{a("a", "b"), a("c", "d")}},
		{"<a@b>c@d", []Addr{a("a", "b"), a("c", "d")}},
		{"a@b;c@d:e@f", []Addr{a("a", "b"), a("c", "d"), a("e", "f")}},
		{`us"er"@x`, []Addr{a(`us"er"`, "x")}},
		{"x@y\x00z@w", []Addr{a("x", "y"), a("z", "w")}},
		{"user@local.test\x00junk", []Addr{a("user", "local.test")}},
	}
	for _, tc := range tests {
		got := ParseList([]byte(tc.value))
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("ParseList(%q) mismatch (-want +got):\n%s", tc.value, diff)
		}
	}
}

func TestAppendListReusesAndCopies(t *testing.T) {
	buf := []byte("a@b, c@d")
	dst := make([]Addr, 0, 8)
	got := AppendList(dst[:0], buf)
	if len(got) != 2 || &got[:1][0] != &dst[:1][0] {
		t.Fatalf("AppendList did not append into dst's array: %v", got)
	}
	copy(buf, "x@y, z@w")
	want := []Addr{{"a", "b"}, {"c", "d"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("addresses changed when the value was overwritten (-want +got):\n%s", diff)
	}
	prefix := []Addr{{"keep", "me"}}
	got = AppendList(prefix, []byte("q@r"))
	if diff := cmp.Diff([]Addr{{"keep", "me"}, {"q", "r"}}, got); diff != "" {
		t.Errorf("AppendList onto a prefix (-want +got):\n%s", diff)
	}
}
