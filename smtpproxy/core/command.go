package core

// Command mode: a client command line is answered by the proxy itself or
// forwarded upstream, one at a time, and the upstream's reply to it is
// relayed and moves the session on (SPEC section 3). The envelope follows
// the upstream's replies: a 2xx to MAIL opens a transaction, a 2xx to RCPT
// adds an accepted recipient, RSET, EHLO, HELO and XCLIENT clear it.

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Replies the proxy gives itself.
const (
	replyData354      = "354 End data with <CR><LF>.<CR><LF>\r\n"
	replyLineTooLong  = "500 5.5.2 line too long\r\n"
	replyNUL          = "500 5.5.2 NUL in command\r\n"
	replyBareCR       = "500 5.5.2 bare CR in command\r\n"
	replyNoTLS        = "454 4.7.0 TLS not available\r\n"
	replyNoBDAT       = "502 5.5.1 BDAT not supported\r\n"
	replyHeaderTooBig = "552 5.3.4 header section too large\r\n"
	replyBareLF       = "550 5.5.2 bare LF in message\r\n"
	replyCheckFailed  = "451 4.3.0 loop check failed, try again later\r\n"
	replyNoMemory     = "451 4.3.1 insufficient system resources, try again later\r\n"
	replyTimeout      = "421 4.4.2 timeout\r\n"
	replyShutdown     = "421 4.3.2 shutting down\r\n"
	// ReplyTooMany is the reply to a connection over the session limit.
	ReplyTooMany = "421 4.3.2 too many connections\r\n"
	// ReplyNotAllowed is the reply to a peer the proxy does not serve
	// (its -allow-client list): the greeting RFC 5321 3.1 allows a server
	// that will not serve a client, naming nothing of the setup.
	ReplyNotAllowed = "554 5.7.1 not authorized to use this service\r\n"
)

// cmdKind is the command whose reply is awaited.
type cmdKind uint8

const (
	cmdOther cmdKind = iota
	cmdEHLO
	cmdHELO
	cmdMAIL
	cmdRCPT
	cmdDATA
	cmdRSET
	cmdQUIT
	cmdXFORWARD
	cmdXCLIENT
	cmdSASL // a SASL continuation line
)

func (s *Session) commandInput(p []byte) int {
	limit := MaxCommandLine
	if s.saslNext {
		limit = MaxSASLLine
	}
	n, complete := s.lines.feed(p, limit)
	if !complete {
		return n
	}
	s.restartClient = true
	line, fault := s.lines.line(), s.lines.fault
	defer s.lines.reset()
	if s.up.gone() {
		s.closeWith(fmt.Sprintf("421 4.4.2 upstream %s %s\r\n", s.cfg.UpstreamName, s.upReason), "upstream gone")
		return n
	}
	if s.saslNext {
		// The upstream waits for a continuation line: it must get one,
		// or it would read the next command as one. A line the proxy
		// will not carry becomes "*", the SASL cancel.
		s.saslNext = false
		if fault != lineOK {
			line = []byte("*")
		}
		s.forward(cmdSASL, line, "")
		return n
	}
	switch fault {
	case lineTooLong:
		s.localReply(replyLineTooLong)
		return n
	case lineNUL:
		s.localReply(replyNUL)
		return n
	case lineBareCR:
		s.localReply(replyBareCR)
		return n
	}
	verb, rest := splitVerb(line)
	switch upperASCII(verb) {
	case "STARTTLS":
		s.localReply(replyNoTLS)
	case "BDAT":
		s.localReply(replyNoBDAT)
	case "DATA":
		if len(bytes.Trim(rest, " \t")) == 0 && len(s.env.rcpts) > 0 {
			s.startData(false)
			return n
		}
		s.forward(cmdDATA, line, "")
	case "MAIL":
		s.forward(cmdMAIL, line, afterColon(rest))
	case "RCPT":
		s.forward(cmdRCPT, line, afterColon(rest))
	case "RSET":
		s.forward(cmdRSET, line, "")
	case "EHLO":
		s.forward(cmdEHLO, line, "")
	case "HELO":
		s.forward(cmdHELO, line, "")
	case "QUIT":
		s.forward(cmdQUIT, line, "")
	case "XFORWARD":
		s.forward(cmdXFORWARD, line, string(rest))
	case "XCLIENT":
		s.forward(cmdXCLIENT, line, "")
	default:
		s.forward(cmdOther, line, "")
	}
	return n
}

// splitVerb splits a command line at its first SP or HTAB.
func splitVerb(line []byte) (verb string, rest []byte) {
	if i := bytes.IndexAny(line, " \t"); i >= 0 {
		return string(line[:i]), line[i+1:]
	}
	return string(line), nil
}

