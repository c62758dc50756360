package core

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"
)

// decoded is what a reader of message data makes of its input.
type decoded struct {
	Lines   []string // complete content lines
	Partial string   // content of an unfinished last line
	End     bool     // the end of data was found
	Rest    int      // bytes after the end of data, not consumed
}

// decodeChunks runs the decoder over input cut at the given offsets.
func decodeChunks(input []byte, cuts []int) decoded {
	var d decoder
	var out decoded
	var line []byte
	start := 0
	bounds := append(append([]int{}, cuts...), len(input))
	for _, end := range bounds {
		if end < start {
			continue
		}
		p := input[start:end]
		start = end
		for len(p) > 0 && !d.done() {
			tok, n := d.next(p)
			p = p[n:]
			switch tok.kind {
			case tokContent:
				line = append(line, tok.content...)
			case tokLineEnd:
				out.Lines = append(out.Lines, string(line))
				line = line[:0]
			case tokEnd:
				out.End = true
			}
		}
		if d.done() {
			out.Rest += len(p)
		}
	}
	out.Partial = string(line)
	return out
}

// modelDecode is the reading of SPEC section 4 written the simple way, on
// the whole input at once: the oracle for the streaming decoder.
func modelDecode(input []byte) decoded {
	var out decoded
	dotSensitive := true
	for len(input) > 0 {
		j := bytes.IndexByte(input, '\n')
		if j < 0 {
			content := input
			if dotSensitive && len(content) > 0 && content[0] == '.' {
				content = content[1:]
			}
			// A trailing CR may still become part of a CRLF: not content yet.
			content = bytes.TrimSuffix(content, []byte("\r"))
			out.Partial = string(content)
			return out
		}
		raw := input[:j]
		input = input[j+1:]
		crlf := len(raw) > 0 && raw[len(raw)-1] == '\r'
		content := raw
		if crlf {
			content = raw[:len(raw)-1]
		}
		if dotSensitive && crlf && string(content) == "." {
			out.End = true
			out.Rest = len(input)
			return out
		}
		if dotSensitive && len(content) > 0 && content[0] == '.' && (crlf || string(content) != ".") {
			content = content[1:]
		}
		out.Lines = append(out.Lines, string(content))
		dotSensitive = crlf
	}
	return out
}

