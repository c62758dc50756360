package milter

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	gomilter "github.com/d--j/go-milter"
	"github.com/google/go-cmp/cmp"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

const loopRcpt = "loopuser@local.test"

func TestVerdicts(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	many := make([][2]string, 0, 1001)
	for i := range 1000 {
		many = append(many, dt(fmt.Sprintf("user%d@example.org", i)))
	}
	many = append(many, dt(loopRcpt))
	for _, tc := range []struct {
		name string
		msg  message
		loop string // the recipient the reply names; "" for a pass
	}{
		{"exact", message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}, loopRcpt},
		{"pass", message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt("other@local.test"), {"Subject", " hello"}}}, ""},
		{"no header", message{rcpts: rcpts(loopRcpt)}, ""},
		{"case folded", message{rcpts: rcpts("LoopUser@Local.Test"), headers: [][2]string{dt("LOOPUSER@local.TEST")}}, "LoopUser@Local.Test"},
		// Folded values arrive with LF line ends (Postfix keeps the fold, drops the CR).
		{"folded second line", message{rcpts: rcpts(loopRcpt), headers: [][2]string{{"Delivered-To", " other@example.org,\n\tloopuser@local.test"}}}, loopRcpt},
		{"folded value on continuation line", message{rcpts: rcpts(loopRcpt), headers: [][2]string{{"Delivered-To", "\n loopuser@local.test"}}}, loopRcpt},
		{"folded display name", message{rcpts: rcpts(loopRcpt), headers: [][2]string{{"Delivered-To", " \"Loop\n User\" <loopuser@local.test>"}}}, loopRcpt},
		// With the leading-space option the value is the stored bytes.
		{"leading spaces", message{rcpts: rcpts(loopRcpt), headers: [][2]string{{"Delivered-To", "   loopuser@local.test"}}}, loopRcpt},
		{"leading tab", message{rcpts: rcpts(loopRcpt), headers: [][2]string{{"Delivered-To", "\tloopuser@local.test"}}}, loopRcpt},
		{"no space", message{rcpts: rcpts(loopRcpt), headers: [][2]string{{"delivered-to", "loopuser@local.test"}}}, loopRcpt},
		{"1001 fields, the loop last", message{rcpts: rcpts(loopRcpt), headers: many}, loopRcpt},
		{"second field", message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt("a@example.org"), {"Received", " from x by y"}, dt(loopRcpt)}}, loopRcpt},
		{"second recipient", message{rcpts: rcpts("user@local.test", loopRcpt), headers: [][2]string{dt(loopRcpt)}}, loopRcpt},
		{"first matching recipient named", message{rcpts: rcpts("user@local.test", loopRcpt), headers: [][2]string{dt(loopRcpt), dt("user@local.test")}}, "user@local.test"},
		{"rcpt NOTIFY=NEVER", message{rcpts: []rcptIn{{loopRcpt, "NOTIFY=NEVER"}}, headers: [][2]string{dt(loopRcpt)}}, loopRcpt},
		{"rcpt ORCPT and NOTIFY", message{rcpts: []rcptIn{{loopRcpt, "ORCPT=rfc822;loopuser@local.test NOTIFY=SUCCESS,FAILURE"}}, headers: [][2]string{dt(loopRcpt)}}, loopRcpt},
		{"rcpt arguments are not the address", message{rcpts: []rcptIn{{"user@local.test", "ORCPT=rfc822;loopuser@local.test"}}, headers: [][2]string{dt(loopRcpt)}}, ""},
		{"extension differs", message{rcpts: rcpts("loopuser+ext@local.test"), headers: [][2]string{dt(loopRcpt)}}, ""},
		{"not a header name", message{rcpts: rcpts(loopRcpt), headers: [][2]string{{"X-Delivered-To", " loopuser@local.test"}}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := judge(t, ts.addr, tc.msg)
			switch {
			case tc.loop != "" && !isLoopReply(got.act, tc.loop):
				t.Errorf("answer %v, want 554 5.4.6 mail forwarding loop for %s", got.act, tc.loop)
			case tc.loop == "" && !isAccept(got.act):
				t.Errorf("answer %v, want accept", got.act)
			}
			if len(got.mods) != 0 {
				t.Errorf("modifications %v, want none", got.mods)
			}
			// The very verdict loopcheck gives on the raw section.
			var raw strings.Builder
			for _, h := range tc.msg.headers {
				raw.WriteString(h[0] + ":" + strings.ReplaceAll(h[1], "\n", "\r\n") + "\r\n")
			}
			raw.WriteString("\r\n")
			var args []string
			for _, r := range tc.msg.rcpts {
				args = append(args, strings.TrimSpace("<"+r.addr+"> "+r.args))
			}
			if v := loopcheck.Check(args, []byte(raw.String())); v.Recipient != tc.loop {
				t.Errorf("loopcheck.Check on the raw section says %+v; the test's expectation %q is wrong", v, tc.loop)
			}
		})
	}
	ts.stop(t)
	if n := ts.obs.outcome(OutcomeLoop); n == 0 {
		t.Errorf("the observer counted no loop")
	}
}

