package milter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// Defaults and limits. Postfix's parameters they are set against are
// named beside them.
const (
	// DefaultMaxSessions bounds concurrent milter sessions. Postfix opens
	// one per SMTP session of each smtpd that has the milter, so this is
	// the number of SMTP clients checked at once (the proxy's default
	// too). A connection over it is closed at once; Postfix then applies
	// milter_default_action to that SMTP session.
	DefaultMaxSessions = 1000
	// DefaultMaxHeaderBytes bounds the header bytes kept per message (the
	// Delivered-To: fields and any malformed field; see section), the
	// proxy's header limit.
	DefaultMaxHeaderBytes = 1 << 20
	// DefaultIdleTimeout bounds the wait for the MTA's next event. Postfix
	// holds a milter session for a whole SMTP session and sends events
	// only at some commands; a client may keep its session alive with
	// NOOPs for much longer than smtpd_timeout (300 s) per command. Half
	// an hour frees the session of a peer that went away without closing,
	// long after a working SMTP session has sent its next event.
	DefaultIdleTimeout = 30 * time.Minute
	// DefaultWriteTimeout bounds writing a reply: Postfix waits
	// milter_command_timeout (30 s) for one, so a later one is lost anyway.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultDrainTimeout bounds graceful shutdown, as the proxy's.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultExpandWait bounds the wait at end of message for recipient
	// expansions still running (Expander); they started at each RCPT
	// event, so most are done by then. It is the proxy's and the
	// command's -expansion-wait default (expand.DefaultWait), short
	// against milter_content_timeout (300 s), within which Postfix must
	// have the reply, and against the client's wait for the end-of-data
	// reply. A recipient whose expansion is not done by then is judged as
	// spelled.
	DefaultExpandWait = 5 * time.Second
	// MaxPacketBytes bounds one milter packet, and so what one read may
	// allocate. Postfix's largest event is a header field, at most
	// header_size_limit (default 100 KiB) long; 2 MiB leaves room for a
	// site that raised it twentyfold. A larger packet ends the session
	// as malformed.
	MaxPacketBytes = 2 << 20
	// MinHeaderBytes is the smallest MaxHeaderBytes accepted: room for a
	// few Delivered-To: fields of ordinary length.
	MinHeaderBytes = 4 << 10
)

// LoopAction is what a message that loops gets.
type LoopAction uint8

const (
	// Reject refuses the whole message at end of data: "554 5.4.6 mail
	// forwarding loop for <recipient>", the proxy's reply.
	Reject LoopAction = iota
	// DropRecipient removes only the looping recipients (SMFIR_DELRCPT)
	// and lets the message go to the others. Postfix removes a recipient
	// with everything it expanded to, so a recipient is removed only when
	// every address of its expansion loops (loopcheck.Match.Whole, which
	// needs an Expander); when that does not hold for a looping
	// recipient, or every recipient loops, it rejects as Reject does. A
	// dropped recipient gets no notice, nor does the sender.
	DropRecipient
)

// String is the flag spelling: reject or drop-recipient.
func (a LoopAction) String() string {
	switch a {
	case Reject:
		return "reject"
	case DropRecipient:
		return "drop-recipient"
	}
	return fmt.Sprintf("LoopAction(%d)", uint8(a))
}

// ParseLoopAction reads the flag spelling.
func ParseLoopAction(s string) (LoopAction, error) {
	switch s {
	case "reject":
		return Reject, nil
	case "drop-recipient":
		return DropRecipient, nil
	}
	return 0, fmt.Errorf("loop action %q: want reject or drop-recipient", s)
}

// Expander starts the expansion of a recipient when the MTA reports it
// (the RCPT event), so that lookups run while the client sends the
// message. rcptArg is the RCPT TO: argument, parameters included. It
// returns the function that waits for the result at end of message: the
// recipient to judge, loopcheck.NewRecipient(rcptArg) extended with
// Recipient.WithExpansion, or as spelled when the expansion failed or ctx
// ended first. wait must return by ctx's end. Every started expansion is
// waited for exactly once: at end of message, or with ctx already done
// when the message is aborted, so the expander can release what it holds.
type Expander func(rcptArg string) (wait func(ctx context.Context) loopcheck.Recipient)

// Policy is what a Server does with a message. Server.Reload replaces it
// while the server runs; a message is judged by the policy in force at
// its MAIL event.
type Policy struct {
	// LoopAction is what a looping message gets.
	LoopAction LoopAction
	// DryRun logs the verdict and lets every message pass unchanged.
	DryRun bool
	// ExemptClients are SMTP clients (by the address of the connect
	// event) whose messages are never judged: re-injection paths such as
	// fetchmail or an archive restore, which carry old Delivered-To:
	// fields legitimately. nil exempts nobody.
	ExemptClients *allowlist.List
	// ExemptSASL exempts messages of SASL-authenticated clients (the
	// {auth_authen} macro is set): submissions.
	ExemptSASL bool
	// Expander, when set, expands each recipient (Postfix's rewriting)
	// so that a loop through an alias is found too; nil judges the
	// recipients as spelled.
	Expander Expander
}

