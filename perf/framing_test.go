package perf

import (
	"bytes"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
	"pgregory.net/rapid"
)

// The protocol core has a fast path for canonical message data (whole CRLF lines copied as they are). These
// tests hold the core's upstream bytes, fast path and all, to a reading
// of SPEC section 4 written the simple way, for data drawn to mix
// canonical lines with every framing trap, cut into reads at random.

// referenceFraming is what the upstream must receive for the client's
// message data (everything after the DATA line): SPEC section 4 read on
// the whole input at once, then framed canonically. ok is false when the
// data has no end.
func referenceFraming(data []byte) (framed []byte, ok bool) {
	var out bytes.Buffer
	dotSensitive := true // the line follows a CRLF or opens the data
	for len(data) > 0 {
		j := bytes.IndexByte(data, '\n')
		if j < 0 {
			return nil, false
		}
		raw := data[:j]
		data = data[j+1:]
		crlf := len(raw) > 0 && raw[len(raw)-1] == '\r'
		content := raw
		if crlf {
			content = raw[:len(raw)-1]
		}
		if dotSensitive && crlf && string(content) == "." {
			out.WriteString(".\r\n")
			return out.Bytes(), true
		}
		if dotSensitive && len(content) > 0 && content[0] == '.' && string(content) != "." {
			content = content[1:] // stuffing ("." alone before a bare LF is content)
		}
		if len(content) > 0 && content[0] == '.' {
			out.WriteByte('.')
		}
		out.Write(content)
		out.WriteString("\r\n")
		dotSensitive = crlf
	}
	return nil, false
}

// fatalfer is what testing.T and rapid.T share.
type fatalfer interface {
	Fatalf(format string, args ...any)
}

// neverLoop is a verdict that passes every message, so the test sees the
// framing alone.
func neverLoop([]string, []byte) loopcheck.Verdict { return loopcheck.Verdict{} }

// proxyFraming runs a session through one transaction whose message data
// is data, given in reads of the sizes in cuts (cycled), and returns the
// upstream bytes written after the upstream's 354. With lend the session
// lends canonical data (core.Config.LendInput), and the lent bytes follow
// the session's own; each read is overwritten once it has been offered,
// as a runtime reusing its buffer would.
func proxyFraming(t fatalfer, data []byte, cuts []int, lend bool) []byte {
	s := core.NewSession(core.Config{Check: neverLoop, LendInput: lend})
	var up bytes.Buffer
	collect := func() {
		up.Write(s.TakeUpstreamOutput())
		up.Write(s.TakeUpstreamLent())
		s.TakeClientOutput()
		s.TakeEvents()
	}
	s.HandleUpstreamConnected()
	s.HandleUpstreamData([]byte("220 up\r\n"))
	collect()
	for _, cmd := range []string{"MAIL FROM:<s@x>\r\n", "RCPT TO:<r@x>\r\n"} {
		if n := s.HandleClientData([]byte(cmd)); n != len(cmd) {
			t.Fatalf("%q: %d bytes taken", cmd, n)
		}
		collect()
		s.HandleUpstreamData([]byte("250 ok\r\n"))
		collect()
	}
	s.HandleClientData([]byte("DATA\r\n")) // answered 354 by the proxy
	collect()
	up.Reset()
	var framed []byte
	dataSent := false
	for i := 0; len(data) > 0 && !s.Done(); i++ {
		step := min(cuts[i%len(cuts)], len(data))
		buf := append([]byte(nil), data[:step]...)
		p := buf
		for len(p) > 0 && s.WantsClientInput() {
			p = p[s.HandleClientData(p):]
			collect()
		}
		data = data[step-len(p):]
		clear(buf) // what the session lent must have been taken by now
		switch {
		case !dataSent && bytes.HasPrefix(up.Bytes(), []byte("DATA\r\n")):
			dataSent = true
			up.Reset()
			s.HandleUpstreamData([]byte("354 go\r\n"))
			collect()
		case len(p) == step:
			t.Fatalf("the session takes no more data with %d bytes left (upstream got %q)", len(data), framed)
		}
		framed = append(framed, up.Bytes()...)
		up.Reset()
	}
	return framed
}

// messageData draws message data: a few header lines, then lines made of
// canonical text and framing traps (leading dots, bare CR, bare LF, CR CR
// LF), then the end of data.
func messageData(t *rapid.T) []byte {
	headers := rapid.SliceOfN(rapid.SampledFrom([]string{
		"Subject: x\r\n", "From: a@x\r\n", " folded\r\n", "X-Long: " + strings.Repeat("h", 300) + "\r\n",
	}), 0, 4).Draw(t, "headers")
	lines := rapid.SliceOfN(rapid.SampledFrom([]string{
		"plain line of text\r\n", strings.Repeat("y", 2000) + "\r\n", "\r\n", "..stuffed\r\n", ".x\r\n",
		"a\rb\r\n", "x\r\r\n", "bare\n", ".\n", "\n", ".\rX\r\n", "..\r\n", "trailing cr\r", "\r",
	}), 0, 60).Draw(t, "lines")
	// The end is preceded by a line end of its own, so that no drawn line
	// (a bare LF, a trailing CR) keeps it from being one.
	return []byte(strings.Join(headers, "") + "\r\n" + strings.Join(lines, "") + "\r\n.\r\n")
}

// TestPropertyCoreFramingMatchesReference: whatever the data and however
// it is cut into reads, the upstream receives exactly the reference
// framing, the end of data the proxy's own.
func TestPropertyCoreFramingMatchesReference(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		data := messageData(t)
		want, ok := referenceFraming(data)
		if !ok {
			t.Fatalf("drawn data has no end: %q", data)
		}
		cuts := rapid.SliceOfN(rapid.IntRange(1, 70_000), 1, 5).Draw(t, "cuts")
		got := proxyFraming(t, data, cuts, rapid.Bool().Draw(t, "lend"))
		if !bytes.Equal(got, want) {
			t.Fatalf("upstream got\n%q\nwant\n%q", got, want)
		}
	})
}

// TestCoreFramingCanonicalIsVerbatim: canonical data (SPEC 2.6) reaches
// the upstream byte for byte, 1 MiB of it in reads of many sizes.
func TestCoreFramingCanonicalIsVerbatim(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("Subject: x\r\n\r\n")
	for b.Len() < 1<<20 {
		b.WriteString("The quick brown fox; ..dots inside and a bare\rCR\r\n..stuffed\r\n\r\n")
	}
	b.WriteString(".\r\n")
	for _, lend := range []bool{false, true} {
		for _, cuts := range [][]int{{1 << 21}, {64 << 10}, {32 << 10}, {4096, 1}, {7, 70_000, 13}, {1}} {
			if got := proxyFraming(t, b.Bytes(), cuts, lend); !bytes.Equal(got, b.Bytes()) {
				t.Fatalf("lend %v, reads of %v: canonical data changed on its way (%d bytes in, %d out)", lend, cuts, b.Len(), len(got))
			}
		}
	}
}