// TestNegotiation: the options a Postfix-like MTA gets asked for.
func TestNegotiation(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	s, err := postfixLike(ts.addr).Session(gomilter.NewMacroBag())
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	defer s.Close()
	for _, opt := range []gomilter.OptProtocol{
		gomilter.OptNoHelo, gomilter.OptNoData, gomilter.OptNoBody, gomilter.OptNoUnknown,
		gomilter.OptNoConnReply, gomilter.OptNoMailReply, gomilter.OptNoRcptReply,
		gomilter.OptNoHeaderReply, gomilter.OptNoEOHReply, gomilter.OptHeaderLeadingSpace,
	} {
		if !s.ProtocolOption(opt) {
			t.Errorf("protocol option %v not negotiated", opt)
		}
	}
	for _, opt := range []gomilter.OptProtocol{gomilter.OptNoConnect, gomilter.OptNoMailFrom, gomilter.OptNoRcptTo, gomilter.OptNoHeaders, gomilter.OptRcptRej} {
		if s.ProtocolOption(opt) {
			t.Errorf("protocol option %v negotiated; the check needs that event", opt)
		}
	}
	if !s.ActionOption(gomilter.OptRemoveRcpt) {
		t.Errorf("action OptRemoveRcpt not negotiated")
	}
	if s.ActionOption(gomilter.OptAddHeader) || s.ActionOption(gomilter.OptChangeBody) {
		t.Errorf("actions beyond removing recipients negotiated")
	}
}

// TestOldMTA: an MTA that offers protocol 2 and no options is served
// (with replies to every event).
func TestOldMTA(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	c := postfixLike(ts.addr, gomilter.WithMaximumVersion(2), gomilter.WithActions(0),
		gomilter.WithProtocols(gomilter.OptNoHelo))
	macros := gomilter.NewMacroBag()
	s := openSession(t, c, macros, "")
	got := sendMessage(t, s, macros, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}})
	if !isLoopReply(got.act, loopRcpt) {
		t.Errorf("answer %v, want the loop reply", got.act)
	}
}

