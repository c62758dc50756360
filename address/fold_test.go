package address

import (
	"testing"
	"unicode"
	"unicode/utf8"
)

// TestFoldFixedPoint checks every Unicode scalar value, alone and before a
// combining mark, so that the folding of the key is a fixed point for all
// of them, not only for the runes a property test happens to draw.
func TestFoldFixedPoint(t *testing.T) {
	marks := []rune{0x0301, 0x0308, 0x0345, 0x0307}
	failures := 0
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		if r < 0x80 && !unicode.IsUpper(r) && r != 'a' {
			continue // ASCII folds by a table lookup; its case letters are enough
		}
		// Unassigned code points and the large caseless scripts fold to
		// themselves; skipping them keeps the test fast.
		if !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.S, unicode.P) ||
			unicode.In(r, unicode.Han, unicode.Hangul, unicode.Tangut, unicode.Yi) {
			continue
		}
		ss := []string{string(r)}
		if unicode.IsLetter(r) && r < 0x20000 {
			for _, m := range marks {
				ss = append(ss, string(r)+string(m))
			}
		}
		for _, s := range ss {
			f := fold(s)
			if f2 := fold(f); f2 != f {
				failures++
				if failures <= 10 {
					t.Errorf("fold(%+q) = %+q, but fold of that is %+q", s, f, f2)
				}
			}
		}
	}
}

// TestFoldPostfix follows util/casefold.c casefoldx as fold_addr calls it
// with smtputf8_enable = yes: ASCII to lower case, UTF-8 with full default
// case folding and no normalisation, bytes that are not UTF-8 kept.
func TestFoldPostfix(t *testing.T) {
	for in, want := range map[string]string{
		"LoopUser@Local.TEST":     "loopuser@local.test",
		"Straße@X":                "strasse@x",
		"ÜSER@local.test":         "üser@local.test",
		"U\u0308SER@local.test":   "u\u0308ser@local.test", // decomposed stays decomposed
		"AB\xff@local.test":       "ab\xff@local.test",
		"\u13a0\uab70@local.test": "\u13a0\u13a0@local.test", // Cherokee folds to capitals
		`"Loop User"@Local.Test`:  `"loop user"@local.test`,
		"already@lower.case.test": "already@lower.case.test",
	} {
		if got := FoldPostfix(in); got != want {
			t.Errorf("FoldPostfix(%q) = %q, want %q", in, got, want)
		}
	}
	if FoldPostfix("\u00fcser") == FoldPostfix("u\u0308ser") {
		t.Errorf("composed and decomposed spellings fold alike; Postfix tells them apart")
	}
}
