package core

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// With AwaitRecipients the caller gives the recipients a message is judged
// by (their expansion: package expand), and the session waits for them in
// state judge once the header section is read.

func awaitCfg() Config { return Config{AwaitRecipients: true} }

// expanded is recipient arg judged also by addrs (its expansion).
func expanded(arg string, addrs ...string) loopcheck.Recipient {
	var as []address.Addr
	for _, a := range addrs {
		as = append(as, address.ParseList([]byte(a))...)
	}
	return loopcheck.NewRecipient(arg).WithExpansion(as, false)
}

// recipientEvents are the EventRecipientAccepted the session reported.
func (h *harness) recipientEvents() []Event {
	var evs []Event
	for _, e := range h.events {
		if e.Kind == EventRecipientAccepted {
			evs = append(evs, e)
		}
	}
	return evs
}

const judgeEnvelope = "MAIL FROM:<s@x>\r\nRCPT TO:<valias@x>\r\nRCPT TO:<other@x> NOTIFY=NEVER\r\nDATA\r\n"

// The session reports each accepted recipient, waits in judge without
// reading the client or running its clock, and judges by what it is
// given: a loop through the expansion names the recipient as spelled.
func TestJudgeWaitsForRecipients(t *testing.T) {
	h := newHarness(t, awaitCfg()).connect()
	h.up.replies["RCPT"] = "250 2.1.5 Ok\r\n"
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<nobody@x>\r\n")
	h.up.replies["RCPT"] = "550 5.1.1 no such user\r\n" // refused: not reported
	h.fromClient("RCPT TO:<refused@x>\r\n")
	h.fromClient("RSET\r\n")
	delete(h.up.replies, "RCPT")
	h.fromClient(judgeEnvelope + "Delivered-To: loopuser@x\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
	want := []Event{
		{Kind: EventRecipientAccepted, Index: 0, Reason: "<nobody@x>"},
		{Kind: EventRecipientAccepted, Index: 0, Reason: "<valias@x>"},
		{Kind: EventRecipientAccepted, Index: 1, Reason: "<other@x> NOTIFY=NEVER"},
	}
	if diff := cmp.Diff(want, h.recipientEvents()); diff != "" {
		t.Fatalf("recipient events (-want +got):\n%s", diff)
	}
	if !h.s.WantsRecipients() || h.s.WantsClientInput() || h.s.PollTimers().Client != TimerNone || h.s.PollTimers().Upstream {
		t.Fatalf("in judge: wants recipients %v, client input %v, timers %+v", h.s.WantsRecipients(), h.s.WantsClientInput(), h.s.PollTimers())
	}
	if len(h.pending) == 0 {
		t.Fatal("the client's body was read while the session waited")
	}
	h.got()
	h.s.HandleRecipients([]loopcheck.Recipient{expanded("<valias@x>", "loopuser@x"), expanded("<other@x> NOTIFY=NEVER")})
	h.flush()
	h.pump()
	h.expect("554 5.4.6 mail forwarding loop for valias@x\r\n")
	txs := h.txEvents()
	if len(txs) != 1 || txs[0].Outcome != OutcomeLoop || txs[0].LoopRecipient != "valias@x" || txs[0].LoopVia != "loopuser@x" {
		t.Fatalf("transactions %+v", txs)
	}
	if strings.Contains(h.up.raw.String(), "loopuser") {
		t.Fatal("content of the loop reached the upstream")
	}
	// A second call changes nothing.
	h.s.HandleRecipients(nil)
	h.flush()
	if h.got() != "" {
		t.Fatal("a late HandleRecipients answered")
	}
}

// The verdict's outcomes from judge: a pass sends DATA, a loop is drained
// (or answered and RSET when the data is over: it ended within the header
// section); recipients missing from what the caller gives are judged as
// spelled.
func TestJudgeOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		data   string // after the envelope
		rcpts  []loopcheck.Recipient
		silent bool // the upstream stalls (so the state after judge shows)
		state  state
		reply  string
	}{
		{"pass sends DATA", "Delivered-To: loopuser@x\r\n\r\nbody\r\n", []loopcheck.Recipient{expanded("<valias@x>")}, true, stData354, ""},
		{"pass streams", "Delivered-To: loopuser@x\r\n\r\nbody\r\n", []loopcheck.Recipient{expanded("<valias@x>")}, false, stStream, ""},
		{"loop drains", "Delivered-To: loopuser@x\r\n\r\nbody\r\n", []loopcheck.Recipient{expanded("<valias@x>", "loopuser@x")}, false, stDrain, ""},
		{"loop at the end sends RSET", "Delivered-To: loopuser@x\r\n.\r\n", []loopcheck.Recipient{expanded("<valias@x>", "loopuser@x")}, true, stRSET,
			"554 5.4.6 mail forwarding loop for valias@x\r\n"},
		{"missing recipient judged as spelled", "Delivered-To: other@x\r\n.\r\n", []loopcheck.Recipient{expanded("<valias@x>")}, true, stRSET,
			"554 5.4.6 mail forwarding loop for other@x\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, awaitCfg()).connect()
			h.fromClient(judgeEnvelope + tc.data)
			if h.s.st != stJudge {
				t.Fatalf("in %v, want judge", h.s.st)
			}
			h.got()
			h.up.silent = tc.silent
			h.s.HandleRecipients(tc.rcpts)
			h.flush()
			if h.s.st != tc.state {
				t.Fatalf("after the recipients: %v, want %v", h.s.st, tc.state)
			}
			if got := h.got(); got != tc.reply {
				t.Fatalf("client got %q, want %q", got, tc.reply)
			}
		})
	}
}