// TestDropRecipient: removals under drop-recipient, every recipient
// expanding to itself (package expand over empty tables).
func TestDropRecipient(t *testing.T) {
	ts := startServer(t, Config{Policy: Policy{LoopAction: DropRecipient, Expander: memExpander(t, nil, nil)}}, nil)
	t.Run("one of three", func(t *testing.T) {
		got := judge(t, ts.addr, message{
			rcpts:   []rcptIn{{"user@local.test", ""}, {"LoopUser@Local.Test", "NOTIFY=NEVER"}, {"other@local.test", ""}},
			headers: [][2]string{dt("someone@example.org"), dt(loopRcpt)},
		})
		if !isAccept(got.act) {
			t.Errorf("answer %v, want accept", got.act)
		}
		// Postfix matches the removal against the recipient as the client
		// spelled it (cleanup_del_rcpt), so it is sent back as received.
		if d := got.deleted(); !slices.Equal(d, []string{"<LoopUser@Local.Test>"}) {
			t.Errorf("removed %q, want only <LoopUser@Local.Test>", d)
		}
		ts.waitLog(t, "queue_id=4ABCDEF0 recipient=LoopUser@Local.Test rcpt_mailer=local")
		ts.waitLog(t, "verdict=dropped")
	})
	t.Run("two of three", func(t *testing.T) {
		got := judge(t, ts.addr, message{
			rcpts:   rcpts("a@local.test", "b@local.test", "c@local.test"),
			headers: [][2]string{dt("c@local.test"), dt("a@local.test")},
		})
		if d := got.deleted(); !isAccept(got.act) || !slices.Equal(d, []string{"<a@local.test>", "<c@local.test>"}) {
			t.Errorf("answer %v, removed %q; want accept, <a@local.test> and <c@local.test> removed", got.act, d)
		}
	})
	t.Run("every recipient loops", func(t *testing.T) {
		got := judge(t, ts.addr, message{
			rcpts:   rcpts("a@local.test", "b@local.test"),
			headers: [][2]string{dt("b@local.test"), dt("a@local.test")},
		})
		if !isLoopReply(got.act, "a@local.test") || len(got.mods) != 0 {
			t.Errorf("answer %v with %v, want the loop reply for a@local.test and no removal", got.act, got.mods)
		}
	})
	t.Run("same recipient twice", func(t *testing.T) {
		got := judge(t, ts.addr, message{
			rcpts:   rcpts("a@local.test", "b@local.test", "a@local.test"),
			headers: [][2]string{dt("a@local.test")},
		})
		if d := got.deleted(); !isAccept(got.act) || !slices.Equal(d, []string{"<a@local.test>"}) {
			t.Errorf("answer %v, removed %q; want accept and <a@local.test> removed once", got.act, d)
		}
	})
	// Postfix stores a recipient without its source route (smtpd's
	// extract_addr) and compares a removal exactly: the removal names the
	// address without the route, spelled as the client spelled it. One
	// removal covers the routed and the plain spelling.
	t.Run("source route", func(t *testing.T) {
		got := judge(t, ts.addr, message{
			rcpts: rcpts("user@local.test", "@relay.example,@b.example:LoopUser@Local.Test", `@relay.example:"loopuser"@local.test`,
				"loopuser@local.test", "@relay.example:loopuser@local.test"),
			headers: [][2]string{dt(loopRcpt)},
		})
		want := []string{"<LoopUser@Local.Test>", `<"loopuser"@local.test>`, "<loopuser@local.test>"}
		if d := got.deleted(); !isAccept(got.act) || !slices.Equal(d, want) {
			t.Errorf("answer %v, removed %q; want accept and %q removed", got.act, d, want)
		}
	})
	t.Run("no loop", func(t *testing.T) {
		got := judge(t, ts.addr, message{rcpts: rcpts("a@local.test"), headers: [][2]string{dt("b@local.test")}})
		if !isAccept(got.act) || len(got.mods) != 0 {
			t.Errorf("answer %v with %v, want accept and nothing removed", got.act, got.mods)
		}
	})
	ts.stop(t)
	if n := ts.obs.dropped.Load(); n != 7 {
		t.Errorf("the observer counted %d dropped recipients, want 7 (1+2+0+1+3, a recipient given twice counted once)", n)
	}
}

// TestDropWithoutRemoveAction: an MTA that does not let the milter remove
// recipients gets the reject instead.
func TestDropWithoutRemoveAction(t *testing.T) {
	ts := startServer(t, Config{Policy: Policy{LoopAction: DropRecipient}}, nil)
	c := postfixLike(ts.addr, gomilter.WithActions(gomilter.OptSetMacros))
	macros := gomilter.NewMacroBag()
	s := openSession(t, c, macros, "")
	got := sendMessage(t, s, macros, message{rcpts: rcpts("a@local.test", loopRcpt), headers: [][2]string{dt(loopRcpt)}})
	if !isLoopReply(got.act, loopRcpt) {
		t.Errorf("answer %v, want the loop reply", got.act)
	}
	ts.waitLog(t, "does not let this milter remove recipients")
}

