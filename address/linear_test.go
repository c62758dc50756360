package address

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
)

// pathological returns values of about n bytes that would make a careless
// parser quadratic or deep: long runs of one construct, unterminated ones,
// and many addresses.
func pathological(n int) map[string][]byte {
	rep := func(s string) []byte { return bytes.Repeat([]byte(s), n/len(s)) }
	return map[string][]byte{
		"commas":           rep(","),
		"open-parens":      rep("("),
		"close-parens":     rep(")"),
		"nested-comments":  append(rep("("), rep(")")...),
		"open-angles":      rep("<"),
		"quotes":           rep(`"`),
		"unterminated-q":   append([]byte(`"`), rep(`a\"`)...),
		"unterminated-c":   append([]byte(`(`), rep(`a@b (`)...),
		"backslashes":      rep(`\`),
		"dots":             rep("."),
		"ats":              rep("@"),
		"at-chain":         rep("a@"),
		"addresses":        rep("a@b,"),
		"many-mailboxes":   rep(`"Some Body" <some.body@example.com>, `),
		"words":            rep("w "),
		"brackets":         rep("["),
		"groups":           rep("g:a@b;"),
		"routes":           rep("<@a,@b:c@d>"),
		"long-atom":        rep("a"),
		"long-local":       rep("a."),
		"folds":            rep("\r\n "),
		"quote-then-paren": append([]byte(`"`), rep(`(`)...),
	}
}

// TestListWorkLinear counts the parser's work (bytes examined plus tokens
// handled) on pathological values of 1 KiB, 16 KiB and 256 KiB: it stays
// under a fixed multiple of the length, whatever the shape, so the time is
// linear without a clock in the test.
func TestListWorkLinear(t *testing.T) {
	// maxWorkPerByte: each byte is examined by the main pass and at most once
	// more by the fallback re-reading, and each byte yields at most one
	// token per pass: 4 per byte, plus slack for peeked tokens.
	const maxWorkPerByte = 5
	for _, n := range []int{1 << 10, 1 << 14, 1 << 18} {
		for name, v := range pathological(n) {
			_, work := appendList(nil, v)
			if work > maxWorkPerByte*len(v)+16 {
				t.Errorf("%s, %d bytes: work %d > %d per byte", name, len(v), work, maxWorkPerByte)
			}
		}
	}
}

// TestListMemoryBounded measures what ParseList allocates on pathological
// values of 256 KiB: within a fixed multiple of the value's length (the
// addresses it returns are copies), and next to nothing for values that
// hold no address.
func TestListMemoryBounded(t *testing.T) {
	// maxBytesPerByte: the returned strings copy at most twice the value
	// (the fallback re-reads what an unterminated quote swallowed), the
	// slice of Addr headers (32 bytes per address of at least 2 bytes)
	// doubles as it grows, and scratch buffers hold one address.
	const maxBytesPerByte = 48
	// Values with no address whose tokens never accumulate into a
	// candidate local part (a run of dots does, and is O(n) scratch).
	noAddress := map[string]bool{"commas": true, "open-parens": true, "close-parens": true,
		"nested-comments": true, "open-angles": true, "ats": true, "words": true,
		"brackets": true, "folds": true}
	for name, v := range pathological(1 << 18) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		addrs := ParseList(v)
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		if alloc > uint64(maxBytesPerByte*len(v)) {
			t.Errorf("%s: ParseList allocated %d bytes for a %d-byte value", name, alloc, len(v))
		}
		if noAddress[name] {
			if len(addrs) != 0 {
				t.Errorf("%s: %d addresses, want none", name, len(addrs))
			}
			// Nothing grows with the value: only constant scratch.
			const maxScratch = 4096
			if alloc > maxScratch {
				t.Errorf("%s: ParseList allocated %d bytes for a value with no address", name, alloc)
			}
		}
	}
}

func BenchmarkParseList(b *testing.B) {
	typical := []byte(`"Some Body" <some.body+tag@example.com> (forwarded), Other <other@example.org>`)
	b.Run("typical", func(b *testing.B) {
		b.SetBytes(int64(len(typical)))
		for b.Loop() {
			ParseList(typical)
		}
	})
	b.Run("delivered-to", func(b *testing.B) {
		v := []byte("user@local.test")
		b.SetBytes(int64(len(v)))
		for b.Loop() {
			ParseList(v)
		}
	})
	for _, n := range []int{1 << 10, 1 << 20} {
		for _, name := range []string{"commas", "nested-comments", "unterminated-q", "many-mailboxes", "at-chain"} {
			v := pathological(n)[name]
			b.Run(fmt.Sprintf("%s-%dKiB", name, n>>10), func(b *testing.B) {
				b.SetBytes(int64(len(v)))
				for b.Loop() {
					ParseList(v)
				}
			})
		}
	}
}

func BenchmarkParsePath(b *testing.B) {
	arg := "<some.body+tag@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;some.body+tag@example.com"
	for b.Loop() {
		ParsePath(arg)
	}
}

func BenchmarkKey(b *testing.B) {
	for _, a := range []Addr{{"Some.Body", "Example.COM"}, {`"some body"`, "bücher.example"}, {"δοκιμή", "παράδειγμα.δοκιμή"}} {
		b.Run(a.String(), func(b *testing.B) {
			for b.Loop() {
				_ = a.Key()
			}
		})
	}
}
