package fuzz

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/textproto"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
)

// FuzzHeader checks the header package against itself and against a model
// of the Postfix pipeline. Oracles:
//   - the Classifier, driven the way a streaming DATA framer drives it
//     (chunks of arbitrary size that cut lines and CRLF pairs anywhere, a
//     trailing CR held back until the next byte is known), finds the same
//     section end as SectionEnd;
//   - the section end is the one postfixSectionEnd, a model of what
//     smtpd(8), cleanup(8) and local(8) read as header, written here from
//     the Postfix facts without the package's code;
//   - Fields cover the section exactly, every Field starts on a line the
//     Classifier calls FieldStart (a nameless first field: Continuation),
//     Name + WSP + ":" + Value + line end is Raw, and an unfolded Value
//     holds no LF;
//   - writing bare LFs as CRLF moves the section end with the bytes;
//   - bytes after the section do not change it.
func FuzzHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, msg []byte, chunkSeed uint64) {
		end := header.SectionEnd(msg)
		if end < 0 || end > len(msg) {
			t.Fatalf("SectionEnd = %d, outside 0..%d", end, len(msg))
		}
		kinds, streamEnd := streamClassify(msg, rand.New(rand.NewPCG(chunkSeed, 1)))
		if streamEnd != end {
			t.Fatalf("streamed Classifier ends at %d, SectionEnd at %d:\n%q", streamEnd, end, msg)
		}
		if want := postfixSectionEnd(msg); end != want {
			t.Fatalf("SectionEnd = %d, the Postfix model says %d:\n%q", end, want, msg)
		}

		section := msg[:end]
		var joined []byte
		for fld := range header.Fields(msg) {
			start := len(joined)
			joined = append(joined, fld.Raw...)
			if !bytes.Equal(msg[start:len(joined)], fld.Raw) {
				t.Fatalf("field %q is not at offset %d of the message", fld.Raw, start)
			}
			checkField(t, fld, kinds[start], start == 0)
		}
		if !bytes.Equal(joined, section) {
			t.Fatalf("fields join to %q, section is %q", joined, section)
		}

		crlf, added := bareLFToCRLFCount(msg, end)
		if got := header.SectionEnd(crlf); got != end+added {
			t.Fatalf("CRLF form ends at %d, want %d (LF form ends at %d):\n%q", got, end+added, end, msg)
		}

		if end == 0 || msg[end-1] == '\n' {
			after := append(append(append([]byte(nil), section...), '\n'), msg[end:]...)
			if got := header.SectionEnd(after); got != end {
				t.Fatalf("an empty line after the section moved its end to %d from %d:\n%q", got, end, after)
			}
		}
	})
}

// checkField checks one field against the kind the Classifier gave the line
// it starts on.
func checkField(t *testing.T, fld header.Field, kind header.LineKind, first bool) {
	t.Helper()
	if len(fld.Name) == 0 {
		if !first || kind != header.Continuation {
			t.Fatalf("nameless field %q (first: %v) starts on a %v line", fld.Raw, first, kind)
		}
		if fld.Value() != nil {
			t.Fatalf("nameless field %q has a value", fld.Raw)
		}
		return
	}
	if kind != header.FieldStart {
		t.Fatalf("field %q starts on a %v line", fld.Raw, kind)
	}
	if !bytes.HasPrefix(fld.Raw, fld.Name) {
		t.Fatalf("Raw %q does not start with Name %q", fld.Raw, fld.Name)
	}
	v := fld.Value()
	body := trimLineEnd(fld.Raw)
	if !bytes.HasSuffix(body, v) {
		t.Fatalf("Value %q is not the end of %q", v, body)
	}
	between := body[len(fld.Name) : len(body)-len(v)]
	if len(between) == 0 || between[len(between)-1] != ':' ||
		len(bytes.Trim(between[:len(between)-1], " \t\r")) != 0 {
		t.Fatalf("between Name %q and Value %q stands %q, not WSP and a colon", fld.Name, v, between)
	}
	if u := header.Unfold(nil, v); bytes.IndexByte(u, '\n') >= 0 {
		t.Fatalf("unfolded value %q of %q still holds a line end", u, fld.Raw)
	}
	if !fld.NameIs(strings.ToUpper(string(fld.Name))) || !fld.NameIs(strings.ToLower(string(fld.Name))) {
		t.Fatalf("NameIs misses its own name %q in another case", fld.Name)
	}
}

