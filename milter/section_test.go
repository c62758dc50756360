package milter

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// rawSection is the header section the events stand for, written out
// directly: per event name ":" value CRLF, every LF not preceded by CR
// written CRLF, then the empty line. It is the oracle of the adapter.
func rawSection(events [][2]string) []byte {
	var b []byte
	for _, e := range events {
		for _, c := range []byte(e[0] + ":" + e[1]) {
			if c == '\n' && (len(b) == 0 || b[len(b)-1] != '\r') {
				b = append(b, '\r')
			}
			b = append(b, c)
		}
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// build feeds events to a section with the given limit, for recipients
// with the given RCPT TO: arguments.
func build(limit int, events [][2]string, rcptArgs ...string) *section {
	s := &section{}
	s.reset(limit)
	rs := recipientsOf(rcptArgs)
	for _, e := range events {
		s.add(e[0], e[1], rs)
	}
	return s
}

// recipientsOf are the session's recipients for RCPT TO: arguments.
func recipientsOf(args []string) []recipient {
	rs := make([]recipient, len(args))
	for i, a := range args {
		rs[i] = recipient{arg: a}
	}
	return rs
}

func TestSectionKeepsOnlyWhatTheVerdictReads(t *testing.T) {
	events := [][2]string{
		{"Received", " from a by b;\n\tThu, 1 Jan 2026 00:00:00 +0000"},
		{"Subject", " x"},
		{"Delivered-To", " a@example.org"},
		{"From", " b@example.org"},
		{"To", " c@example.org"},
		{"delivered-to", "\n d@example.org"},
		{"Message-Id", " <x@y>"},
	}
	s := build(DefaultMaxHeaderBytes, events)
	want := "X:\r\nDelivered-To: a@example.org\r\nX:\r\ndelivered-to:\r\n d@example.org\r\nX:\r\n\r\n"
	if got := string(s.bytes()); got != want {
		t.Errorf("kept %q, want %q", got, want)
	}
	if got, want := s.rawBytes(), len(rawSection(events))-2; got != want {
		t.Errorf("rawBytes %d, want %d (the raw section without its empty line)", got, want)
	}
	if s.truncated {
		t.Errorf("truncated under the default limit")
	}
}

func TestSectionKeepsWhatCanChangeTheVerdict(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   [2]string
	}{
		{"name with a space", [2]string{"Delivered-To ", " x@y"}},
		{"empty name", [2]string{"", " x@y"}},
		{"name with a colon", [2]string{"Delivered-To:B", " x@y"}},
		{"name starting with a space", [2]string{" cont", "x@y"}},
		{"a second field inside the value", [2]string{"Subject", " x\nDelivered-To: loop@y"}},
		{"an empty line inside the value", [2]string{"Subject", " x\n\nbody"}},
		{"a non-header line inside the value", [2]string{"Subject", " x\nnot a header"}},
		{"8-bit name", [2]string{"Sübject", " x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := build(DefaultMaxHeaderBytes, [][2]string{tc.ev})
			if got, want := string(s.bytes()), string(rawSection([][2]string{tc.ev})); got != want {
				t.Errorf("kept %q, want it as written: %q", got, want)
			}
		})
	}
}

func TestSectionLimit(t *testing.T) {
	const limit = MinHeaderBytes
	pad := strings.Repeat("x", 1000)
	var events [][2]string
	for i := range 5 {
		events = append(events, dt(fmt.Sprintf("%s%d@example.org", pad, i)))
	}
	events = append(events, dt(loopRcpt)) // beyond the limit
	s := build(limit, events)
	if !s.truncated {
		t.Fatalf("not truncated with %d kept bytes", len(s.buf))
	}
	if len(s.bytes()) > limit {
		t.Errorf("kept %d bytes over the limit of %d", len(s.bytes()), limit)
	}
	rc := []loopcheck.Recipient{loopcheck.NewRecipient("<" + loopRcpt + ">")}
	if v := loopcheck.CheckRecipients(rc, s.bytes()); v.Loop {
		t.Errorf("a field past the limit was kept: %+v", v)
	}
	// It is judged past the limit, as spelled.
	rs := recipientsOf([]string{"<user@local.test>", "<" + loopRcpt + ">"})
	s = build(limit, events, "<user@local.test>", "<"+loopRcpt+">")
	if hit := s.lateHits(rs); !slices.Equal(hit, []bool{false, true}) {
		t.Errorf("past the limit, recipients matched %v; want the second", hit)
	}
	if m, late := mergeLate(nil, s.lateHits(rs), true); !slices.Equal(m, []loopcheck.Match{{Index: 1}}) || !slices.Equal(late, []bool{false, true}) {
		t.Errorf("merged %+v, %v; want the second recipient, matched past the limit only", m, late)
	}
	// What was kept is judged: the same loop within the limit is found.
	s = build(limit, append([][2]string{dt(loopRcpt)}, events...))
	if v := loopcheck.CheckRecipients(rc, s.bytes()); !s.truncated || !v.Loop {
		t.Errorf("truncated=%v verdict %+v; want a loop found before the limit", s.truncated, v)
	}
	// Plain fields cost a placeholder each run, so they never reach it.
	var plain [][2]string
	for i := range 10000 {
		plain = append(plain, [2]string{fmt.Sprintf("X-Field-%d", i), " " + pad})
	}
	if s = build(limit, append(plain, dt(loopRcpt))); s.truncated || !loopcheck.CheckRecipients(rc, s.bytes()).Loop {
		t.Errorf("10 MB of plain fields then the loop: truncated=%v, kept %d bytes; want the loop found", s.truncated, len(s.buf))
	}
}

func TestSectionReset(t *testing.T) {
	s := build(DefaultMaxHeaderBytes, [][2]string{dt(loopRcpt), {"Subject", " x"}})
	s.reset(DefaultMaxHeaderBytes)
	s.add("Subject", " y", nil)
	if got := string(s.bytes()); got != placeholder+"\r\n" {
		t.Errorf("after reset: %q", got)
	}
	if s.rawBytes() != len("Subject: y\r\n") {
		t.Errorf("rawBytes after reset: %d", s.rawBytes())
	}
}

func TestAppendCRLF(t *testing.T) {
	for in, want := range map[string]string{
		"":          "",
		"a":         "a",
		"a\nb":      "a\r\nb",
		"a\r\nb":    "a\r\nb",
		"\n":        "\r\n",
		"\n\n":      "\r\n\r\n",
		"a\r\r\nb":  "a\r\r\nb",
		"a\rb\n":    "a\rb\r\n",
		"\r\n\n\r":  "\r\n\r\n\r",
		"x\n\tyy\n": "x\r\n\tyy\r\n",
	} {
		if got := string(appendCRLF([]byte("p"), in)); got != "p"+want {
			t.Errorf("appendCRLF(%q) = %q, want %q", in, got[1:], want)
		}
	}
	// At the start, the byte before is the caller's.
	if got := string(appendCRLF([]byte("p\r"), "\nx")); got != "p\r\nx" {
		t.Errorf("after a CR the caller wrote: %q", got)
	}
}

// milterToken is how go-milter hands over a RCPT token (brackets removed
// when it has both), with its parameters joined by spaces.
func milterToken(token string, args []string) (string, string) {
	return gomilter.RemoveAngle(token), strings.Join(args, " ")
}

func TestRcptArg(t *testing.T) {
	for _, tc := range []struct {
		token string
		args  []string
	}{
		{"<user@local.test>", nil},
		{"user@local.test", nil},
		{"<LoopUser@Local.Test>", []string{"NOTIFY=NEVER", "ORCPT=rfc822;x@y"}},
		{"<\"a b\"@local.test>", nil},
		{"<@route.example:user@local.test>", nil},
		{"<Postmaster>", nil},
		{"< user@local.test >", nil},
	} {
		rcpt, args := milterToken(tc.token, tc.args)
		got := loopcheck.NewRecipient(rcptArg(rcpt, args))
		want := loopcheck.NewRecipient(strings.TrimSpace(tc.token + " " + strings.Join(tc.args, " ")))
		if !reflect.DeepEqual(want, got) {
			t.Errorf("token %q: the milter judges %+v, the proxy %+v", tc.token, got, want)
		}
	}
}

// FuzzMilterAdapter: random header events and RCPT tokens give, through
// the adapter (section, rcptArg), the verdict loopcheck gives on the
// equivalent raw section and RCPT TO: arguments, for every recipient
// (Loops) and for the first (CheckRecipients); and with a small limit,
// the verdict on the events kept before it, and with the events past it
// the verdict on the whole section with a placeholder field before each
// of those, which for events of one field each (as Postfix sends) is the
// verdict on the whole section.
//
// rcpts holds RCPT tokens separated by NUL, each with its parameters
// after SOH bytes; a token is taken as Postfix's smtpd sends one: either
// <...> around anything, or a word without white space or brackets at its
// ends. events holds names and values alternately, separated by NUL.
func FuzzMilterAdapter(f *testing.F) {
	f.Add("<loopuser@local.test>", "Delivered-To\x00 loopuser@local.test", 0)
	f.Add("<a@b>\x01NOTIFY=NEVER\x00c@d", "Received\x00 x\n\ty\x00Delivered-To\x00 c@d", 0)
	f.Add("<a@b>", "Subject\x00 x\nDelivered-To: a@b", 0)
	f.Add("<a@b>", "Subject\x00 x\n\nDelivered-To: a@b", 0)
	f.Add("<a@b>", "Delivered-To\x00 z@z\x00 a@b\x00x", 0)
	f.Add("<a@b>", "X\x00y\x00\x0bDelivered-To\x00 a@b", 0)
	f.Add("<\"a b\"@c> ORCPT=rfc822;a@b", "delivered-to \x00\n a@b,\n\t\"a b\"@c", 0)
	f.Add("<x y> a@b", "Delivered-To\x00 a@b", 0)
	f.Add("<a@b>", "Delivered-To\x00 "+strings.Repeat("q", 5000)+"\x00Delivered-To\x00 a@b", 4096)
	// Past the limit (the limit argument 0 is MinHeaderBytes): a plain
	// field, a loop, the section's end inside a value, a loop after it;
	// an event that starts with a continuation line.
	f.Add("<a@b>\x00<c@d>", "Delivered-To\x00 "+strings.Repeat("q", 5000)+"\x00Subject\x00 x\x00Delivered-To\x00 c@d\x00X\x00 y\n\nz\x00Delivered-To\x00 a@b", 0)
	f.Add("<a@b>", "Delivered-To\x00 "+strings.Repeat("q", 5000)+"\x00 cont\x00 a@b\x00Delivered-To\x00\n a@b", 0)
	f.Fuzz(func(t *testing.T, rcptsIn, eventsIn string, limit int) {
		var args, milterArgs []string
		var rc []loopcheck.Recipient
		for tok := range strings.SplitSeq(rcptsIn, "\x00") {
			parts := strings.Split(tok, "\x01")
			token, params := parts[0], parts[1:]
			if !postfixToken(token) || slices.ContainsFunc(params, func(p string) bool { return p == "" || strings.ContainsAny(p, " \t\r\n\v\f") }) {
				continue
			}
			args = append(args, strings.TrimSpace(token+" "+strings.Join(params, " ")))
			r, a := milterToken(token, params)
			milterArgs = append(milterArgs, rcptArg(r, a))
			rc = append(rc, loopcheck.NewRecipient(rcptArg(r, a)))
		}
		var events [][2]string
		f := strings.Split(eventsIn, "\x00")
		for i := 0; i+1 < len(f); i += 2 {
			events = append(events, [2]string{f[i], f[i+1]})
		}
		raw := rawSection(events)
		want := make([]loopcheck.Recipient, len(args))
		for i, a := range args {
			want[i] = loopcheck.NewRecipient(a)
		}

		s := build(len(raw)+2, events, milterArgs...)
		if s.truncated {
			t.Fatalf("truncated with a limit above the raw section's size")
		}
		if got, w := s.rawBytes(), len(raw)-2; got != w {
			t.Errorf("rawBytes %d, raw section %d", got, w)
		}
		if got, w := loopcheck.CheckRecipients(rc, s.bytes()), loopcheck.CheckRecipients(want, raw); !sameFirst(rc, got, want, w) {
			t.Errorf("first loop: adapter %+v, raw %+v\nkept %q\nraw  %q", got, w, s.bytes(), raw)
		}
		if got, w := loopcheck.Loops(rc, s.bytes()), loopcheck.Loops(want, raw); !slices.Equal(got, w) {
			t.Errorf("loops: adapter %+v, raw %+v\nkept %q\nraw  %q", got, w, s.bytes(), raw)
		}

		// A small limit: the kept bytes are the events before the one that
		// did not fit.
		limit = MinHeaderBytes + abs(limit)%(4*MinHeaderBytes)
		s = &section{}
		s.reset(limit)
		rs := make([]recipient, len(rc))
		for i := range rc {
			rs[i] = recipient{arg: milterArgs[i]}
		}
		kept := len(events)
		for i, e := range events {
			s.add(e[0], e[1], rs)
			if s.truncated && kept == len(events) {
				kept = i
			}
		}
		if len(s.bytes()) > limit {
			t.Errorf("kept %d bytes over the limit of %d", len(s.bytes()), limit)
		}
		if got, w := loopcheck.Loops(rc, s.bytes()), loopcheck.Loops(want, rawSection(events[:kept])); !slices.Equal(got, w) {
			t.Errorf("limit %d, %d of %d events kept: adapter %+v, raw of the kept events %+v", limit, kept, len(events), got, w)
		}
		// With the events past the limit, judged as spelled: the verdict on
		// the whole section with a field that is not Delivered-To: before
		// each of them, for every looping recipient and for the first.
		marked := slices.Clone(events[:kept])
		for _, e := range events[kept:] {
			marked = append(marked, [2]string{"X", ""}, e)
		}
		hits := s.lateHits(rs)
		got, _ := mergeLate(loopcheck.Loops(rc, s.bytes()), hits, true)
		if w := loopcheck.Loops(want, rawSection(marked)); !slices.Equal(got, w) {
			t.Errorf("limit %d, %d of %d events kept, with the later ones: %+v, raw %+v", limit, kept, len(events), got, w)
		}
		var first []loopcheck.Match
		if v := loopcheck.CheckRecipients(rc, s.bytes()); v.Loop {
			first = []loopcheck.Match{{Index: slices.IndexFunc(rc, func(r loopcheck.Recipient) bool { return r.Mailbox == v.Recipient }), Via: v.Via}}
		}
		firstGot, _ := mergeLate(first, hits, false)
		var fv loopcheck.Verdict
		if len(firstGot) > 0 {
			fv = loopcheck.Verdict{Loop: true, Recipient: rc[firstGot[0].Index].Mailbox, Via: firstGot[0].Via}
		}
		if w := loopcheck.CheckRecipients(want, rawSection(marked)); !sameFirst(rc, fv, want, w) {
			t.Errorf("limit %d, first loop with the later events: %+v, raw %+v", limit, fv, w)
		}
		// Events as Postfix sends them, each one field: the verdict on the
		// whole section, as if there were no limit.
		if !slices.ContainsFunc(events, func(e [2]string) bool { return !oneField(e) }) {
			if w := loopcheck.Loops(want, raw); !slices.Equal(got, w) {
				t.Errorf("limit %d, events of one field each: %+v, on the whole section %+v", limit, got, w)
			}
		}
	})
}

// sameFirst reports whether the milter's first loop (got, among its
// recipients rc) is the proxy's (w, among want): the same recipient (by
// position), through the same address, named alike. The name may differ
// by a pair of enclosing brackets, for a path neither can parse: Postfix
// sends the token without saying whether the client bracketed it, and
// go-milter removes one pair, so the milter cannot tell RCPT TO:<x> from
// RCPT TO:x when x is no path.
func sameFirst(rc []loopcheck.Recipient, got loopcheck.Verdict, want []loopcheck.Recipient, w loopcheck.Verdict) bool {
	if got.Loop != w.Loop || got.Via != w.Via {
		return false
	}
	if !got.Loop {
		return true
	}
	unbracket := func(m string) string { return strings.TrimSuffix(strings.TrimPrefix(m, "<"), ">") }
	at := func(rs []loopcheck.Recipient, m string) int {
		return slices.IndexFunc(rs, func(r loopcheck.Recipient) bool { return r.Mailbox == m })
	}
	return at(rc, got.Recipient) == at(want, w.Recipient) && unbracket(got.Recipient) == unbracket(w.Recipient)
}

// oneField reports whether an event stands for one whole header field, as
// every event Postfix sends does: a field line, then continuation lines
// only.
func oneField(e [2]string) bool {
	c := rawSection([][2]string{e})
	c = c[:len(c)-2]
	if header.SectionEnd(c) != len(c) {
		return false
	}
	n, ok := 0, false
	for f := range header.Fields(c) {
		n++
		ok = len(f.Name) > 0 && len(f.Raw) == len(c)
	}
	return n == 1 && ok
}

// postfixToken reports whether Postfix's smtpd could send tok as a RCPT
// address token: <...> around anything but NUL, or a word with no white
// space and no bracket at its ends; and a path that parses. A path that
// does not (two addresses, "0,0"; words with a space between) gets 501
// 5.1.3 from smtpd (extract_addr), and no milter sees it; for such a
// token the proxy, which reads the client's text, and the milter, which
// reads it bracketed, may differ.
func postfixToken(tok string) bool {
	if strings.ContainsRune(tok, 0) || tok == "" {
		return false
	}
	if _, err := address.ParsePath(tok); err != nil {
		return false
	}
	if len(tok) >= 2 && tok[0] == '<' && tok[len(tok)-1] == '>' {
		return true
	}
	return !strings.ContainsAny(tok, " \t\r\n\v\f") && tok[0] != '<' && tok[len(tok)-1] != '>'
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// TestSessionReleasesLargeBuffers: once a message with a large header
// (or many recipients) has ended, the session no longer holds what it
// needed; an ordinary message's buffers are kept for the next one.
func TestSessionReleasesLargeBuffers(t *testing.T) {
	obs := newCountObserver()
	srv, err := New(Config{Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	s := &session{srv: srv, log: srv.log}
	s.conn = &guardConn{srv: srv, sess: s}
	m := &failingModifier{failAt: -1}
	send := func(nrcpt, nfield int) {
		t.Helper()
		if _, err := s.MailFrom("a@example.org", "", m); err != nil {
			t.Fatal(err)
		}
		for i := range nrcpt {
			if _, err := s.RcptTo(fmt.Sprintf("user%d@local.test", i), "", m); err != nil {
				t.Fatal(err)
			}
		}
		for i := range nfield {
			if _, err := s.Header("Delivered-To", fmt.Sprintf(" %s%d@example.org", strings.Repeat("x", 1000), i), m); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.EndOfMessage(m); err != nil {
			t.Fatal(err)
		}
	}
	send(500, 1200) // over 1 MiB of Delivered-To: fields: past the limit too
	if n := obs.truncated.Load(); n != 1 {
		t.Fatalf("%d truncated headers counted, want 1: the test must pass the limit", n)
	}
	if c, c2, c3, r := cap(s.hdr.buf), cap(s.hdr.chunk), cap(s.hdr.late), cap(s.rcpts); c > keepSectionBuffer || c2 > keepSectionBuffer || c3 > keepSectionBuffer || r > keepRecipients {
		t.Errorf("after a 1.2 MiB header and 500 recipients the idle session holds buffers of %d, %d and %d bytes and %d recipient slots; want at most %d bytes and %d slots",
			c, c2, c3, r, keepSectionBuffer, keepRecipients)
	}
	if s.hdr.spelled != nil || s.hdr.lateHit != nil {
		t.Errorf("after a header past the limit the idle session keeps %d recipients as spelled", len(s.hdr.spelled))
	}
	send(2, 2)
	if cap(s.hdr.buf) == 0 || cap(s.rcpts) == 0 {
		t.Errorf("an ordinary message's buffers were dropped (%d bytes, %d slots); want them kept for the next", cap(s.hdr.buf), cap(s.rcpts))
	}
	// Aborted messages release too.
	if _, err := s.MailFrom("a@example.org", "", m); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		s.Header("Delivered-To", fmt.Sprintf(" %s%d@example.org", strings.Repeat("y", 1000), i), m)
	}
	s.Abort(m)
	if c := cap(s.hdr.buf); c > keepSectionBuffer {
		t.Errorf("after an aborted message the idle session holds %d bytes", c)
	}
}
