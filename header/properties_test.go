package header

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"
)

// lineVocabulary holds line contents that exercise every rule: realistic
// fields, folds, the obsolete WSP before the colon, and the bytes Postfix
// treats specially (CR, VT, FF, NUL, DEL, 8-bit, controls).
var lineVocabulary = []string{
	"Received: from a.example (a.example [192.0.2.1])",
	"\tby mx.example (Postfix) with ESMTP id 4F1A2B3C",
	"\tfor <u@example.org>; Mon, 1 Jan 2024 00:00:00 +0000 (UTC)",
	"Delivered-To: u@example.org",
	"delivered-to :u@example.org",
	"Delivered-To\t:",
	"Subject: =?utf-8?q?caf=C3=A9?=",
	"Subject: caf\xc3\xa9",
	" continued",
	"\t",
	" ",
	"From foo@bar Mon Jan  1 00:00:00 2024",
	">From foo@bar",
	"body text",
	"aaaa bbb",
	":colon first",
	"S\xc3\xbcbject: x",
	"Sub\x00ject: x",
	"A\x7f: x",
	"Subject\r: x",
	"\rx",
	"\r",
	"\vx",
	"\f",
	"X-\x01: y",
	"",
	"X:",
	"X :",
}

// interestingBytes are the bytes random lines are made of.
var interestingBytes = []byte("aZ-: \t\r\v\f\x00\x7f\x80\xff:xy@.<>()\"")

func genLine() *rapid.Generator[string] {
	return rapid.OneOf(
		rapid.SampledFrom(lineVocabulary),
		rapid.Map(rapid.SliceOfN(rapid.SampledFrom(interestingBytes), 0, 12),
			func(b []byte) string { return string(b) }),
	)
}

// genMessage draws a message: lines with mixed line ends, the last one
// sometimes without, and sometimes a CR before the line end that is content.
func genMessage() *rapid.Generator[[]byte] {
	return rapid.Custom(func(t *rapid.T) []byte {
		lines := rapid.SliceOfN(genLine(), 0, 14).Draw(t, "lines")
		var b []byte
		for i, l := range lines {
			b = append(b, l...)
			end := rapid.SampledFrom([]string{"\r\n", "\n", "\r\r\n", ""}).Draw(t, "end")
			if end == "" && i < len(lines)-1 {
				end = "\r\n"
			}
			b = append(b, end...)
		}
		return b
	})
}

// modelFieldLine is the field-line rule written as a regular expression,
// independently of the byte state machine: a name of printable ASCII other
// than ':', optional WSP (SP, HTAB, stray CR), a colon.
var modelFieldLine = regexp.MustCompile(`^[\x21-\x39\x3b-\x7e]+[ \t\r]*:`)

// modelSectionEnd is an independent model of SectionEnd over split lines.
func modelSectionEnd(msg []byte) int {
	off, inSection := 0, false
	for _, line := range strings.SplitAfter(string(msg), "\n") {
		if line == "" {
			break
		}
		content := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if len(line) > 0 && line[len(line)-1] != '\n' {
			content = line // no line end: a final CR is content
		}
		switch {
		case content == "":
			return off
		case strings.ContainsRune("\v\f\r", rune(content[0])):
		case content[0] == ' ' || content[0] == '\t':
			if !inSection {
				return off
			}
		case modelFieldLine.MatchString(content):
		default:
			return off
		}
		inSection = true
		off += len(line)
	}
	return len(msg)
}

func TestPropSectionEndMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		msg := genMessage().Draw(t, "msg")
		if got, want := SectionEnd(msg), modelSectionEnd(msg); got != want {
			t.Fatalf("SectionEnd(%q) = %d, model says %d", msg, got, want)
		}
	})
}

// toCRLF writes every bare LF as CRLF (the lines stay the same lines) and
// returns the result and, for every offset of msg, the offset it moved to.
func toCRLF(msg []byte) (out []byte, moved []int) {
	moved = make([]int, len(msg)+1)
	for i, c := range msg {
		moved[i] = len(out)
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	moved[len(msg)] = len(out)
	return out, moved
}

func TestPropLineEndsDoNotMatter(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		msg := genMessage().Draw(t, "msg")
		crlf, moved := toCRLF(msg)
		lfEnd := SectionEnd(msg)
		if got, want := SectionEnd(crlf), moved[lfEnd]; got != want {
			t.Fatalf("CRLF form ends at %d, LF form at %d (maps to %d):\n%q\n%q", got, lfEnd, want, msg, crlf)
		}
		var lfNames, crlfNames []string
		for f := range Fields(msg) {
			lfNames = append(lfNames, string(f.Name)+"="+string(Unfold(nil, f.Value())))
		}
		for f := range Fields(crlf) {
			crlfNames = append(crlfNames, string(f.Name)+"="+string(Unfold(nil, f.Value())))
		}
		if diff := cmp.Diff(lfNames, crlfNames); diff != "" {
			t.Fatalf("unfolded fields differ between LF and CRLF forms (-LF +CRLF):\n%s", diff)
		}
	})
}

