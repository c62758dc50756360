package smtpproxy

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// Defaults of SPEC section 6.
const (
	// DefaultConnectTimeout bounds the connection to the upstream.
	DefaultConnectTimeout = 30 * time.Second
	// DefaultReplyTimeout bounds every wait for an upstream reply and
	// every write to the upstream: below Postfix's smtpd_proxy_timeout
	// (100 s), so the client sees the proxy's own 451/421 rather than
	// Postfix's "queue file write error".
	DefaultReplyTimeout = 90 * time.Second
	// DefaultCommandTimeout bounds the wait for a client command line
	// (RFC 5321 4.5.3.2.7 asks for 5 minutes) and every write to the client.
	DefaultCommandTimeout = 300 * time.Second
	// DefaultDataIdleTimeout bounds the silence between two pieces of
	// message data (RFC 5321 4.5.3.2.5: 3 minutes per data block).
	DefaultDataIdleTimeout = 180 * time.Second
	// DefaultDrainTimeout bounds graceful shutdown.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultMaxSessions bounds concurrent sessions; each costs two
	// connections, two goroutines, two 4 KiB read buffers (one more of
	// 64 KiB while a header section is read, 256 KiB while a body
	// streams) and at most one header buffer.
	DefaultMaxSessions = 1000
	// DefaultExpansionWait bounds the wait at end of message for
	// recipient expansions still running (SPEC section 8): an expansion
	// started at RCPT time is normally done by then, and the wait stays
	// far below the upstream reply timeout and Postfix's
	// smtpd_proxy_timeout (100 s).
	DefaultExpansionWait = 5 * time.Second
	// DefaultMaxHeaderMemory bounds all header section buffers together:
	// 256 sessions holding maximal (1 MiB) header sections at once, while
	// typical ones (a few KiB) leave it nearly all free; with the shipped
	// unit's session limit and GOMEMLIMIT it keeps the process within
	// MemoryMax (docs/performance.md has the measurements).
	DefaultMaxHeaderMemory = 256 << 20
	// DefaultMaxHeaderBytes bounds the header section buffer per session.
	DefaultMaxHeaderBytes = core.DefaultMaxHeaderBytes
)

// rejectWriteTimeout bounds writing the "too many connections" reply: that
// connection is not a session and must not hold resources for long.
const rejectWriteTimeout = 10 * time.Second

// closeLinger and maxLingerBytes bound how long and how much a closing
// session keeps reading from its client so that its last reply is not lost
// to a TCP reset (see reader).
const (
	closeLinger    = 2 * time.Second
	maxLingerBytes = 1 << 20
)

// BareLFPolicy says what a bare LF in message data does.
type BareLFPolicy = core.BareLFPolicy

const (
	BareLFNormalize = core.BareLFNormalize
	BareLFReject    = core.BareLFReject
)

// Config configures a Server. Zero durations and limits take the defaults
// above.
type Config struct {
	// Upstream is the after-filter's address: host:port, [v6addr]:port
	// or unix:/path.
	Upstream string
	// Dial, when set, replaces dialing Upstream (tests use it to connect
	// the proxy to an in-memory upstream).
	Dial func(ctx context.Context) (net.Conn, error)

	ConnectTimeout  time.Duration
	ReplyTimeout    time.Duration
	CommandTimeout  time.Duration
	DataIdleTimeout time.Duration
	DrainTimeout    time.Duration
	MaxSessions     int
	MaxHeaderBytes  int
	// MaxHeaderMemory bounds the bytes all sessions' header sections
	// hold at once (DefaultMaxHeaderMemory); at least
	// core.HeaderCaptureMax(MaxHeaderBytes), what one section may need.
	MaxHeaderMemory int64

	// AllowClient lists the peers that may use the proxy; nil means
	// loopback only (allowlist.Loopback). An IP peer outside it gets
	// ReplyNotAllowed and is closed before the upstream is dialled:
	// the after-filter trusts whoever speaks through the proxy (its
	// mynetworks and smtpd_authorized_xforward_hosts hold the proxy's
	// address), so an outside peer could relay through it and forge the
	// client's identity with XFORWARD. Peers that are not IP (Unix-domain
	// sockets) are governed by the socket's file mode.
	AllowClient *allowlist.List

	// ExemptClients lists the SMTP clients whose messages are not judged,
	// by the address the front smtpd gives with XFORWARD ADDR (a session
	// without it is never exempt): re-injection paths such as fetchmail
	// or an archive restore, whose mail carries old Delivered-To: fields
	// legitimately. nil exempts nobody.
	ExemptClients *allowlist.List

	// DryRun logs loops and lets the messages pass.
	DryRun bool
	BareLF BareLFPolicy
	// DropEHLOKeywords are removed from the EHLO reply besides STARTTLS,
	// CHUNKING and BINARYMIME.
	DropEHLOKeywords []string
	// Check judges a message; nil means loopcheck.Check. Not used with
	// Expand.
	Check func(rcptArgs []string, section []byte) loopcheck.Verdict
	// Expand, when set, judges each recipient also by what Postfix
	// rewrites it to (SPEC section 8): called when the upstream accepts
	// a recipient, with its RCPT TO: argument, it starts the expansion
	// and returns the wait that gives the recipient to judge (with its
	// expansion, or as spelled when that is incomplete). The runtime
	// calls the wait at end of message, bounded by ExpansionWait and by
	// the drain deadline; it must never block past its context.
	Expand func(rcptArg string) (wait func(ctx context.Context) loopcheck.Recipient)
	// ExpansionWait bounds the wait for expansions still running at end
	// of message (DefaultExpansionWait).
	ExpansionWait time.Duration

	// Logger receives session, transaction and error logs; nil discards.
	Logger *slog.Logger
	// Observer is told what the sessions do, for metrics; nil means none.
	Observer Observer
	// DebugTrace, when set, is the prefix of per-session transcript files
	// (PREFIX.<id>) holding every byte both ways.
	DebugTrace string
}

