package core

// The Session: what it is configured with, what it holds, and its API,
// in the order a caller uses it: the inputs, then the outputs to take
// after each, then the queries. The work behind the inputs is in
// command.go (command mode and the replies to commands), message.go
// (message data), ending.go (failures and the end of the session) and
// timers.go (the clocks); states.go names the states the table in doc.go
// draws.

import (
	"fmt"

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
	// given to HandleClientData, to be written after what TakeUpstreamOutput
	// returned. The caller then leaves that input unchanged until it has
	// taken the outputs. Without it, TakeUpstreamOutput returns all.
	LendInput bool
	// AwaitRecipients: the caller gives the recipients a message is
	// judged by. Each recipient the upstream accepts is reported
	// (EventRecipientAccepted), so that the caller can start expanding it
	// (package expand) while the transaction goes on; once the header
	// section is read the session waits in state judge, taking no client
	// input and running no client clock, until the caller hands them over
	// (HandleRecipients), which it must do within its own bound. Check is
	// not used then. Without it the session judges the recipients as the
	// client spelled them, with Check.
	AwaitRecipients bool
	// Exempt, when set, says whether messages of a client are not judged
	// at all: given the client's address from XFORWARD ADDR as sent
	// ("" without XFORWARD), true lets its messages pass unjudged
	// (OutcomeExempt). Re-injection paths (fetchmail, an archive restore)
	// carry old Delivered-To: fields legitimately.
	Exempt func(clientAddr string) bool
	// MeterHeader makes the header section's buffer grow only by grants
	// from the caller, who keeps a budget for all sessions: before the
	// buffer would grow the session asks (HeaderMemoryWanted), taking no
	// client input until the caller answers (HandleHeaderMemory). The
	// buffer's capacity (HeaderMemoryHeld) is what it holds, granted.
	MeterHeader bool
}

// Session is one proxied SMTP session; see the package comment for how a
// caller drives it. A Session is not safe for concurrent use.
type Session struct {
	cfg   Config
	check CheckFunc

	st       state    // where the session is: the table in doc.go
	up       upstream // the upstream connection's condition
	upReason string   // why it was retired (upRetired), as a verb phrase after "upstream NAME"
	shutdown bool     // asked to end at the next transaction boundary
	end      string   // why the session ended

	// Outputs, until taken.
	clientOut, upOut []byte
	upLent           []byte // client input passed upstream as it is (LendInput)
	events           []Event
	timers           Timers
	restartClient    bool // the last input restarts the client clock

	// Command mode.
	lines    lineReader
	replies  replyReader
	pending  cmdKind // the command whose reply is awaited in stReply
	pendArg  string  // its argument (MAIL, RCPT, XFORWARD)
	saslNext bool    // the last reply was 334

	env                    envelope
	clientAddr, clientName string // from XFORWARD, for logs
	msg                    message

	onEnter func(from, to state) // tests: sees every change of state
}

// envelope is the transaction as the upstream's replies have made it
// (SPEC section 3).
type envelope struct {
	open   bool     // MAIL accepted, or message data begun, and the transaction not over
	sender string   // the MAIL FROM: argument as written
	rcpts  []string // the accepted RCPT TO: arguments as written
}

