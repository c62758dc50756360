package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// Protocol options the session asks for, each only when the MTA offers it
// (negotiate). The check needs the connect event (exemptions), MAIL (the
// sender and {auth_authen}), RCPT, the header fields and end of message;
// it replies only at end of message. So no HELO, DATA, unknown-command or
// body events, no reply to any other event, and the header values exactly
// as stored (the leading space kept). A message then costs one round trip:
// the MTA writes its events and waits only for the end-of-message reply.
const wantProtocol = gomilter.OptNoHelo | gomilter.OptNoData | gomilter.OptNoUnknown | gomilter.OptNoBody |
	gomilter.OptNoConnReply | gomilter.OptNoHeloReply | gomilter.OptNoMailReply | gomilter.OptNoRcptReply |
	gomilter.OptNoDataReply | gomilter.OptNoUnknownReply | gomilter.OptNoHeaderReply | gomilter.OptNoEOHReply |
	gomilter.OptNoBodyReply | gomilter.OptHeaderLeadingSpace

// wantActions are the modifications the session may make: remove a
// recipient (drop-recipient), and name the macros it wants.
const wantActions = gomilter.OptRemoveRcpt | gomilter.OptSetMacros

// errPanic marks a session ended by a panic in a handler.
var errPanic = errors.New("panic in the milter handler")

// replyCheckFailed is the proxy's reply when the check itself fails.
const replyCheckFailed = "4.3.0 loop check failed, try again later"

// session is one milter connection: go-milter's backend for it. go-milter
// calls its methods from the session's one goroutine, in protocol order.
type session struct {
	gomilter.NoOpMilter // the events not negotiated

	srv     *Server
	id      string
	log     *slog.Logger
	conn    *guardConn
	started time.Time
	failure error // why negotiation failed, when it did

	actions gomilter.OptAction // negotiated

	// The SMTP client, from the connect event.
	client     string
	clientAddr netip.Addr // invalid for a non-IP client

	// The message, from MAIL to end of message or abort.
	inMessage bool
	policy    *Policy
	sender    string
	sasl      bool
	rcpts     []recipient
	hdr       section
	hdrStart  time.Time
}

// keepRecipients is the most recipient slots a session keeps once a
// message has ended: enough for most messages to reuse them, while the
// slots of a message with hundreds of recipients are dropped, so an idle
// session stays small.
const keepRecipients = 16

// recipient is one RCPT event.
type recipient struct {
	token  string                                        // the address as go-milter gives it (brackets removed)
	arg    string                                        // the RCPT TO: argument it stands for (rcptArg)
	mailer string                                        // {rcpt_mailer}: the transport Postfix resolved it to
	wait   func(ctx context.Context) loopcheck.Recipient // the expansion, until waited for
	judged loopcheck.Recipient
}

// negotiate takes what the session wants of what the MTA offers; nothing
// is required, so any MTA that speaks version 2 or later is served (with
// fewer options, more round trips).
func (s *session) negotiate(mtaVersion, _ uint32, mtaActions, _ gomilter.OptAction, mtaProtocol, _ gomilter.OptProtocol, _ gomilter.DataSize) (uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize, error) {
	if mtaVersion < 2 {
		s.failure = &ProtocolError{Msg: fmt.Sprintf("negotiation: the MTA speaks milter protocol version %d; 2 or later is needed", mtaVersion)}
		return 0, 0, 0, 0, s.failure
	}
	version := min(mtaVersion, gomilter.MaxServerProtocolVersion)
	return version, wantActions & mtaActions, wantProtocol & mtaProtocol, gomilter.DataSize64K, nil
}

// newBackend is go-milter's constructor, called after negotiation.
func (s *session) newBackend(version uint32, actions gomilter.OptAction, protocol gomilter.OptProtocol, _ gomilter.DataSize) gomilter.Milter {
	s.actions = actions
	s.log.Debug("negotiated", "version", version, "actions", actions.String(), "protocol", protocol.String())
	if actions&gomilter.OptRemoveRcpt == 0 && s.srv.policy.Load().LoopAction == DropRecipient {
		s.log.Warn("the MTA does not let this milter remove recipients (SMFIF_DELRCPT); a loop is rejected instead of dropped")
	}
	return s
}

