package core

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// scanCases are inputs for the scans: canonical lines with every framing
// trap (a bare LF, a leading dot, a CR alone, an LF at the start) at
// every position, so that each falls at every offset within a 16-byte
// step and at both ends of the input.
func scanCases() [][]byte {
	const line = "The quick brown fox jumps over the lazy dog\r\n" // 45 bytes
	base := []byte(line + line + line)
	var cases [][]byte
	for n := 0; n <= len(base); n++ {
		cases = append(cases, base[:n])
		for i := 0; i < n; i++ {
			for _, trap := range [][]byte{[]byte("\n"), []byte("\n."), []byte("."), []byte("\r"), []byte("\r\n."), []byte("\n\n")} {
				c := append([]byte{}, base[:n]...)
				c = append(c[:i], append(append([]byte{}, trap...), c[i:]...)...)
				cases = append(cases, c)
			}
		}
	}
	return cases
}

// The assembly and the portable statement of lfBlocks agree, and so do
// the two ways verbatimLines reads a line, on every scanCases input.
func TestVerbatimLinesImplementationsAgree(t *testing.T) {
	for _, p := range scanCases() {
		checkScans(t, p)
	}
	// Inputs long enough for several 128-position steps, with each
	// trap at every position.
	long := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog\r\n", 9))
	for i := range long {
		for _, trap := range []string{"\n", "\n.", "\r\n.", "."} {
			c := append(append(append([]byte{}, long[:i]...), trap...), long[i:]...)
			checkScans(t, c)
			checkScans(t, c[:len(c)-i/3])
		}
	}
	// And on random mixes of the bytes that matter.
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("\r\n.ab")
	for range 20000 {
		p := make([]byte, rng.IntN(600))
		for i := range p {
			p[i] = alphabet[rng.IntN(len(alphabet))]
		}
		checkScans(t, p)
	}
}

func checkScans(t *testing.T, p []byte) {
	t.Helper()
	wantNext, wantBad := lfBlocksPortable(p)
	for name, fn := range lfBlocksImpls() {
		if next, bad := fn(p); next != wantNext || bad != wantBad {
			t.Fatalf("%s(%q) = %d, %v; the portable version gives %d, %v", name, p, next, bad, wantNext, wantBad)
		}
	}
	if got, want := verbatimLinesBlocks(p), verbatimLinesByLine(p); got != want {
		t.Fatalf("verbatimLines(%q): %d by blocks, %d by line", p, got, want)
	}
}

// TestVerbatimLinesBlocksExamples pins what the prefix is, for readers;
// TestVerbatimLinesImplementationsAgree covers the rest.
func TestVerbatimLinesBlocksExamples(t *testing.T) {
	long := bytes.Repeat([]byte("0123456789abcdef"), 8) // no line end: 128 bytes
	for _, c := range []struct {
		in   string
		want int
	}{
		{"", 0},
		{".a\r\n", 0},
		{"\n", 0},
		{"a\r\nb\r\n", 6},
		{"a\r\nb", 3},
		{"a\r\n.b\r\n", 3},
		{"a\r\nb\nc\r\n", 3},
		{"a\rb\r\nc", 5},
		{string(long) + "\r\n" + string(long) + "\n", len(long) + 2},
		{string(long) + "\r\n" + string(long) + "\r\n." + string(long), 2*len(long) + 4},
	} {
		if got := verbatimLinesBlocks([]byte(c.in)); got != c.want {
			t.Errorf("verbatimLinesBlocks(%q) = %d, want %d", c.in, got, c.want)
		}
		if got := verbatimLinesByLine([]byte(c.in)); got != c.want {
			t.Errorf("verbatimLinesByLine(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

// FuzzVerbatimLines checks lfBlocks (the assembly on amd64) against its
// portable statement, and the two ways of reading verbatimLines against
// each other, on any input and at any offset from an aligned address.
func FuzzVerbatimLines(f *testing.F) {
	for _, p := range scanCases()[:300] {
		f.Add(p, uint8(0))
	}
	f.Add([]byte("a\r\n.\r\n"), uint8(3))
	f.Fuzz(func(t *testing.T, p []byte, shift uint8) {
		buf := make([]byte, int(shift%64)+len(p))
		q := buf[shift%64:]
		copy(q, p)
		checkScans(t, q)
	})
}

// BenchmarkVerbatimLines reads 64 KiB (one data read) of 78-byte
// canonical lines both ways: the ratio is what lfBlocks saves per byte of
// message data.
func BenchmarkVerbatimLines(b *testing.B) {
	const line = "The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqrst\r\n"
	p := bytes.Repeat([]byte(line), (64<<10)/len(line))
	for _, impl := range []struct {
		name string
		fn   func([]byte) int
	}{{"by-line", verbatimLinesByLine}, {"blocks", verbatimLinesBlocks}} {
		b.Run("impl="+impl.name, func(b *testing.B) {
			b.SetBytes(int64(len(p)))
			for b.Loop() {
				if impl.fn(p) != len(p) {
					b.Fatal("the lines did not all pass")
				}
			}
		})
	}
}
