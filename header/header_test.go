package header

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// sectionCase is one message and how its lines are read. kinds lists the
// kind of every line up to and including the one that ends the section (no
// End when the whole message is header section).
type sectionCase struct {
	name  string
	msg   string
	end   int
	kinds []LineKind
}

var (
	fs = FieldStart
	co = Continuation
	en = End
)

func sectionCases() []sectionCase {
	long := strings.Repeat("x", 100_000)
	return []sectionCase{
		{"empty input", "", 0, nil},
		{"empty line first", "\r\nSubject: x\r\n", 0, []LineKind{en}},
		{"bare LF empty line first", "\nSubject: x\n", 0, []LineKind{en}},
		{"one field then body", "Subject: x\r\n\r\nbody\r\n", 12, []LineKind{fs, en}},
		{"LF line ends", "Subject: x\nTo: y\n\nbody\n", 17, []LineKind{fs, fs, en}},
		{"mixed line ends", "Subject: x\r\nTo: y\n\r\nbody\n", 18, []LineKind{fs, fs, en}},
		{"no final line end", "Subject: x", 10, []LineKind{fs}},
		{"no final line end after CRLF", "A: 1\r\nB: 2", 10, []LineKind{fs, fs}},
		{"whole input is header", "A: 1\r\nB: 2\r\n", 12, []LineKind{fs, fs}},
		{"non-header line ends it", "A: 1\r\nnot a header\r\nB: 2\r\n\r\n", 6, []LineKind{fs, en}},
		{"From_ line is not a field", "From foo@bar Mon Jan  1 00:00:00 2024\r\nA: 1\r\n", 0, []LineKind{en}},
		{"From_ line after a field", "A: 1\r\nFrom foo@bar Mon\r\n", 6, []LineKind{fs, en}},
		{"continuation", "Subject: a\r\n b\r\n\tc\r\n\r\n", 20, []LineKind{fs, co, co, en}},
		{"leading SP line", " x: y\r\nA: 1\r\n", 0, []LineKind{en}},
		{"leading HTAB line", "\tx\r\nA: 1\r\n", 0, []LineKind{en}},
		{"WSP before colon", "Delivered-To : a@b\r\nX\t \t: y\r\n\r\n", 29, []LineKind{fs, fs, en}},
		{"WSP inside name", "Delivered To: a@b\r\n", 0, []LineKind{en}},
		{"WSP then more name", "aaaa bbb\r\n", 0, []LineKind{en}},
		{"colon first", ": x\r\n", 0, []LineKind{en}},
		{"colon first after a field", "A: 1\r\n:x\r\n", 6, []LineKind{fs, en}},
		{"empty value", "A:\r\nB:\r\n", 8, []LineKind{fs, fs}},
		{"8-bit name byte", "S\xc3\xbcbject: x\r\n", 0, []LineKind{en}},
		{"8-bit name byte after a field", "A: 1\r\n\xffB: 2\r\n", 6, []LineKind{fs, en}},
		{"8-bit value kept in section", "Subject: \xc3\xbc\xff\r\n\r\n", 14, []LineKind{fs, en}},
		{"NUL in name", "Sub\x00ject: x\r\n", 0, []LineKind{en}},
		{"NUL line start", "A: 1\r\n\x00: x\r\n", 6, []LineKind{fs, en}},
		{"NUL in value", "A: \x00\r\n\r\n", 6, []LineKind{fs, en}},
		{"DEL in name", "Sub\x7fject: x\r\n", 0, []LineKind{en}},
		{"control in name", "Sub\x01ject: x\r\n", 0, []LineKind{en}},
		{"ESC line start", "A: 1\r\n\x1bx: 2\r\n", 6, []LineKind{fs, en}},
		{"printable punctuation name", "(!#@[]~): x\r\n", 13, []LineKind{fs}},
		{"CR inside value", "A: 1\r2\r\n\r\n", 8, []LineKind{fs, en}},
		{"CR before CRLF is content", "A: 1\r\r\n\r\n", 7, []LineKind{fs, en}},
		{"CR as WSP before colon", "Subject\r: x\r\n\r\n", 13, []LineKind{fs, en}},
		{"CR inside name", "Sub\rject: x\r\n", 0, []LineKind{en}},
		{"CR-led line continues", "A: 1\r\n\rx\r\nDelivered-To: u@x\r\n\r\n", 29, []LineKind{fs, co, fs, en}},
		{"CR alone line continues", "A: 1\r\n\r\r\nB: 2\r\n\r\n", 15, []LineKind{fs, co, fs, en}},
		{"VT-led line continues", "A: 1\r\n\vx\r\nB: 2\r\n\r\n", 16, []LineKind{fs, co, fs, en}},
		{"FF-led line continues", "A: 1\n\fx\nB: 2\n\n", 13, []LineKind{fs, co, fs, en}},
		{"leading VT line", "\vx\r\nB: 2\r\n\r\n", 10, []LineKind{co, fs, en}},
		{"leading CR line then WSP line", "\rx\r\n y\r\nB: 2\r\n", 14, []LineKind{co, co, fs}},
		{"VT inside name", "A\v: 1\r\n", 0, []LineKind{en}},
		{"long name", long + ": v\r\n\r\n", len(long) + 5, []LineKind{fs, en}},
		{"long name without colon", long + "\r\n", 0, []LineKind{en}},
		{"long value", "A: " + long + "\r\n" + "\t" + long + "\r\nx\r\n", 2*len(long) + 8, []LineKind{fs, co, en}},
		{"Received and Delivered-To",
			"Received: from a.example (a.example [192.0.2.1])\r\n\tby b.example (Postfix) with ESMTP id 4F1\r\n\tfor <u@b.example>; Mon, 1 Jan 2024 00:00:00 +0000 (UTC)\r\nDelivered-To: u@b.example\r\n\r\nHi\r\n",
			178, []LineKind{fs, co, co, fs, en}},
	}
}