func (p *Policy) check() error {
	switch p.LoopAction {
	case Reject, DropRecipient:
		return nil
	}
	return fmt.Errorf("unknown loop action %d", p.LoopAction)
}

// Config configures a Server. Zero durations and limits take the defaults.
type Config struct {
	Policy Policy
	// AllowClients are the peers allowed to connect (the MTA's hosts);
	// nil means allowlist.Loopback(). A refused peer is closed before any
	// milter exchange. Unix-domain peers are always allowed.
	AllowClients *allowlist.List

	MaxSessions    int
	MaxHeaderBytes int
	IdleTimeout    time.Duration
	WriteTimeout   time.Duration
	DrainTimeout   time.Duration
	ExpandWait     time.Duration

	// Logger receives session, message and error logs; nil discards.
	Logger *slog.Logger
	// Observer is told what the sessions do, for metrics; nil means none.
	Observer Observer
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	def(&c.DrainTimeout, DefaultDrainTimeout)
	def(&c.ExpandWait, DefaultExpandWait)
	if c.MaxSessions <= 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.AllowClients == nil {
		c.AllowClients = allowlist.Loopback()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
}

// Outcome is what became of a message that reached its end.
type Outcome uint8

const (
	OutcomePass        Outcome = iota + 1 // no loop
	OutcomeLoop                           // a loop, rejected with 554 5.4.6
	OutcomeDropped                        // a loop for some recipients, removed; delivered to the rest
	OutcomeDryRunLoop                     // a loop, passed under DryRun
	OutcomeExempt                         // not judged: an exempt client or SASL user
	OutcomeCheckFailed                    // the check failed; tempfailed
	// OutcomeDropFailed: a loop for some recipients whose removal could
	// not be sent (the connection to the MTA failed); the session ended
	// and the MTA applied its milter_default_action to the message.
	OutcomeDropFailed
)

// String is the verdict as logged.
func (o Outcome) String() string {
	switch o {
	case OutcomePass:
		return "pass"
	case OutcomeLoop:
		return "loop"
	case OutcomeDropped:
		return "dropped"
	case OutcomeDryRunLoop:
		return "dry-run-loop"
	case OutcomeExempt:
		return "exempt"
	case OutcomeCheckFailed:
		return "check-failed"
	case OutcomeDropFailed:
		return "drop-failed"
	}
	return "unknown"
}

// EndReason is why a session ended.
type EndReason uint8

const (
	EndClosed   EndReason = iota // the MTA ended it (QUIT or close)
	EndShutdown                  // closed by a graceful shutdown
	EndTimeout                   // the MTA was silent for IdleTimeout, or a write timed out
	EndProtocol                  // a malformed or truncated packet, or a failed negotiation
	EndIO                        // reading or writing failed
	EndPanic                     // a bug in a handler; the session was closed
)

// String names the reason, for logs and metric labels.
func (r EndReason) String() string {
	switch r {
	case EndClosed:
		return "closed"
	case EndShutdown:
		return "shutdown"
	case EndTimeout:
		return "timeout"
	case EndProtocol:
		return "protocol-error"
	case EndIO:
		return "io-error"
	case EndPanic:
		return "panic"
	}
	return "unknown"
}

// Observer is the server's one hook for metrics. Its methods are called
// from every session's goroutine, concurrently: an implementation must be
// safe for concurrent use, cheap, and must never block.
type Observer interface {
	// SessionStarted and SessionEnded bracket every session.
	SessionStarted()
	SessionEnded(r EndReason)
	// PeerRefused counts a connection from a peer outside AllowClients;
	// SessionRefused one over MaxSessions. Neither was a session.
	PeerRefused()
	SessionRefused()
	// MessageJudged reports a message at its end; d runs from its first
	// header event to the reply.
	MessageJudged(o Outcome, d time.Duration)
	// RecipientsDropped counts the recipients removed from a message.
	RecipientsDropped(n int)
	// HeaderTruncated counts a message judged on part of its header
	// (MaxHeaderBytes).
	HeaderTruncated()
	// AcceptShortage counts a connection the server could not accept for
	// want of file descriptors (EMFILE, ENFILE); it retries.
	AcceptShortage()
}

// NopObserver is the Observer of a Config without one: it does nothing.
// Embed it to implement only some of the methods.
type NopObserver struct{}

func (NopObserver) SessionStarted()                      {}
func (NopObserver) SessionEnded(EndReason)               {}
func (NopObserver) PeerRefused()                         {}
func (NopObserver) SessionRefused()                      {}
func (NopObserver) MessageJudged(Outcome, time.Duration) {}
func (NopObserver) RecipientsDropped(int)                {}
func (NopObserver) HeaderTruncated()                     {}
func (NopObserver) AcceptShortage()                      {}
