package core

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// The state table of the package comment is checked against the code:
// every session the tests make (newTestSession) reports each change of
// state, which must be listed, and once every test of the package has
// run, every listed change must have been made by one.

// transition is one change of state and the input during which it
// happened (the Handle method's name without "Handle").
type transition struct {
	from, to state
	on       string
}

func (tr transition) String() string { return fmt.Sprintf("%v -> %v on %s", tr.from, tr.to, tr.on) }

// stateTable reads the table in doc.go.
var stateTable = sync.OnceValues(func() (map[transition]bool, error) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		return nil, err
	}
	names := map[string]state{}
	for st := stConnecting; st <= stClosed; st++ {
		names[st.String()] = st
	}
	table := map[transition]bool{}
	in := false
	for _, line := range strings.Split(string(src), "\n") {
		f := strings.Fields(strings.TrimPrefix(line, "//\t"))
		switch {
		case !strings.HasPrefix(line, "//\t"):
			if in {
				return table, nil
			}
		case slices.Equal(f, []string{"from", "to", "inputs"}):
			in = true
		case in:
			from, ok1 := names[f[0]]
			to, ok2 := names[f[1]]
			if len(f) < 3 || !ok1 || !ok2 {
				return nil, fmt.Errorf("doc.go: state table row %q: want FROM TO INPUT...", line)
			}
			for _, on := range f[2:] {
				table[transition{from, to, on}] = true
			}
		}
	}
	return nil, fmt.Errorf("doc.go holds no state table (a line \"from to inputs\")")
})

// seenTransitions collects every transition of every watched session of
// the test binary.
var seenTransitions = struct {
	sync.Mutex
	m map[transition]bool
}{m: map[transition]bool{}}

// inputName is the name of the Handle method running, without "Handle".
func inputName() string {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		if _, name, ok := strings.Cut(f.Function, ".(*Session).Handle"); ok {
			return name
		}
		if !more {
			return "(no input)"
		}
	}
}

// newTestSession returns a session whose every change of state must be
// one the state table lists; it is recorded for TestMain's check that
// every listed one is made.
func newTestSession(t tb, cfg Config) *Session {
	table, err := stateTable()
	if err != nil {
		t.Fatalf("%v", err)
	}
	s := NewSession(cfg)
	s.onEnter = func(from, to state) {
		tr := transition{from, to, inputName()}
		if !table[tr] {
			t.Fatalf("the session changed state %v, which the state table in doc.go does not list", tr)
		}
		seenTransitions.Lock()
		seenTransitions.m[tr] = true
		seenTransitions.Unlock()
	}
	return s
}

// TestMain checks, after a run of every test of the package, that each
// change of state the table lists was made by a test: a row no test
// reaches is either wrong or untested.
func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 || !ranAll() {
		os.Exit(code)
	}
	table, err := stateTable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var missing []string
	for tr := range table {
		if !seenTransitions.m[tr] {
			missing = append(missing, tr.String())
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		fmt.Fprintf(os.Stderr, "--- FAIL: the state table in doc.go lists changes of state no test made:\n\t%s\n", strings.Join(missing, "\n\t"))
		fmt.Println("FAIL")
		os.Exit(1)
	}
}

// ranAll reports whether every test of the package ran: no -run, -skip
// or -fuzz selected some, and none was skipped by -short.
func ranAll() bool {
	for _, name := range []string{"test.run", "test.skip", "test.fuzz"} {
		if f := flagValue(name); f != "" {
			return false
		}
	}
	return !testing.Short()
}

