package core

// The session's state, in two parts: where it is in the protocol (state,
// one of the rows of the table in doc.go) and the condition of its
// upstream connection (upstream). Everything else a Session holds is
// either per message (message) or per transaction (envelope), or output
// waiting to be taken.

// state is where the session is. Every change goes through enter.
type state uint8

const (
	stConnecting state = iota // waiting for the upstream connection
	stGreeting                // waiting for the upstream greeting
	stCommand                 // waiting for a client command line
	stReply                   // a command is forwarded; waiting for its reply
	stCapture                 // reading the header section of a message
	stJudge                   // the section read; waiting for the recipients to judge it by
	stData354                 // verdict pass; DATA forwarded; waiting for 354
	stStream                  // streaming the message upstream
	stDataReply               // end of data sent; waiting for the final reply
	stDrain                   // reading the client's data to throw it away
	stRSET                    // RSET sent after a local end-of-data reply
	stClosed                  // the session is over (Done)
)

// String names the state as the table in doc.go does.
func (st state) String() string {
	switch st {
	case stConnecting:
		return "connecting"
	case stGreeting:
		return "greeting"
	case stCommand:
		return "command"
	case stReply:
		return "reply"
	case stCapture:
		return "capture"
	case stJudge:
		return "judge"
	case stData354:
		return "data354"
	case stStream:
		return "stream"
	case stDataReply:
		return "datareply"
	case stDrain:
		return "drain"
	case stRSET:
		return "rset"
	case stClosed:
		return "closed"
	}
	return "invalid"
}

// enter moves the session to st.
func (s *Session) enter(st state) {
	if s.onEnter != nil {
		s.onEnter(s.st, st)
	}
	s.st = st
}

// upstream is the condition of the upstream connection. Once it is gone
// (upQuit and after) it stays gone: an upstream is never used again.
type upstream uint8

const (
	upOpen    upstream = iota // connecting, or in step with the client's commands
	upData                    // it took a data command (354) and reads message content
	upQuit                    // told QUIT, by the client or on the way out; it closes first
	upRetired                 // retired after a failure or a refusal; the next command gets 421 (upReason)
	upClosed                  // closed with the session, or it closed after QUIT
)

// gone reports that the connection is no longer used.
func (u upstream) gone() bool { return u >= upQuit }
