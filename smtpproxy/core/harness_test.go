package core

import (
	"bytes"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
)

// fakeUpstream is a scripted SMTP server read the lenient (Postfix) way:
// command lines end at LF; after a 354 it reads message data up to "."
// and answers dataReply. It records everything it received.
type fakeUpstream struct {
	greeting  string
	replies   map[string]string // by upper-case verb; default "250 2.0.0 Ok"
	dataReply string            // end-of-data reply; default "250 2.0.0 Ok: queued as ABC"

	raw      bytes.Buffer // every byte received
	commands []string     // command lines, without line end
	messages []string     // message contents as received (still stuffed), ".\r\n" excluded
	inData   bool
	partial  []byte
	cur      bytes.Buffer
	silent   bool // answers nothing (a stalled upstream)
	// rcpts are the recipients accepted in the current transaction (every
	// RCPT is accepted unless replies says otherwise); rcptsAt holds them
	// for each message received.
	rcpts   []string
	rcptsAt [][]string
}

func newFakeUpstream() *fakeUpstream {
	return &fakeUpstream{
		greeting: "220 up.example ESMTP\r\n",
		replies: map[string]string{
			"EHLO": "250-up.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-XFORWARD NAME ADDR PROTO HELO\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 CHUNKING\r\n",
			"DATA": "354 End data with <CR><LF>.<CR><LF>\r\n",
			"QUIT": "221 2.0.0 Bye\r\n",
		},
		dataReply: "250 2.0.0 Ok: queued as ABC123\r\n",
	}
}

// receive takes bytes written upstream and returns the replies.
func (u *fakeUpstream) receive(p []byte) string {
	u.raw.Write(p)
	var out strings.Builder
	u.partial = append(u.partial, p...)
	for {
		i := bytes.IndexByte(u.partial, '\n')
		if i < 0 {
			break
		}
		line := string(u.partial[:i+1])
		u.partial = u.partial[i+1:]
		if u.inData {
			if line == ".\r\n" || line == ".\n" {
				u.inData = false
				u.messages = append(u.messages, u.cur.String())
				u.rcptsAt = append(u.rcptsAt, u.rcpts)
				u.rcpts = nil
				u.cur.Reset()
				if !u.silent {
					out.WriteString(u.dataReply)
				}
				continue
			}
			u.cur.WriteString(line)
			continue
		}
		cmd := strings.TrimRight(line, "\r\n")
		u.commands = append(u.commands, cmd)
		verb, _, _ := strings.Cut(cmd, " ")
		r, ok := u.replies[strings.ToUpper(verb)]
		if !ok {
			r = "250 2.0.0 Ok\r\n"
		}
		if u.silent {
			continue
		}
		if r[0] == '2' {
			switch strings.ToUpper(verb) {
			case "MAIL", "RSET", "EHLO", "HELO":
				u.rcpts = nil
			case "RCPT":
				// The argument as the proxy reads it: after the verb,
				// after the first colon when there is one.
				arg := ""
				if i := strings.IndexAny(cmd, " \t"); i >= 0 {
					arg = cmd[i+1:]
				}
				if _, a, ok := strings.Cut(arg, ":"); ok {
					arg = a
				}
				u.rcpts = append(u.rcpts, arg)
			}
		}
		if strings.HasPrefix(r, "354") {
			u.inData = true
		}
		out.WriteString(r)
	}
	return out.String()
}

// harness drives a Session with a fake upstream and records what each
// side receives.
// tb is what the harness needs of a test: *testing.T or *rapid.T.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

type harness struct {
	t       tb
	s       *Session
	up      *fakeUpstream
	client  bytes.Buffer // everything the client received
	pending []byte       // client bytes not yet consumed
	events  []Event
	upGone  bool
}

func newHarness(t tb, cfg Config) *harness {
	t.Helper()
	if cfg.UpstreamName == "" {
		cfg.UpstreamName = "127.0.0.1:10026"
	}
	h := &harness{t: t, s: newTestSession(t, cfg), up: newFakeUpstream()}
	return h
}

// openHarness returns a harness with the stand-in loop check
// (smtptest.CheckDeliveredTo), past the greeting the client has read.
func openHarness(t tb) *harness {
	t.Helper()
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.got()
	return h
}

// connect connects the upstream and delivers its greeting.
func (h *harness) connect() *harness {
	h.s.HandleUpstreamConnected()
	h.flush()
	h.fromUpstream(h.up.greeting)
	return h
}

func (h *harness) flush() {
	for {
		h.client.Write(h.s.TakeClientOutput())
		out := h.s.TakeUpstreamOutput()
		h.events = append(h.events, h.s.TakeEvents()...)
		if h.upGone {
			if len(out) > 0 {
				h.t.Fatalf("%d bytes written upstream after it was closed: %q", len(out), out)
			}
			return
		}
		if h.s.UpstreamGone() {
			h.upGone = true
		}
		if len(out) == 0 {
			return
		}
		reply := h.up.receive(out)
		if reply == "" || h.upGone {
			return
		}
		h.s.HandleUpstreamData([]byte(reply))
	}
}

func (h *harness) pump() {
	for len(h.pending) > 0 && h.s.WantsClientInput() {
		n := h.s.HandleClientData(h.pending)
		h.pending = h.pending[n:]
		h.flush()
		if n == 0 && h.s.WantsClientInput() {
			h.t.Fatalf("session wants input but consumed nothing of %q", h.pending)
		}
	}
}

func (h *harness) fromClient(s string) *harness {
	h.pending = append(h.pending, s...)
	h.pump()
	return h
}

func (h *harness) fromUpstream(s string) *harness {
	h.s.HandleUpstreamData([]byte(s))
	h.flush()
	h.pump()
	return h
}

// got returns what the client received since the last call.
func (h *harness) got() string {
	s := h.client.String()
	h.client.Reset()
	return s
}

func (h *harness) expect(want string) {
	h.t.Helper()
	if got := h.got(); got != want {
		h.t.Fatalf("client received\n%q\nwant\n%q", got, want)
	}
}

func (h *harness) txEvents() []Transaction {
	var txs []Transaction
	for _, e := range h.events {
		if e.Kind == EventTxEnd {
			txs = append(txs, *e.Tx)
		}
	}
	return txs
}