func flagValue(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// reachState brings a new session to st, through the usual inputs.
func reachState(t *testing.T, st state) *harness {
	t.Helper()
	h := newHarness(t, loopCfg())
	envelope := "MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n"
	switch st {
	case stConnecting:
	case stGreeting:
		h.s.HandleUpstreamConnected()
	case stCommand:
		h.connect()
	case stReply:
		h.connect()
		h.up.silent = true
		h.fromClient("MAIL FROM:<s@x>\r\n")
	case stCapture:
		h.connect().fromClient(envelope + "Subject: s\r\n")
	case stData354:
		h.connect().fromClient(envelope)
		h.up.silent = true
		h.fromClient("Subject: s\r\n\r\n")
	case stStream:
		h.connect().fromClient(envelope + "Subject: s\r\n\r\nbody\r\n")
	case stJudge:
		h = newHarness(t, awaitCfg())
		h.connect().fromClient(envelope + "Subject: s\r\n\r\nbody\r\n")
	case stDataReply:
		h.connect().fromClient(envelope + "Subject: s\r\n\r\nbody\r\n")
		h.up.silent = true
		h.fromClient(".\r\n")
	case stDrain:
		h.connect().fromClient(envelope + "Delivered-To: a@x\r\n\r\nbody\r\n")
	case stRSET:
		h.connect().fromClient(envelope)
		h.up.silent = true
		h.fromClient("Delivered-To: a@x\r\n\r\nbody\r\n.\r\n")
	}
	if h.s.st != st {
		t.Fatalf("reached %v, not %v", h.s.st, st)
	}
	return h
}

// The changes of state that the tests elsewhere need not make: the
// session's end from every state, and the ends of a message whose data
// is over before the upstream has answered DATA.
func TestStateTableRows(t *testing.T) {
	for st := stConnecting; st < stClosed; st++ {
		for _, end := range []struct {
			name  string
			input func(s *Session)
		}{
			{"client closes", (*Session).HandleClientClosed},
			{"drain time over", (*Session).HandleDrainExpired},
		} {
			h := reachState(t, st)
			end.input(h.s)
			h.flush()
			if !h.s.Done() || !h.s.UpstreamGone() {
				t.Errorf("%v, %s: done %v, upstream gone %v", st, end.name, h.s.Done(), h.s.UpstreamGone())
			}
			if txs := h.txEvents(); st >= stCapture && st <= stDrain && (len(txs) != 1 || txs[0].Outcome != OutcomeAborted) {
				t.Errorf("%v, %s: transactions %+v, want one aborted", st, end.name, txs)
			}
		}
	}

	// The data ends while the header section is read, so the upstream's
	// answer to DATA (data354) comes after it: a failure then ends the
	// message at once with 451, a 421 refusal ends the session.
	const failed = "451 4.4.2 upstream 127.0.0.1:10026 "
	for _, c := range []struct {
		name  string
		input func(h *harness)
		want  string
		done  bool
	}{
		{"timed out", func(h *harness) { h.s.HandleTimeout(TimerUpstreamReply) }, failed + "timed out\r\n", false},
		{"closed", func(h *harness) { h.s.HandleUpstreamClosed(EndClosed) }, failed + "closed the connection\r\n", false},
		{"malformed", func(h *harness) { h.fromUpstream("hello\r\n") }, failed + "sent a malformed reply\r\n", false},
		{"421", func(h *harness) { h.fromUpstream("421 4.3.0 going away\r\n") }, "421 4.3.0 going away\r\n", true},
	} {
		h := newHarness(t, loopCfg()).connect()
		h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
		h.got()
		h.up.silent = true
		h.fromClient("Subject: s\r\n.\r\n")
		if h.s.st != stData354 {
			t.Fatalf("%s: in %v, not waiting for the answer to DATA", c.name, h.s.st)
		}
		c.input(h)
		h.flush()
		if got := h.got(); got != c.want || h.s.Done() != c.done || !h.s.Done() && h.s.st != stCommand {
			t.Errorf("%s: client got %q, state %v; want %q, done %v", c.name, got, h.s.st, c.want, c.done)
		}
	}

	// A loop whose data ends within the header section, after the
	// upstream took DATA with an argument: the upstream is closed without
	// the final dot, and the session waits for the next command.
	h := newHarness(t, loopCfg()).connect()
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA x\r\n")
	h.got()
	h.fromClient("Delivered-To: a@x\r\n.\r\n")
	if got := h.got(); got != "554 5.4.6 mail forwarding loop for a@x\r\n" || h.s.st != stCommand || !h.s.UpstreamGone() {
		t.Errorf("loop after the upstream's 354: client got %q, state %v, upstream gone %v", got, h.s.st, h.s.UpstreamGone())
	}

	// A message whose data ends within its header section: judged a
	// pass after the upstream took DATA with an argument, it goes
	// upstream with its end at once; judged a loop after the proxy's own
	// 354, its reply and RSET follow at once.
	h = newHarness(t, loopCfg()).connect()
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA x\r\n")
	h.got()
	h.fromClient("Subject: s\r\n.\r\n")
	if got := h.got(); got != queued || h.s.st != stCommand || len(h.up.messages) != 1 {
		t.Errorf("pass after the upstream's 354: client got %q, state %v, upstream read %q", got, h.s.st, h.up.messages)
	}
	h = newHarness(t, loopCfg()).connect()
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
	h.got()
	h.fromClient("Delivered-To: a@x\r\n.\r\n")
	if got := h.got(); got != "554 5.4.6 mail forwarding loop for a@x\r\n" || h.s.st != stCommand || h.up.commands[len(h.up.commands)-1] != "RSET" {
		t.Errorf("loop ended within its header section: client got %q, state %v, upstream read %q", got, h.s.st, h.up.commands)
	}

	// The upstream fails while the header section is read: the rest of
	// the data is drained, then 451.
	for _, c := range []struct {
		name  string
		input func(h *harness)
		why   string
	}{
		{"closed", func(h *harness) { h.s.HandleUpstreamClosed(EndClosed) }, "closed the connection"},
		{"unsolicited", func(h *harness) { h.fromUpstream("250 2.0.0 Ok\r\n") }, "sent unexpected data"},
	} {
		h := reachState(t, stCapture)
		h.got()
		c.input(h)
		h.flush()
		if h.s.st != stDrain {
			t.Errorf("upstream %s in capture: state %v, want drain", c.name, h.s.st)
		}
		h.fromClient("\r\nbody\r\n.\r\n")
		if got, want := h.got(), failed+c.why+"\r\n"; got != want {
			t.Errorf("upstream %s in capture: client got %q, want %q", c.name, got, want)
		}
	}

	// The client pauses too long while a refused message is drained.
	h = reachState(t, stDrain)
	h.got()
	h.s.HandleTimeout(TimerClientData)
	h.flush()
	if got := h.got(); got != replyTimeout || !h.s.Done() {
		t.Errorf("client timeout in drain: client got %q, done %v", got, h.s.Done())
	}

	// Shutdown waits for the transaction; the upstream lost while it
	// swallows RSET ends it, and the session with it.
	h = reachState(t, stRSET)
	h.s.HandleShutdown()
	h.got()
	h.s.HandleUpstreamClosed(EndClosed)
	h.flush()
	if got := h.got(); got != replyShutdown || !h.s.Done() {
		t.Errorf("shutdown, then the upstream lost in rset: client got %q, done %v", got, h.s.Done())
	}
}
