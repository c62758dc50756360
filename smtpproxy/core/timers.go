package core

// The clocks. The session reads no time: it says which clocks it wants
// running (Timers), the caller runs them, and an expiry comes back as an
// input (HandleTimeout). SPEC section 6 gives the defaults; package
// smtpproxy's Config holds them.

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
// with HandleTimeout.
type Timers struct {
	Client      TimerKind // TimerNone, TimerClientCommand or TimerClientData
	ClientGen   uint64    // changes each time the client timer starts again
	Upstream    bool      // TimerUpstreamReply is running
	UpstreamGen uint64    // changes each time the upstream timer starts again
}

// after brings the timers up to date with the state; every input ends
// with it.
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
	s.timers.Upstream = s.awaitingUpstream() && !s.Done()
}