// A message the upstream already reads (its 354 to a DATA the proxy
// forwarded) is judged the same way: a pass streams or ends, a loop
// closes the upstream without the final dot.
func TestJudgeUpstreamInData(t *testing.T) {
	for _, tc := range []struct {
		name  string
		data  string
		rcpts []loopcheck.Recipient
		state state
	}{
		{"pass streams", "Subject: s\r\n\r\nbody\r\n", []loopcheck.Recipient{loopcheck.NewRecipient("<a@x>")}, stStream},
		{"pass at the end", "Subject: s\r\n.\r\n", []loopcheck.Recipient{loopcheck.NewRecipient("<a@x>")}, stDataReply},
		{"loop at the end", "Delivered-To: a@x\r\n.\r\n", []loopcheck.Recipient{loopcheck.NewRecipient("<a@x>")}, stCommand},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, awaitCfg()).connect()
			// DATA with an argument is forwarded, and the upstream says 354.
			h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA x\r\n")
			h.fromClient(tc.data)
			if h.s.st != stJudge {
				t.Fatalf("in %v, want judge", h.s.st)
			}
			h.up.silent = true
			h.s.HandleRecipients(tc.rcpts)
			h.flush()
			if h.s.st != tc.state {
				t.Fatalf("after the recipients: %v, want %v", h.s.st, tc.state)
			}
		})
	}
}

// The upstream fails while the session waits: the message gets 451 once
// its data is read (drain), or at once when it is over.
func TestJudgeUpstreamFails(t *testing.T) {
	for _, tc := range []struct {
		name  string
		data  string
		fail  func(h *harness)
		state state
	}{
		{"closed, data going on", "Subject: s\r\n\r\nbody\r\n", func(h *harness) { h.s.HandleUpstreamClosed(EndClosed) }, stDrain},
		{"unsolicited, data going on", "Subject: s\r\n\r\nbody\r\n", func(h *harness) { h.s.HandleUpstreamData([]byte("421 bye\r\n")) }, stDrain},
		{"closed, data over", "Subject: s\r\n.\r\n", func(h *harness) { h.s.HandleUpstreamClosed(EndClosed) }, stCommand},
		{"unsolicited, data over", "Subject: s\r\n.\r\n", func(h *harness) { h.s.HandleUpstreamData([]byte("421 bye\r\n")) }, stCommand},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, awaitCfg()).connect()
			h.fromClient(judgeEnvelope + tc.data)
			h.got()
			tc.fail(h)
			h.flush()
			if h.s.st != tc.state {
				t.Fatalf("after the failure: %v, want %v", h.s.st, tc.state)
			}
			if tc.state == stCommand {
				h.expect("451 4.4.2 upstream 127.0.0.1:10026 " + map[bool]string{true: "closed the connection", false: "sent unexpected data"}[strings.Contains(tc.name, "closed")] + "\r\n")
			}
		})
	}
}

