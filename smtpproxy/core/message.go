package core

// Message data (SPEC section 4): from the client's DATA to the
// end-of-data reply. The header section is captured (capture.go) and
// judged before anything goes upstream; a message judged to pass is sent
// with DATA and streamed, one refused is read to its end and thrown away,
// and the proxy's own end-of-data reply is followed by RSET upstream. The
// data is read and written by the framer (framer.go).

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// startData begins reading a message: upstreamReady says the upstream
// already answered 354 to a forwarded command (its reply was relayed);
// otherwise the proxy answers 354 itself.
func (s *Session) startData(upstreamReady bool) {
	s.msg = message{
		hdr:        headerCapture{buf: s.msg.hdr.buf[:0], max: s.cfg.MaxHeaderBytes},
		sectionLen: -1,
		finalReply: s.msg.finalReply[:0],
		tx: Transaction{
			Sender:     s.env.sender,
			Recipients: append([]string(nil), s.env.rcpts...),
			ClientAddr: s.clientAddr,
			ClientName: s.clientName,
		},
	}
	if !s.up.gone() {
		s.up = upOpen
		if upstreamReady {
			s.up = upData
		}
	}
	s.env.open = true
	s.event(Event{Kind: EventDataStart})
	if !upstreamReady {
		s.clientOut = append(s.clientOut, replyData354...)
	}
	s.enter(stCapture)
	s.restartClient = true
}

func (s *Session) captureInput(p []byte) int {
	m := &s.msg
	n := 0
	for n < len(p) {
		q := p[n:]
		q = q[:min(len(q), m.hdr.step())]
		if need := len(m.hdr.buf) + len(q) + 2; s.cfg.MeterHeader && need > cap(m.hdr.buf) && need > HeaderUnmetered {
			// The next token adds at most len(q) bytes and a line end;
			// past HeaderUnmetered the buffer grows only when granted.
			m.memWanted = headerGrowth(cap(m.hdr.buf), need, s.cfg.MaxHeaderBytes)
			return n
		}
		tok, k := m.dec.next(q)
		n += k
		switch tok.kind {
		case tokContent:
			m.tx.Size += int64(len(tok.content))
			switch m.hdr.content(tok.content) {
			case captureTooLarge:
				s.headerTooLarge(len(tok.content))
				return n
			case captureEnd:
				s.endCapture()
				return n
			}
		case tokLineEnd:
			m.tx.Size += 2
			if tok.bareLF && s.cfg.BareLF == BareLFReject {
				s.rejectBareLF()
				return n
			}
			switch m.hdr.lineEnd() {
			case captureTooLarge:
				s.headerTooLarge(2)
				return n
			case captureEnd:
				s.endCapture()
				return n
			}
		case tokEnd:
			m.ended = true
			m.hdr.lineStart = len(m.hdr.buf)
			s.endCapture()
			return n
		}
	}
	return n
}

// HeaderUnmetered is how much of a metered header buffer needs no grant:
// most header sections (a few KiB, with the start of the body read with
// them) fit in it, so most messages never ask, and their buffer grows as
// any slice does. It counts among a session's own buffers, beside its
// read buffers; only a buffer grown past it is counted, all of it.
const HeaderUnmetered = 16 << 10

// headerGrowth is the capacity a metered header buffer of capacity have
// asks for to hold need bytes: double, at least twice HeaderUnmetered,
// and no more than the most the capture may ever hold with the header
// limit.
func headerGrowth(have, need, limit int) int {
	return min(max(need, 2*have, 2*HeaderUnmetered), HeaderCaptureMax(limit))
}

// HandleHeaderMemory answers HeaderMemoryWanted: granted, the buffer
// grows to the capacity asked and the capture goes on; refused (the
// caller's budget stayed exhausted), the message is refused with
// "451 4.3.1" once its data is read, and nothing of it goes upstream.
func (s *Session) HandleHeaderMemory(granted bool) {
	m := &s.msg
	if s.st != stCapture || m.memWanted == 0 {
		return
	}
	if granted {
		buf := make([]byte, len(m.hdr.buf), m.memWanted)
		copy(buf, m.hdr.buf)
		m.hdr.buf = buf
		m.memWanted = 0
		s.restartClient = true
	} else {
		m.memWanted = 0
		m.hdr.buf = nil
		m.tx.Outcome = OutcomeNoMemory
		s.rejectLocal([]byte(replyNoMemory), true)
	}
	s.after()
}

