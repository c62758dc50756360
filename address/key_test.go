package address

import "testing"

// TestKeyEqual lists spellings of one mailbox that must share a key.
func TestKeyEqual(t *testing.T) {
	groups := [][]Addr{
		{{"user", "example.com"}, {"USER", "EXAMPLE.COM"}, {"User", "Example.Com."}, {`"user"`, "example.com"}, {`"USER"`, "example.com."}, {`"us"er`, "example.com"}, {`us\er`, "example.com"}},
		{{"ab", "x"}, {`"a\b"`, "x"}, {`"a""b"`, "x"}},
		{{"first.last", "x"}, {`"first.last"`, "x"}, {`"first".last`, "x"}, {`"first"."last"`, "x"}},
		{{`"a b"`, "x"}, {`"A B"`, "x"}, {`"a\ b"`, "x"}, {`a\ b`, "x"}},
		{{`"a\"b"`, "x"}, {`a\"b`, "x"}},
		{{`""`, "x"}, {`""""`, "x"}},
		{{"u", "bücher.example"}, {"u", "BÜCHER.example"}, {"u", "xn--bcher-kva.example"}, {"u", "XN--BCHER-KVA.EXAMPLE."}, {"u", "bu\u0308cher.example"}},
		{{"u", "例子.广告"}, {"u", "例子。广告"}, {"u", "xn--fsqu00a.xn--4rr70v"}},
		{{"straße", "x"}, {"STRASSE", "x"}, {"strasse", "x"}},
		// Postfix folds the domain as it folds the local part (observed:
		// local(8) bounces u@straße.test for the recipient u@strasse.test).
		{{"u", "strasse.example"}, {"u", "straße.example"}, {"u", "STRAẞE.example"}, {"u", "xn--strae-oqa.example"}},
		{{"u", "xn--4xaa.example"}, {"u", "σσ.example"}, {"u", "σς.example"}, {"u", "ΣΣ.example"}},
		{{"δοκιμή", "x"}, {"ΔΟΚΙΜΉ", "x"}},
		{{"é", "x"}, {"e\u0301", "x"}, {"É", "x"}, {"E\u0301", "x"}},
		{{"u", "[192.0.2.1]"}, {"U", "[ 192.0.2.1 ]"}, {"u", "[192.0.2.1"}},
		{{"u", "[IPv6:2001:DB8:0::1]"}, {"u", "[ipv6:2001:db8::1]"}, {"u", "[IPV6:2001:0db8:0000:0000:0000:0000:0000:0001]"}, {"u", "[2001:db8::1]"}},
		{{"u", "[Tag:Some Thing]"}, {"u", "[tag:some thing]"}},
		{{"u", "a_b.example"}, {"u", "A_B.EXAMPLE."}},
		{{"Postmaster", ""}, {"postmaster", ""}, {`"POSTMASTER"`, ""}},
		{{"u", "a..b"}, {"U", "A..B"}},
		{{"user", "x\r\n"}, {"us\r\ner", "x"}},
	}
	for _, g := range groups {
		want := g[0].Key()
		for _, a := range g[1:] {
			if got := a.Key(); got != want {
				t.Errorf("%#v.Key() = %q, want %q (the key of %#v)", a, got, want, g[0])
			}
		}
	}
}

// TestKeyDiffer lists pairs of different mailboxes that must not share a key.
func TestKeyDiffer(t *testing.T) {
	pairs := [][2]Addr{
		{{"user", "x"}, {"user+ext", "x"}},
		{{"user", "x"}, {"user", "y"}},
		{{"postmaster", ""}, {"postmaster", "x"}},
		{{`"a b"`, "x"}, {`"a  b"`, "x"}},
		{{`"a b"`, "x"}, {"ab", "x"}},
		{{`"a.b"`, "x"}, {`"a..b"`, "x"}},
		{{"u", "x."}, {"u", "x.."}},
		{{"u", "[192.0.2.1]"}, {"u", "[192.0.2.2]"}},
		{{"u", "[192.0.2.1]"}, {"u", "192.0.2.1"}},
		{{"u", "[IPv6:::ffff:192.0.2.1]"}, {"u", "[192.0.2.1]"}},
		{{`"a@b"`, "c"}, {"a", "b@c"}},
		{{"", ""}, {`""`, ""}},
		{{"a\xff", "x"}, {"a\xfe", "x"}},
	}
	for _, p := range pairs {
		if k0, k1 := p[0].Key(), p[1].Key(); k0 == k1 {
			t.Errorf("%#v and %#v share the key %q", p[0], p[1], k0)
		}
	}
}

func TestKeyForm(t *testing.T) {
	tests := []struct {
		a    Addr
		want string
	}{
		{Addr{"User", "Example.COM."}, "user@example.com"},
		{Addr{`"a b"`, "x"}, `"a b"@x`},
		{Addr{`"a\"b\\c"`, "x"}, `"a\"b\\c"@x`},
		{Addr{`"a@b"`, "c"}, `"a@b"@c`},
		{Addr{"a@b", "c"}, `"a@b"@c`},
		{Addr{".a", "x"}, `".a"@x`},
		{Addr{"a.", "x"}, `"a."@x`},
		{Addr{"u", "BÜCHER.example"}, "u@xn--bcher-kva.example"},
		{Addr{"u", "[IPv6:2001:DB8:0::1]"}, "u@[ipv6:2001:db8::1]"},
		{Addr{"u", "[x\\]y]"}, `u@[x\]y]`},
		{Addr{"Postmaster", ""}, "postmaster"},
		{Addr{}, ""},
	}
	for _, tc := range tests {
		if got := tc.a.Key(); got != tc.want {
			t.Errorf("%#v.Key() = %q, want %q", tc.a, got, tc.want)
		}
	}
}

func TestKeyCherokee(t *testing.T) {
	// CaseFolding.txt: AB70; C; 13A0 and 13F8; C; 13F0: Cherokee folds to
	// upper case.
	for _, p := range [][2]string{{"\u13a0", "\uab70"}, {"\u13f0", "\u13f8"}, {"\u13ef", "\uabbf"}} {
		k0, k1 := (Addr{p[0], "x"}).Key(), (Addr{p[1], "x"}).Key()
		if k0 != k1 || k0 != p[0]+"@x" {
			t.Errorf("keys of %+q and %+q: %+q and %+q, want both %+q", p[0], p[1], k0, k1, p[0]+"@x")
		}
	}
}