// A client Exempt says yes to (by its XFORWARD ADDR) has its messages
// relayed unjudged, loops included, reported as OutcomeExempt; without
// XFORWARD, or another address, the message is judged as always. An exempt
// message never waits for recipients.
func TestExemptClient(t *testing.T) {
	exempt := func(addr string) bool { return addr == "192.0.2.9" }
	loop := "MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nDelivered-To: a@x\r\n\r\nbody\r\n.\r\n"
	for _, tc := range []struct {
		name     string
		cfg      Config
		xforward string
		want     string
		outcome  Outcome
	}{
		{"exempt", Config{Check: smtptest.CheckDeliveredTo, Exempt: exempt}, "XFORWARD NAME=fetch.example ADDR=192.0.2.9\r\n",
			"250 2.0.0 Ok: queued as ABC123\r\n", OutcomeExempt},
		{"exempt, recipients awaited", Config{AwaitRecipients: true, Exempt: exempt}, "XFORWARD ADDR=192.0.2.9\r\n",
			"250 2.0.0 Ok: queued as ABC123\r\n", OutcomeExempt},
		{"another client", Config{Check: smtptest.CheckDeliveredTo, Exempt: exempt}, "XFORWARD ADDR=192.0.2.10\r\n",
			"554 5.4.6 mail forwarding loop for a@x\r\n", OutcomeLoop},
		{"no XFORWARD", Config{Check: smtptest.CheckDeliveredTo, Exempt: exempt}, "",
			"554 5.4.6 mail forwarding loop for a@x\r\n", OutcomeLoop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.cfg).connect()
			if tc.xforward != "" {
				h.fromClient(tc.xforward)
			}
			h.got()
			h.fromClient(loop)
			if h.s.WantsRecipients() {
				if tc.outcome == OutcomeExempt {
					t.Fatal("an exempt message waits for its recipients")
				}
				h.s.HandleRecipients(nil)
				h.flush()
			}
			got := h.got()
			if !strings.HasSuffix(got, tc.want) {
				t.Fatalf("client got %q, want it to end with %q", got, tc.want)
			}
			if txs := h.txEvents(); len(txs) != 1 || txs[0].Outcome != tc.outcome {
				t.Fatalf("transactions %+v, want one %v", txs, tc.outcome)
			}
		})
	}
}

// A metered session asks for header memory before its buffer grows and
// reads no client input until answered; granted, the buffer holds exactly
// the capacity asked for; refused, the message gets 451 4.3.1 once its
// data is read, and nothing of it reaches the upstream.
func TestHeaderMemory(t *testing.T) {
	msg := "Subject: " + strings.Repeat("s", 20000) + "\r\nDelivered-To: nobody@x\r\n\r\nbody\r\n.\r\n" // past HeaderUnmetered
	envelope := "MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n"

	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo, MeterHeader: true}).connect()
	h.fromClient(envelope)
	h.got()
	h.pending = append(h.pending, msg...)
	h.pump()
	var asked []int
	for h.s.HeaderMemoryWanted() > 0 {
		if h.s.WantsClientInput() {
			t.Fatal("the session takes client input while it asks for memory")
		}
		w := h.s.HeaderMemoryWanted()
		asked = append(asked, w)
		h.s.HandleHeaderMemory(true)
		h.flush()
		if h.s.HeaderMemoryHeld() != w {
			t.Fatalf("granted %d, holding %d", w, h.s.HeaderMemoryHeld())
		}
		h.pump()
	}
	if want := []int{2 * HeaderUnmetered}; !slices.Equal(asked, want) {
		t.Errorf("asked for %v, want %v", asked, want)
	}
	h.expect("250 2.0.0 Ok: queued as ABC123\r\n")

	// Refused: 451 4.3.1 after the data, RSET upstream, no DATA.
	h2 := newHarness(t, Config{Check: smtptest.CheckDeliveredTo, MeterHeader: true}).connect()
	h2.fromClient(envelope)
	h2.got()
	h2.pending = append(h2.pending, msg...)
	h2.pump()
	if h2.s.HeaderMemoryWanted() == 0 {
		t.Fatal("no memory asked for")
	}
	h2.s.HandleHeaderMemory(false)
	h2.flush()
	h2.pump()
	h2.expect("451 4.3.1 insufficient system resources, try again later\r\n")
	if txs := h2.txEvents(); len(txs) != 1 || txs[0].Outcome != OutcomeNoMemory {
		t.Fatalf("transactions %+v", txs)
	}
	if raw := h2.up.raw.String(); strings.Contains(raw, "DATA") || !strings.HasSuffix(raw, "RSET\r\n") {
		t.Fatalf("upstream received %q", raw)
	}
	if h2.s.HeaderMemoryHeld() != 0 {
		t.Errorf("a refused message holds %d bytes", h2.s.HeaderMemoryHeld())
	}
}
