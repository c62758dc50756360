package core

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// maxStreamOutput bounds the bytes waiting for the upstream while a
// message streams: the session takes no more client data until the caller
// has written them (backpressure). Framing at most doubles a chunk, so the
// bound holds for any input chunk up to half this size plus one.
const maxStreamOutput = 64 << 10

// keepBufferCap: after a message, buffers grown beyond this are released,
// so an idle session holds only small buffers.
const keepBufferCap = 64 << 10

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
	replyTimeout      = "421 4.4.2 timeout\r\n"
	replyShutdown     = "421 4.3.2 shutting down\r\n"
	// ReplyTooMany is the reply to a connection over the session limit.
	ReplyTooMany = "421 4.3.2 too many connections\r\n"
)

// BareLFPolicy says what a bare LF in message data does.
type BareLFPolicy uint8

const (
	// BareLFNormalize: a bare LF ends a content line, which goes upstream
	// with CRLF (Postfix's smtpd_forbid_bare_newline = normalize).
	BareLFNormalize BareLFPolicy = iota
	// BareLFReject: a message holding a bare LF is refused with 550 5.5.2.
	BareLFReject
)

// CheckFunc judges a header section against the accepted recipients (the
// RCPT TO: arguments as the client wrote them); loopcheck.Check is the one
// the proxy uses.
type CheckFunc func(rcptArgs []string, section []byte) loopcheck.Verdict

// Config is what a session needs to know; the zero value works.
type Config struct {
	// UpstreamName names the upstream in replies and logs (its address).
	UpstreamName string
	// MaxHeaderBytes bounds the header section; 0 means
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// DryRun: a loop is reported (EventTxEnd with OutcomeDryRunLoop) and
	// the message passes.
	DryRun bool
	BareLF BareLFPolicy
	// DropEHLOKeywords are removed from the EHLO reply besides STARTTLS,
	// CHUNKING and BINARYMIME.
	DropEHLOKeywords []string
	// Check judges a message; nil means loopcheck.Check.
	Check CheckFunc
	// LendInput lets runs of canonical message data (whole CRLF lines
	// not starting with ".", which go upstream unchanged) pass without a
	// copy: TakeUpstreamLent returns them, as a part of the very input
	// given to ClientData, to be written after what TakeUpstreamOutput
	// returned. The caller then leaves that input unchanged until it has
	// taken the outputs. Without it, TakeUpstreamOutput returns all.
	LendInput bool
}

// Reading is what the client's next bytes are (ClientReading).
type Reading uint8

const (
	// ReadingCommands: command lines, or nothing while the session waits
	// for the upstream.
	ReadingCommands Reading = iota
	// ReadingMessage: message data the session holds (a header section)
	// or throws away (a refused message drained to its end).
	ReadingMessage
	// ReadingBody: the body of a judged message, streaming upstream.
	ReadingBody
)

// TimerKind names a clock the session wants running.
type TimerKind uint8

const (
	TimerNone          TimerKind = iota
	TimerClientCommand           // waiting for a client command line
	TimerClientData              // waiting for more message data (idle time)
	TimerUpstreamReply           // waiting for an upstream greeting or reply
)

func (k TimerKind) String() string {
	switch k {
	case TimerClientCommand:
		return "client-command"
	case TimerClientData:
		return "client-data-idle"
	case TimerUpstreamReply:
		return "upstream-reply"
	}
	return "none"
}

// Timers is the state of the session's two clocks. The caller keeps one
// timer per side: when Client or ClientGen changes it restarts (or stops)
// the client timer, likewise for the upstream one, and it reports expiry
// with TimerExpired.
type Timers struct {
	Client      TimerKind // TimerNone, TimerClientCommand or TimerClientData
	ClientGen   uint64    // changes each time the client timer starts again
	Upstream    bool      // TimerUpstreamReply is running
	UpstreamGen uint64    // changes each time the upstream timer starts again
}

type state uint8

