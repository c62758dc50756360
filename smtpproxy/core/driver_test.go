package core

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// The driver runs a real Session against a scripted upstream that reads
// what the proxy writes as a strict RFC 5321 server, and checks the
// session against the reference model (refmodel_test.go) and against
// invariants that need no model. TestSessionStateMachine and FuzzSession
// share it.

// gotUnit is one thing the strict upstream read.
type gotUnit struct {
	what  unitKind
	line  string   // a command line, without CRLF
	raw   []byte   // a message: the bytes read, as written
	lines []string // a message: its content lines, unstuffed
	ended bool     // a message: its end of data was read
	rcpts []string // a message: the recipients the upstream accepted for it
}

// strictServer is the scripted upstream. It reads commands as lines ended
// by CRLF and holding no other CR, LF or NUL, and message data as lines
// ended by CRLF (no bare LF) with one leading dot removed and "." as the
// end; anything else fails the test: that is SPEC 2.4's canonical framing.
// A reply of its own that ends in 354 makes it read data. It answers as the
// model's unit says, after checking that it read what the model expects.
type strictServer struct {
	t      tb
	fail   func(format string, args ...any)
	m      *refModel
	units  []*gotUnit
	buf    []byte // an unfinished command line or data line
	inData bool
	limit  int  // data bytes it reads before it closes (0: no limit)
	closed bool // it closed the connection
	// rcpts: recipients it accepted in the current transaction, as a
	// server keeps them (for the no-loop-delivered invariant).
	rcpts []string
	// issued: its end-of-data replies given to complete messages.
	issued [][]byte
	sasl   bool // it answered 334: the next line is a SASL response
}

