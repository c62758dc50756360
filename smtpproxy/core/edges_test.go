package core

import (
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// Edges of the session that the model-based tests reach rarely or never:
// inputs out of turn, the texts the proxy makes up, exact limits, and the
// release of big buffers.

func TestOutcomeAndTimerNames(t *testing.T) {
	seen := map[string]bool{}
	for o := OutcomePass; o <= OutcomeAborted; o++ {
		name := o.String()
		if name == "unknown" || seen[name] {
			t.Errorf("Outcome %d is named %q, which is unknown or taken", o, name)
		}
		seen[name] = true
	}
	if got := Outcome(200).String(); got != "unknown" {
		t.Errorf("an out-of-range Outcome is named %q, want unknown", got)
	}
	want := map[TimerKind]string{TimerNone: "none", TimerClientCommand: "client-command", TimerClientData: "client-data-idle", TimerUpstreamReply: "upstream-reply", 9: "none"}
	for k, name := range want {
		if got := k.String(); got != name {
			t.Errorf("TimerKind(%d) is named %q, want %q", k, got, name)
		}
	}
}

// TestShutdownBeforeGreeting: a session asked to shut down before its
// upstream greeted ends at once with 421 4.3.2 and gives up the upstream.
func TestShutdownBeforeGreeting(t *testing.T) {
	for _, connected := range []bool{false, true} {
		s := newTestSession(t, Config{})
		if connected {
			s.HandleUpstreamConnected()
		}
		s.HandleShutdown()
		if got := string(s.TakeClientOutput()); got != replyShutdown || !s.Done() || !s.UpstreamGone() {
			t.Errorf("connected %v: client got %q, done %v, upstream gone %v; want %q, true, true", connected, got, s.Done(), s.UpstreamGone(), replyShutdown)
		}
		if out := s.TakeUpstreamOutput(); len(out) != 0 {
			t.Errorf("connected %v: %q written upstream", connected, out)
		}
		if s.EndReason() != "shutting down" {
			t.Errorf("connected %v: end reason %q", connected, s.EndReason())
		}
	}
}

// TestInputsOutOfTurnIgnored: connection events that come late and
// timers that run out after the end change nothing.
func TestInputsOutOfTurnIgnored(t *testing.T) {
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.expect("220 up.example ESMTP\r\n")
	before := h.s.PollTimers()
	h.s.HandleUpstreamConnected()
	h.s.HandleUpstreamConnectFailed("connection refused")
	h.flush()
	if h.got() != "" || h.s.Done() || h.s.PollTimers() != before {
		t.Fatalf("late connection events changed the session: done %v, timers %+v (was %+v)", h.s.Done(), h.s.PollTimers(), before)
	}
	h.fromClient("QUIT\r\n")
	h.expect("221 2.0.0 Bye\r\n")
	if !h.s.Done() || h.s.EndReason() != "client quit" {
		t.Fatalf("after QUIT: done %v, end reason %q", h.s.Done(), h.s.EndReason())
	}
	h.s.HandleTimeout(TimerClientCommand)
	h.s.HandleTimeout(TimerUpstreamReply)
	h.s.HandleClientClosed()
	h.s.HandleDrainExpired()
	if out := string(h.s.TakeClientOutput()) + string(h.s.TakeUpstreamOutput()); out != "" {
		t.Fatalf("a finished session wrote %q", out)
	}
}

// TestXFORWARDAttributesLogged: the client's NAME and ADDR from XFORWARD
// reach the transaction record decoded from xtext and safe for one log
// line; other attributes and malformed ones are ignored.
func TestXFORWARDAttributesLogged(t *testing.T) {
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.fromClient("XFORWARD NAME=mail+2Eclient+2eexample ADDR=192.0.2.1 PORT HELO=x+zz\r\n")
	h.fromClient("XFORWARD junk name=a+0Ab+7\r\n")
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nSubject: x\r\n\r\n.\r\n")
	txs := h.txEvents()
	if len(txs) != 1 {
		t.Fatalf("%d transactions", len(txs))
	}
	if txs[0].ClientName != "a?b+7" || txs[0].ClientAddr != "192.0.2.1" {
		t.Fatalf("client name %q, addr %q; want %q, %q", txs[0].ClientName, txs[0].ClientAddr, "a?b+7", "192.0.2.1")
	}
	h = newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.fromClient("XFORWARD NAME=mail+2Eclient+2eexample ADDR=192.0.2.1\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n\r\n.\r\n")
	if txs := h.txEvents(); len(txs) != 1 || txs[0].ClientName != "mail.client.example" {
		t.Fatalf("transactions %+v, want one from mail.client.example", txs)
	}
}

// TestLoopReplyText: the 554 names the recipient the verdict gives, made
// safe for one reply line, or none when the verdict names none.
func TestLoopReplyText(t *testing.T) {
	for _, c := range []struct{ rcpt, want string }{
		{"", "554 5.4.6 mail forwarding loop\r\n"},
		{"a\x01b\x7f@x", "554 5.4.6 mail forwarding loop for a?b?@x\r\n"},
		{"ü@x", "554 5.4.6 mail forwarding loop for ü@x\r\n"},
	} {
		check := func([]string, []byte) loopcheck.Verdict { return loopcheck.Verdict{Loop: true, Recipient: c.rcpt} }
		h := newHarness(t, Config{Check: check}).connect()
		h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
		h.got()
		h.fromClient("DATA\r\nSubject: x\r\n\r\n.\r\n")
		h.expect(replyData354 + c.want)
	}
}

// TestHeaderLimitAtLineEnd: the CRLF of a header line counts against the
// limit: a line whose content fills it exactly is over it.
func TestHeaderLimitAtLineEnd(t *testing.T) {
	const limit = 40
	for _, c := range []struct {
		content int
		want    string
	}{{limit - 2, queued}, {limit - 1, replyHeaderTooBig}, {limit, replyHeaderTooBig}} {
		field := "Subject: " + strings.Repeat("s", c.content-len("Subject: "))
		h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo, MaxHeaderBytes: limit}).connect()
		h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
		h.got()
		h.fromClient(field + "\r\n\r\nbody\r\n.\r\n")
		if got := h.got(); got != c.want {
			t.Errorf("a %d-byte header line under a %d-byte limit: %q, want %q", c.content, limit, got, c.want)
		}
	}
}

