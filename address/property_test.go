package address

import (
	"strings"
	"testing"
	"unicode"

	"golang.org/x/net/idna"
	"pgregory.net/rapid"
)

// valueGen draws header values biased towards the bytes that matter to the
// parser: specials, quotes, backslashes, folding, 8-bit and UTF-8.
func valueGen() *rapid.Generator[string] {
	pieces := []string{
		"a", "b", "Z", "0", "+", "-", "_", ".", "..", "@", ",", ";", ":", "<", ">",
		"(", ")", "[", "]", `"`, `\`, " ", "\t", "\r\n ", "\x00", "\x7f", "\xff", "\xc3",
		"ü", "Ü", "ß", "ẞ", "Σ", "ς", "ﬁ", "K", "İ", "ı", "。", "．", "xn--", "xn--bcher-kva",
		"IPv6:", "::1", "192.0.2.1", "user", "example.com", "postmaster",
	}
	return rapid.Custom(func(t *rapid.T) string {
		n := rapid.IntRange(0, 24).Draw(t, "n")
		var b strings.Builder
		for range n {
			b.WriteString(rapid.SampledFrom(pieces).Draw(t, "piece"))
		}
		return b.String()
	})
}

// TestPropertyKeyIdempotent: the key of every parsed address, parsed back as
// an addr-spec, yields one address with the same key.
func TestPropertyKeyIdempotent(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		v := valueGen().Draw(t, "value")
		for _, a := range ParseList([]byte(v)) {
			checkKeyFixedPoint(t, a)
		}
		if p, err := ParsePath(v); err == nil && !p.Null {
			checkKeyFixedPoint(t, p.Addr)
		}
	})
}

func checkKeyFixedPoint(t *rapid.T, a Addr) {
	k := a.Key()
	again := ParseList([]byte(k))
	if len(again) != 1 {
		t.Fatalf("key %q of %#v parses as %d addresses %#v, want 1", k, a, len(again), again)
	}
	if k2 := again[0].Key(); k2 != k {
		t.Fatalf("key of %#v is %q, but the key of that key is %q", a, k, k2)
	}
}

// TestPropertyListRoundTrip: every address ParseList returns re-parses, as
// an addr-spec and as a path in <...>, to the same key.
func TestPropertyListRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		v := valueGen().Draw(t, "value")
		for _, a := range ParseList([]byte(v)) {
			checkReparse(t, a)
		}
	})
}

func checkReparse(t *rapid.T, a Addr) {
	k := a.Key()
	s := a.String()
	again := ParseList([]byte(s))
	if len(again) != 1 || again[0].Key() != k {
		t.Fatalf("%#v: String %q re-parses as %#v, want one address with key %q", a, s, again, k)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return // a path never holds NUL: ParsePath refuses it by design
	}
	p, err := ParsePath("<" + s + ">")
	if err != nil {
		t.Fatalf("%#v: ParsePath(<%s>): %v", a, s, err)
	}
	if p.Null || p.Key() != k {
		t.Fatalf("%#v: ParsePath(<%s>) = %#v with key %q, want key %q", a, s, p, p.Key(), k)
	}
}

// genMailbox is one mailbox in parts, from which the spellings are made.
type genMailbox struct {
	atoms  []string // local part atoms, joined by dots; or
	quoted string   // a local part that needs quotes (when atoms is nil)
	labels []string // domain labels, U-labels allowed
}

var (
	// Letters whose upper case folds back to them (not ı, ſ, K, which fold
	// to ASCII from a different upper case).
	localLetters  = []rune("abcdefghijklmnopqrstuvwxyz0123456789äöüéèçñøåæδοκιμήσλ")
	localSymbols  = []rune("!#$%&'*+-/=?^_`{|}~")
	domainLetters = []rune("abcdefghijklmnopqrstuvwxyz0123456789äöüéñçø")
	quotedRunes   = []rune(`ab c."\@(),:;<>[]ü`)
)

func mailboxGen() *rapid.Generator[genMailbox] {
	word := func(t *rapid.T, letters []rune, label string) string {
		n := rapid.IntRange(1, 6).Draw(t, label+"len")
		r := make([]rune, n)
		for i := range r {
			r[i] = rapid.SampledFrom(letters).Draw(t, label)
		}
		return string(r)
	}
	return rapid.Custom(func(t *rapid.T) genMailbox {
		var m genMailbox
		if rapid.IntRange(0, 3).Draw(t, "needsQuotes") == 0 {
			n := rapid.IntRange(0, 6).Draw(t, "qlen")
			r := make([]rune, n)
			for i := range r {
				r[i] = rapid.SampledFrom(quotedRunes).Draw(t, "qrune")
			}
			m.quoted = string(r)
			if isDotAtom(m.quoted) {
				m.quoted += " " // keep it a local part that needs quotes
			}
		} else {
			letters := append(append([]rune{}, localLetters...), localSymbols...)
			for range rapid.IntRange(1, 3).Draw(t, "atoms") {
				m.atoms = append(m.atoms, word(t, letters, "latom"))
			}
		}
		for range rapid.IntRange(1, 3).Draw(t, "labels") {
			m.labels = append(m.labels, word(t, domainLetters, "label"))
		}
		return m
	})
}

// randomCase changes the case of some runes.
func randomCase(t *rapid.T, s, label string) string {
	r := []rune(s)
	for i := range r {
		switch rapid.IntRange(0, 2).Draw(t, label) {
		case 1:
			r[i] = unicode.ToUpper(r[i])
		case 2:
			r[i] = unicode.ToLower(r[i])
		}
	}
	return string(r)
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// spell draws one spelling of m as an addr-spec.
func spell(t *rapid.T, m genMailbox) string {
	var local string
	if m.atoms == nil {
		q := randomCase(t, m.quoted, "qcase")
		// Escape some runes that need no escaping: "a\b" is "ab".
		var b strings.Builder
		b.WriteByte('"')
		for _, r := range q {
			if r == '"' || r == '\\' || rapid.IntRange(0, 4).Draw(t, "escape") == 0 {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
		local = b.String()
	} else {
		atoms := make([]string, len(m.atoms))
		for i, a := range m.atoms {
			atoms[i] = randomCase(t, a, "lcase")
		}
		switch rapid.IntRange(0, 2).Draw(t, "quoting") {
		case 0:
			local = strings.Join(atoms, ".")
		case 1:
			local = quote(strings.Join(atoms, "."))
		case 2:
			for i := range atoms {
				if rapid.Bool().Draw(t, "quoteAtom") {
					atoms[i] = quote(atoms[i])
				}
			}
			local = strings.Join(atoms, ".")
		}
	}
	domain := strings.Join(m.labels, ".")
	if rapid.Bool().Draw(t, "alabel") {
		a, err := idna.Lookup.ToASCII(domain)
		if err != nil {
			t.Skipf("IDNA refuses the generated domain %q: %v", domain, err)
		}
		domain = a
	}
	domain = randomCase(t, domain, "dcase")
	if rapid.Bool().Draw(t, "rootDot") {
		domain += "."
	}
	return local + "@" + domain
}

// TestPropertyEquivalentSpellings: spellings of one genMailbox, alone, in
// lists with display names, comments and groups, and as paths, all give
// the key of the genMailbox.
func TestPropertyEquivalentSpellings(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := mailboxGen().Draw(t, "genMailbox")
		base := spell(t, m)
		baseAddrs := ParseList([]byte(base))
		if len(baseAddrs) != 1 {
			t.Fatalf("ParseList(%q) = %#v, want one address", base, baseAddrs)
		}
		want := baseAddrs[0].Key()

		s := spell(t, m)
		if got := ParseList([]byte(s)); len(got) != 1 || got[0].Key() != want {
			t.Fatalf("ParseList(%q) = %#v, want one address with key %q (from %q)", s, got, want, base)
		}
		other := "other@elsewhere.example"
		values := []string{
			"<" + s + ">",
			"Display Name <" + s + ">",
			`"Name, Q." <` + s + "> (forwarded)",
			s + " (comment (nested))",
			"(lead)" + s,
			other + ", " + s,
			"group: " + other + ", Someone <" + s + ">;",
			"Name\r\n <" + s + ">",
			"<@route.example:" + s + ">",
		}
		if m.atoms != nil {
			// Obsolete spelling: CFWS around the dots and the '@'.
			cfws := strings.Join(m.atoms, " . ") + " (c) @ (d) " + strings.Join(m.labels, " .(e) ")
			values = append(values, cfws, "Name <"+cfws+">")
		}
		for _, v := range values {
			found := false
			for _, a := range ParseList([]byte(v)) {
				if a.Key() == want {
					found = true
				}
			}
			if !found {
				t.Fatalf("ParseList(%q) = %#v: no address with key %q", v, ParseList([]byte(v)), want)
			}
		}
		for _, arg := range []string{"<" + s + ">", " <" + s + "> NOTIFY=NEVER", "< " + s + " >", "<@r.example:" + s + "> SIZE=1"} {
			p, err := ParsePath(arg)
			if err != nil {
				t.Fatalf("ParsePath(%q): %v", arg, err)
			}
			if p.Key() != want {
				t.Fatalf("ParsePath(%q) key %q, want %q", arg, p.Key(), want)
			}
		}
	})
}
