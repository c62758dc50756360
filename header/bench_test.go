package header

import (
	"bytes"
	"fmt"
	"testing"
)

// typicalFields is the shape of a real header section: folded Received and
// DKIM-Signature fields, address fields, Delivered-To.
const typicalFields = "Received: from mail-ej1-f41.example.com (mail-ej1-f41.example.com [209.85.218.41])\r\n" +
	"\tby mx.example.org (Postfix) with ESMTPS id 4Tq2xY0wQzz9sQ\r\n" +
	"\tfor <user@example.org>; Mon, 15 Jan 2024 10:21:33 +0100 (CET)\r\n" +
	"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=20230601;\r\n" +
	"\th=to:subject:message-id:date:from:mime-version:from:to:cc:subject:date:message-id;\r\n" +
	"\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n" +
	"\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSwganVzdCBiYXNlNjQgZmlsbGVyIHRleHQ=\r\n" +
	"Delivered-To: user@example.org\r\n" +
	"From: \"Sender Name\" <sender@example.com>\r\n" +
	"To: user@example.org, \"Other\" <other@example.net>\r\n" +
	"Subject: =?UTF-8?Q?Re=3A_quarterly_report?=\r\n" +
	"Date: Mon, 15 Jan 2024 10:21:20 +0100\r\n" +
	"Message-ID: <CAF1=abc123@mail.example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/alternative; boundary=\"000000000000abcdef\"\r\n"

// benchMessage returns a message whose header section is about size bytes
// of typical fields (whole fields only), followed by an empty line and a
// short body.
func benchMessage(size int) []byte {
	var b bytes.Buffer
	for b.Len()+len(typicalFields) <= size {
		b.WriteString(typicalFields)
	}
	rest := []byte(typicalFields)
	for b.Len() < size {
		i := bytes.IndexByte(rest, '\n')
		b.Write(rest[:i+1])
		rest = rest[i+1:]
		if len(rest) == 0 {
			rest = []byte(typicalFields)
		}
	}
	b.WriteString("\r\nbody\r\n")
	return b.Bytes()
}

// BenchmarkSectionEndFields measures what loopcheck does with a header
// section: find its end, walk its fields and unfold the Delivered-To ones.
func BenchmarkSectionEndFields(b *testing.B) {
	for _, size := range []int{1 << 10, 4 << 10, 1 << 20} {
		msg := benchMessage(size)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				n := 0
				for f := range Fields(msg[:SectionEnd(msg)]) {
					if f.NameIs("Delivered-To") {
						buf = Unfold(buf[:0], f.Value())
						n++
					}
				}
				if n == 0 {
					b.Fatal("no Delivered-To field found")
				}
			}
		})
	}
}

// BenchmarkClassifier measures the streaming path the DATA framer uses:
// every line fed whole, then EndLine.
func BenchmarkClassifier(b *testing.B) {
	msg := benchMessage(4 << 10)
	var lines [][]byte
	for off := 0; off < len(msg); {
		line, next := nextLine(msg, off)
		lines = append(lines, line)
		off = next
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		var c Classifier
		for _, l := range lines {
			c.Feed(l)
			if c.EndLine() == End {
				break
			}
		}
	}
}

// BenchmarkClassifierLongLine feeds a 1 MiB line that stays undecided (a
// name with no colon yet) in 4 KiB pieces: the per-byte cost of a hostile
// line the DATA framer must still stream.
func BenchmarkClassifierLongLine(b *testing.B) {
	piece := bytes.Repeat([]byte("X"), 4<<10)
	const pieces = 256
	b.SetBytes(int64(len(piece) * pieces))
	b.ReportAllocs()
	for b.Loop() {
		var c Classifier
		for range pieces {
			if c.Feed(piece) != Undecided {
				b.Fatal("a name without colon was decided")
			}
		}
		if c.EndLine() != End {
			b.Fatal("a name without colon did not end the section")
		}
	}
}

// TestNoAllocationPerLine checks the allocation guarantee of the package
// comment: SectionEnd, Fields (with Value, NameIs, Unfold into a reused
// buffer) and Classifier allocate the same for 15 lines as for 15 000.
func TestNoAllocationPerLine(t *testing.T) {
	small, large := benchMessage(1<<10), benchMessage(1<<20)
	var buf []byte
	walk := func(msg []byte) func() {
		return func() {
			for f := range Fields(msg[:SectionEnd(msg)]) {
				if f.NameIs("Delivered-To") {
					buf = Unfold(buf[:0], f.Value())
				}
			}
			var c Classifier
			for off := 0; off < len(msg); {
				line, next := nextLine(msg, off)
				c.Feed(line)
				if c.EndLine() == End {
					break
				}
				off = next
			}
		}
	}
	walk(large)() // grow buf once
	a, b := testing.AllocsPerRun(20, walk(small)), testing.AllocsPerRun(20, walk(large))
	// A few allocations per walk are the iterator closures (the one Fields
	// returns, and this loop body when the compiler cannot inline it); none
	// may depend on the number of lines.
	if a != b {
		t.Fatalf("allocations per walk: %v for %d bytes, %v for %d bytes; want the same", a, len(small), b, len(large))
	}
}
