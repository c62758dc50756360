package core

// Failures and endings: what an upstream failure does in each state (SPEC
// sections 3 and 4: before the greeting 421 4.4.1; while a command is
// relayed 421 4.4.2 and close; during a message 451 4.4.2 as its
// end-of-data reply, then 421 on the next command), how the upstream
// connection is given up, and how the session ends.

import "fmt"

// upstreamFailed handles the loss of the upstream (closed, reset, timed
// out, or a protocol error), as fits the current state.
func (s *Session) upstreamFailed(kind UpstreamFailure, why string) {
	s.upFailEvent(kind, why)
	m := &s.msg
	switch s.st {
	case stConnecting, stGreeting:
		s.leaveUpstream()
		s.closeWith(fmt.Sprintf("421 4.4.1 upstream %s %s before its greeting\r\n", s.cfg.UpstreamName, why), "upstream failed before greeting")
	case stReply:
		s.leaveUpstream()
		s.closeWith(fmt.Sprintf("421 4.4.2 upstream %s %s\r\n", s.cfg.UpstreamName, why), "upstream failed")
	case stCapture, stJudge, stData354, stStream:
		s.retire(why)
		if m.tx.Outcome == OutcomeUnknown || m.tx.Outcome == OutcomePass || m.tx.Outcome == OutcomeDryRunLoop {
			m.tx.Outcome = OutcomeUpstreamFailed
		}
		s.rejectLocal([]byte(fmt.Sprintf("451 4.4.2 upstream %s %s\r\n", s.cfg.UpstreamName, why)), false)
	case stDataReply:
		s.retire(why)
		m.tx.Outcome = OutcomeUpstreamFailed
		s.clientOut = append(s.clientOut, fmt.Sprintf("451 4.4.2 upstream %s %s\r\n", s.cfg.UpstreamName, why)...)
		s.endTx(fmt.Sprintf("451 4.4.2 upstream %s %s", s.cfg.UpstreamName, why))
		s.toCommand()
	case stDrain:
		// The held reply stands (the message is refused either way); no
		// RSET can follow.
		s.retire(why)
		m.rsetAfter = false
	case stRSET:
		s.retire(why)
		s.toCommand()
	default:
		// Between commands: the next command learns of it.
		s.retire(why)
	}
}

// unsolicited retires an upstream that sent bytes nothing asked for.
func (s *Session) unsolicited() {
	if s.up == upData {
		s.upstreamFailed(FailProtocol, "replied before the end of data")
	} else {
		s.upstreamFailed(FailProtocol, "sent unexpected data")
	}
}

func (s *Session) upFailEvent(kind UpstreamFailure, why string) {
	s.event(Event{Kind: EventUpstreamError, Failure: kind, Reason: why})
}

// retire gives up an upstream still in use after a failure or a refusal:
// what it has not been sent is dropped (unsent content must not follow),
// and the next command gets 421 with why.
func (s *Session) retire(why string) {
	if !s.up.gone() {
		s.up = upRetired
		s.upReason = why
		s.dropUpstreamOutput()
	}
}

// leaveUpstream gives up an upstream still in use as the session ends,
// after what it has been sent so far.
func (s *Session) leaveUpstream() {
	if !s.up.gone() {
		s.up = upClosed
	}
}

// endUpstreamData notes that the upstream no longer reads message data.
func (s *Session) endUpstreamData() {
	if s.up == upData {
		s.up = upOpen
	}
}

// quitUpstream says goodbye to an upstream idle between commands.
func (s *Session) quitUpstream() {
	if !s.up.gone() && s.st == stCommand {
		s.upOut = append(s.upOut, "QUIT\r\n"...)
		s.up = upQuit
	}
	s.leaveUpstream()
}

// dropUpstreamOutput discards what was not yet written upstream.
func (s *Session) dropUpstreamOutput() {
	s.upOut = s.upOut[:0]
	s.upLent = nil
}

// closeWith ends the session after reply; why is for logs.
func (s *Session) closeWith(reply, why string) {
	s.clientOut = append(s.clientOut, reply...)
	if !s.up.gone() {
		s.up = upClosed
		s.dropUpstreamOutput()
	}
	s.enter(stClosed)
	if s.end == "" {
		s.end = why
	}
}

func (s *Session) event(e Event) { s.events = append(s.events, e) }