// afterColon returns the text after the first colon ("FROM:<a> SIZE=1" ->
// "<a> SIZE=1"), or all of it when there is none.
func afterColon(rest []byte) string {
	if _, after, ok := bytes.Cut(rest, []byte(":")); ok {
		return string(after)
	}
	return string(rest)
}

func (s *Session) localReply(reply string) {
	s.clientOut = append(s.clientOut, reply...)
	s.event(Event{Kind: EventLocalReply, Reason: strings.TrimSuffix(reply, "\r\n")})
	s.atBoundary()
}

func (s *Session) forward(kind cmdKind, line []byte, arg string) {
	s.upOut = append(s.upOut, line...)
	s.upOut = append(s.upOut, '\r', '\n')
	s.pending, s.pendArg = kind, arg
	s.await(stReply)
}

// await enters st, a state that waits for the upstream.
func (s *Session) await(st state) {
	s.enter(st)
	s.timers.UpstreamGen++ // a new wait starts the clock afresh
}

func (s *Session) awaitingUpstream() bool {
	switch s.st {
	case stGreeting, stReply, stData354, stDataReply, stRSET:
		return true
	}
	return false
}

// onReply handles one complete upstream reply.
func (s *Session) onReply(rep *Reply) {
	switch s.st {
	case stGreeting:
		s.clientOut = append(s.clientOut, rep.Raw...)
		if rep.Code == 421 {
			s.leaveUpstream()
			s.closeWith("", "upstream greeting 421")
			return
		}
		s.toCommand()
	case stReply:
		s.commandReply(rep)
	case stData354:
		s.dataCommandReply(rep)
	case stDataReply:
		s.endUpstreamData()
		s.msg.tx.UpstreamReply = rep.FirstLine()
		s.clientOut = append(s.clientOut, rep.Raw...)
		s.endTx(rep.FirstLine())
		if rep.Code == 421 {
			s.leaveUpstream()
			s.closeWith("", "upstream 421")
			return
		}
		s.toCommand()
	case stRSET:
		if rep.Class() != 2 {
			// Its transaction may still hold the refused message's
			// recipients: carrying on could deliver a later message to
			// them unchecked. The upstream is retired instead.
			why := "refused RSET: " + sanitize(rep.FirstLine())
			s.upFailEvent(FailProtocol, why)
			s.retire(why)
		}
		s.toCommand()
	}
}

func (s *Session) commandReply(rep *Reply) {
	ok := rep.Class() == 2
	if s.pending == cmdEHLO && ok {
		s.clientOut = filterEHLO(s.clientOut, rep.Raw, s.cfg.DropEHLOKeywords)
	} else {
		s.clientOut = append(s.clientOut, rep.Raw...)
	}
	switch {
	case s.pending == cmdQUIT:
		s.up = upQuit
		s.closeWith("", "client quit")
		return
	case rep.Code == 421:
		s.leaveUpstream()
		s.closeWith("", "upstream 421")
		return
	}
	switch {
	case rep.Code == 334:
		s.saslNext = true
	case rep.Code == 354:
		// The upstream now reads message data, whatever the command was:
		// follow it, so both sides agree where the data ends.
		s.startData(true)
		return
	case !ok:
	case s.pending == cmdMAIL:
		s.env = envelope{open: true, sender: s.pendArg}
	case s.pending == cmdRCPT:
		s.env.rcpts = append(s.env.rcpts, s.pendArg)
		if s.cfg.AwaitRecipients {
			s.event(Event{Kind: EventRecipientAccepted, Index: len(s.env.rcpts) - 1, Reason: s.pendArg})
		}
	case s.pending == cmdRSET, s.pending == cmdEHLO, s.pending == cmdHELO, s.pending == cmdXCLIENT:
		s.env = envelope{}
	case s.pending == cmdXFORWARD:
		s.xforward(s.pendArg)
	}
	s.toCommand()
}

func (s *Session) toCommand() {
	s.enter(stCommand)
	s.restartClient = true
	s.atBoundary()
}

// atBoundary ends a session asked to shut down once it waits for a
// command outside a transaction.
func (s *Session) atBoundary() {
	if s.shutdown && !s.Done() && s.st == stCommand && !s.env.open {
		s.quitUpstream()
		s.closeWith(replyShutdown, "shutting down")
	}
}

// xforward keeps the client's NAME and ADDR (xtext, RFC 1891) for logs.
func (s *Session) xforward(args string) {
	for _, f := range strings.Fields(args) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch upperASCII(k) {
		case "ADDR":
			s.clientAddr = xtextDecode(v)
		case "NAME":
			s.clientName = xtextDecode(v)
		}
	}
}

func xtextDecode(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '+' && i+2 < len(v) {
			if c, err := strconv.ParseUint(v[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(v[i])
	}
	return sanitize(b.String())
}