// strictRead reads upstream bytes as a strict RFC 5321 server does: lines
// end in CRLF only, a leading dot is removed, "." ends the data.
func strictRead(t interface{ Fatalf(string, ...any) }, up []byte) (lines []string, end bool) {
	for len(up) > 0 {
		j := bytes.Index(up, []byte("\r\n"))
		if j < 0 {
			t.Fatalf("upstream bytes end without CRLF: %q", up)
		}
		line := up[:j]
		up = up[j+2:]
		if string(line) == "." {
			if len(up) != 0 {
				t.Fatalf("upstream sees an end of data before the proxy's: %q follows", up)
			}
			return lines, true
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		lines = append(lines, string(line))
	}
	return lines, false
}

// lenientRead reads upstream bytes as Postfix does: a line ends at LF, a CR
// before it is dropped, a leading dot is removed, "." ends the data.
func lenientRead(up []byte) (lines []string, end bool, rest int) {
	for len(up) > 0 {
		j := bytes.IndexByte(up, '\n')
		if j < 0 {
			return lines, false, len(up)
		}
		line := bytes.TrimSuffix(up[:j], []byte("\r"))
		up = up[j+1:]
		if string(line) == "." {
			return lines, true, len(up)
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		lines = append(lines, string(line))
	}
	return lines, false, 0
}

// encodeAll frames the decoded content for the upstream.
func encodeAll(d decoded) []byte {
	var e encoder
	var up []byte
	for _, l := range d.Lines {
		up = e.content(up, []byte(l))
		up = e.lineEnd(up)
	}
	if d.End {
		up = e.end(up)
	}
	return up
}

func TestDecoderCases(t *testing.T) {
	cases := []struct {
		name, in string
		want     decoded
	}{
		{"plain", "a\r\nb\r\n.\r\n", decoded{Lines: []string{"a", "b"}, End: true}},
		{"empty message", ".\r\n", decoded{End: true}},
		{"stuffed", "..x\r\n..\r\n.\r\n", decoded{Lines: []string{".x", "."}, End: true}},
		{"bare LF dot bare LF", "a\n.\nb\r\n.\r\n", decoded{Lines: []string{"a", ".", "b"}, End: true}},
		{"CRLF dot bare LF", "a\r\n.\nb\r\n.\r\n", decoded{Lines: []string{"a", ".", "b"}, End: true}},
		{"bare LF dot CRLF", "a\n.\r\nb\r\n.\r\n", decoded{Lines: []string{"a", ".", "b"}, End: true}},
		{"bare LF then stuffed-looking", "a\n..x\r\n.\r\n", decoded{Lines: []string{"a", "..x"}, End: true}},
		{"X CR CR LF", "X\r\r\n.\r\n", decoded{Lines: []string{"X\r"}, End: true}},
		{"dot CR X", ".\rX\r\n.\r\n", decoded{Lines: []string{"\rX"}, End: true}},
		{"dot CR CR LF", ".\r\r\n.\r\n", decoded{Lines: []string{"\r"}, End: true}},
		{"bare CR", "a\rb\r\n.\r\n", decoded{Lines: []string{"a\rb"}, End: true}},
		{"CR dot CR LF is no end", "a\r.\r\n.\r\n", decoded{Lines: []string{"a\r."}, End: true}},
		{"rest after end", "a\r\n.\r\nMAIL FROM:<>\r\n", decoded{Lines: []string{"a"}, End: true, Rest: 14}},
		{"unfinished", "a\r\nbc", decoded{Lines: []string{"a"}, Partial: "bc"}},
	}
	for _, c := range cases {
		for step := 1; step <= len(c.in)+1; step++ {
			var cuts []int
			for i := step; i < len(c.in); i += step {
				cuts = append(cuts, i)
			}
			got := decodeChunks([]byte(c.in), cuts)
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Fatalf("%s, pieces of %d (-want +got):\n%s", c.name, step, diff)
			}
		}
		if diff := cmp.Diff(c.want, modelDecode([]byte(c.in))); diff != "" {
			t.Fatalf("%s: the model disagrees (-want +got):\n%s", c.name, diff)
		}
	}
}

func TestEncoderStuffsAndFrames(t *testing.T) {
	d := decoded{Lines: []string{".", "..x", "a", "", "\r", "X\r"}, End: true}
	got := string(encodeAll(d))
	want := "..\r\n...x\r\na\r\n\r\n\r\r\nX\r\r\n.\r\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestEncodeCaptured(t *testing.T) {
	var e encoder
	got := string(e.encodeCaptured(nil, []byte(".a\r\nb\r\n\r\r\n.pa")))
	got = string(e.content([]byte(got), []byte("rt")))
	got = string(e.end([]byte(got)))
	want := "..a\r\nb\r\n\r\r\n..part\r\n.\r\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestLongLineStreamsInPieces(t *testing.T) {
	var d decoder
	line := bytes.Repeat([]byte("x"), 100_000)
	tok, n := d.next(line[:50_000])
	if tok.kind != tokContent || len(tok.content) != 50_000 || n != 50_000 {
		t.Fatalf("first piece: kind %d len %d n %d", tok.kind, len(tok.content), n)
	}
	tok, n = d.next(append(line[50_000:], "\r\n"...))
	if tok.kind != tokContent || len(tok.content) != 50_000 || n != 50_000 {
		t.Fatalf("second piece: kind %d len %d n %d", tok.kind, len(tok.content), n)
	}
}

// messageBytes draws data biased towards the bytes that matter to framing.
func messageBytes() *rapid.Generator[[]byte] {
	return rapid.Custom(func(t *rapid.T) []byte {
		parts := rapid.SliceOfN(rapid.SampledFrom([]string{
			".", "\r", "\n", "\r\n", "\r\n.\r\n", ".\r\n", "\n.\n", "x", "ab", "..", "\x00", " ",
		}), 0, 40).Draw(t, "parts")
		return []byte(strings.Join(parts, ""))
	})
}

func cutsFor(t *rapid.T, n int) []int {
	cuts := rapid.SliceOfN(rapid.IntRange(0, n), 0, 6).Draw(t, "cuts")
	// sorted, so pieces are in order
	for i := 1; i < len(cuts); i++ {
		for j := i; j > 0 && cuts[j] < cuts[j-1]; j-- {
			cuts[j], cuts[j-1] = cuts[j-1], cuts[j]
		}
	}
	return cuts
}

// TestPropertyDecoderMatchesModel: however the input is cut, the
// streaming decoder reads what the whole-input model of SPEC 4 reads.
func TestPropertyDecoderMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		in := messageBytes().Draw(t, "data")
		got := decodeChunks(in, cutsFor(t, len(in)))
		want := modelDecode(in)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("decoder vs model for %q (-model +decoder):\n%s", in, diff)
		}
	})
}