// message is the message being read, from the client's DATA to its
// end-of-data reply; startData sets it afresh, keeping its buffers.
type message struct {
	memWanted  int // the header buffer's capacity asked for (MeterHeader); 0: none
	dec        decoder
	enc        encoder
	hdr        headerCapture // the header section, then the start of the body
	sectionLen int           // length of the header section, once known
	ended      bool          // the client's end of data has been read
	finalReply []byte        // the end-of-data reply to give after draining
	rsetAfter  bool          // send RSET upstream after the final reply
	tx         Transaction
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

// ---- inputs ----

// HandleUpstreamConnected: the connection to the upstream is open.
func (s *Session) HandleUpstreamConnected() {
	if s.st != stConnecting {
		return
	}
	s.enter(stGreeting)
	s.after()
}

// HandleUpstreamConnectFailed: the upstream could not be reached; why is a
// short phrase such as "connection refused".
func (s *Session) HandleUpstreamConnectFailed(why string) {
	if s.st != stConnecting {
		return
	}
	s.upFailEvent(FailConnect, "connect: "+why)
	s.leaveUpstream()
	s.closeWith(fmt.Sprintf("421 4.4.1 upstream %s unreachable: %s\r\n", s.cfg.UpstreamName, why), "upstream unreachable")
	s.after()
}

// HandleLocalResourcesExhausted: the proxy itself could not open the
// upstream connection for want of a local resource (file descriptors); why
// names it. It is no upstream failure: the client gets "421 4.3.2" (RFC
// 3463: the system is not accepting messages now) and retries later.
func (s *Session) HandleLocalResourcesExhausted(why string) {
	if s.st != stConnecting {
		return
	}
	s.leaveUpstream()
	s.closeWith(fmt.Sprintf("421 4.3.2 proxy out of resources (%s), try again later\r\n", why), "out of local resources")
	s.after()
}

// HandleClientData offers bytes from the client and returns how many were
// consumed; the rest must be offered again once WantsClientInput is true.
func (s *Session) HandleClientData(p []byte) int {
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

// HandleUpstreamData offers bytes from the upstream, one read at a time; all are
// consumed. Bytes that follow a complete reply in the same call are
// unsolicited: the session writes one command and waits for its reply, and
// what it writes in answer to that reply leaves only after this call.
func (s *Session) HandleUpstreamData(p []byte) {
	for len(p) > 0 && !s.Done() && !s.up.gone() {
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
			if len(p) > 0 && !s.Done() && !s.up.gone() {
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

// HandleUpstreamClosed: the upstream connection ended or failed, on a read or
// a write, as end says.
func (s *Session) HandleUpstreamClosed(end UpstreamEnd) {
	if s.up == upQuit {
		s.up = upClosed // as a QUIT asked: it has closed first
	}
	if !s.up.gone() && !s.Done() {
		s.upstreamFailed(end.failure(), end.phrase())
	}
	s.after()
}

// HandleClientClosed: the client connection ended or failed. The upstream is
// closed; a message being streamed never gets its final dot.
func (s *Session) HandleClientClosed() {
	if s.Done() {
		return
	}
	s.abortTx("client closed the connection")
	if s.st == stCommand {
		s.quitUpstream()
	}
	s.closeWith("", "client closed the connection")
	s.after()
}

// HandleTimeout: a clock the session asked for ran out. Expiries of a kind
// that is no longer running are ignored.
func (s *Session) HandleTimeout(kind TimerKind) {
	switch {
	case s.Done():
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

// HandleShutdown asks the session to end: at once when it is between
// transactions, else after the end-of-data reply of the current one.
func (s *Session) HandleShutdown() {
	s.shutdown = true
	if s.st == stConnecting || s.st == stGreeting {
		s.leaveUpstream()
		s.closeWith(replyShutdown, "shutting down")
	}
	s.atBoundary()
	s.after()
}

// HandleDrainExpired: the shutdown drain time is over. The session ends now;
// a message cut short never gets a 2xx reply.
func (s *Session) HandleDrainExpired() {
	if !s.Done() {
		s.abortTx("shutdown drain time over")
		s.leaveUpstream()
		s.dropUpstreamOutput()
		s.closeWith(replyShutdown, "shutdown drain time over")
	}
	s.after()
}

// ---- outputs, to take after each input ----

// TakeUpstreamOutput returns the bytes to write to the upstream, valid
// until the next input (a Handle method).
func (s *Session) TakeUpstreamOutput() []byte { return take(&s.upOut) }

// TakeUpstreamLent returns the client input lent to the upstream (see
// Config.LendInput), to be written after TakeUpstreamOutput's bytes;
// always empty without LendInput.
func (s *Session) TakeUpstreamLent() []byte {
	b := s.upLent
	s.upLent = nil
	return b
}

// TakeClientOutput returns the bytes to write to the client, valid until
// the next input.
func (s *Session) TakeClientOutput() []byte { return take(&s.clientOut) }

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

// PollTimers returns the clocks the session wants running.
func (s *Session) PollTimers() Timers { return s.timers }

// ---- queries ----

// UpstreamGone reports that the upstream connection is no longer used:
// the caller writes what TakeUpstreamOutput returned, then closes it.
func (s *Session) UpstreamGone() bool { return s.up.gone() }

// UpstreamQuit reports, once UpstreamGone, whether the upstream was told
// QUIT (by the client, or by the session on its way out) and nothing has
// failed since: the upstream closes the connection itself, so the caller
// may wait for that before it closes its side, which leaves TCP's
// TIME_WAIT with the upstream, as with any SMTP client that quits.
func (s *Session) UpstreamQuit() bool { return s.up == upQuit }

// Done reports that the session is over: the caller writes the pending
// output, then closes both connections.
func (s *Session) Done() bool { return s.st == stClosed }

// EndReason says why the session ended, for logs.
func (s *Session) EndReason() string { return s.end }

// WantsClientInput reports whether HandleClientData would consume bytes now.
// While it is false the caller reads nothing more from the client: that
// is the backpressure that keeps a pipelined flood or a huge message out
// of memory.
func (s *Session) WantsClientInput() bool {
	switch s.st {
	case stCapture:
		return s.msg.memWanted == 0
	case stCommand, stDrain:
		return true
	case stStream:
		// Lent input must be taken before more output can follow it.
		return len(s.upOut) < maxStreamOutput && s.upLent == nil
	}
	return false
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
	case stCapture, stJudge, stDrain:
		return ReadingMessage
	}
	return ReadingCommands
}

// WantsRecipients reports that the session waits for the recipients to
// judge its message by (Config.AwaitRecipients): the caller gives them
// with HandleRecipients, one for each of the message's accepted
// recipients, in order.
func (s *Session) WantsRecipients() bool { return s.st == stJudge }

// HeaderMemoryWanted is the capacity, in bytes, the header section's
// buffer asks to grow to (Config.MeterHeader); 0 when it asks for none.
// The caller answers with HandleHeaderMemory.
func (s *Session) HeaderMemoryWanted() int {
	if s.st != stCapture {
		return 0
	}
	return s.msg.memWanted
}

// HeaderMemoryHeld is the capacity of the header section's buffer once it
// is over HeaderUnmetered, 0 for a smaller one. Past HeaderUnmetered the
// buffer grows only by grants (Config.MeterHeader), but append's own
// growth below it may overshoot it by a few KiB ungranted: the caller
// charges what it granted, and takes back into its budget only what the
// buffer gives up below that (it falls when the buffer is given up, and
// is read once the outputs of the input have been written).
func (s *Session) HeaderMemoryHeld() int {
	if c := cap(s.msg.hdr.buf); c > HeaderUnmetered {
		return c
	}
	return 0
}

// RecipientsToJudge are the RCPT TO: arguments of the message waiting for
// HandleRecipients, in order: the first len of them that the session
// reported (EventRecipientAccepted) since its last Index 0. Valid until the
// next input; nil when it waits for none.
func (s *Session) RecipientsToJudge() []string {
	if s.st != stJudge {
		return nil
	}
	return s.msg.tx.Recipients
}