// endCapture judges the message once its header section is complete:
// hdr.section() is the section, the rest of hdr.buf the start of the body.
func (s *Session) endCapture() {
	m := &s.msg
	m.sectionLen = m.hdr.lineStart
	m.tx.HeaderBytes = m.sectionLen
	if s.cfg.Exempt != nil && s.cfg.Exempt(s.clientAddr) {
		m.tx.Outcome = OutcomeExempt
		s.passOn()
		return
	}
	if s.cfg.AwaitRecipients {
		s.enter(stJudge)
		return
	}
	s.decide(s.judge())
}

// HandleRecipients gives the recipients to judge the message by, once
// WantsRecipients: one for each of its accepted recipients, in order
// (loopcheck.NewRecipient of each RCPT TO: argument, with its expansion
// or without). A recipient missing from the end of rcpts is judged as
// spelled.
func (s *Session) HandleRecipients(rcpts []loopcheck.Recipient) {
	if s.st != stJudge {
		return
	}
	m := &s.msg
	all := make([]loopcheck.Recipient, len(m.tx.Recipients))
	for i, arg := range m.tx.Recipients {
		if i < len(rcpts) {
			all[i] = rcpts[i]
		} else {
			all[i] = loopcheck.NewRecipient(arg)
		}
	}
	s.decide(s.judgeRecipients(all))
	s.after()
}

// decide acts on the verdict: a loop (unless a dry run) or a failed check
// is refused once the data is read; a pass goes upstream.
func (s *Session) decide(v loopcheck.Verdict, ok bool) {
	m := &s.msg
	if v.Loop {
		m.tx.LoopVia = v.Via
	}
	switch {
	case !ok:
		m.tx.Outcome = OutcomeCheckFailed
		s.rejectLocal([]byte(replyCheckFailed), true)
		return
	case v.Loop && !s.cfg.DryRun:
		m.tx.Outcome, m.tx.LoopRecipient = OutcomeLoop, v.Recipient
		s.rejectLocal([]byte(loopReply(v.Recipient)), true)
		return
	case v.Loop:
		m.tx.Outcome, m.tx.LoopRecipient = OutcomeDryRunLoop, v.Recipient
	default:
		m.tx.Outcome = OutcomePass
	}
	s.passOn()
}

// passOn sends a message that may pass: DATA upstream, or the captured
// bytes when the upstream already reads message data.
func (s *Session) passOn() {
	if s.up == upData {
		s.flushCaptured()
		return
	}
	s.upOut = append(s.upOut, "DATA\r\n"...)
	s.await(stData354)
}

// flushCaptured sends the captured bytes upstream. A large section that
// needs no stuffing (no line begins with ".") while the data goes on is
// lent as it is (Config.LendInput), not copied a second time.
// Anything else is framed into the output, which the caller may then write
// together with the body's first bytes in one system call; a lent section
// goes alone, so lending a small one would cost a write per message.
func (s *Session) flushCaptured() {
	m := &s.msg
	buf := m.hdr.buf
	if s.cfg.LendInput && len(buf) > maxStreamOutput && !m.ended && s.upLent == nil && buf[0] != '.' && !bytes.Contains(buf, []byte("\n.")) {
		// The encoder goes on where the captured bytes end: inside a
		// line unless they end with the CRLF of a line end (content
		// holds no LF).
		m.enc.inLine = !bytes.HasSuffix(buf, []byte("\r\n"))
		s.upLent = slices.Clip(buf)
	} else {
		s.upOut = m.enc.encodeCaptured(s.upOut, buf)
	}
	s.afterCaptureFlushed()
}