// TestPropertyUpstreamAgrees: whatever the client sends, the framed
// upstream bytes read the same content lines by a strict RFC 5321 reader
// and by a bare-LF-tolerant (Postfix) reader, and neither sees an end of
// data except the proxy's own, at the very end.
func TestPropertyUpstreamAgrees(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		in := messageBytes().Draw(t, "data")
		d := decodeChunks(in, cutsFor(t, len(in)))
		up := encodeAll(d)
		if bytes.Contains(bytes.ReplaceAll(up, []byte("\r\n"), nil), []byte("\n")) {
			t.Fatalf("bare LF upstream: %q", up)
		}
		strict, strictEnd := strictRead(t, up)
		lenient, lenientEnd, rest := lenientRead(up)
		if diff := cmp.Diff(d.Lines, strict, cmp.Comparer(func(a, b []string) bool { return strings.Join(a, "\x00|") == strings.Join(b, "\x00|") })); diff != "" {
			t.Fatalf("strict reader disagrees for %q:\n%s", in, diff)
		}
		if strings.Join(d.Lines, "\x00|") != strings.Join(lenient, "\x00|") || lenientEnd != d.End || rest != 0 {
			t.Fatalf("lenient reader disagrees for %q: %q end=%v rest=%d, want %q end=%v", in, lenient, lenientEnd, rest, d.Lines, d.End)
		}
		if strictEnd != d.End {
			t.Fatalf("strict end %v, decoder end %v", strictEnd, d.End)
		}
	})
}

// TestPropertyStuffUnstuffIdentity: any content lines, framed for the
// wire and read back by the client-side decoder, come back unchanged, and
// the data ends exactly where it was ended.
func TestPropertyStuffUnstuffIdentity(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		lines := rapid.SliceOfN(rapid.Custom(func(t *rapid.T) string {
			parts := rapid.SliceOfN(rapid.SampledFrom([]string{".", "\r", "x", "..", " ", "\x00"}), 0, 6).Draw(t, "p")
			return strings.Join(parts, "")
		}), 0, 10).Draw(t, "lines")
		// A content line cannot end in CR followed by its own CRLF
		// ambiguity: "X\r" is fine ("X\r\r\n"); nothing to exclude.
		d := decoded{Lines: lines, End: true}
		wire := encodeAll(d)
		wire = append(wire, "NOOP\r\n"...) // what follows the end is not data
		got := decodeChunks(wire, cutsFor(t, len(wire)))
		if got.Lines == nil {
			got.Lines = []string{}
		}
		if d.Lines == nil {
			d.Lines = []string{}
		}
		if strings.Join(got.Lines, "\x00|") != strings.Join(d.Lines, "\x00|") || !got.End || got.Rest != len("NOOP\r\n") || got.Partial != "" {
			t.Fatalf("round trip of %q: got %+v", lines, got)
		}
	})
}

// TestPropertyReferenceReadersAgree: the two readings of message data
// written for the tests, modelDecode here and readData in the reference
// model, were written apart; on any data they agree on the content
// lines, the unfinished line, the end and what follows it.
func TestPropertyReferenceReadersAgree(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		in := messageBytes().Draw(t, "data")
		a, b := modelDecode(in), readData(in)
		lines := make([]string, len(b.lines))
		for i, l := range b.lines {
			lines[i] = l.content
		}
		if strings.Join(a.Lines, "\x00|") != strings.Join(lines, "\x00|") || a.Partial != b.partial || a.End != b.end || a.Rest != b.rest {
			t.Fatalf("for %q: modelDecode %+v, readData %+v", in, a, b)
		}
	})
}