// trimLineEnd removes a final LF and a CR right before it.
func trimLineEnd(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

// streamClassify feeds msg to a Classifier in random chunks, the way the DATA
// framer sees a message: a chunk may end anywhere, also between CR and LF,
// so a CR that ends a chunk is held back until the next byte shows whether
// it belongs to the line end. It returns the kind of the line starting at
// each offset (up to the line that ends the section) and the section end.
func streamClassify(msg []byte, rng *rand.Rand) (map[int]header.LineKind, int) {
	var c header.Classifier
	kinds := make(map[int]header.LineKind)
	lineStart, heldCR, lineHasBytes := 0, false, false
	feed := func(p []byte) {
		if len(p) > 0 {
			c.Feed(p)
			lineHasBytes = true
		}
	}
	for off := 0; off < len(msg); {
		n := 1 + rng.IntN(9)
		if rng.IntN(8) == 0 {
			n = 1 + rng.IntN(4096)
		}
		chunk := msg[off:min(off+n, len(msg))]
		chunkStart := off
		off += len(chunk)
		for len(chunk) > 0 {
			i := bytes.IndexByte(chunk, '\n')
			if i < 0 {
				if heldCR {
					feed([]byte{'\r'})
					heldCR = false
				}
				if chunk[len(chunk)-1] == '\r' {
					feed(chunk[:len(chunk)-1])
					heldCR = true
				} else {
					feed(chunk)
				}
				break
			}
			// A held CR followed by this LF (i == 0) is the line end; a
			// held CR followed by anything else is content.
			if heldCR && i > 0 {
				feed([]byte{'\r'})
			}
			heldCR = false
			feed(bytes.TrimSuffix(chunk[:i], []byte("\r")))
			k := c.EndLine()
			kinds[lineStart] = k
			if k == header.End {
				return kinds, lineStart
			}
			chunkStart += i + 1
			lineStart, lineHasBytes = chunkStart, false
			chunk = chunk[i+1:]
		}
	}
	if heldCR {
		feed([]byte{'\r'}) // no LF follows: the CR is content
	}
	if lineHasBytes { // a last line without line end
		k := c.EndLine()
		kinds[lineStart] = k
		if k == header.End {
			return kinds, lineStart
		}
	}
	return kinds, len(msg)
}

// postfixFieldLine is is_header_buf's field line, applied after cleanup has
// turned stray CRs into spaces: up to the first colon, a name of printable
// ASCII (other than ':', which cannot occur before the first colon), then
// optional SP/HTAB.
func postfixFieldLine(line []byte) bool {
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return false
	}
	name := bytes.TrimRight(line[:colon], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

// postfixSectionEnd models, line by line, the Postfix pipeline behind the
// proxy (Postfix 3.12 source; reference/postfix.md):
//   - smtpd(8) puts an empty line before content whose first line starts
//     with SP or HTAB (raw bytes, before any replacement), so such content
//     has no header;
//   - cleanup(8) replaces every stray CR by SP before it reads a line;
//   - local(8) reads field lines, skips lines starting with a C isspace()
//     byte (after the replacement: SP, HTAB, VT, FF), and stops at an empty
//     line or any other line; cleanup's own reading stops no later.
func postfixSectionEnd(msg []byte) int {
	off := 0
	for first := true; off < len(msg); first = false {
		raw := msg[off:]
		next := len(msg)
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			raw, next = bytes.TrimSuffix(raw[:i], []byte("\r")), off+i+1
		}
		line := bytes.ReplaceAll(raw, []byte("\r"), []byte(" "))
		switch {
		case len(raw) == 0:
			return off
		case first && (raw[0] == ' ' || raw[0] == '\t'):
			return off
		case bytes.IndexByte([]byte(" \t\v\f"), line[0]) >= 0:
		case postfixFieldLine(line):
		default:
			return off
		}
		off = next
	}
	return len(msg)
}

// bareLFToCRLFCount writes every bare LF as CRLF (the lines stay the same
// lines) and says how many CRs it added before offset at: a section end at
// at moves by that much.
func bareLFToCRLFCount(msg []byte, at int) (out []byte, added int) {
	out = make([]byte, 0, len(msg)+len(msg)/8)
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
			if i < at {
				added++
			}
		}
		out = append(out, c)
	}
	return out, added
}