// judge runs the verdict; a panic in it is reported, not fatal.
func (s *Session) judge() (v loopcheck.Verdict, ok bool) {
	defer s.checkFailed(&ok)
	return s.check(s.msg.tx.Recipients, s.msg.hdr.buf[:s.msg.sectionLen]), true
}

// judgeRecipients is judge with prepared recipients (AwaitRecipients).
func (s *Session) judgeRecipients(rcpts []loopcheck.Recipient) (v loopcheck.Verdict, ok bool) {
	defer s.checkFailed(&ok)
	return loopcheck.CheckRecipients(rcpts, s.msg.hdr.buf[:s.msg.sectionLen]), true
}

// checkFailed, deferred by a verdict, reports a panic in it and makes the
// verdict failed (ok false).
func (s *Session) checkFailed(ok *bool) {
	if r := recover(); r != nil {
		s.event(Event{Kind: EventCheckFailed, Reason: fmt.Sprint(r)})
		*ok = false
	}
}

func loopReply(rcpt string) string {
	if rcpt == "" {
		return "554 5.4.6 mail forwarding loop\r\n"
	}
	return "554 5.4.6 mail forwarding loop for " + sanitize(rcpt) + "\r\n"
}

// sanitize makes text safe inside one reply line.
func sanitize(t string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, t)
}

// dataCommandReply handles the upstream's reply to the DATA the session
// sent for a message judged to pass.
func (s *Session) dataCommandReply(rep *Reply) {
	m := &s.msg
	switch {
	case rep.Code == 354:
		s.up = upData
		s.flushCaptured()
	case rep.Class() == 4 || rep.Class() == 5:
		m.tx.Outcome = OutcomeUpstreamRefused
		m.tx.UpstreamReply = rep.FirstLine()
		if rep.Code == 421 {
			s.retire("closed the connection (421)")
		}
		s.rejectLocal(rep.Raw, true)
	default:
		s.upstreamFailed(FailProtocol, fmt.Sprintf("sent an unexpected reply to DATA (%d)", rep.Code))
	}
}

// afterCaptureFlushed continues once the captured bytes went upstream.
func (s *Session) afterCaptureFlushed() {
	m := &s.msg
	s.releaseHeaderBuffer()
	if m.ended {
		s.upOut = m.enc.end(s.upOut)
		s.await(stDataReply)
		return
	}
	s.enter(stStream)
	s.restartClient = true
}

func (s *Session) streamInput(p []byte) int {
	m := &s.msg
	n := 0
	for n < len(p) && len(s.upOut) < maxStreamOutput {
		// Copied output stays within maxStreamOutput; lent input is the
		// caller's buffer, so a loan may take all of it.
		room := min(len(p), n+maxStreamOutput-len(s.upOut))
		if s.cfg.LendInput && s.upLent == nil {
			room = len(p)
		}
		if pass, read := verbatimRun(&m.dec, &m.enc, p[n:room]); read > 0 {
			m.tx.Size += int64(pass)
			if s.cfg.LendInput && s.upLent == nil && pass > 0 {
				// Nothing may follow lent input until it is taken.
				loan, end := p[n:n+pass], n+read
				if m.dec.atLineStart() && bytes.HasPrefix(p[end:], endOfData) {
					// The end of data right after them reads and frames
					// the same: it goes in the same loan (read is pass
					// at a line start).
					end += len(endOfData)
					loan = p[n:end]
					m.dec.finish()
					m.ended = true
					s.await(stDataReply)
				}
				s.upLent = slices.Clip(loan)
				return end
			}
			s.upOut = append(s.upOut, p[n:n+pass]...)
			n += read
			continue
		}
		tok, k := m.dec.next(p[n:])
		n += k
		switch tok.kind {
		case tokContent:
			m.tx.Size += int64(len(tok.content))
			s.upOut = m.enc.content(s.upOut, tok.content)
		case tokLineEnd:
			m.tx.Size += 2
			if tok.bareLF && s.cfg.BareLF == BareLFReject {
				s.rejectBareLF()
				return n
			}
			s.upOut = m.enc.lineEnd(s.upOut)
		case tokEnd:
			m.ended = true
			s.upOut = m.enc.end(s.upOut)
			s.await(stDataReply)
			return n
		}
	}
	return n
}