// frameChunks frames input cut at the given offsets as the session
// streams it, the token path alone or (fast) verbatimRun wherever it
// reads something, and returns the upstream bytes, the content bytes
// counted, and the decoder's and encoder's state after each piece.
func frameChunks(input []byte, cuts []int, fast bool) (up []byte, size int, states []string) {
	var d decoder
	var e encoder
	start := 0
	for _, end := range append(append([]int{}, cuts...), len(input)) {
		if end < start {
			continue
		}
		p := input[start:end]
		start = end
		for len(p) > 0 && !d.done() {
			if fast {
				if pass, read := verbatimRun(&d, &e, p); read > 0 {
					up = append(up, p[:pass]...)
					size += pass
					p = p[read:]
					continue
				}
			}
			tok, n := d.next(p)
			p = p[n:]
			switch tok.kind {
			case tokContent:
				size += len(tok.content)
				up = e.content(up, tok.content)
			case tokLineEnd:
				size += 2
				up = e.lineEnd(up)
			case tokEnd:
				up = e.end(up)
			}
		}
		states = append(states, fmt.Sprintf("%d/%v", d.st, e.inLine))
	}
	return up, size, states
}

// canonicalish draws data that is mostly canonical lines, cut anywhere,
// with the framing traps among them, so that verbatimRun starts in every
// state and stops at every trap.
func canonicalish() *rapid.Generator[[]byte] {
	return rapid.Custom(func(t *rapid.T) []byte {
		parts := rapid.SliceOfN(rapid.SampledFrom([]string{
			"plain text line\r\n", "a\rb\r\n", "\r\n", "xy", "\r", "\n", ".", "..x\r\n", "\r\n.\r\n", ".\r\n", "x\n.\n", "\r\r\n",
		}), 0, 40).Draw(t, "parts")
		return []byte(strings.Join(parts, ""))
	})
}

// TestPropertyVerbatimRunIsTheTokenPath: the fast path changes nothing:
// however the data is cut, the upstream bytes, the size counted and the
// framer's state after every piece are those of the token path alone.
func TestPropertyVerbatimRunIsTheTokenPath(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		in := canonicalish().Draw(t, "data")
		cuts := cutsFor(t, len(in))
		wantUp, wantSize, wantStates := frameChunks(in, cuts, false)
		gotUp, gotSize, gotStates := frameChunks(in, cuts, true)
		if !bytes.Equal(gotUp, wantUp) || gotSize != wantSize || !slices.Equal(gotStates, wantStates) {
			t.Fatalf("%q cut at %v:\nfast  %q size %d states %v\ntoken %q size %d states %v", in, cuts, gotUp, gotSize, gotStates, wantUp, wantSize, wantStates)
		}
	})
}

// TestVerbatimRunCases pins what the fast path reads from each state.
func TestVerbatimRunCases(t *testing.T) {
	cases := []struct {
		st         decState
		inLine     bool
		in         string
		pass, read int
	}{
		{decBOL, false, "ab\r\ncd\r\n", 8, 8},
		{decBOL, false, "ab\r\ncd", 6, 6},     // the start of the next line too
		{decBOL, false, "ab\r\ncd\r", 6, 7},   // its CR held
		{decBOL, false, "ab\r\n.cd", 4, 4},    // a leading dot: token path
		{decBOL, false, "ab\r\ncd\nef", 4, 4}, // a bare LF: token path from its line
		{decBOL, false, ".\r\n", 0, 0},
		{decBOL, false, "\r", 0, 1},
		{decMid, true, "cd\r\nef\r\n", 8, 8}, // the rest of a line begun
		{decMid, true, "cd", 2, 2},
		{decMid, true, "\nx", 0, 0},        // a bare LF ends it
		{decMid, false, "cd\r\n", 0, 0},    // after a bare LF: token path
		{decCR, true, "\nab\r\n", 0, 0},    // a held CR: token path
		{decDot, false, "x\r\n", 0, 0},     // a held dot: token path
		{decBOL, true, "ab\r\n", 0, 0},     // encoder mid-line: never at a line start
		{decMid, true, "c\r\n.\r\n", 3, 3}, // the end of data is the session's
	}
	for _, c := range cases {
		d, e := decoder{st: c.st}, encoder{inLine: c.inLine}
		pass, read := verbatimRun(&d, &e, []byte(c.in))
		if pass != c.pass || read != c.read {
			t.Errorf("state %d, in line %v, %q: pass %d read %d, want %d %d", c.st, c.inLine, c.in, pass, read, c.pass, c.read)
		}
	}
}