// receive reads bytes the proxy wrote. It returns the act that answers
// the unit they completed, if any, and whether it closed the connection
// on reaching its data limit.
func (s *strictServer) receive(p []byte) (act *upAct, closedNow bool) {
	s.t.Helper()
	if s.closed {
		return nil, false // written to a closed connection: lost
	}
	for len(p) > 0 {
		if s.inData {
			u := s.units[len(s.units)-1]
			take := p
			if s.limit > 0 && len(u.raw)+len(take) > s.limit {
				take = take[:s.limit-len(u.raw)]
			}
			n, ended := s.readData(u, take)
			p = p[n:]
			if ended {
				s.inData = false
				if len(p) > 0 {
					s.fail("the proxy wrote %s after an end of data, before its reply", clip(p))
				}
				if s.limit > 0 && len(u.raw) >= s.limit {
					s.closed = true
					return nil, true // the end came first: it closes without a reply
				}
				a := s.want(len(s.units)-1, uMessage, "").act
				s.rememberEOD(u, a)
				return &a, false
			}
			if s.limit > 0 && len(u.raw) >= s.limit {
				s.closed = true
				return nil, true
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.buf = append(s.buf, p...)
			return nil, false
		}
		line := append(s.buf, p[:i+1]...)
		s.buf = nil
		p = p[i+1:]
		if !bytes.HasSuffix(line, []byte("\r\n")) {
			s.fail("the upstream read a command line ended by a bare LF: %s", clip(line))
		}
		line = line[:len(line)-2]
		if bytes.ContainsAny(line, "\r\n\x00") {
			s.fail("the upstream read a command line holding CR, LF or NUL: %s", clip(line))
		}
		k := len(s.units)
		w := s.want(k, uCommand, string(line))
		if w.what == uMessage || w.what == uGreeting {
			s.fail("the upstream read the command %s where the model expects a %v", clip(line), w.what)
		}
		if w.line != string(line) {
			s.fail("the upstream read %s (unit %d), the model expects %s (%v)", clip(line), k, clip(w.line), w.what)
		}
		s.units = append(s.units, &gotUnit{what: w.what, line: string(line)})
		a := w.act
		if len(p) > 0 && w.what != uQUIT {
			s.fail("the proxy wrote %s after %s, before its reply", clip(p), clip(line))
		}
		s.track(string(line), a)
		if a.kind == actReply && opensData(w.what) && endsIn354(a.reply) {
			s.inData = true
			s.limit = a.closeAfter
			s.units = append(s.units, &gotUnit{what: uMessage, rcpts: slices.Clone(s.rcpts)})
		}
		return &a, false
	}
	return nil, false
}

// want returns the model's unit k, which must exist.
func (s *strictServer) want(k int, what unitKind, line string) *wantUnit {
	s.t.Helper()
	if k >= len(s.m.units) {
		s.fail("the upstream read a %v %s (unit %d) the model does not expect (it expects %d units)", what, clip(line), k, len(s.m.units))
	}
	return s.m.units[k]
}

// readData reads message data; it returns the bytes consumed and whether
// the end of data was read.
func (s *strictServer) readData(u *gotUnit, p []byte) (int, bool) {
	s.t.Helper()
	n := 0
	for n < len(p) {
		c := p[n]
		u.raw = append(u.raw, c)
		s.buf = append(s.buf, c)
		n++
		if c != '\n' {
			continue
		}
		line := s.buf
		s.buf = nil
		if len(line) < 2 || line[len(line)-2] != '\r' {
			s.fail("the upstream read a data line ended by a bare LF: %s", clip(line))
		}
		content := string(line[:len(line)-2])
		if content == "." {
			u.ended = true
			return n, true
		}
		u.lines = append(u.lines, strings.TrimPrefix(content, "."))
	}
	return n, false
}

// track keeps the transaction state a server keeps, from its own replies.
func (s *strictServer) track(line string, a upAct) {
	sasl := s.sasl
	s.sasl = false
	if a.kind != actReply {
		return
	}
	r, _, st := parseRefReply(a.reply)
	if st == replyOK && r.code == 334 {
		s.sasl = true
	}
	if sasl || st != replyOK || r.code/100 != 2 {
		return
	}
	verb, rest, _ := cutAny(line, " \t")
	switch asciiUpper(verb) {
	case "MAIL", "RSET", "EHLO", "HELO", "XCLIENT":
		s.rcpts = nil
	case "RCPT":
		if _, after, ok := strings.Cut(rest, ":"); ok {
			rest = after
		}
		s.rcpts = append(s.rcpts, rest)
	}
}

func (s *strictServer) rememberEOD(u *gotUnit, a upAct) {
	s.rcpts = nil
	if a.kind == actReply {
		if r, _, st := parseRefReply(a.reply); st == replyOK && r.code/100 == 2 {
			s.issued = append(s.issued, r.client)
		}
	}
}

func endsIn354(reply []byte) bool {
	r, _, st := parseRefReply(reply)
	return st == replyOK && r.code == 354
}

// driver runs a Session against the strict server.
type driver struct {
	t      tb
	s      *Session
	m      *refModel
	srv    *strictServer
	limits refConfig

	client  []byte   // everything the client received
	pending []byte   // client bytes not consumed yet
	reads   [][]byte // upstream reads not delivered yet
	closeUp bool     // the upstream closes after the pending reads
	upShut  bool     // the upstream connection is closed and the session knows
	calls   []checkCall
	txEnds  [][]string // recipients of each EventTxEnd
	// await runs the session with Config.AwaitRecipients, giving it the
	// recipients as spelled when it waits for them: it must behave
	// exactly as a session that judges them itself. accepted are the
	// recipients it reported (EventRecipientAccepted).
	await    bool
	accepted []string
	// meter runs the session with Config.MeterHeader, every request for
	// header memory granted: it must behave exactly as without.
	meter bool
	cut   func(n int) int
	// reading is the client read the session has in hand, the only
	// memory it may lend upstream (Config.LendInput); 0 between reads.
	reading int
	checks  int // oracle checks made
	steps   int
	trace   strings.Builder // what happened, for failure messages
}

// fail stops the test with the session's transcript.
func (d *driver) fail(format string, args ...any) {
	d.t.Helper()
	d.t.Fatalf(format+"\n--- transcript (C client sent, P proxy to client, U upstream read, R upstream answer) ---\n%s--- model units:%s", append(args, d.trace.String(), wantUnits(d.m.units))...)
}

func (d *driver) note(format string, args ...any) {
	if d.trace.Len() < 1<<16 {
		fmt.Fprintf(&d.trace, format+"\n", args...)
	}
}

// clip quotes b for a failure message, at most about 1 KiB of it.
func clip[T ~string | ~[]byte](b T) string {
	const keep = 512
	if len(b) <= 2*keep {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%q...(%d bytes)...%q", b[:keep], len(b), b[len(b)-keep:])
}

func newDriver(t tb, m *refModel, cut func(int) int) *driver {
	return newAwaitDriver(t, m, cut, false, false)
}

// newAwaitDriver is newDriver, with Config.AwaitRecipients when await
// and Config.MeterHeader when meter.
func newAwaitDriver(t tb, m *refModel, cut func(int) int, await, meter bool) *driver {
	d := &driver{t: t, m: m, cut: cut, limits: m.cfg, await: await, meter: meter}
	d.srv = &strictServer{t: t, fail: d.fail, m: m, units: []*gotUnit{{what: uGreeting}}}
	cfg := m.cfg.config(func(rcpts []string, section []byte) loopcheck.Verdict {
		d.calls = append(d.calls, checkCall{Rcpts: slices.Clone(rcpts), Section: string(section)})
		return loopcheck.Check(rcpts, section)
	})
	cfg.AwaitRecipients = await
	cfg.MeterHeader = meter
	d.s = newTestSession(t, cfg)
	d.s.HandleUpstreamConnected()
	d.queue(m.units[0].act)
	d.settle()
	return d
}

// queue schedules the upstream's answer.
func (d *driver) queue(a upAct) {
	d.note("R %v", a)
	switch a.kind {
	case actStall:
	case actClose:
		if len(a.reply) > 0 {
			d.reads = append(d.reads, a.reply)
		}
		d.closeUp = true
		d.srv.closed = true
	case actReply:
		b := append(append([]byte(nil), a.reply...), a.extra...)
		if a.split > 0 && a.split < len(b) {
			d.reads = append(d.reads, b[:a.split], b[a.split:])
		} else {
			d.reads = append(d.reads, b)
		}
		if a.closeAfterReply {
			d.closeUp = true
			d.srv.closed = true
		}
	}
}

// settle collects the session's output and delivers the upstream's
// answers, one read at a time, until nothing moves; a silent upstream
// lets the reply timer run out.
func (d *driver) settle() {
	d.t.Helper()
	for range 1 << 16 {
		if c := d.s.TakeClientOutput(); len(c) > 0 {
			d.note("P %s", clip(c))
			d.client = append(d.client, c...)
		}
		out := d.s.TakeUpstreamOutput()
		// The session's own bytes are its memory; a loan is the caller's
		// read or the captured header section, bounded by either.
		d.checkBounds(len(out))
		if lent := d.s.TakeUpstreamLent(); len(lent) > 0 {
			if len(lent) > max(d.reading, d.headerBound()) {
				d.fail("%d bytes lent upstream, more than the read of %d and the header bound", len(lent), d.reading)
			}
			// Lent client input goes after the session's own bytes; the
			// copy keeps the session's buffer out of it.
			out = append(slices.Clip(out), lent...)
		}
		if len(out) > 0 {
			d.note("U %s", clip(out))
		}
		for _, e := range d.s.TakeEvents() {
			switch e.Kind {
			case EventTxEnd:
				d.txEnds = append(d.txEnds, slices.Clone(e.Tx.Recipients)) // events are lent until the next input
			case EventRecipientAccepted:
				if !d.await {
					d.fail("a recipient was reported without AwaitRecipients: %+v", e)
				}
				if e.Index != len(d.accepted) && e.Index != 0 {
					d.fail("recipient %q reported at %d after %d others", e.Reason, e.Index, len(d.accepted))
				}
				d.accepted = append(d.accepted[:e.Index], e.Reason)
			}
		}
		if len(out) > 0 {
			if d.upShut {
				d.fail("%d bytes written upstream after the connection was closed: %s", len(out), clip(out))
			}
			act, closed := d.srv.receive(out)
			if act != nil {
				d.queue(*act)
			}
			if closed {
				d.closeUp = true
			}
		}
		if d.s.UpstreamGone() {
			d.upShut = true
			d.reads, d.closeUp = nil, false
		}
		switch {
		case len(out) > 0:
		case len(d.reads) > 0:
			r := d.reads[0]
			d.reads = d.reads[1:]
			d.s.HandleUpstreamData(r)
		case d.closeUp:
			d.closeUp = false
			d.upShut = true
			d.s.HandleUpstreamClosed(EndClosed)
		case d.s.WantsRecipients():
			d.giveRecipients()
		case d.s.HeaderMemoryWanted() > 0:
			d.grantHeaderMemory()
		case d.s.PollTimers().Upstream && !d.s.Done():
			d.s.HandleTimeout(TimerUpstreamReply)
		default:
			return
		}
	}
	d.fail("the session does not settle")
}

// grantHeaderMemory grants a metered session's request for header memory,
// which must be for more than it holds and no more than a capture ever
// needs.
func (d *driver) grantHeaderMemory() {
	d.t.Helper()
	w := d.s.HeaderMemoryWanted()
	if !d.meter || w <= d.s.HeaderMemoryHeld() || w <= HeaderUnmetered || w > HeaderCaptureMax(d.s.cfg.MaxHeaderBytes) {
		d.fail("header memory asked: %d bytes (holding %d, metered %v)", w, d.s.HeaderMemoryHeld(), d.meter)
	}
	d.note("M %d", w)
	d.s.HandleHeaderMemory(true)
	if d.s.HeaderMemoryHeld() != w {
		d.fail("granted %d bytes of header memory, holding %d", w, d.s.HeaderMemoryHeld())
	}
}

// giveRecipients answers a session waiting in judge with the recipients
// as spelled, recording the check as newAwaitDriver's check function
// would: the reported recipients must be the message's own.
func (d *driver) giveRecipients() {
	d.t.Helper()
	m := &d.s.msg
	// A transaction's first accepted recipient starts the list anew
	// (Index 0); one with none accepted judges none of an older list.
	want := d.s.RecipientsToJudge()
	if len(want) > len(d.accepted) || !slices.Equal(d.accepted[:len(want)], want) || !slices.Equal(want, m.tx.Recipients) {
		d.fail("the session reported the recipients %q, but judges %q (its message's: %q)", d.accepted, want, m.tx.Recipients)
	}
	d.calls = append(d.calls, checkCall{Rcpts: slices.Clone(m.tx.Recipients), Section: string(m.hdr.buf[:m.sectionLen])})
	rcpts := make([]loopcheck.Recipient, len(want))
	for i, a := range want {
		rcpts[i] = loopcheck.NewRecipient(a)
	}
	d.note("J %q", want)
	d.s.HandleRecipients(rcpts)
}

// headerBound is the most the header buffer may hold.
func (d *driver) headerBound() int {
	return d.s.cfg.MaxHeaderBytes + HeaderLookahead + captureStep
}

// checkBounds checks SPEC 2.5: memory is bounded whatever the input.
func (d *driver) checkBounds(out int) {
	d.t.Helper()
	d.checks++
	if n := len(d.s.msg.hdr.buf); n > d.headerBound() {
		d.fail("the header buffer holds %d bytes, over %d+%d+%d", n, d.s.cfg.MaxHeaderBytes, HeaderLookahead, captureStep)
	}
	if out > 2*maxStreamOutput+2*MaxSASLLine+d.s.cfg.MaxHeaderBytes+HeaderLookahead+captureStep+MaxReplyBytes {
		d.fail("%d bytes of upstream output at once", out)
	}
}

// feed offers client bytes in pieces, as a runtime would.
func (d *driver) feed(p []byte) {
	d.t.Helper()
	d.pending = append(d.pending, p...)
	for len(d.pending) > 0 && !d.s.Done() {
		if !d.s.WantsClientInput() {
			d.fail("the session takes no input, is not done and waits for nothing (state %d)", d.s.st)
		}
		k := max(1, min(d.cut(len(d.pending)), len(d.pending)))
		// Each read is a buffer of its own, overwritten once the outputs
		// are taken, as the runtime reuses its buffer: input the session
		// lent (Config.LendInput) must have been taken by then.
		read := slices.Clone(d.pending[:k])
		d.reading = len(read)
		n := d.s.HandleClientData(read)
		d.note("C %s", clip(read[:n]))
		d.pending = d.pending[n:]
		d.settle()
		d.reading = 0
		clear(read)
	}
	if d.s.Done() {
		d.pending = nil // a closed connection reads nothing more
	}
}

func (d *driver) clientClosed() {
	d.note("C closes")
	d.s.HandleClientClosed()
	d.settle()
}

func (d *driver) clientTimeout() {
	d.note("C times out")
	if k := d.s.PollTimers().Client; k != TimerNone {
		d.s.HandleTimeout(k)
	} else if !d.s.Done() {
		d.fail("no client timer runs while the session waits for the client")
	}
	d.settle()
}

func (d *driver) upstreamLost() {
	d.note("R closes")
	if !d.upShut {
		d.srv.closed = true
		d.upShut = true
		d.reads, d.closeUp = nil, false
		d.s.HandleUpstreamClosed(EndClosed)
	}
	d.settle()
}

func (d *driver) shutdown() {
	d.note("shutdown")
	d.s.HandleShutdown()
	d.settle()
}

// verify checks the session against the model and the invariants; done
// is whether the run is over (the final recipients of every message
// began are then known).
func (d *driver) verify(final bool) {
	d.t.Helper()
	d.steps++
	m := d.m

	// SPEC 2.3: one reply per command, in order, each as the model says.
	got := readClientReplies(d.t, d.client)
	d.checks++
	if len(got) != len(m.replies) {
		d.fail("the client got %d replies, the model expects %d:\ngot  %s\nwant %s", len(got), len(m.replies), clip(fmt.Sprintf("%q", got)), clip(fmt.Sprint(m.replies)))
	}
	for i, r := range got {
		d.checks++
		if !m.replies[i].matches(r) {
			d.fail("reply %d: got %s, want %s", i, clip(r), clip(m.replies[i].String()))
		}
	}

	// SPEC 2.4 and 2.2: the upstream read exactly the commands and
	// content lines the model expects, in canonical framing.
	d.checks++
	if len(d.srv.units) != len(m.units) {
		d.fail("the upstream read %d units, the model expects %d:\ngot  %s\nwant %s", len(d.srv.units), len(m.units), gotUnits(d.srv.units), wantUnits(m.units))
	}
	for i, g := range d.srv.units {
		d.checks++
		w := m.units[i]
		if g.what != uMessage {
			continue // commands were compared as they arrived
		}
		want := w.wire
		if w.limit > 0 && len(want) > w.limit {
			want = want[:w.limit]
		}
		switch {
		case w.inexact || w.limit > 0:
			if !bytes.HasPrefix(want, g.raw) {
				d.fail("message %d: the upstream read %s, not a prefix of %s", i, clip(g.raw), clip(want))
			}
		case !bytes.Equal(g.raw, want) || g.ended != w.ended || !slices.Equal(g.lines, wireLines(w.wire)):
			d.fail("message %d: the upstream read %s (ended %v), the model expects %s (ended %v)", i, clip(g.raw), g.ended, clip(want), w.ended)
		}
	}

	// SPEC 3: the accepted recipients are the model's.
	d.checks++
	if !d.s.Done() && !slices.Equal(d.s.env.rcpts, m.rcpts) {
		d.fail("accepted recipients %q, the model's %q", d.s.env.rcpts, m.rcpts)
	}
	d.checks++
	if d.s.Done() != m.done || d.s.UpstreamGone() != m.gone {
		d.fail("session done %v, upstream gone %v; the model says %v, %v", d.s.Done(), d.s.UpstreamGone(), m.done, m.gone)
	}
	// The loop check got the header section and recipients the model
	// found, once per judged message.
	d.checks++
	if !slices.EqualFunc(d.calls, m.checks, func(a, b checkCall) bool {
		return a.Section == b.Section && slices.Equal(a.Rcpts, b.Rcpts)
	}) {
		d.fail("loop checks %s, the model's %s", clip(fmt.Sprintf("%q", d.calls)), clip(fmt.Sprintf("%q", m.checks)))
	}
	d.checks++
	if final && !slices.EqualFunc(d.txEnds, m.txRcpts, slices.Equal) {
		d.fail("messages ended with recipients %q, the model began %q", d.txEnds, m.txRcpts)
	}

	d.verifyInvariants(got)
}

// verifyInvariants checks SPEC 2.1 and 2.2 without the model.
func (d *driver) verifyInvariants(replies [][]byte) {
	d.t.Helper()
	// 2.1: every end-of-data 2xx the client got is one the upstream gave
	// for a message it read whole (the scripted upstream's end-of-data
	// replies are the only ones saying "queued as"), each at most once.
	issued := slices.Clone(d.srv.issued)
	for _, r := range replies {
		if r[0] != '2' || !bytes.Contains(r, []byte("queued as")) {
			continue
		}
		d.checks++
		i := slices.IndexFunc(issued, func(b []byte) bool { return bytes.Equal(b, r) })
		if i < 0 {
			d.fail("the client got %q, which the upstream did not give for a message it read", r)
		}
		issued = slices.Delete(issued, i, i+1)
	}
	// 2.2: no message the upstream read, whole or in part, is a loop for
	// the recipients it accepted.
	if d.limits.dryRun {
		return
	}
	for _, u := range d.srv.units {
		if u.what != uMessage || len(u.raw) == 0 {
			continue
		}
		d.checks++
		msg := strings.Join(u.lines, "\r\n") + "\r\n"
		if v := loopcheck.Check(u.rcpts, []byte(msg)); v.Loop {
			d.fail("the upstream read a loop for %s: %s", v.Recipient, clip(u.raw))
		}
	}
}

// readClientReplies reads what the client received as a strict client
// does: lines ended by CRLF, three digits then SP, '-' or nothing; '-'
// continues a reply. Anything else fails the test.
func readClientReplies(t tb, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	start := 0
	for off := 0; off < len(b); {
		i := bytes.Index(b[off:], []byte("\r\n"))
		if i < 0 {
			t.Fatalf("the client got an unfinished line %s after %s", clip(b[off:]), clip(b[:off]))
		}
		line := b[off : off+i]
		off += i + 2
		if len(line) < 3 || !isDigit(line[0]) || !isDigit(line[1]) || !isDigit(line[2]) ||
			len(line) > 3 && line[3] != ' ' && line[3] != '-' || bytes.IndexByte(line, '\n') >= 0 {
			t.Fatalf("the client got a malformed reply line %s in %s", clip(line), clip(b))
		}
		if len(line) == 3 || line[3] == ' ' {
			out = append(out, b[start:off])
			start = off
		}
	}
	if start != len(b) {
		t.Fatalf("the client got an unfinished reply %s", clip(b[start:]))
	}
	return out
}

func gotUnits(us []*gotUnit) string {
	var b strings.Builder
	for i, u := range us {
		fmt.Fprintf(&b, "\n  %d %v %s", i, u.what, clip(u.line))
		if u.what == uMessage {
			fmt.Fprintf(&b, " %s", clip(u.raw))
		}
	}
	return b.String()
}

func wantUnits(us []*wantUnit) string {
	var b strings.Builder
	for i, u := range us {
		fmt.Fprintf(&b, "\n  %d %v %s", i, u.what, clip(u.line))
		if u.what == uMessage {
			fmt.Fprintf(&b, " %s", clip(u.wire))
		}
		fmt.Fprintf(&b, " -> %v", u.act)
	}
	return b.String()
}
