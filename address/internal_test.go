package address

import "testing"

// TestLocalTextRoundTrip: the internal form of a local part, and back.
func TestLocalTextRoundTrip(t *testing.T) {
	for _, tc := range []struct{ local, text string }{
		{"user", "user"},
		{`"a b"`, "a b"},
		{`"a\"b"`, `a"b`},
		{`"user"`, "user"},
		{`"a@b"`, "a@b"},
	} {
		a := Addr{Local: tc.local, Domain: "x.example"}
		if got := a.LocalText(); got != tc.text {
			t.Errorf("Addr{%q}.LocalText() = %q, want %q", tc.local, got, tc.text)
		}
		b := FromText(tc.text, "x.example")
		if b.LocalText() != tc.text || b.Key() != a.Key() {
			t.Errorf("FromText(%q) = %+v: text %q key %q, want key %q", tc.text, b, b.LocalText(), b.Key(), a.Key())
		}
	}
}