func TestDryRun(t *testing.T) {
	for _, action := range []LoopAction{Reject, DropRecipient} {
		t.Run(action.String(), func(t *testing.T) {
			ts := startServer(t, Config{Policy: Policy{LoopAction: action, DryRun: true, Expander: memExpander(t, nil, nil)}}, nil)
			got := judge(t, ts.addr, message{rcpts: rcpts("a@local.test", loopRcpt), headers: [][2]string{dt(loopRcpt)}})
			if !isAccept(got.act) || len(got.mods) != 0 {
				t.Errorf("answer %v with %v, want accept and nothing changed", got.act, got.mods)
			}
			ts.waitLog(t, "verdict=dry-run-loop")
			ts.waitLog(t, "loop_recipient="+loopRcpt)
			if action == DropRecipient {
				ts.waitLog(t, "recipient would be dropped (dry run)")
			}
		})
	}
}

func TestExemptions(t *testing.T) {
	exempt, err := allowlist.Parse("192.0.2.0/24", "2001:db8::/32")
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{Policy: Policy{ExemptClients: exempt, ExemptSASL: true}}, nil)
	loop := func(m message) message {
		m.rcpts, m.headers = rcpts(loopRcpt), [][2]string{dt(loopRcpt)}
		return m
	}
	for _, tc := range []struct {
		name   string
		msg    message
		exempt bool
	}{
		{"client in the list", loop(message{clientAddr: "192.0.2.7"}), true},
		{"IPv6 client in the list", loop(message{clientAddr: "2001:db8::25"}), true},
		{"client outside the list", loop(message{clientAddr: "198.51.100.1"}), false},
		{"SASL user", loop(message{saslUser: "alice"}), true},
		{"no SASL user", loop(message{}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := judge(t, ts.addr, tc.msg)
			if tc.exempt && !isAccept(got.act) {
				t.Errorf("answer %v, want accept (exempt)", got.act)
			}
			if !tc.exempt && !isLoopReply(got.act, loopRcpt) {
				t.Errorf("answer %v, want the loop reply", got.act)
			}
		})
	}
	ts.waitLog(t, "verdict=exempt header_bytes=35 exempt=client loop_recipient=loopuser@local.test")
	ts.waitLog(t, "exempt=sasl")

	// Without -exempt-sasl an authenticated client is judged.
	plain := startServer(t, Config{}, nil)
	if got := judge(t, plain.addr, loop(message{saslUser: "alice"})); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("without ExemptSASL: answer %v, want the loop reply", got.act)
	}
}

// TestReload: a new policy applies from the next message on.
func TestReload(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	macros := gomilter.NewMacroBag()
	s := openSession(t, postfixLike(ts.addr), macros, "")
	loop := message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}
	if got := sendMessage(t, s, macros, loop); !isLoopReply(got.act, loopRcpt) {
		t.Fatalf("before reload: %v", got.act)
	}
	if err := ts.Reload(Policy{DryRun: true}); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := sendMessage(t, s, macros, loop); !isAccept(got.act) {
		t.Errorf("after reload to dry run, same session: %v, want accept", got.act)
	}
	if err := ts.Reload(Policy{LoopAction: LoopAction(9)}); err == nil {
		t.Errorf("Reload accepted an unknown loop action")
	}
}

