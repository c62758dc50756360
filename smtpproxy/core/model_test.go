package core

import (
	"fmt"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"pgregory.net/rapid"
)

// The whole-session model test is TestSessionStateMachine
// (statemachine_test.go, with the model in refmodel_test.go).

// TestPropertyChunkingDoesNotMatter: however the client's bytes are cut
// into reads, the client receives exactly the same bytes, and the upstream
// the same commands and delivered messages, as when everything arrives in
// one piece. (The raw bytes of a message that is aborted may differ in
// how much of it was written before the connection was closed.) Messages are built near the
// header limit, where a chunk boundary could otherwise change the verdict.
func TestPropertyChunkingDoesNotMatter(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		limit := rapid.IntRange(8, 120).Draw(t, "limit")
		var msg strings.Builder
		for _, h := range rapid.SliceOfN(rapid.SampledFrom([]string{
			"Subject: x", "Delivered-To: a@x", "X-Pad: " + strings.Repeat("p", 20), " folded", "Hello world", "Subj",
		}), 0, 5).Draw(t, "headers") {
			msg.WriteString(h + "\r\n")
		}
		msg.WriteString(rapid.SampledFrom([]string{"", "\r\n", "\n"}).Draw(t, "sep"))
		msg.WriteString(rapid.SampledFrom([]string{"body\r\n", strings.Repeat("b", 100) + "\r\n", ".\n\r\n", "x\n.\nNOOP\r\n"}).Draw(t, "body"))
		input := "MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n" + msg.String() + ".\r\nNOOP\r\n"
		cfg := Config{Check: smtptest.CheckDeliveredTo, MaxHeaderBytes: limit, BareLF: rapid.SampledFrom([]BareLFPolicy{BareLFNormalize, BareLFReject}).Draw(t, "barelf")}
		run := func(cuts []int) (string, string) {
			h := newHarness(t, cfg)
			h.connect()
			prev := 0
			for _, c := range append(cuts, len(input)) {
				if c < prev {
					continue
				}
				h.fromClient(input[prev:c])
				prev = c
			}
			return h.client.String(), fmt.Sprintf("%q %q", h.up.commands, h.up.messages)
		}
		wantClient, wantUp := run(nil)
		gotClient, gotUp := run(cutsFor(t, len(input)))
		if gotClient != wantClient || gotUp != wantUp {
			t.Fatalf("chunking changed the outcome for %q:\nclient %q\nwant   %q\nupstream %q\nwant     %q", input, gotClient, wantClient, gotUp, wantUp)
		}
	})
}
