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

// fieldView is a Field as strings, for readable diffs.
type fieldView struct {
	Name, Raw string
	Value     *string // nil when Value returns nil
}

func viewFields(section []byte) []fieldView {
	var out []fieldView
	for f := range Fields(section) {
		v := fieldView{Name: string(f.Name), Raw: string(f.Raw)}
		if val := f.Value(); val != nil {
			s := string(val)
			v.Value = &s
		}
		out = append(out, v)
	}
	return out
}

func fv(name, raw, value string) fieldView {
	return fieldView{Name: name, Raw: raw, Value: &value}
}

func TestFields(t *testing.T) {
	long := strings.Repeat("v", 70_000)
	longName := strings.Repeat("N", 70_000)
	cases := []struct {
		name string
		msg  string
		want []fieldView
	}{
		{"empty", "", nil},
		{"empty line only", "\r\nA: 1\r\n", nil},
		{"two fields and body", "Subject: hello\r\nTo: a@b,\r\n c@d\r\n\r\nbody\r\n", []fieldView{
			fv("Subject", "Subject: hello\r\n", " hello"),
			fv("To", "To: a@b,\r\n c@d\r\n", " a@b,\r\n c@d"),
		}},
		{"LF folds", "A: 1\n 2\n\t3\n\nb\n", []fieldView{fv("A", "A: 1\n 2\n\t3\n", " 1\n 2\n\t3")}},
		{"WSP before colon", "Delivered-To \t: x@y\r\n", []fieldView{fv("Delivered-To", "Delivered-To \t: x@y\r\n", " x@y")}},
		{"CR before colon", "Subject\r: x\n", []fieldView{fv("Subject", "Subject\r: x\n", " x")}},
		{"no final line end", "A: 1\r\nB: 2", []fieldView{fv("A", "A: 1\r\n", " 1"), fv("B", "B: 2", " 2")}},
		{"empty value", "A:\r\nB:", []fieldView{fv("A", "A:\r\n", ""), fv("B", "B:", "")}},
		{"CR before CRLF stays in value", "A: 1\r\r\n", []fieldView{fv("A", "A: 1\r\r\n", " 1\r")}},
		{"colons in value", "A: b: c\r\n", []fieldView{fv("A", "A: b: c\r\n", " b: c")}},
		{"8-bit and NUL in value", "A: \xff\x00\xc3\xbc\r\n", []fieldView{fv("A", "A: \xff\x00\xc3\xbc\r\n", " \xff\x00\xc3\xbc")}},
		{"stops at a non-header line", "A: 1\r\nbody\r\nB: 2\r\n", []fieldView{fv("A", "A: 1\r\n", " 1")}},
		{"stops at a leading WSP line", " x\r\nA: 1\r\n", nil},
		{"VT and CR lines continue a field", "A: 1\r\n\vx\r\n\ry\r\nB: 2\r\n", []fieldView{
			fv("A", "A: 1\r\n\vx\r\n\ry\r\n", " 1\r\n\vx\r\n\ry"),
			fv("B", "B: 2\r\n", " 2"),
		}},
		{"leading VT line is a nameless field", "\vx\r\n y\r\nA: 1\r\n\r\n", []fieldView{
			{Name: "", Raw: "\vx\r\n y\r\n"},
			fv("A", "A: 1\r\n", " 1"),
		}},
		{"long name and value", longName + ":" + long + "\r\n", []fieldView{fv(longName, longName+":"+long+"\r\n", long)}},
		{"Received and Delivered-To",
			"Received: from a (a [192.0.2.1])\r\n\tby b with ESMTP id 4F1;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\nDelivered-To: u@b.example\r\nDelivered-To: v@b.example\r\n\r\nHi\r\n",
			[]fieldView{
				fv("Received", "Received: from a (a [192.0.2.1])\r\n\tby b with ESMTP id 4F1;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n",
					" from a (a [192.0.2.1])\r\n\tby b with ESMTP id 4F1;\r\n\tMon, 1 Jan 2024 00:00:00 +0000"),
				fv("Delivered-To", "Delivered-To: u@b.example\r\n", " u@b.example"),
				fv("Delivered-To", "Delivered-To: v@b.example\r\n", " v@b.example"),
			}},
	}
	for _, tc := range cases {
		msg := []byte(tc.msg)
		if diff := cmp.Diff(tc.want, viewFields(msg)); diff != "" {
			t.Errorf("%s: Fields(%.60q) (-want +got):\n%s", tc.name, tc.msg, diff)
		}
		if diff := cmp.Diff(tc.want, viewFields(msg[:SectionEnd(msg)])); diff != "" {
			t.Errorf("%s: Fields of the section alone (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestFieldsEarlyStop(t *testing.T) {
	msg := []byte("A: 1\r\nB: 2\r\nC: 3\r\n")
	var names []string
	for f := range Fields(msg) {
		names = append(names, string(f.Name))
		if f.NameIs("b") {
			break
		}
	}
	if diff := cmp.Diff([]string{"A", "B"}, names); diff != "" {
		t.Errorf("break after B (-want +got):\n%s", diff)
	}
}

// TestFieldSlicesCapped checks that appending to a Field's slices cannot
// overwrite the section they point into.
func TestFieldSlicesCapped(t *testing.T) {
	msg := []byte("A: 1\r\nB: 2\r\n")
	for f := range Fields(msg) {
		_ = append(f.Name, 'X')
		_ = append(f.Raw, 'X')
		_ = append(f.Value(), 'X')
	}
	if got := string(msg); got != "A: 1\r\nB: 2\r\n" {
		t.Fatalf("section changed by appends: %q", got)
	}
}

func TestValueOfForeignField(t *testing.T) {
	cases := []struct {
		name string
		f    Field
	}{
		{"zero", Field{}},
		{"name longer than raw", Field{Name: []byte("Subject"), Raw: []byte("Sub")}},
		{"no colon after name", Field{Name: []byte("A"), Raw: []byte("A x\r\n")}},
		{"name only", Field{Name: []byte("A"), Raw: []byte("A")}},
	}
	for _, tc := range cases {
		if v := tc.f.Value(); v != nil {
			t.Errorf("%s: Value = %q, want nil", tc.name, v)
		}
	}
}

func TestNameIs(t *testing.T) {
	cases := []struct {
		field, name string
		want        bool
	}{
		{"Delivered-To", "Delivered-To", true},
		{"DELIVERED-TO", "delivered-to", true},
		{"delivered-to", "Delivered-To", true},
		{"Delivered-To", "Delivered-T", false},
		{"Delivered-To", "Delivered-Tox", false},
		{"Delivered-To", "Delivered_To", false},
		{"[", "{", false}, // 0x5B and 0x7B differ only in bit 0x20, yet are not letters
		{"@", "`", false},
		{"K", "\u212a", false}, // KELVIN SIGN folds to k in Unicode, not in ASCII
		{"", "", true},
	}
	for _, tc := range cases {
		f := Field{Name: []byte(tc.field)}
		if got := f.NameIs(tc.name); got != tc.want {
			t.Errorf("Field{Name: %q}.NameIs(%q) = %v, want %v", tc.field, tc.name, got, tc.want)
		}
	}
}

func TestUnfold(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"abc", "abc"},
		{"a\r\n b", "a b"},
		{"a\n\tb", "a\tb"},
		{"a\r\n b\r\n\tc", "a b\tc"},
		{"a\r\n \r\n b", "a  b"},
		{"\r\n x", " x"},
		{"a\r\nb", "a\r\nb"},   // not a fold: no WSP after the line end
		{"a\r\n", "a\r\n"},     // a final line end is not a fold
		{"a\r\r\n b", "a\r b"}, // the first CR is content
		{"a\n\vb", "a\vb"},     // VT continues
		{"a\r\n\fb", "a\fb"},   // FF continues
		{"a\r\n\rb", "a\rb"},   // a stray CR continues
		{"a\n\r", "a\r"},       // a CR at the very end is content
		{"a\n\r\n b", "a\n b"}, // "\r\n" there is an empty line, then a fold
		{"a\r\n\r\n b", "a\r\n b"},
		{"x \xff\r\n \x00", "x \xff \x00"},
	}
	for _, tc := range cases {
		if got := string(Unfold(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("Unfold(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := string(Unfold([]byte("pre:"), []byte("a\r\n b"))); got != "pre:a b" {
		t.Errorf("Unfold appends: got %q", got)
	}
}

func TestLineKindString(t *testing.T) {
	got := []string{Undecided.String(), FieldStart.String(), Continuation.String(), End.String(), LineKind(9).String()}
	want := []string{"Undecided", "FieldStart", "Continuation", "End", "LineKind(invalid)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("String (-want +got):\n%s", diff)
	}
}
