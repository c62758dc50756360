package textform

import (
	"bytes"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestDecodeBytes(t *testing.T) {
	cases := []struct {
		name, text, want string
	}{
		{"empty file", "", ""},
		{"a line is its bytes and CRLF", "QUIT\n", "QUIT\r\n"},
		{"empty line", "\n", "\r\n"},
		{"two lines", "a\nb\n", "a\r\nb\r\n"},
		{"backslash at the end: no CRLF", "abc\\\n", "abc"},
		{"bare LF", "abc\\n\\\n", "abc\n"},
		{"bare CR", "abc\\r\\\n", "abc\r"},
		{"explicit CRLF without the line's", "abc\\r\\n\\\n", "abc\r\n"},
		{"joined lines", "abc\\\ndef\n", "abcdef\r\n"},
		{"a lone backslash line is nothing", "\\\n", ""},
		{"escaped backslash at the end keeps the CRLF", "a\\\\\n", "a\\\r\n"},
		{"all escapes", `\0\x00\xff\xFF\x7f\t\\\{\"` + "\n", "\x00\x00\xff\xff\x7f\t\\{\"\r\n"},
		{"raw tab", "a\tb\n", "a\tb\r\n"},
		{"UTF-8", "grüße\n", "gr\xc3\xbc\xc3\x9fe\r\n"},
		{"repeat", `x{repeat 3 "ab"}y` + "\n", "xabababy\r\n"},
		{"repeat of lines", `{repeat 2 "a\r\n"}\` + "\n", "a\r\na\r\n"},
		{"repeat with a quote", `{repeat 2 "a\"b"}` + "\n", "a\"ba\"b\r\n"},
		{"repeat with a brace", `{repeat 2 "}{"}` + "\n", "}{}{\r\n"},
		{"repeat zero", `{repeat 0 "x"}` + "\n", "\r\n"},
		{"closing brace alone is literal", "a}b\n", "a}b\r\n"},
		{"long run", `{repeat 100000 "x"}` + "\n", strings.Repeat("x", 100000) + "\r\n"},
	}
	for _, c := range cases {
		got, err := Decode(c.text)
		if err != nil {
			t.Errorf("%s: Decode(%q): %v", c.name, c.text, err)
			continue
		}
		if string(got) != c.want {
			t.Errorf("%s: Decode(%q) = %q, want %q", c.name, c.text, got, c.want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		text, want string
	}{
		{"a\rb\n", "line 1: column 2: raw control byte 0x0d"},
		{"a\x00\n", "raw control byte"},
		{"a\x1b\n", "raw control byte"},
		{"\xff\n", `invalid UTF-8 byte 0xff: write it as \xFF`},
		{"ok\nbad\\q\n", `line 2: column 4: unknown escape \q`},
		{"\\x4\n", "two hex digits"},
		{"\\xZZ\n", "two hex digits"},
		{"{foo}\n", `unknown directive "{foo}"`},
		{"{ repeat 1 \"x\"}\n", "unknown directive"},
		{"a{b\n", "unterminated directive"},
		{`{repeat 3 x}` + "\n", "double quotes"},
		{`{repeat -1 "x"}` + "\n", "bad count"},
		{`{repeat many "x"}` + "\n", "bad count"},
		{`{repeat 99999999999 "xx"}` + "\n", "limit"},
		{`{repeat 3 ""}` + "\n", "empty string"},
		{`{repeat 3 "a"b"}` + "\n", "unterminated directive"},
		{`{repeat 3 "a" "b"}` + "\n", "quote inside"},
		{`{repeat 3 "a\q"}` + "\n", `unknown escape \q`},
		{"{any-text}\n", "only in want-* files"},
		{"{prefix}\n", "only in want-* files"},
		{"{optional}x\n", "only in want-* files"},
	}
	for _, c := range cases {
		_, err := Decode(c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Decode(%q) = error %v, want one containing %q", c.text, err, c.want)
		}
	}
}

func TestPatternErrors(t *testing.T) {
	cases := []struct {
		text, want string
	}{
		{"{prefix}a{any-text}\n", "{prefix} must be the last directive"},
		{"{prefix}a\n{optional}b\n", "{prefix} must be the last directive"},
		{"{prefix}a{prefix}\n", "a second {prefix}"},
		{"a{optional}b\n", "must open its line"},
		{"{optional}a{prefix}b\n", "{prefix} inside an {optional} line"},
		{"{any-text }\n", "unknown directive"},
	}
	for _, c := range cases {
		_, err := DecodePattern(c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("DecodePattern(%q) = error %v, want one containing %q", c.text, err, c.want)
		}
	}
}

func TestPatternMatches(t *testing.T) {
	cases := []struct {
		want, got string
		ok        bool
	}{
		{"a\n", "a\r\n", true},
		{"a\n", "a\n", false},
		{"a\n", "a\r\nb", false},
		{"a\n", "", false},
		{"", "", true},
		{"", "x", false},
		{"421 4.4.2 {any-text}\n", "421 4.4.2 upstream gone\r\n", true},
		{"421 4.4.2 {any-text}\n", "421 4.4.2 \r\n", true},
		{"421 4.4.2 {any-text}\n", "421 4.4.2\r\n", false},
		{"421 4.4.2 {any-text}\n", "421 4.4.2 a\r\nb\r\n", false},
		{"421 4.4.2 {any-text}\n", "421 4.4.2 a\rb\r\n", false},
		{"421 4.4.2 {any-text}\n", "421 4.4.1 x\r\n", false},
		{"x{any-text}y{any-text}z\n", "x y y z\r\n", true},
		{"x{any-text}y{any-text}z\n", "xyz\r\n", true},
		{"x{any-text}y\n", "x\r\ny\r\n", false},
		{"{optional}QUIT\n", "", true},
		{"{optional}QUIT\n", "QUIT\r\n", true},
		{"{optional}QUIT\n", "RSET\r\n", false},
		{"{optional}QUIT\n", "QUIT\r\nQUIT\r\n", false},
		{"A\n{optional}B\n{optional}C\nD\n", "A\r\nD\r\n", true},
		{"A\n{optional}B\n{optional}C\nD\n", "A\r\nC\r\nD\r\n", true},
		{"A\n{optional}B\n{optional}C\nD\n", "A\r\nB\r\nC\r\nD\r\n", true},
		{"A\n{optional}B\n{optional}C\nD\n", "A\r\nC\r\nB\r\nD\r\n", false},
		{"{optional}421 4.4.2 {any-text}\n", "421 4.4.2 gone\r\n", true},
		{"DATA\n{prefix}abc\ndef\n", "DATA\r\n", true},
		{"DATA\n{prefix}abc\ndef\n", "DATA\r\nabc\r\nde", true},
		{"DATA\n{prefix}abc\ndef\n", "DATA\r\nabc\r\ndef\r\n", true},
		{"DATA\n{prefix}abc\ndef\n", "DATA\r\nabc\r\ndef\r\n.\r\n", false},
		{"DATA\n{prefix}abc\ndef\n", "DATA\r\nabx", false},
		{"DATA\n{prefix}abc\ndef\n", "", false},
		{"{prefix}abc\n", "", true},
	}
	for _, c := range cases {
		p, err := DecodePattern(c.want)
		if err != nil {
			t.Fatalf("DecodePattern(%q): %v", c.want, err)
		}
		if ok, _ := p.Match([]byte(c.got)); ok != c.ok {
			t.Errorf("Pattern %q against %q: match %v, want %v", c.want, c.got, ok, c.ok)
		}
	}
}

func TestMismatchDescribe(t *testing.T) {
	cases := []struct {
		want, got, desc string
	}{
		{"220 a\n250 b\n", "220 a\r\n250 c\r\n",
			`line 2 (byte 11): got "250 c\r\n", want "250 b\r\n"`},
		{"220 a\n250 b\n", "220 a\r\n",
			`line 2 (byte 7): got (end), want "250 b\r\n"`},
		{"a\n", "a\r\nb\r\n",
			`line 2 (byte 3): got "b\r\n", want (end)`},
		{"ab\n", "abc\r\n",
			`line 1 (byte 2): got "abc\r\n", want "ab\r\n"`},
		{"a\n", "ab",
			`line 1 (byte 1): got "ab", want "a\r\n"`},
		{"421 {any-text}\nx\n", "421 zz\r\ny\r\n",
			`line 2 (byte 8): got "y\r\n", want "x\r\n"`},
		{"354{any-text}\n554 x\n", "354 go\r\n250 ok\r\n",
			`line 2 (byte 8): got "250 ok\r\n", want "554 x\r\n"`},
		{"{prefix}abc\n", "abd",
			`line 1 (byte 2): got "abd", want "abc\r\n"`},
		{"{prefix}abc\n", "abc\r\nmore",
			`line 2 (byte 5): got "more", want (end)`},
	}
	for _, c := range cases {
		p, err := DecodePattern(c.want)
		if err != nil {
			t.Fatal(err)
		}
		ok, mm := p.Match([]byte(c.got))
		if ok {
			t.Errorf("Pattern %q matched %q", c.want, c.got)
			continue
		}
		if d := mm.Describe([]byte(c.got)); d != c.desc {
			t.Errorf("Pattern %q against %q:\n got description %s\nwant description %s", c.want, c.got, d, c.desc)
		}
	}
}

func TestEscapeExamples(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"QUIT\r\n", "QUIT\n"},
		{"\r\n", "\n"},
		{"a", "a\\\n"},
		{"a\n", "a\\n\\\n"},
		{"a\r", "a\\r\\\n"},
		{"x\r\r\n", "x\\r\n"},
		{"\x00\\{\"}", "\\0\\\\\\{\"}\\\n"},
		{"tab\tin\r\n", "tab\tin\n"},
		{"end \t\r\n", "end\\x20\\t\n"},
		{"gr\xc3\xbc\xc3\x9fe \xe9\r\n", "grüße \\xE9\n"},
		{strings.Repeat("x", 100) + "\r\n", `{repeat 100 "x"}` + "\n"},
		{strings.Repeat(`"`, 50), `{repeat 50 "\""}\` + "\n"},
		{strings.Repeat("\n", 50), `{repeat 50 "\n"}\` + "\n"},
	}
	for _, c := range cases {
		if got := Escape([]byte(c.in)); got != c.want {
			t.Errorf("Escape(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestEscapeRoundTrip: whatever the bytes, Escape writes text that reads
// back to them, and that text holds no raw CR, NUL or invalid UTF-8.
func TestEscapeRoundTrip(t *testing.T) {
	special := rapid.SampledFrom([]byte("\r\n\x00\\{}\" .\tx\xc3\xa9\xff"))
	chunk := rapid.Custom(func(t *rapid.T) []byte {
		b := rapid.OneOf(special, rapid.Byte()).Draw(t, "byte")
		n := rapid.OneOf(rapid.IntRange(1, 3), rapid.IntRange(30, 120)).Draw(t, "run")
		return bytes.Repeat([]byte{b}, n)
	})
	rapid.Check(t, func(t *rapid.T) {
		var in []byte
		for _, c := range rapid.SliceOfN(chunk, 0, 40).Draw(t, "chunks") {
			in = append(in, c...)
		}
		text := Escape(in)
		if strings.ContainsAny(text, "\r\x00") {
			t.Fatalf("Escape(%q) = %q holds a raw CR or NUL", in, text)
		}
		got, err := Decode(text)
		if err != nil {
			t.Fatalf("Decode(Escape(%q)) = %q: %v", in, text, err)
		}
		if !bytes.Equal(got, in) {
			t.Fatalf("Decode(Escape(%q)) = %q via %q", in, got, text)
		}
		// As an expectation, the escaped text matches exactly those bytes.
		p, err := DecodePattern(text)
		if err != nil {
			t.Fatalf("DecodePattern(%q): %v", text, err)
		}
		if ok, _ := p.Match(in); !ok {
			t.Fatalf("Pattern %q does not match %q", text, in)
		}
	})
}

// The README's examples, one line each (the core's seed generator reads
// the lines of a case's client script this way).
func TestDecodeLineExamples(t *testing.T) {
	cases := []struct{ in, want string }{
		{"QUIT", "QUIT\r\n"},
		{"", "\r\n"},
		{`abc\`, "abc"},
		{`abc\n\`, "abc\n"},
		{`abc\r\`, "abc\r"},
		{`a\\`, "a\\\r\n"},
		{`\x41\0\t\{\"`, "A\x00\t{\"\r\n"},
		{`{repeat 3 "a\r\n"}\`, "a\r\na\r\na\r\n"},
		{`NOOP {repeat 4 "x"}`, "NOOP xxxx\r\n"},
	}
	for _, c := range cases {
		got, err := Decode(c.in + "\n")
		if err != nil || string(got) != c.want {
			t.Errorf("Decode(%q) = %q, %v; want %q", c.in+"\n", got, err, c.want)
		}
	}
	if _, err := Decode(`\q` + "\n"); err == nil {
		t.Error(`Decode("\q") accepted an unknown escape`)
	}
	got, err := Decode("Subject: x\n\nhi\\\n there\n")
	if err != nil || string(got) != "Subject: x\r\n\r\nhi there\r\n" {
		t.Errorf("Decode of a file = %q, %v", got, err)
	}
}
