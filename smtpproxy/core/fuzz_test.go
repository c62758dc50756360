package core

import (
	"bytes"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
)

// FuzzSession feeds arbitrary client bytes, cut into arbitrary reads, to a
// session whose upstream accepts everything, and checks the invariants of
// SPEC section 2 as oracles: no bare LF and no unstuffed content dot
// reaches the upstream (strict and lenient readers agree on it), no
// message the upstream receives is a loop for the recipients it accepted,
// the client gets well-formed replies and no more 2xx end-of-data replies
// than the upstream gave, and memory stays bounded.
func FuzzSession(f *testing.F) {
	seeds := []string{
		"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nDelivered-To: a@x\r\n\r\nb\r\n.\r\nQUIT\r\n",
		"MAIL FROM:<s@x>\nRCPT TO:<a@x>\nDATA\nSubject: s\n\nline\n.\nMAIL FROM:<e@x>\r\n.\r\n",
		"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nX\r\r\n.\rX\r\n..\r\n.\r\n",
		"AUTH PLAIN\r\nabc\r\nBDAT 3 LAST\r\nabc\r\nSTARTTLS\r\n",
		"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA x\r\nDelivered-To: a@x\r\n\r\n.\r\nNOOP\r\n",
		"NOOP \x00\r\nRCPT TO:<a@x>\rRCPT TO:<b@x>\r\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), uint8(i*37), false)
	}
	f.Fuzz(func(t *testing.T, input []byte, cutSeed uint8, reject bool) {
		cfg := Config{Check: checkDeliveredTo, MaxHeaderBytes: 256}
		if reject {
			cfg.BareLF = BareLFReject
		}
		h := newHarness(t, cfg)
		h.up.replies["AUTH"] = "334 go on\r\n"
		h.connect()
		// Cut the input into reads whose sizes follow cutSeed.
		step := int(cutSeed%17) + 1
		for i := 0; i < len(input) && !h.s.Done(); i += step {
			h.fromClient(string(input[i:min(i+step, len(input))]))
			if len(h.s.hbuf) > cfg.MaxHeaderBytes+headerLookahead+captureStep {
				t.Fatalf("header buffer grew to %d", len(h.s.hbuf))
			}
			if len(h.pending) > len(input) {
				t.Fatal("pending input grew")
			}
		}
		raw := h.up.raw.Bytes()
		if bytes.Count(raw, []byte("\n")) != bytes.Count(raw, []byte("\r\n")) {
			t.Fatalf("bare LF upstream: %q", raw)
		}
		// Replies to the client are well formed.
		var rr replyReader
		out := h.client.Bytes()
		queuedToClient := 0
		for len(out) > 0 {
			n, rep, err := rr.feed(out)
			if err != nil {
				t.Fatalf("malformed reply to the client: %v in %q", err, h.client.String())
			}
			out = out[n:]
			if rep != nil && strings.Contains(string(rep.Raw), "queued as") {
				queuedToClient++
			}
		}
		if queuedToClient > len(h.up.messages) {
			t.Fatalf("%d messages acknowledged, %d delivered", queuedToClient, len(h.up.messages))
		}
		// No loop reached the upstream for the recipients it accepted.
		for i, m := range h.up.messages {
			msg := unstuff(m)
			sec := []byte(msg[:header.SectionEnd([]byte(msg))])
			if v := checkDeliveredTo(h.up.rcptsAt[i], sec); v.Loop {
				t.Fatalf("loop message delivered to %s: %q", v.Recipient, m)
			}
		}
	})
}