// guard turns a panic in a handler into the end of the session, logged
// with its stack: the process goes on serving the other sessions.
func (s *session) guard(err *error) {
	if p := recover(); p != nil {
		s.log.Error("milter handler failed", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		s.conn.setEnd(fmt.Errorf("%w: %v", errPanic, p))
		*err = errPanic
	}
}

func (s *session) NewConnection(gomilter.Modifier) error {
	s.endMessage()
	s.client, s.clientAddr = "", netip.Addr{}
	return nil
}

func (s *session) Connect(host, family string, _ uint16, addr string, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&err)
	s.client = host
	if a, perr := netip.ParseAddr(addr); perr == nil && (family == "tcp4" || family == "tcp6") {
		s.clientAddr = a.Unmap()
		s.client = host + "[" + s.clientAddr.String() + "]"
	}
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from, _ string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&err)
	s.endMessage()
	s.beginMessage()
	s.sender = from
	s.sasl = m.Get(gomilter.MacroAuthAuthen) != ""
	return gomilter.RespContinue, nil
}

// beginMessage starts a message, with the policy in force now.
func (s *session) beginMessage() {
	s.inMessage = true
	s.policy = s.srv.policy.Load()
	s.hdr.reset(s.srv.cfg.MaxHeaderBytes)
	s.hdrStart = time.Time{}
}

// exempt says why the message is not judged ("" when it is).
func (s *session) exempt() string {
	switch {
	case s.clientAddr.IsValid() && s.policy.ExemptClients.Contains(s.clientAddr):
		return "client"
	case s.sasl && s.policy.ExemptSASL:
		return "sasl"
	}
	return ""
}

func (s *session) RcptTo(rcpt, esmtpArgs string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&err)
	if !s.inMessage {
		s.beginMessage() // an MTA that sends no MAIL event
	}
	r := recipient{token: rcpt, arg: rcptArg(rcpt, esmtpArgs), mailer: m.Get(gomilter.MacroRcptMailer)}
	if s.policy.Expander != nil && s.exempt() == "" {
		r.wait = s.startExpansion(r.arg)
	}
	s.rcpts = append(s.rcpts, r)
	return gomilter.RespContinue, nil
}

// startExpansion calls the expander; a panic in it leaves the recipient
// judged as spelled.
func (s *session) startExpansion(arg string) (wait func(context.Context) loopcheck.Recipient) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("recipient expansion failed; judging the recipient as spelled", "recipient", arg, "panic", fmt.Sprint(p))
			wait = nil
		}
	}()
	return s.policy.Expander(arg)
}

func (s *session) Header(name, value string, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&err)
	if !s.inMessage {
		s.beginMessage()
	}
	if s.hdrStart.IsZero() {
		s.hdrStart = time.Now()
	}
	s.hdr.add(name, value, s.rcpts)
	return gomilter.RespContinue, nil
}

func (s *session) Headers(gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (s *session) BodyChunk(_ []byte, m gomilter.Modifier) (*gomilter.Response, error) {
	// Sent only by an MTA that did not take OptNoBody.
	if m.Protocol()&gomilter.OptSkip != 0 {
		return gomilter.RespSkip, nil
	}
	return gomilter.RespContinue, nil
}

func (s *session) Abort(gomilter.Modifier) error {
	s.endMessage()
	return nil
}

func (s *session) Cleanup(gomilter.Modifier) {
	s.endMessage()
}

// release ends what the session still holds; called when it has ended.
func (s *session) release() { s.endMessage() }

// endMessage forgets the message, first releasing expansions never
// waited for (the wait with a done context).
func (s *session) endMessage() {
	var done context.Context
	for i := range s.rcpts {
		if s.rcpts[i].wait == nil {
			continue
		}
		if done == nil {
			c, cancel := context.WithCancel(context.Background())
			cancel()
			done = c
		}
		s.waitExpansion(done, &s.rcpts[i])
	}
	clear(s.rcpts)
	s.rcpts = s.rcpts[:0]
	if cap(s.rcpts) > keepRecipients {
		s.rcpts = nil
	}
	s.hdr.release()
	s.inMessage = false
	s.policy = nil
	s.sender = ""
	s.sasl = false
}

// waitExpansion waits for r's expansion once; a recipient whose expansion
// failed, gave nothing or panicked is judged as spelled.
func (s *session) waitExpansion(ctx context.Context, r *recipient) {
	wait := r.wait
	r.wait = nil
	r.judged = loopcheck.NewRecipient(r.arg)
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("recipient expansion failed; judging the recipient as spelled", "recipient", r.judged.Mailbox, "panic", fmt.Sprint(p))
		}
	}()
	if got := wait(ctx); got.Mailbox != "" {
		r.judged = got
	}
}