const (
	stConnecting state = iota // waiting for the upstream connection
	stGreeting                // waiting for the upstream greeting
	stCommand                 // waiting for a client command line
	stReply                   // a command is forwarded; waiting for its reply
	stCapture                 // reading the header section of a message
	stData354                 // verdict pass; DATA forwarded; waiting for 354
	stStream                  // streaming the message upstream
	stDataReply               // end of data sent; waiting for the final reply
	stDrain                   // reading the client's data to throw it away
	stRSET                    // RSET sent after a local end-of-data reply
	stClosed
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

// Session is one proxied SMTP session. Its methods are the inputs; after
// each the caller collects the outputs: TakeClientOutput,
// TakeUpstreamOutput (write them, the upstream's first), UpstreamGone
// (close the upstream connection), Done (close both), Timers and
// TakeEvents. A Session is not safe for concurrent use.
type Session struct {
	cfg   Config
	check CheckFunc
	st    state

	clientOut, upOut []byte
	upLent           []byte // client input passed upstream as it is (LendInput)
	events           []Event
	timers           Timers
	restartClient    bool

	lines   lineReader
	replies replyReader

	pending  cmdKind // the command whose reply is awaited in stReply
	pendArg  string  // its argument (MAIL, RCPT, XFORWARD)
	saslNext bool    // the last reply was 334

	inTx             bool // MAIL accepted and the transaction not over
	sender           string
	rcpts            []string
	clientAddr, name string // from XFORWARD

	// The message being read.
	dec        decoder
	enc        encoder
	hdr        headerCapture // the header section, then the start of the body
	sectionLen int           // length of the header section, once known
	dataEnded  bool          // the client's end of data has been read
	upInData   bool          // the upstream accepted a data command and waits for content
	finalReply []byte        // the end-of-data reply to give after draining
	rsetAfter  bool          // send RSET upstream after the final reply
	tx         Transaction

	upGone   bool   // the upstream connection is over (or must be closed)
	upQuit   bool   // ... after QUIT, and nothing has failed since
	upReason string // why, as a verb phrase after "upstream NAME"
	shutdown bool
	done     bool
	end      string // why the session ended
}

// NewSession returns a session waiting for its upstream connection.
func NewSession(cfg Config) *Session {
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	s := &Session{cfg: cfg, check: cfg.Check}
	if s.check == nil {
		s.check = loopcheck.Check
	}
	return s
}

// ---- outputs ----

// TakeClientOutput returns the bytes to write to the client, valid until
// the next input (method that is not a Take or a query).
func (s *Session) TakeClientOutput() []byte { return take(&s.clientOut) }

// TakeUpstreamOutput returns the bytes to write to the upstream, valid
// until the next input.
func (s *Session) TakeUpstreamOutput() []byte { return take(&s.upOut) }

// TakeUpstreamLent returns the client input lent to the upstream (see
// Config.LendInput), to be written after TakeUpstreamOutput's bytes;
// always empty without LendInput.
func (s *Session) TakeUpstreamLent() []byte {
	b := s.upLent
	s.upLent = nil
	return b
}

// dropUpstreamOutput discards what was not yet written upstream.
func (s *Session) dropUpstreamOutput() {
	s.upOut = s.upOut[:0]
	s.upLent = nil
}

func take(buf *[]byte) []byte {
	b := *buf
	if cap(b) > 4*maxStreamOutput {
		*buf = nil // a burst (a flushed header section) is not kept
	} else {
		*buf = b[:0]
	}
	return b
}

// TakeEvents returns what happened since the last call, for logs, valid
// until the next input (the array is reused).
func (s *Session) TakeEvents() []Event {
	ev := s.events
	s.events = s.events[:0]
	return ev
}

// Timers returns the clocks the session wants running.
func (s *Session) Timers() Timers { return s.timers }

// UpstreamGone reports that the upstream connection is no longer used:
// the caller writes what TakeUpstreamOutput returned, then closes it.
func (s *Session) UpstreamGone() bool { return s.upGone }

// Done reports that the session is over: the caller writes the pending
// output, then closes both connections.
func (s *Session) Done() bool { return s.done }

// EndReason says why the session ended, for logs.
func (s *Session) EndReason() string { return s.end }

// WantsClientInput reports whether ClientData would consume bytes now.
// While it is false the caller reads nothing more from the client: that
// is the backpressure that keeps a pipelined flood or a huge message out
// of memory.
func (s *Session) WantsClientInput() bool {
	switch s.st {
	case stCommand, stCapture, stDrain:
		return true
	case stStream:
		// Lent input must be taken before more output can follow it.
		return len(s.upOut) < maxStreamOutput && s.upLent == nil
	}
	return false
}

// UpstreamQuit reports, once UpstreamGone, whether the upstream was told
// QUIT (by the client, or by the session on its way out) and nothing has
// failed since: the upstream closes the connection itself, so the caller
// may wait for that before it closes its side, which leaves TCP's
// TIME_WAIT with the upstream, as with any SMTP client that quits.
func (s *Session) UpstreamQuit() bool { return s.upGone && s.upQuit }

// ClientReading says what the client's next bytes are, for a caller that
// sizes its reads by it: ReadingBody while a message body streams
// upstream, when the header section has been judged and gone and the
// session holds no more than a little output, so larger reads add nothing
// to the memory bound, which the header section sets (see package
// smtpproxy's buffers).
func (s *Session) ClientReading() Reading {
	switch s.st {
	case stStream:
		return ReadingBody
	case stCapture, stDrain:
		return ReadingMessage
	}
	return ReadingCommands
}

// ---- inputs ----

// UpstreamConnected: the connection to the upstream is open.
func (s *Session) UpstreamConnected() {
	if s.st != stConnecting {
		return
	}
	s.st = stGreeting
	s.after()
}

// UpstreamConnectFailed: the upstream could not be reached; why is a
// short phrase such as "connection refused".
func (s *Session) UpstreamConnectFailed(why string) {
	if s.st != stConnecting {
		return
	}
	s.upFailEvent(FailConnect, "connect: "+why)
	s.upGone = true
	s.closeWith(fmt.Sprintf("421 4.4.1 upstream %s unreachable: %s\r\n", s.cfg.UpstreamName, why), "upstream unreachable")
	s.after()
}

// ClientData offers bytes from the client and returns how many were
// consumed; the rest must be offered again once WantsClientInput is true.
func (s *Session) ClientData(p []byte) int {
	n := 0
	for n < len(p) && s.WantsClientInput() {
		var k int
		switch s.st {
		case stCommand:
			k = s.commandInput(p[n:])
		case stCapture:
			k = s.captureInput(p[n:])
			s.restartClient = true
		case stStream:
			k = s.streamInput(p[n:])
			s.restartClient = true
		case stDrain:
			k = s.drainInput(p[n:])
			s.restartClient = true
		}
		n += k
	}
	s.after()
	return n
}

// UpstreamData offers bytes from the upstream, one read at a time; all are
// consumed. Bytes that follow a complete reply in the same call are
// unsolicited: the session writes one command and waits for its reply, and
// what it writes in answer to that reply leaves only after this call.
func (s *Session) UpstreamData(p []byte) {
	for len(p) > 0 && !s.done && !s.upGone {
		if !s.awaitingUpstream() {
			s.unsolicited()
			break
		}
		n, rep, err := s.replies.feed(p)
		p = p[n:]
		if err != nil {
			s.upstreamFailed(FailProtocol, err.Error())
			break
		}
		if rep != nil {
			s.onReply(rep)
			if len(p) > 0 && !s.done && !s.upGone {
				// Taken as the next reply, a "250" sent along with a
				// "354" would reach the client as the end-of-data reply
				// of a message the upstream has not read yet.
				s.unsolicited()
				break
			}
		}
	}
	s.after()
}

// unsolicited retires an upstream that sent bytes nothing asked for.
func (s *Session) unsolicited() {
	if s.upInData {
		s.upstreamFailed(FailProtocol, "replied before the end of data")
	} else {
		s.upstreamFailed(FailProtocol, "sent unexpected data")
	}
}

// UpstreamClosed: the upstream connection ended or failed, on a read or
// a write, as end says.
func (s *Session) UpstreamClosed(end UpstreamEnd) {
	s.upQuit = false
	if !s.upGone && !s.done {
		s.upstreamFailed(end.failure(), end.phrase())
	}
	s.after()
}

// ClientClosed: the client connection ended or failed. The upstream is
// closed; a message being streamed never gets its final dot.
func (s *Session) ClientClosed() {
	if s.done {
		return
	}
	s.abortTx("client closed the connection")
	if s.st == stCommand {
		s.quitUpstream()
	}
	s.closeWith("", "client closed the connection")
	s.after()
}

// TimerExpired: a clock the session asked for ran out. Expiries of a kind
// that is no longer running are ignored.
func (s *Session) TimerExpired(kind TimerKind) {
	switch {
	case s.done:
	case kind == TimerUpstreamReply && s.timers.Upstream:
		s.upstreamFailed(FailTimeout, "timed out")
	case kind != TimerUpstreamReply && kind == s.timers.Client:
		s.abortTx("client timed out")
		if s.st == stCommand {
			s.quitUpstream()
		}
		s.closeWith(replyTimeout, "client timed out")
	}
	s.after()
}

// Shutdown asks the session to end: at once when it is between
// transactions, else after the end-of-data reply of the current one.
func (s *Session) Shutdown() {
	s.shutdown = true
	if s.st == stConnecting || s.st == stGreeting {
		s.upGone = true
		s.closeWith(replyShutdown, "shutting down")
	}
	s.atBoundary()
	s.after()
}

// DrainExpired: the shutdown drain time is over. The session ends now;
// a message cut short never gets a 2xx reply.
func (s *Session) DrainExpired() {
	if !s.done {
		s.abortTx("shutdown drain time over")
		s.upGone = true
		s.dropUpstreamOutput()
		s.closeWith(replyShutdown, "shutdown drain time over")
	}
	s.after()
}

// ---- command mode ----

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
	if s.upGone {
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
		if len(bytes.Trim(rest, " \t")) == 0 && len(s.rcpts) > 0 {
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

func (s *Session) await(st state) {
	s.st = st
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
			s.upGone = true
			s.closeWith("", "upstream greeting 421")
			return
		}
		s.st = stCommand
		s.restartClient = true
		s.atBoundary()
	case stReply:
		s.commandReply(rep)
	case stData354:
		switch {
		case rep.Code == 354:
			s.upInData = true
			s.upOut = s.enc.encodeCaptured(s.upOut, s.hdr.buf)
			s.afterCaptureFlushed()
		case rep.Class() == 4 || rep.Class() == 5:
			s.tx.Outcome = OutcomeUpstreamRefused
			s.tx.UpstreamReply = rep.FirstLine()
			if rep.Code == 421 {
				s.markGone("closed the connection (421)")
			}
			s.rejectLocal(rep.Raw, true)
		default:
			s.upstreamFailed(FailProtocol, fmt.Sprintf("sent an unexpected reply to DATA (%d)", rep.Code))
		}
	case stDataReply:
		s.upInData = false
		s.tx.UpstreamReply = rep.FirstLine()
		s.clientOut = append(s.clientOut, rep.Raw...)
		s.endTx(rep.FirstLine())
		if rep.Code == 421 {
			s.upGone = true
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
			s.markGone(why)
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
	if rep.Code == 421 || s.pending == cmdQUIT {
		s.upGone = true
		if s.pending == cmdQUIT {
			s.upQuit = true
			s.closeWith("", "client quit")
		} else {
			s.closeWith("", "upstream 421")
		}
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
		s.inTx, s.sender, s.rcpts = true, s.pendArg, nil
	case s.pending == cmdRCPT:
		s.rcpts = append(s.rcpts, s.pendArg)
	case s.pending == cmdRSET, s.pending == cmdEHLO, s.pending == cmdHELO, s.pending == cmdXCLIENT:
		s.clearTx()
	case s.pending == cmdXFORWARD:
		s.xforward(s.pendArg)
	}
	s.toCommand()
}

func (s *Session) toCommand() {
	s.st = stCommand
	s.restartClient = true
	s.atBoundary()
}

// atBoundary ends a session asked to shut down once it waits for a
// command outside a transaction.
func (s *Session) atBoundary() {
	if s.shutdown && !s.done && s.st == stCommand && !s.inTx {
		s.quitUpstream()
		s.closeWith(replyShutdown, "shutting down")
	}
}

func (s *Session) clearTx() {
	s.inTx, s.sender, s.rcpts = false, "", nil
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
			s.name = xtextDecode(v)
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

// ---- message data ----

// startData begins reading a message: upstreamReady says the upstream
// already answered 354 to a forwarded command (its reply was relayed);
// otherwise the proxy answers 354 itself.
func (s *Session) startData(upstreamReady bool) {
	s.dec, s.enc = decoder{}, encoder{}
	s.hdr = headerCapture{buf: s.hdr.buf[:0], max: s.cfg.MaxHeaderBytes}
	s.sectionLen = -1
	s.dataEnded, s.upInData = false, upstreamReady
	s.finalReply, s.rsetAfter = s.finalReply[:0], false
	s.tx = Transaction{
		Sender:     s.sender,
		Recipients: append([]string(nil), s.rcpts...),
		ClientAddr: s.clientAddr,
		ClientName: s.name,
	}
	s.inTx = true
	s.event(Event{Kind: EventDataStart})
	if !upstreamReady {
		s.clientOut = append(s.clientOut, replyData354...)
	}
	s.st = stCapture
	s.restartClient = true
}

func (s *Session) captureInput(p []byte) int {
	n := 0
	for n < len(p) {
		q := p[n:]
		q = q[:min(len(q), s.hdr.step())]
		tok, k := s.dec.next(q)
		n += k
		switch tok.kind {
		case tokContent:
			s.tx.Size += int64(len(tok.content))
			switch s.hdr.content(tok.content) {
			case captureTooLarge:
				s.headerTooLarge(len(tok.content))
				return n
			case captureEnd:
				s.endCapture()
				return n
			}
		case tokLineEnd:
			s.tx.Size += 2
			if tok.bareLF && s.cfg.BareLF == BareLFReject {
				s.rejectBareLF()
				return n
			}
			switch s.hdr.lineEnd() {
			case captureTooLarge:
				s.headerTooLarge(2)
				return n
			case captureEnd:
				s.endCapture()
				return n
			}
		case tokEnd:
			s.dataEnded = true
			s.hdr.lineStart = len(s.hdr.buf)
			s.endCapture()
			return n
		}
	}
	return n
}

// endCapture judges the message once its header section is complete:
// hdr.section() is the section, the rest of hdr.buf the start of the body.
func (s *Session) endCapture() {
	s.sectionLen = s.hdr.lineStart
	s.tx.HeaderBytes = s.sectionLen
	v, ok := s.judge()
	switch {
	case !ok:
		s.tx.Outcome = OutcomeCheckFailed
		s.rejectLocal([]byte(replyCheckFailed), true)
		return
	case v.Loop && !s.cfg.DryRun:
		s.tx.Outcome, s.tx.LoopRecipient = OutcomeLoop, v.Recipient
		s.rejectLocal([]byte(loopReply(v.Recipient)), true)
		return
	case v.Loop:
		s.tx.Outcome, s.tx.LoopRecipient = OutcomeDryRunLoop, v.Recipient
	default:
		s.tx.Outcome = OutcomePass
	}
	if s.upInData {
		s.upOut = s.enc.encodeCaptured(s.upOut, s.hdr.buf)
		s.afterCaptureFlushed()
		return
	}
	s.upOut = append(s.upOut, "DATA\r\n"...)
	s.await(stData354)
}

// judge runs the verdict; a panic in it is reported, not fatal.
func (s *Session) judge() (v loopcheck.Verdict, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s.event(Event{Kind: EventCheckFailed, Reason: fmt.Sprint(r)})
			ok = false
		}
	}()
	return s.check(s.tx.Recipients, s.hdr.buf[:s.sectionLen]), true
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

// afterCaptureFlushed continues once the captured bytes went upstream.
func (s *Session) afterCaptureFlushed() {
	if s.hdr.buf != nil && cap(s.hdr.buf) > keepBufferCap {
		s.hdr.buf = nil
	}
	if s.dataEnded {
		s.upOut = s.enc.end(s.upOut)
		s.await(stDataReply)
		return
	}
	s.st = stStream
	s.restartClient = true
}

func (s *Session) streamInput(p []byte) int {
	n := 0
	for n < len(p) && len(s.upOut) < maxStreamOutput {
		// Copied output stays within maxStreamOutput; lent input is the
		// caller's buffer, so a loan may take all of it.
		room := min(len(p), n+maxStreamOutput-len(s.upOut))
		if s.cfg.LendInput && s.upLent == nil {
			room = len(p)
		}
		if pass, read := verbatimRun(&s.dec, &s.enc, p[n:room]); read > 0 {
			s.tx.Size += int64(pass)
			if s.cfg.LendInput && s.upLent == nil && pass > 0 {
				// Nothing may follow lent input until it is taken.
				loan, end := p[n:n+pass], n+read
				if s.dec.atLineStart() && bytes.HasPrefix(p[end:], endOfData) {
					// The end of data right after them reads and frames
					// the same: it goes in the same loan (read is pass
					// at a line start).
					end += len(endOfData)
					loan = p[n:end]
					s.dec.finish()
					s.dataEnded = true
					s.await(stDataReply)
				}
				s.upLent = slices.Clip(loan)
				return end
			}
			s.upOut = append(s.upOut, p[n:n+pass]...)
			n += read
			continue
		}
		tok, k := s.dec.next(p[n:])
		n += k
		switch tok.kind {
		case tokContent:
			s.tx.Size += int64(len(tok.content))
			s.upOut = s.enc.content(s.upOut, tok.content)
		case tokLineEnd:
			s.tx.Size += 2
			if tok.bareLF && s.cfg.BareLF == BareLFReject {
				s.rejectBareLF()
				return n
			}
			s.upOut = s.enc.lineEnd(s.upOut)
		case tokEnd:
			s.dataEnded = true
			s.upOut = s.enc.end(s.upOut)
			s.await(stDataReply)
			return n
		}
	}
	return n
}

func (s *Session) drainInput(p []byte) int {
	n := 0
	for n < len(p) {
		if s.dec.atLineStart() {
			if k := verbatimLines(p[n:]); k > 0 {
				s.tx.Size += int64(k)
				n += k
				continue
			}
		}
		tok, k := s.dec.next(p[n:])
		n += k
		switch tok.kind {
		case tokContent:
			s.tx.Size += int64(len(tok.content))
		case tokLineEnd:
			s.tx.Size += 2
		case tokEnd:
			s.dataEnded = true
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
	s.tx.Outcome = OutcomeHeaderTooLarge
	s.tx.HeaderBytes = len(s.hdr.buf) + extra
	s.rejectLocal([]byte(replyHeaderTooBig), true)
}

func (s *Session) rejectBareLF() {
	s.tx.Outcome = OutcomeBareLF
	s.rejectLocal([]byte(replyBareLF), true)
}

// rejectLocal gives reply as the end-of-data reply once the client's data
// is over, the upstream not having taken the message. An upstream that
// already reads message data cannot be stopped cleanly: it is closed
// without the final dot, so nothing is delivered. Otherwise RSET follows
// when rset is set, so both sides agree the transaction is over.
func (s *Session) rejectLocal(reply []byte, rset bool) {
	if s.upInData {
		s.markGone("closed by the proxy to abort a rejected message")
	}
	s.finalReply = append(s.finalReply[:0], reply...)
	s.rsetAfter = rset && !s.upGone
	if s.dataEnded {
		s.finishLocal()
		return
	}
	s.st = stDrain
	s.restartClient = true
}

// finishLocal gives the held end-of-data reply after the data is drained.
func (s *Session) finishLocal() {
	s.clientOut = append(s.clientOut, s.finalReply...)
	first, _, _ := bytes.Cut(s.finalReply, []byte("\r\n"))
	s.endTx(string(first))
	if len(s.finalReply) >= 3 && string(s.finalReply[:3]) == "421" {
		s.closeWith("", "upstream 421")
		return
	}
	if s.rsetAfter && !s.upGone {
		s.upOut = append(s.upOut, "RSET\r\n"...)
		s.await(stRSET)
		return
	}
	s.toCommand()
}

func (s *Session) endTx(reply string) {
	s.tx.Reply = reply
	tx := s.tx
	s.event(Event{Kind: EventTxEnd, Tx: &tx})
	s.tx = Transaction{}
	s.clearTx()
	s.upInData = false
	if cap(s.hdr.buf) > keepBufferCap {
		s.hdr.buf = nil
	}
}

// abortTx reports a message cut short by the end of the session.
func (s *Session) abortTx(why string) {
	switch s.st {
	case stCapture, stData354, stStream, stDataReply, stDrain:
		s.tx.Outcome = OutcomeAborted
		s.tx.Reply = why
		tx := s.tx
		s.event(Event{Kind: EventTxEnd, Tx: &tx})
	}
}

// ---- failures ----

// upstreamFailed handles the loss of the upstream (closed, reset, timed
// out, or a protocol error), as fits the current state.
func (s *Session) upstreamFailed(kind UpstreamFailure, why string) {
	s.upFailEvent(kind, why)
	switch s.st {
	case stConnecting, stGreeting:
		s.upGone = true
		s.closeWith(fmt.Sprintf("421 4.4.1 upstream %s %s before its greeting\r\n", s.cfg.UpstreamName, why), "upstream failed before greeting")
	case stReply:
		s.upGone = true
		s.closeWith(fmt.Sprintf("421 4.4.2 upstream %s %s\r\n", s.cfg.UpstreamName, why), "upstream failed")
	case stCapture, stData354, stStream:
		s.markGone(why)
		if s.tx.Outcome == OutcomeUnknown || s.tx.Outcome == OutcomePass || s.tx.Outcome == OutcomeDryRunLoop {
			s.tx.Outcome = OutcomeUpstreamFailed
		}
		s.rejectLocal([]byte(fmt.Sprintf("451 4.4.2 upstream %s %s\r\n", s.cfg.UpstreamName, why)), false)
	case stDataReply:
		s.markGone(why)
		s.tx.Outcome = OutcomeUpstreamFailed
		s.clientOut = append(s.clientOut, fmt.Sprintf("451 4.4.2 upstream %s %s\r\n", s.cfg.UpstreamName, why)...)
		s.endTx(fmt.Sprintf("451 4.4.2 upstream %s %s", s.cfg.UpstreamName, why))
		s.toCommand()
	case stDrain:
		// The held reply stands (the message is refused either way); no
		// RSET can follow.
		s.markGone(why)
		s.rsetAfter = false
	case stRSET:
		s.markGone(why)
		s.toCommand()
	default:
		// Between commands: the next command learns of it.
		s.markGone(why)
	}
}

// markGone retires the upstream connection; the next command gets 421.
func (s *Session) markGone(why string) {
	if !s.upGone {
		s.upGone = true
		s.upReason = why
		s.dropUpstreamOutput() // unsent content must not follow
	}
}

func (s *Session) upFailEvent(kind UpstreamFailure, why string) {
	s.event(Event{Kind: EventUpstreamError, Failure: kind, Reason: why})
}

// quitUpstream says goodbye to an upstream idle between commands.
func (s *Session) quitUpstream() {
	if !s.upGone && s.st == stCommand {
		s.upOut = append(s.upOut, "QUIT\r\n"...)
		s.upQuit = true
	}
	s.upGone = true
}

func (s *Session) closeWith(reply, why string) {
	s.clientOut = append(s.clientOut, reply...)
	if !s.upGone {
		s.upGone = true
		s.dropUpstreamOutput()
	}
	s.done = true
	s.st = stClosed
	if s.end == "" {
		s.end = why
	}
}

func (s *Session) event(e Event) { s.events = append(s.events, e) }

// after brings the timers up to date with the state.
func (s *Session) after() {
	var want TimerKind
	switch s.st {
	case stCommand:
		want = TimerClientCommand
	case stCapture, stStream, stDrain:
		want = TimerClientData
	}
	if want != s.timers.Client || (s.restartClient && want != TimerNone) {
		s.timers.Client = want
		s.timers.ClientGen++
	}
	s.restartClient = false
	s.timers.Upstream = s.awaitingUpstream() && !s.done
}
