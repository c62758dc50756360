package core

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// The session and framer fuzz targets live here, in the core's own
// package, rather than in ../../fuzz: they check the core against a model
// and a strict upstream written in this package's tests, and they look at
// internals (the header buffer's size, the accepted recipients) that the
// core's API does not export and should not. fuzz/doc.go says so.

// fuzzConfig reads FuzzSession's option byte.
type fuzzConfig struct {
	ref refConfig
	end uint8 // 0 client closes, 1 client times out, 2 shutdown then close, 3 nothing
}

func readFuzzOpts(opts uint8) fuzzConfig {
	c := fuzzConfig{end: opts >> 5 & 3}
	c.ref.reject = opts&1 != 0
	c.ref.dryRun = opts&2 != 0
	c.ref.maxHeader = []int{DefaultMaxHeaderBytes, 256, 64, 4096}[opts>>2&3]
	if opts&16 != 0 {
		c.ref.drop = []string{"size", "XFORWARD"}
	}
	c.ref.lend = opts&128 != 0 // the runtime's way: canonical data lent, not copied
	return c
}

// pieceSizes cuts input into reads whose sizes follow seed.
func pieceSizes(seed uint64) func(n int) int {
	rng := rand.New(rand.NewPCG(seed, seed>>32|1))
	return func(n int) int {
		switch rng.IntN(8) {
		case 0:
			return n
		case 1:
			return 1 + rng.IntN(n)
		}
		return 1 + rng.IntN(min(n, 24))
	}
}

// FuzzSession feeds an arbitrary client byte stream, cut into arbitrary
// reads, to a session whose upstream follows an arbitrary script (one op
// byte per thing it reads, see acts_test.go), then ends the session as
// the option byte says (bit 7: with Config.LendInput). Oracles: the reference model (refmodel_test.go)
// says reply by reply what the client gets and command by command, line
// by line, what the strict RFC 5321 upstream reads, and which recipients
// are accepted and checked; independently of it, every end-of-data 2xx
// the client gets is one the upstream gave for a message it read whole,
// no message the upstream reads is a loop for the recipients it accepted,
// nothing is written upstream after the connection closed, and memory
// stays bounded (SPEC section 2, all of it).
func FuzzSession(f *testing.F) {
	seeds := []struct {
		client, script string
		opts           uint8
	}{
		{"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nDelivered-To: a@x\r\n\r\nb\r\n.\r\nQUIT\r\n", "", 0},
		{"MAIL FROM:<s@x>\nRCPT TO:<a@x>\nDATA\nSubject: s\n\nline\n.\nMAIL FROM:<e@x>\r\n.\r\n", "", 0},
		{"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nX\r\r\n.\rX\r\n..\r\n.\r\n", "", 1},
		{"AUTH PLAIN\r\nabc\r\nBDAT 3 LAST\r\nabc\r\nSTARTTLS\r\n", "\x00\x00\x08", 0},
		{"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA x\r\nDelivered-To: a@x\r\n\r\n.\r\nNOOP\r\n", "", 0},
		{"NOOP \x00\r\nRCPT TO:<a@x>\rRCPT TO:<b@x>\r\n", "", 0},
		{"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nSubject: x\r\n.\r\n", "\x00\x00\x00\x0b", 0},
		{"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nSubject: x\r\n\r\n" + strings.Repeat("body line\r\n", 20) + ".\r\nNOOP\r\n", "\x00\x00\x00\x3c", 1},
		{"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nDelivered-To: b@x\r\n\r\nhi\r\n.\r\nRSET\r\n", "\x00\x00\x00\x02\x00\x00\x01", 2 << 5},
		{"quıt\r\nmaıl FROM:<s@x>\r\nſtarttls\r\n", "", 0},
	}
	for i, s := range seeds {
		f.Add([]byte(s.client), []byte(s.script), uint64(i)*0x9e3779b97f4a7c15, s.opts)
		f.Add([]byte(s.client), []byte(s.script), uint64(i)*0x9e3779b97f4a7c15, s.opts|128) // lending
	}
	f.Fuzz(func(t *testing.T, client, script []byte, cutSeed uint64, opts uint8) {
		runSessionCase(t, client, script, cutSeed, opts)
	})
}

// runSessionCase runs the model, then the session, and compares.
func runSessionCase(t tb, client, script []byte, cutSeed uint64, opts uint8) *driver {
	t.Helper()
	c := readFuzzOpts(opts)
	m := newRefModel(c.ref, scriptSource(script))
	m.feed(client)
	switch c.end {
	case 0:
		m.clientClosed()
	case 1:
		m.clientTimeout()
	case 2:
		m.shutdownNow()
		m.clientClosed()
	}
	// The cut seed's top bit runs the session with AwaitRecipients, the
	// recipients given as spelled, the next with MeterHeader, all
	// header memory granted: either must behave exactly as without.
	d := newAwaitDriver(t, m, pieceSizes(cutSeed), cutSeed>>63 == 1, cutSeed>>62&1 == 1)
	d.feed(client)
	switch c.end {
	case 0:
		d.clientClosed()
	case 1:
		d.clientTimeout()
	case 2:
		d.shutdown()
		d.clientClosed()
	}
	d.verify(c.end != 3)
	return d
}

