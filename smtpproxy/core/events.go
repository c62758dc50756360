package core

// What the session reports (Event, for logs and metrics: transactions and
// their outcomes, upstream failures by kind, local replies) and the typed
// values the caller reports to it (UpstreamEnd). Package metrics labels
// its counters with these kinds; no English phrase crosses the seam.

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventTxEnd: a message got its end-of-data reply, or was cut short.
	EventTxEnd EventKind = iota + 1
	// EventUpstreamError: the upstream failed; Reason says how.
	EventUpstreamError
	// EventLocalReply: the proxy answered a command itself; Reason is
	// the reply.
	EventLocalReply
	// EventCheckFailed: the loop check panicked; Reason is the panic.
	EventCheckFailed
	// EventDataStart: a message begins (the client's DATA was taken), for
	// the caller's duration measure.
	EventDataStart
	// EventRecipientAccepted: the upstream accepted a recipient
	// (Config.AwaitRecipients only): Reason is its RCPT TO: argument as
	// written, Index its place among the transaction's accepted
	// recipients (0 for the first, which starts a new list).
	EventRecipientAccepted
)

// Event is something the session reports for logs and metrics.
type Event struct {
	Kind    EventKind
	Tx      *Transaction    // EventTxEnd
	Failure UpstreamFailure // EventUpstreamError
	Index   int             // EventRecipientAccepted
	Reason  string
}

// UpstreamFailure is the kind of an upstream failure (EventUpstreamError),
// from a fixed set: what a counter is labelled with, where Event.Reason is
// free text for logs.
type UpstreamFailure uint8

const (
	FailUnknown  UpstreamFailure = iota // the zero value: not a failure the session reports
	FailConnect                         // the upstream could not be reached
	FailTimeout                         // it did not answer, or take a write, in time
	FailClosed                          // it closed, reset or broke the connection
	FailProtocol                        // it answered out of turn or malformed, or refused RSET
)

// UpstreamFailures lists the kinds the session reports, in order.
func UpstreamFailures() []UpstreamFailure {
	return []UpstreamFailure{FailConnect, FailTimeout, FailClosed, FailProtocol}
}

func (f UpstreamFailure) String() string {
	switch f {
	case FailConnect:
		return "connect"
	case FailTimeout:
		return "timeout"
	case FailClosed:
		return "closed"
	case FailProtocol:
		return "protocol"
	}
	return "unknown"
}

// UpstreamEnd says how the upstream connection ended, as the caller saw it
// on a read or a write (HandleUpstreamClosed). The session names it in the reply
// to the client, so no error text of the caller's reaches the client.
type UpstreamEnd uint8

const (
	EndClosed   UpstreamEnd = iota // it closed the connection (end of input, broken pipe)
	EndReset                       // it reset the connection
	EndTimedOut                    // a read or a write ran past its deadline
	EndBroken                      // any other failure of the connection
)

// phrase says what the upstream did, as a verb phrase after "upstream
// NAME" in a reply.
func (e UpstreamEnd) phrase() string {
	switch e {
	case EndClosed:
		return "closed the connection"
	case EndReset:
		return "reset the connection"
	case EndTimedOut:
		return "timed out"
	}
	return "broke the connection"
}

func (e UpstreamEnd) failure() UpstreamFailure {
	if e == EndTimedOut {
		return FailTimeout
	}
	return FailClosed
}

// Outcome is what became of a message.
type Outcome uint8

const (
	OutcomeUnknown         Outcome = iota
	OutcomePass                    // judged no loop and relayed
	OutcomeLoop                    // judged a loop and refused
	OutcomeDryRunLoop              // judged a loop, relayed under -dry-run
	OutcomeHeaderTooLarge          // header section over the limit, refused
	OutcomeBareLF                  // bare LF under -bare-lf=reject, refused
	OutcomeUpstreamRefused         // the upstream refused DATA
	OutcomeUpstreamFailed          // the upstream was lost or timed out
	OutcomeCheckFailed             // the loop check failed; tempfailed
	OutcomeAborted                 // the session ended before the end-of-data reply
	OutcomeExempt                  // not judged: the client is exempt (Config.Exempt); relayed
	OutcomeNoMemory                // no memory for its header section (Config.MeterHeader); tempfailed
)

// Outcomes lists every outcome a message can end with, in order
// (OutcomeUnknown aside).
func Outcomes() []Outcome {
	return []Outcome{OutcomePass, OutcomeLoop, OutcomeDryRunLoop, OutcomeHeaderTooLarge, OutcomeBareLF,
		OutcomeUpstreamRefused, OutcomeUpstreamFailed, OutcomeCheckFailed, OutcomeAborted, OutcomeExempt, OutcomeNoMemory}
}

func (o Outcome) String() string {
	switch o {
	case OutcomePass:
		return "pass"
	case OutcomeLoop:
		return "loop"
	case OutcomeDryRunLoop:
		return "dry-run-loop"
	case OutcomeHeaderTooLarge:
		return "header-too-large"
	case OutcomeBareLF:
		return "bare-lf"
	case OutcomeUpstreamRefused:
		return "upstream-refused"
	case OutcomeUpstreamFailed:
		return "upstream-failed"
	case OutcomeCheckFailed:
		return "check-failed"
	case OutcomeAborted:
		return "aborted"
	case OutcomeExempt:
		return "exempt"
	case OutcomeNoMemory:
		return "no-memory"
	}
	return "unknown"
}

// Transaction describes one message, for the per-transaction log line.
type Transaction struct {
	Sender        string   // MAIL FROM: argument as written
	Recipients    []string // accepted RCPT TO: arguments as written
	ClientAddr    string   // from XFORWARD ADDR, when the client sent it
	ClientName    string   // from XFORWARD NAME
	Outcome       Outcome
	LoopRecipient string // the matching recipient, for a loop
	LoopVia       string // the address of its expansion that matched, when not the recipient as spelled
	Reply         string // first line of the end-of-data reply the client got
	UpstreamReply string // first line of the upstream's end-of-data reply, if any
	Size          int64  // message octets read (unstuffed, line ends counted as 2)
	HeaderBytes   int    // octets of the header section; when too large, the octets read when it crossed the limit
}