func (s *session) EndOfMessage(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&err)
	if !s.inMessage {
		s.beginMessage()
	}
	defer s.endMessage()
	return s.judge(m)
}

// verdict is a message's judgement, for the reply and the log.
type verdict struct {
	outcome Outcome
	reply   string            // the SMTP reply given, "" when the message goes on
	loops   []loopcheck.Match // the looping recipients (Loops, or the first one)
	exempt  string
	// removalsSent counts the removals the MTA was sent before one
	// failed (OutcomeDropFailed).
	removalsSent int
	// Under DropRecipient, why the looping recipients are not removed
	// (dropAllowed when they are), and the recipient that stands in the
	// way.
	dropRefused    dropRefusal
	dropRefusedFor string
}

// judge decides the message, makes the modifications and returns the
// end-of-message reply.
func (s *session) judge(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	start := s.hdrStart
	if start.IsZero() {
		start = time.Now()
	}
	v, rcpts := s.check()
	defer func() { // v as it ended: a failed removal changes it
		s.logMessage(m, v, rcpts)
		s.srv.obs.MessageJudged(v.outcome, time.Since(start))
		if s.hdr.truncated {
			s.srv.obs.HeaderTruncated()
		}
	}()
	switch {
	case v.outcome == OutcomeCheckFailed && v.reply != "":
		return gomilter.RejectWithCodeAndReason(451, replyCheckFailed)
	case v.outcome == OutcomeLoop:
		return gomilter.RejectWithCodeAndReason(554, strings.TrimPrefix(v.reply, "554 "))
	case v.outcome == OutcomeDropped:
		// One removal per address: Postfix removes every recipient
		// stored under it.
		seen := make(map[string]bool, len(v.loops))
		for _, l := range v.loops {
			addr := removalAddr(s.rcpts[l.Index].token)
			if seen[addr] {
				continue
			}
			if err := m.DeleteRecipient(addr); err != nil {
				// What the MTA made of the removals sent before is not
				// known: it applies its default action to the message.
				err = fmt.Errorf("removing looping recipient %s: %w", addr, err)
				s.log.Error("a looping recipient could not be removed; the session ends and the MTA applies its milter_default_action to the message", "err", err)
				s.conn.setEnd(err)
				v.outcome, v.removalsSent = OutcomeDropFailed, len(seen)
				return nil, err
			}
			seen[addr] = true
		}
		s.srv.obs.RecipientsDropped(len(seen))
	}
	return gomilter.RespAccept, nil
}