// FuzzHeaderTextproto is a differential test against the standard library's
// net/textproto.Reader.ReadMIMEHeader, on the inputs it accepts (no error,
// or io.EOF when the input ends inside the header). On those, the section
// ends where textproto stopped reading (at its empty line, or at the end of
// input), and the fields agree: same canonical names in the same order per
// name, same values after unfolding, trimming and collapsing WSP runs
// (textproto joins continuation lines with one space and trims each line).
//
// Intended differences, where the input is skipped:
//   - textproto accepts a name with a space inside ("Foo Bar: x"); Postfix's
//     is_header_buf does not, so for us that line ends the section;
//   - textproto keeps a space before the colon in the key ("Subject :"
//     gives the key "Subject "); we accept the obsolete syntax but the name
//     excludes the WSP, so its keys are compared with trailing spaces cut.
//
// Differences that need no skipping because textproto rejects those inputs:
// a leading continuation line (textproto: error; us: empty section), lines
// starting with VT, FF or CR (textproto: invalid key; us: continuation),
// names of bytes outside RFC 7230's tchar, control bytes in values.
func FuzzHeaderTextproto(f *testing.F) {
	f.Fuzz(func(t *testing.T, msg []byte) {
		src := bytes.NewReader(msg)
		// A buffer that holds the whole input: with a smaller one,
		// textproto drops an unterminated last line at least as long as
		// the buffer (bufio reports it in pieces, then io.EOF) yet reads
		// a shorter one, so its reading would depend on the line's length.
		br := bufio.NewReaderSize(src, len(msg)+16)
		h, err := textproto.NewReader(br).ReadMIMEHeader()
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		spaceKeys := false // a key kept its WSP before the colon
		for key := range h {
			if strings.Contains(strings.TrimRight(key, " "), " ") {
				return // a name with inner WSP: an intended difference
			}
			spaceKeys = spaceKeys || strings.HasSuffix(key, " ")
		}
		consumed := len(msg) - src.Len() - br.Buffered()
		end := header.SectionEnd(msg)
		if err == nil {
			// textproto consumed the empty line that ends the header.
			if blank := string(msg[end:consumed]); blank != "\n" && blank != "\r\n" {
				t.Fatalf("textproto stopped at %d, our section ends at %d before %q:\n%q", consumed, end, blank, msg)
			}
		} else if end != len(msg) {
			t.Fatalf("textproto read to the end of input, our section ends at %d of %d:\n%q", end, len(msg), msg)
		}

		want := map[string][]string{}
		for key, vals := range h {
			k := textproto.CanonicalMIMEHeaderKey(strings.TrimRight(key, " "))
			for _, v := range vals {
				want[k] = append(want[k], collapseWSP(v))
			}
		}
		got := map[string][]string{}
		for fld := range header.Fields(msg) {
			k := textproto.CanonicalMIMEHeaderKey(string(fld.Name))
			got[k] = append(got[k], collapseWSP(string(header.Unfold(nil, fld.Value()))))
		}
		if spaceKeys {
			// textproto files "Subject :" and "Subject:" under two keys, so
			// the order between them is lost: compare those as sets.
			for _, m := range []map[string][]string{want, got} {
				for _, vals := range m {
					slices.Sort(vals)
				}
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("fields differ from textproto's (-textproto +ours):\n%s\ninput: %q", diff, msg)
		}
	})
}

// collapseWSP trims SP/HTAB at both ends and writes every inner run of them
// as one space.
func collapseWSP(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' }), " ")
}