// Observer is the runtime's one hook for metrics. Its methods are called
// from every session's goroutine, concurrently and on the relaying path:
// an implementation must be safe for concurrent use, cheap, and must never
// block (a slow observer would slow mail). The runtime, not the core, reads
// the clock for the durations.
type Observer interface {
	// SessionStarted and SessionEnded bracket every session.
	SessionStarted()
	SessionEnded()
	// SessionRefused counts a connection turned away with "421 4.3.2 too
	// many connections"; it never was a session.
	SessionRefused()
	// PeerRefused counts a connection from a peer outside AllowClient,
	// turned away with ReplyNotAllowed; it never was a session.
	PeerRefused()
	// TransactionEnded reports a message's end as it is logged: tx holds
	// the outcome and sizes, d runs from the client's DATA to the end (0
	// when the message never reached DATA in this session). tx is valid
	// only during the call.
	TransactionEnded(tx *core.Transaction, d time.Duration)
	// ResourceShortage reports that the proxy ran out of file descriptors
	// (EMFILE, ENFILE) at op: a local fault, never counted as the
	// upstream's.
	ResourceShortage(op ResourceOp)
	// HeaderMemory reports header memory taken from the budget (delta
	// positive) or given back (negative).
	HeaderMemory(delta int64)
	// UpstreamFailed reports an upstream failure by its kind.
	UpstreamFailed(kind core.UpstreamFailure)
	// UpstreamReplied reports how long the upstream took to answer, from
	// the moment the proxy began to wait (its command written) until the
	// reply was in. inData marks the waits of a message: the upstream's
	// answer to DATA and its end-of-data reply (the queue file write).
	UpstreamReplied(d time.Duration, inData bool)
	// Relayed reports octets written: toUpstream to the after-filter,
	// toClient to Postfix's front smtpd.
	Relayed(toUpstream, toClient int)
}

// ResourceOp says where the proxy ran short of a local resource.
type ResourceOp uint8

const (
	// ResourceAccept: accepting a client connection; the listener
	// backs off and retries.
	ResourceAccept ResourceOp = iota + 1
	// ResourceUpstreamConnect: opening the upstream connection; the
	// client gets "421 4.3.2".
	ResourceUpstreamConnect
)

func (o ResourceOp) String() string {
	switch o {
	case ResourceAccept:
		return "accept"
	case ResourceUpstreamConnect:
		return "upstream_connect"
	}
	return "unknown"
}

// nopObserver is the Observer of a Config without one.
type nopObserver struct{}

func (nopObserver) SessionStarted()                                   {}
func (nopObserver) SessionEnded()                                     {}
func (nopObserver) SessionRefused()                                   {}
func (nopObserver) PeerRefused()                                      {}
func (nopObserver) ResourceShortage(ResourceOp)                       {}
func (nopObserver) HeaderMemory(int64)                                {}
func (nopObserver) TransactionEnded(*core.Transaction, time.Duration) {}
func (nopObserver) UpstreamFailed(core.UpstreamFailure)               {}
func (nopObserver) UpstreamReplied(time.Duration, bool)               {}
func (nopObserver) Relayed(int, int)                                  {}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ConnectTimeout, DefaultConnectTimeout)
	def(&c.ReplyTimeout, DefaultReplyTimeout)
	def(&c.CommandTimeout, DefaultCommandTimeout)
	def(&c.DataIdleTimeout, DefaultDataIdleTimeout)
	def(&c.DrainTimeout, DefaultDrainTimeout)
	def(&c.ExpansionWait, DefaultExpansionWait)
	if c.MaxSessions <= 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.MaxHeaderMemory <= 0 {
		c.MaxHeaderMemory = DefaultMaxHeaderMemory
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.AllowClient == nil {
		c.AllowClient = allowlist.Loopback()
	}
}