func (s *Session) drainInput(p []byte) int {
	m := &s.msg
	n := 0
	for n < len(p) {
		if m.dec.atLineStart() {
			if k := verbatimLines(p[n:]); k > 0 {
				m.tx.Size += int64(k)
				n += k
				continue
			}
		}
		tok, k := m.dec.next(p[n:])
		n += k
		switch tok.kind {
		case tokContent:
			m.tx.Size += int64(len(tok.content))
		case tokLineEnd:
			m.tx.Size += 2
		case tokEnd:
			m.ended = true
			s.finishLocal()
			return n
		}
	}
	return n
}

// headerTooLarge refuses the message; extra is the part of the current
// piece that crossed the limit, counted in the logged size so that the log
// shows the limit crossed rather than what happened to be buffered.
func (s *Session) headerTooLarge(extra int) {
	s.msg.tx.Outcome = OutcomeHeaderTooLarge
	s.msg.tx.HeaderBytes = len(s.msg.hdr.buf) + extra
	s.rejectLocal([]byte(replyHeaderTooBig), true)
}

func (s *Session) rejectBareLF() {
	s.msg.tx.Outcome = OutcomeBareLF
	s.rejectLocal([]byte(replyBareLF), true)
}

// rejectLocal gives reply as the end-of-data reply once the client's data
// is over, the upstream not having taken the message. An upstream that
// already reads message data cannot be stopped cleanly: it is closed
// without the final dot, so nothing is delivered. Otherwise RSET follows
// when rset is set, so both sides agree the transaction is over.
func (s *Session) rejectLocal(reply []byte, rset bool) {
	m := &s.msg
	if s.up == upData {
		s.retire("closed by the proxy to abort a rejected message")
	}
	m.finalReply = append(m.finalReply[:0], reply...)
	m.rsetAfter = rset && !s.up.gone()
	if m.ended {
		s.finishLocal()
		return
	}
	s.enter(stDrain)
	s.restartClient = true
}

// finishLocal gives the held end-of-data reply after the data is drained.
func (s *Session) finishLocal() {
	m := &s.msg
	s.clientOut = append(s.clientOut, m.finalReply...)
	first, _, _ := bytes.Cut(m.finalReply, []byte("\r\n"))
	s.endTx(string(first))
	if len(m.finalReply) >= 3 && string(m.finalReply[:3]) == "421" {
		s.closeWith("", "upstream 421")
		return
	}
	if m.rsetAfter && !s.up.gone() {
		s.upOut = append(s.upOut, "RSET\r\n"...)
		s.await(stRSET)
		return
	}
	s.toCommand()
}

// endTx reports the message's end with the reply the client got, and
// closes the transaction.
func (s *Session) endTx(reply string) {
	s.msg.tx.Reply = reply
	tx := s.msg.tx
	s.event(Event{Kind: EventTxEnd, Tx: &tx})
	s.msg.tx = Transaction{}
	s.env = envelope{}
	s.endUpstreamData()
	s.releaseHeaderBuffer()
}

// releaseHeaderBuffer gives up the header buffer once its bytes are sent
// or thrown away: always when it is metered (its memory goes back to the
// caller's budget; a session rarely carries a second message, as
// Postfix's front smtpd opens one per message), else when it grew beyond
// keepBufferCap.
func (s *Session) releaseHeaderBuffer() {
	if s.cfg.MeterHeader || cap(s.msg.hdr.buf) > keepBufferCap {
		s.msg.hdr.buf = nil
	}
}

// abortTx reports a message cut short by the end of the session.
func (s *Session) abortTx(why string) {
	switch s.st {
	case stCapture, stJudge, stData354, stStream, stDataReply, stDrain:
		s.msg.tx.Outcome = OutcomeAborted
		s.msg.tx.Reply = why
		tx := s.msg.tx
		s.event(Event{Kind: EventTxEnd, Tx: &tx})
	}
}