// check judges the message: the verdict and the recipients as judged.
// When the check itself fails (a bug), a message that would pass whatever
// the verdict (DryRun, or exempt) passes, and any other gets the proxy's
// 451 4.3.0: a failure never refuses for good, and never lets a message
// the check was meant to stop through unjudged.
func (s *session) check() (v verdict, rcpts []loopcheck.Recipient) {
	exempt := s.exempt()
	defer func() {
		if p := recover(); p != nil {
			failOpen := exempt != "" || s.policy.DryRun
			what := "the message is tempfailed (451 4.3.0)"
			if failOpen {
				what = "the message passes unjudged (dry run or exempt)"
			}
			s.log.Error("loop check failed; "+what, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			v = verdict{outcome: OutcomeCheckFailed, exempt: exempt}
			if !failOpen {
				v.reply = "451 " + replyCheckFailed
			}
		}
	}()
	if h := s.srv.checkHook; h != nil {
		h()
	}
	// The expansions have run since their RCPT events; the waits share
	// one deadline.
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.ExpandWait)
	defer cancel()
	rcpts = make([]loopcheck.Recipient, len(s.rcpts))
	for i := range s.rcpts {
		r := &s.rcpts[i]
		if r.wait != nil {
			s.waitExpansion(ctx, r)
		} else if r.judged.Mailbox == "" {
			r.judged = loopcheck.NewRecipient(r.arg)
		}
		rcpts[i] = r.judged
	}
	sec := s.hdr.bytes()
	v.exempt = exempt
	// Under drop-recipient every looping recipient is wanted (also for
	// the dry run's log); otherwise the first.
	drop := s.policy.LoopAction == DropRecipient
	if drop {
		v.loops = loopcheck.Loops(rcpts, sec)
	} else if lv := loopcheck.CheckRecipients(rcpts, sec); lv.Loop {
		for i := range rcpts {
			if rcpts[i].Mailbox == lv.Recipient {
				v.loops = []loopcheck.Match{{Index: i, Via: lv.Via}}
				break
			}
		}
	}
	// Fields past the header limit count too, as spelled.
	var late []bool
	if s.hdr.truncated {
		v.loops, late = mergeLate(v.loops, s.hdr.lateHits(s.rcpts), drop)
	}
	if drop && len(v.loops) > 0 {
		v.dropRefused, v.dropRefusedFor = s.dropRefusal(v.loops, rcpts, late)
	}
	switch {
	case v.exempt != "":
		v.outcome = OutcomeExempt
	case len(v.loops) == 0:
		v.outcome = OutcomePass
	case s.policy.DryRun:
		v.outcome = OutcomeDryRunLoop
	case drop && v.dropRefused == dropAllowed:
		v.outcome = OutcomeDropped
	default:
		v.outcome = OutcomeLoop
		v.reply = loopReply(rcpts[v.loops[0].Index].Mailbox)
	}
	return v, rcpts
}

// dropRefusal is why the looping recipients of a message are not removed
// under DropRecipient, which then refuses the whole message as Reject
// does: the client, and so the sender, is told; nothing is lost silently.
type dropRefusal uint8

const (
	dropAllowed dropRefusal = iota
	// dropNotGranted: the MTA did not grant the remove-recipient action.
	dropNotGranted
	// dropEveryRecipient: every recipient loops; nothing would be left.
	dropEveryRecipient
	// dropExpansionUnknown: what a looping recipient expands to is not
	// known (no Expander, or its expansion failed or was late). Postfix
	// removes a recipient with everything it expanded to (a virtual
	// alias to several mailboxes, say), so removing it could lose mail
	// for an address that does not loop.
	dropExpansionUnknown
	// dropPartly: a looping recipient expands to an address that does
	// not loop (it loops as spelled, or through one of several addresses
	// of its expansion): removing it would lose that address's mail.
	dropPartly
	// dropHeaderTruncated: a recipient loops only through a field past
	// the header limit, judged as spelled: its expansion was not judged
	// by that field, so whether all of it loops is not known.
	dropHeaderTruncated
)

// String is the refusal as logged (drop_refused).
func (d dropRefusal) String() string {
	switch d {
	case dropAllowed:
		return ""
	case dropNotGranted:
		return "remove-not-granted"
	case dropEveryRecipient:
		return "every-recipient-loops"
	case dropExpansionUnknown:
		return "expansion-unknown"
	case dropPartly:
		return "partly-looping"
	case dropHeaderTruncated:
		return "header-truncated"
	}
	return "unknown"
}

// dropRefusal decides whether the looping recipients can be removed: only
// when the MTA allows it, some recipient is left, and every looping
// recipient loops in all it stands for (Match.Whole: every address
// Postfix delivers it to matched; the recipient as spelled counts only as
// one of those). Otherwise it names the reason and, but for the first
// two, the first looping recipient (in RCPT order) that stands in the
// way. late[i] says recipient i loops only through a field past the
// header limit.
func (s *session) dropRefusal(loops []loopcheck.Match, rcpts []loopcheck.Recipient, late []bool) (dropRefusal, string) {
	switch {
	case s.actions&gomilter.OptRemoveRcpt == 0:
		return dropNotGranted, ""
	case len(loops) == len(rcpts):
		return dropEveryRecipient, ""
	}
	for _, l := range loops {
		if l.Whole {
			continue
		}
		r := rcpts[l.Index]
		switch {
		case l.Index < len(late) && late[l.Index]:
			return dropHeaderTruncated, r.Mailbox
		case r.HasDeliveries():
			return dropPartly, r.Mailbox
		}
		return dropExpansionUnknown, r.Mailbox
	}
	return dropAllowed, ""
}