// TestSessionMessages: several messages, an abort between them, on one
// session; the state of one never leaks into the next.
func TestSessionMessages(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	macros := gomilter.NewMacroBag()
	s := openSession(t, postfixLike(ts.addr), macros, "")
	if got := sendMessage(t, s, macros, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt("x@example.org")}}); !isAccept(got.act) {
		t.Fatalf("first: %v", got.act)
	}
	// An aborted transaction (RSET) with the looping header.
	if _, err := s.Mail("a@example.org", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rcpt(loopRcpt, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(nil); err != nil {
		t.Fatal(err)
	}
	if got := sendMessage(t, s, macros, message{rcpts: rcpts("user@local.test"), headers: [][2]string{dt(loopRcpt)}}); !isAccept(got.act) {
		t.Errorf("after the abort: %v, want accept (the aborted recipient is gone)", got.act)
	}
	if got := sendMessage(t, s, macros, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("third: %v, want the loop reply", got.act)
	}
}

func TestLogLine(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	judge(t, ts.addr, message{from: "sender@example.org", rcpts: rcpts("user@local.test", loopRcpt),
		headers: [][2]string{dt(loopRcpt)}, queueID: "3F1A2B"})
	ts.waitLog(t, `msg=transaction session=`)
	line := ""
	for l := range strings.Lines(ts.logs.String()) {
		if strings.Contains(l, "msg=transaction") {
			line = l
		}
	}
	for _, want := range []string{
		"client=client.example[127.0.0.1]", "queue_id=3F1A2B", "sender=sender@example.org",
		"recipients=\"[user@local.test loopuser@local.test]\"", "verdict=loop",
		"reply=\"554 5.4.6 mail forwarding loop for loopuser@local.test\"", "header_bytes=35",
		"loop_recipient=loopuser@local.test", "duration=",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("transaction line lacks %s:\n%s", want, line)
		}
	}
}

func TestParseLoopAction(t *testing.T) {
	for _, a := range []LoopAction{Reject, DropRecipient} {
		got, err := ParseLoopAction(a.String())
		if err != nil || got != a {
			t.Errorf("ParseLoopAction(%q) = %v, %v", a.String(), got, err)
		}
	}
	if _, err := ParseLoopAction("drop"); err == nil {
		t.Errorf("ParseLoopAction(drop) accepted")
	}
	if _, err := New(Config{MaxHeaderBytes: 100}); err == nil {
		t.Errorf("New accepted a 100-byte header limit")
	}
}

func TestOutcomeStrings(t *testing.T) {
	var got []string
	for o := OutcomePass; o <= OutcomeDropFailed; o++ {
		got = append(got, o.String())
	}
	want := []string{"pass", "loop", "dropped", "dry-run-loop", "exempt", "check-failed", "drop-failed"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcome names (-want +got):\n%s", diff)
	}
}

// TestLogLineManyRecipients: the transaction line lists at most 100
// recipients, then their number, as the proxy's does.
func TestLogLineManyRecipients(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	var addrs []string
	for i := range 150 {
		addrs = append(addrs, fmt.Sprintf("user%d@local.test", i))
	}
	judge(t, ts.addr, message{rcpts: rcpts(addrs...), headers: [][2]string{dt(loopRcpt)}, queueID: "5A5A5A"})
	ts.waitLog(t, "queue_id=5A5A5A")
	line := ""
	for l := range strings.Lines(ts.logs.String()) {
		if strings.Contains(l, "queue_id=5A5A5A") {
			line = l
		}
	}
	if !strings.Contains(line, `user99@local.test]" recipients_total=150 verdict=pass`) {
		t.Errorf("transaction line does not end its list at the 100th recipient, followed by recipients_total=150:\n%s", line)
	}
	if strings.Contains(line, "user100@") {
		t.Errorf("transaction line lists a 101st recipient:\n%s", line)
	}
	// Under the bound, no count.
	judge(t, ts.addr, message{rcpts: rcpts(addrs[:100]...), queueID: "6B6B6B"})
	ts.waitLog(t, "queue_id=6B6B6B")
	if strings.Contains(ts.logs.String(), "recipients_total=100") {
		t.Errorf("recipients_total logged for 100 recipients")
	}
}