func TestPropFoldUnfold(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		// A value without LF; CR is allowed, it is content there.
		value := rapid.SliceOfN(rapid.SampledFrom([]byte(" \tab\r\v\x00\xff@,<>:")), 0, 40).Draw(t, "value")
		var folded []byte
		for i, c := range value {
			if c == ' ' || c == '\t' || c == '\v' {
				if rapid.Bool().Draw(t, "fold") {
					le := rapid.SampledFrom([]string{"\r\n", "\n"}).Draw(t, "le")
					if i > 0 && value[i-1] == '\r' {
						// A bare LF there would make the CR part of a
						// CRLF line end: such a value has no bare-LF fold.
						le = "\r\n"
					}
					folded = append(folded, le...)
				}
			}
			folded = append(folded, value[i])
		}
		if got := Unfold(nil, folded); !bytes.Equal(got, value) {
			t.Fatalf("Unfold(%q) = %q, want %q", folded, got, value)
		}
		if got := Unfold(nil, value); !bytes.Equal(got, value) {
			t.Fatalf("Unfold changed a value without line ends: %q -> %q", value, got)
		}
		// As a field: Fields finds one field whose value is the folded text.
		msg := append(append([]byte("Delivered-To:"), folded...), "\r\n\r\nbody"...)
		var fields []Field
		for f := range Fields(msg) {
			fields = append(fields, f)
		}
		if len(fields) != 1 || !fields[0].NameIs("delivered-to") {
			t.Fatalf("Fields(%q) gives %d fields, want one Delivered-To", msg, len(fields))
		}
		if got := fields[0].Value(); !bytes.Equal(got, folded) {
			t.Fatalf("Value = %q, want %q", got, folded)
		}
		if got := Unfold(nil, fields[0].Value()); !bytes.Equal(got, value) {
			t.Fatalf("unfolded Value = %q, want %q", got, value)
		}
	})
}

// classifyInPieces feeds msg line by line in pieces drawn by t, holding a
// trailing CR back as a streaming caller must, and returns where the header
// section ends.
func classifyInPieces(t *rapid.T, msg []byte) int {
	var c Classifier
	off := 0
	for off < len(msg) {
		line, next := nextLineModel(msg, off)
		prev := Undecided
		for len(line) > 0 {
			n := rapid.IntRange(1, len(line)).Draw(t, "piece")
			k := c.Feed(line[:n])
			if prev != Undecided && k != prev {
				t.Fatalf("line %q: kind changed from %v to %v", line, prev, k)
			}
			prev = k
			line = line[n:]
		}
		k := c.EndLine()
		if k == Undecided || prev != Undecided && k != prev {
			t.Fatalf("EndLine gives %v after Feed gave %v", k, prev)
		}
		if k == End {
			return off
		}
		off = next
	}
	return len(msg)
}

// nextLineModel splits off one line without using the package's helper.
func nextLineModel(msg []byte, off int) (content []byte, next int) {
	rest := msg[off:]
	i := bytes.IndexByte(rest, '\n')
	if i < 0 {
		return rest, len(msg)
	}
	return bytes.TrimSuffix(rest[:i], []byte("\r")), off + i + 1
}

func TestPropClassifierPiecesAgree(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		msg := genMessage().Draw(t, "msg")
		if got, want := classifyInPieces(t, msg), SectionEnd(msg); got != want {
			t.Fatalf("Classifier ends at %d, SectionEnd at %d:\n%q", got, want, msg)
		}
	})
}

func TestPropFieldsCoverSection(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		msg := genMessage().Draw(t, "msg")
		section := msg[:SectionEnd(msg)]
		var joined []byte
		for f := range Fields(msg) {
			if !bytes.HasPrefix(f.Raw, f.Name) {
				t.Fatalf("Raw %q does not start with Name %q", f.Raw, f.Name)
			}
			joined = append(joined, f.Raw...)
		}
		if !bytes.Equal(joined, section) {
			t.Fatalf("fields join to %q, section is %q", joined, section)
		}
		if SectionEnd(section) != len(section) {
			t.Fatalf("the section alone ends early: %d of %d", SectionEnd(section), len(section))
		}
	})
}