// loopReply is the proxy's reply to a loop (smtpproxy/core), without CRLF.
func loopReply(rcpt string) string {
	if rcpt == "" {
		return "554 5.4.6 mail forwarding loop"
	}
	return "554 5.4.6 mail forwarding loop for " + sanitize(rcpt)
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

// maxLoggedRecipients bounds the recipients a transaction line lists,
// as the proxy's line does; recipients_total then gives their number. A
// message may have any number of recipients (Postfix's
// smtpd_recipient_limit is 1000 by default and may be raised), while
// journald cuts lines at 48 KiB by default (LineMax=): a line should
// stay whole.
const maxLoggedRecipients = 100

// logMessage writes the message's line, shaped as the proxy's transaction
// line, and one line per dropped recipient.
func (s *session) logMessage(m gomilter.Modifier, v verdict, rcpts []loopcheck.Recipient) {
	level := slog.LevelInfo
	if v.outcome == OutcomeCheckFailed || v.outcome == OutcomeDropFailed {
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !s.log.Enabled(ctx, level) {
		return
	}
	qid := m.Get(gomilter.MacroQueueId)
	names := make([]string, min(len(rcpts), maxLoggedRecipients))
	for i := range names {
		names[i] = rcpts[i].Mailbox
	}
	attrs := []any{
		"client", s.client,
		"queue_id", qid,
		"sender", mailbox(s.sender),
		"recipients", names,
	}
	if len(rcpts) > len(names) {
		attrs = append(attrs, "recipients_total", len(rcpts))
	}
	attrs = append(attrs, "verdict", v.outcome.String())
	if v.reply != "" {
		attrs = append(attrs, "reply", v.reply)
	}
	attrs = append(attrs, "header_bytes", s.hdr.rawBytes())
	if s.hdr.truncated {
		attrs = append(attrs, "header_truncated", true)
	}
	if v.exempt != "" {
		attrs = append(attrs, "exempt", v.exempt)
	}
	if v.outcome == OutcomeDropFailed {
		attrs = append(attrs, "removals_sent", v.removalsSent)
	}
	if v.dropRefused != dropAllowed {
		attrs = append(attrs, "drop_refused", v.dropRefused.String())
		if v.dropRefusedFor != "" {
			attrs = append(attrs, "drop_refused_recipient", v.dropRefusedFor)
		}
	}
	if len(v.loops) > 0 {
		first := v.loops[0]
		attrs = append(attrs, "loop_recipient", rcpts[first.Index].Mailbox)
		if first.Via != "" {
			attrs = append(attrs, "loop_via", first.Via)
		}
	}
	if !s.hdrStart.IsZero() {
		attrs = append(attrs, "duration", time.Since(s.hdrStart).Round(time.Millisecond))
	}
	s.log.Log(ctx, level, "transaction", attrs...)
	if v.outcome != OutcomeDropped && !(v.outcome == OutcomeDryRunLoop && s.policy.LoopAction == DropRecipient && v.dropRefused == dropAllowed) {
		return
	}
	seen := make(map[string]bool, len(v.loops))
	for _, l := range v.loops {
		r := s.rcpts[l.Index]
		addr := removalAddr(r.token)
		if seen[addr] {
			continue
		}
		seen[addr] = true
		msg := "recipient dropped"
		if v.outcome == OutcomeDryRunLoop {
			msg = "recipient would be dropped (dry run)"
		}
		a := []any{"queue_id", qid, "recipient", rcpts[l.Index].Mailbox}
		if l.Via != "" {
			a = append(a, "loop_via", l.Via)
		}
		if r.mailer != "" {
			a = append(a, "rcpt_mailer", r.mailer)
		}
		s.log.Log(ctx, level, msg, a...)
	}
}

// mailbox gives the sender for logs: "<>" for the null sender.
func mailbox(from string) string {
	if from == "" || from == "<>" {
		return "<>"
	}
	return from
}