// TestDecoderAfterEnd: once the end of data is read, the decoder reads
// nothing more: what follows is the next command.
func TestDecoderAfterEnd(t *testing.T) {
	var d decoder
	tok, n := d.next([]byte(".\r\nQUIT\r\n"))
	if tok.kind != tokEnd || n != 3 {
		t.Fatalf("got kind %d after %d bytes, want the end after 3", tok.kind, n)
	}
	if tok, n := d.next([]byte("QUIT\r\n")); tok.kind != tokNone || n != 0 || !d.done() {
		t.Fatalf("after the end: kind %d, %d bytes consumed, done %v", tok.kind, n, d.done())
	}
}

// TestReplyLimitCountsLineEnds: MaxReplyBytes bounds the reply as the
// client gets it, every line ended in CRLF, also when the upstream ended
// it in a bare LF.
func TestReplyLimitCountsLineEnds(t *testing.T) {
	for _, c := range []struct {
		reply string
		ok    bool
	}{
		{"250 " + strings.Repeat("x", MaxReplyBytes-6) + "\r\n", true},
		{"250 " + strings.Repeat("x", MaxReplyBytes-6) + "\n", true},
		{"250 " + strings.Repeat("x", MaxReplyBytes-5) + "\n", false},
		{"250 " + strings.Repeat("x", MaxReplyBytes-5) + "\r\n", false},
	} {
		var r replyReader
		_, rep, err := r.feed([]byte(c.reply))
		if (err == nil && rep != nil) != c.ok {
			t.Errorf("a %d-byte reply: reply %v, error %v; want accepted %v", len(c.reply), rep != nil, err, c.ok)
		}
		if c.ok && (rep == nil || len(rep.Raw) != MaxReplyBytes) {
			t.Errorf("a %d-byte reply gave %d bytes, want %d", len(c.reply), len(rep.Raw), MaxReplyBytes)
		}
	}
}

// TestBigBuffersReleased: after a message with a big header section the
// session keeps no big buffer, whether the message was refused or its
// header section went upstream in one burst.
func TestBigBuffersReleased(t *testing.T) {
	big := "Delivered-To: a@x\r\nX-Big: " + strings.Repeat("b", 300<<10) + "\r\n\r\nbody\r\n.\r\n"
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	h.got()
	h.fromClient("DATA\r\n" + big)
	h.expect(replyData354 + "554 5.4.6 mail forwarding loop for a@x\r\n")
	if c := cap(h.s.msg.hdr.buf); c > keepBufferCap {
		t.Fatalf("after a refused message the header buffer keeps %d bytes", c)
	}
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<b@x>\r\n")
	h.got()
	h.fromClient("DATA\r\n" + big)
	h.expect(replyData354 + queued)
	if c, u := cap(h.s.msg.hdr.buf), cap(h.s.upOut); c > keepBufferCap || u > 4*maxStreamOutput {
		t.Fatalf("after a delivered message the header buffer keeps %d bytes and the output buffer %d", c, u)
	}
}

// TestUpstream421ToProxyDATA: a 421 to the proxy's own DATA is the
// end-of-data reply once the client's data is read, and the session ends
// with it; no RSET goes to an upstream that is closing.
func TestUpstream421ToProxyDATA(t *testing.T) {
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.up.replies["DATA"] = "421-4.3.0 up.example closing\r\n421 4.3.0 try later\r\n"
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	h.got()
	h.fromClient("DATA\r\nSubject: x\r\n\r\nbody\r\n")
	h.expect(replyData354)
	h.fromClient("more\r\n.\r\nNOOP\r\n")
	h.expect("421-4.3.0 up.example closing\r\n421 4.3.0 try later\r\n")
	if !h.s.Done() || h.s.EndReason() != "upstream 421" {
		t.Fatalf("done %v, end reason %q", h.s.Done(), h.s.EndReason())
	}
	if last := h.up.commands[len(h.up.commands)-1]; last != "DATA" {
		t.Fatalf("the upstream's last command was %q, want DATA", last)
	}
}

// TestUnexpectedReplyToProxyDATA: a 2xx to the proxy's own DATA is a
// protocol error: the upstream is given up, the client gets 451 at the
// end of its data (never a 2xx), and 421 at its next command.
func TestUnexpectedReplyToProxyDATA(t *testing.T) {
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.up.replies["DATA"] = "250 2.0.0 Ok\r\n"
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	h.got()
	h.fromClient("DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
	h.expect(replyData354 + "451 4.4.2 upstream 127.0.0.1:10026 sent an unexpected reply to DATA (250)\r\n")
	if !h.upGone || len(h.up.messages) != 0 {
		t.Fatalf("upstream gone %v, messages %q; want gone and none", h.upGone, h.up.messages)
	}
	h.fromClient("NOOP\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 sent an unexpected reply to DATA (250)\r\n")
}