// TestCheckFailure: when the check itself fails (a bug: here a panic
// made by the test), a judged message gets 451 4.3.0; one that would
// pass whatever the verdict (dry run, exempt) passes, and the failure is
// logged either way.
func TestCheckFailure(t *testing.T) {
	exempt, err := allowlist.Parse("192.0.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	loop := message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}
	for _, tc := range []struct {
		name     string
		policy   Policy
		msg      message
		tempfail bool
	}{
		{"judged", Policy{}, loop, true},
		{"drop-recipient", Policy{LoopAction: DropRecipient}, loop, true},
		{"dry run", Policy{DryRun: true}, loop, false},
		{"exempt client", Policy{ExemptClients: exempt}, message{clientAddr: "192.0.2.9", rcpts: loop.rcpts, headers: loop.headers}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServerWith(t, Config{Policy: tc.policy}, nil, func(s *Server) {
				s.checkHook = func() { panic("check bug") }
			})
			got := judge(t, ts.addr, tc.msg)
			switch {
			case tc.tempfail && (got.act == nil || got.act.Type != gomilter.ActionRejectWithCode || got.act.SMTPCode != 451 ||
				got.act.SMTPReply != "451 "+replyCheckFailed):
				t.Errorf("answer %v, want 451 %s", got.act, replyCheckFailed)
			case !tc.tempfail && !isAccept(got.act):
				t.Errorf("answer %v, want accept (the message would pass whatever the verdict)", got.act)
			}
			if len(got.mods) != 0 {
				t.Errorf("modifications %v, want none", got.mods)
			}
			ts.waitLog(t, "verdict=check-failed")
			ts.waitLog(t, `panic="check bug"`)
			ts.stop(t)
			if n := ts.obs.outcome(OutcomeCheckFailed); n != 1 {
				t.Errorf("check-failed counted %d times, want 1", n)
			}
			if strings.Contains(ts.logs.String(), "session failed") {
				t.Errorf("the session failed; a check failure ends only the message")
			}
		})
	}
}

// failingModifier is the MTA side of a session whose connection fails
// while removals are sent: the removal number failAt (from 0) fails.
type failingModifier struct {
	gomilter.Modifier // the rest is never called
	failAt            int
	sent              []string
}

func (m *failingModifier) Get(string) string { return "" }

func (m *failingModifier) GetEx(string) (string, bool) { return "", false }

func (m *failingModifier) DeleteRecipient(r string) error {
	if len(m.sent) == m.failAt {
		return errors.New("write: broken pipe")
	}
	m.sent = append(m.sent, r)
	return nil
}

// TestDropFailureReported: when a removal cannot be sent, the message is
// reported as drop-failed (not dropped), with the removals sent before,
// and the session ends with the error.
func TestDropFailureReported(t *testing.T) {
	logs := &lockedBuffer{}
	obs := newCountObserver()
	srv, err := New(Config{Policy: Policy{LoopAction: DropRecipient, Expander: memExpander(t, nil, nil)},
		Logger: slog.New(slog.NewTextHandler(logs, nil)), Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	s := &session{srv: srv, log: srv.log, actions: gomilter.OptRemoveRcpt}
	s.conn = &guardConn{srv: srv, sess: s}
	m := &failingModifier{failAt: 1}
	if _, err := s.MailFrom("a@example.org", "", m); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"a@local.test", "b@local.test", "c@local.test"} {
		if _, err := s.RcptTo(r, "", m); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range [][2]string{dt("a@local.test"), dt("c@local.test")} {
		if _, err := s.Header(h[0], h[1], m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.EndOfMessage(m); err == nil {
		t.Errorf("end of message succeeded though a removal failed")
	}
	if r, err := s.conn.end(); r != EndIO || err == nil || !strings.Contains(err.Error(), "removing looping recipient c@local.test: write: broken pipe") {
		t.Errorf("the session ends with %v, %v; want an I/O error naming the removal", r, err)
	}
	line := logs.String()
	for _, want := range []string{"verdict=drop-failed", "removals_sent=1", "level=WARN msg=transaction"} {
		if !strings.Contains(line, want) {
			t.Errorf("log lacks %s:\n%s", want, line)
		}
	}
	if strings.Contains(line, "verdict=dropped") || strings.Contains(line, `msg="recipient dropped"`) {
		t.Errorf("log reports a drop that failed as done:\n%s", line)
	}
	if n := obs.outcome(OutcomeDropFailed); n != 1 {
		t.Errorf("drop-failed counted %d times, want 1", n)
	}
	if n := obs.outcome(OutcomeDropped); n != 0 {
		t.Errorf("dropped counted %d times, want 0", n)
	}
	if n := obs.dropped.Load(); n != 0 {
		t.Errorf("%d recipients counted as dropped, want 0", n)
	}
}