// FuzzFramer feeds any data stream, cut into any pieces, as the data of
// one message, and checks what the upstream reads against a reading of
// the same bytes written straight from RFC 5321 4.5.2 and SPEC 4
// (readData): the strict upstream reads exactly the content lines the
// proxy read, in canonical framing, and the end of data exactly once,
// after the last of them, and only if the data held one. What follows the
// end of data is not data: it is read as commands. Both paths of the
// framer are taken: the header section captured then written at once,
// and the body streamed, copied or (odd cut seeds) lent as the runtime
// has it (Config.LendInput); a small header limit sends some messages down
// the refusal path, where the upstream must read nothing of them.
func FuzzFramer(f *testing.F) {
	seeds := []string{
		"Subject: x\r\n\r\nbody\r\n.\r\n",
		"..\r\n.x\r\nx\n.\nMAIL FROM:<e@x>\r\n.\r\n",
		"X\r\r\n.\rX\r\n.\r\r\n\r\n.\r\n",
		"a\n.\r\nb\r\n.\r\nNOOP\r\n",
		"Subject: x\r\n.\r\n",
		"\r\n.\r\n",
		".\r\n",
		"a\r\n.\n.\r\n",
		"Subject: " + strings.Repeat("s", 300) + "\r\n\r\n.\r\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), uint64(i), uint16(0))
		f.Add([]byte(s), uint64(i)*31+7, uint16(200))
	}
	f.Fuzz(func(t *testing.T, data []byte, cutSeed uint64, limit uint16) {
		want := readData(data)

		// The framer alone: decoder, then encoder as the session uses it.
		var d decoder
		var e encoder
		var up []byte
		cut := pieceSizes(cutSeed)
		for p := data; len(p) > 0 && !d.done(); {
			piece := p[:max(1, min(cut(len(p)), len(p)))]
			for len(piece) > 0 && !d.done() {
				tok, n := d.next(piece)
				piece, p = piece[n:], p[n:]
				switch tok.kind {
				case tokContent:
					up = e.content(up, tok.content)
				case tokLineEnd:
					up = e.lineEnd(up)
				case tokEnd:
					up = e.end(up)
				}
			}
		}
		lines, ended := readStrictData(t, up)
		wantLines := make([]string, len(want.lines))
		for i, l := range want.lines {
			wantLines[i] = l.content
		}
		if want.partial != "" && !want.end {
			wantLines = append(wantLines, want.partial) // written so far, its line unfinished
		}
		if !slices.Equal(lines, wantLines) || ended != want.end {
			t.Fatalf("framer: the upstream reads %s (end %v), the data holds %s (end %v):\n%s", clip(fmt.Sprintf("%q", lines)), ended, clip(fmt.Sprintf("%q", wantLines)), want.end, clip(data))
		}

		// Through a session: the same data after DATA, then its end if
		// it has none, then QUIT.
		msg := slices.Clone(data)
		if !want.end {
			msg = append(msg, "\r\n.\r\n"...)
		}
		client := append([]byte("MAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\nDATA\r\n"), msg...)
		client = append(client, "QUIT\r\n"...)
		opts := uint8(2) // dry run: a loop passes too (the framer is the question here)
		if limit > 0 {
			opts |= 1 << 2 // the 256-byte header limit
		}
		if cutSeed&1 != 0 {
			opts |= 128 // canonical data lent, as the runtime has it
		}
		dr := runSessionCase(t, client, nil, cutSeed, opts)
		var delivered []*gotUnit
		for _, u := range dr.srv.units {
			if u.what == uMessage {
				delivered = append(delivered, u)
			}
		}
		whole := readData(msg)
		if len(delivered) == 0 {
			// Only a header section over the limit keeps it back, and
			// the upstream reads nothing of it.
			if !bytes.Contains(dr.client, []byte("\r\n552 5.3.4 ")) {
				t.Fatalf("session: the message was not delivered nor refused as too large:\n%s", clip(msg))
			}
			return
		}
		u := delivered[0]
		wantLines = wantLines[:0]
		for _, l := range whole.lines {
			wantLines = append(wantLines, l.content)
		}
		if !u.ended || !slices.Equal(u.lines, wantLines) {
			t.Fatalf("session: the upstream reads %s (end %v), the data holds %s:\n%s", clip(fmt.Sprintf("%q", u.lines)), u.ended, clip(fmt.Sprintf("%q", wantLines)), clip(msg))
		}
		if n := bytes.Count(u.raw, []byte("\r\n.\r\n")) + btoi(bytes.HasPrefix(u.raw, []byte(".\r\n"))); n != 1 {
			t.Fatalf("session: the upstream reads %d ends of data in %s", n, clip(u.raw))
		}
	})
}

// readStrictData reads framed message data as a strict RFC 5321 server:
// lines ended by CRLF only, a leading dot removed, "." the end of data,
// which must be the last thing; an unfinished last line is returned as a
// line.
func readStrictData(t tb, up []byte) (lines []string, ended bool) {
	t.Helper()
	for len(up) > 0 {
		i := bytes.IndexByte(up, '\n')
		if i < 0 {
			return append(lines, strings.TrimPrefix(string(up), ".")), false
		}
		if i == 0 || up[i-1] != '\r' {
			t.Fatalf("bare LF in framed data: %q", up)
		}
		line := string(up[:i-1])
		up = up[i+1:]
		if line == "." {
			if len(up) > 0 {
				t.Fatalf("framed data goes on after its end: %q", up)
			}
			return lines, true
		}
		lines = append(lines, strings.TrimPrefix(line, "."))
	}
	return lines, false
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