// splitLines splits msg into line contents the way the package defines lines.
func splitLines(msg string) []string {
	var lines []string
	for len(msg) > 0 {
		i := strings.IndexByte(msg, '\n')
		if i < 0 {
			lines = append(lines, msg)
			break
		}
		lines = append(lines, strings.TrimSuffix(msg[:i], "\r"))
		msg = msg[i+1:]
	}
	return lines
}

func TestSectionEnd(t *testing.T) {
	for _, tc := range sectionCases() {
		if got := SectionEnd([]byte(tc.msg)); got != tc.end {
			t.Errorf("%s: SectionEnd(%.60q) = %d, want %d", tc.name, tc.msg, got, tc.end)
		}
	}
}

// classifyWhole feeds every line of msg in pieces of size piece (whole lines
// when piece <= 0) and returns the kinds EndLine gives, stopping after End.
func classifyWhole(msg string, piece int) []LineKind {
	var c Classifier
	var kinds []LineKind
	for _, line := range splitLines(msg) {
		b := []byte(line)
		for piece > 0 && len(b) > piece {
			c.Feed(b[:piece])
			b = b[piece:]
		}
		c.Feed(b)
		k := c.EndLine()
		kinds = append(kinds, k)
		if k == End {
			break
		}
	}
	return kinds
}

func TestClassifierKinds(t *testing.T) {
	for _, tc := range sectionCases() {
		for _, piece := range []int{0, 1, 2, 7, 4096} {
			if diff := cmp.Diff(tc.kinds, classifyWhole(tc.msg, piece)); diff != "" {
				t.Errorf("%s, pieces of %d: kinds (-want +got):\n%s", tc.name, piece, diff)
			}
		}
	}
}

// TestClassifierDecidesEarly checks that a line is decided by the first byte
// that decides it, not at its end.
func TestClassifierDecidesEarly(t *testing.T) {
	cases := []struct {
		name     string
		previous []string // whole lines fed before
		line     string   // fed byte by byte
		at       int      // index of the byte that decides
		want     LineKind
	}{
		{"name then WSP then name byte", nil, "aaaa bbb", 5, End},
		{"colon", nil, "Subject: x", 7, FieldStart},
		{"colon after WSP", nil, "Subject \t: x", 9, FieldStart},
		{"SP after a field", []string{"A: 1"}, " continued", 0, Continuation},
		{"HTAB after a continuation", []string{"A: 1", " x"}, "\tmore", 0, Continuation},
		{"SP first", nil, " x", 0, End},
		{"VT first", nil, "\vx", 0, Continuation},
		{"8-bit in name", nil, "Sub\xffject:", 3, End},
		{"colon first", nil, ":x", 0, End},
		{"NUL first", []string{"A: 1"}, "\x00", 0, End},
	}
	for _, tc := range cases {
		var c Classifier
		for _, l := range tc.previous {
			c.Feed([]byte(l))
			if k := c.EndLine(); k == End {
				t.Fatalf("%s: setup line %q ended the section", tc.name, l)
			}
		}
		for i := range len(tc.line) {
			k := c.Feed([]byte{tc.line[i]})
			if i < tc.at && k != Undecided {
				t.Errorf("%s: decided %v at byte %d, before byte %d", tc.name, k, i, tc.at)
				break
			}
			if i >= tc.at && k != tc.want {
				t.Errorf("%s: Feed gives %v at byte %d, want %v", tc.name, k, i, tc.want)
				break
			}
		}
		if k := c.EndLine(); k != tc.want {
			t.Errorf("%s: EndLine = %v, want %v", tc.name, k, tc.want)
		}
	}
}

// TestClassifierHugeLine streams a 64 MiB name-like line in 4 KiB pieces:
// it stays undecided (no colon yet) without growing, and a WSP followed by
// a name byte decides End at once.
func TestClassifierHugeLine(t *testing.T) {
	piece := bytes.Repeat([]byte("a"), 4096)
	var c Classifier
	for range 64 << 20 / len(piece) {
		if k := c.Feed(piece); k != Undecided {
			t.Fatalf("a name without colon decided %v", k)
		}
	}
	if k := c.Feed([]byte(" ")); k != Undecided {
		t.Fatalf("WSP after a name decided %v", k)
	}
	if k := c.Feed([]byte("b")); k != End {
		t.Fatalf("name, WSP, name byte: %v, want End", k)
	}
	if k := c.Feed(piece); k != End {
		t.Fatalf("after End, Feed gives %v", k)
	}
	if k := c.EndLine(); k != End {
		t.Fatalf("EndLine after End: %v", k)
	}
	c.Feed([]byte("Subject: x"))
	if k := c.EndLine(); k != End {
		t.Fatalf("a field line after End: %v, want End to stay", k)
	}
}

func TestClassifierZeroValueEmptyLine(t *testing.T) {
	var c Classifier
	if k := c.Feed(nil); k != Undecided {
		t.Fatalf("Feed(nil) on a fresh line: %v", k)
	}
	if k := c.EndLine(); k != End {
		t.Fatalf("an empty first line: %v, want End", k)
	}
}
