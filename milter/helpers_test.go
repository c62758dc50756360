package milter

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/leakcheck"
)

func TestMain(m *testing.M) {
	// go-milter's warnings go to the standard logger; each test reads our
	// own log instead.
	gomilter.LogWarning = func(string, ...any) {}
	// Every session, its goroutines and the server's own end with the
	// tests; go-milter's session goroutine runs our handlers, so it is
	// found by our package's frames too.
	os.Exit(leakcheck.Main(m, "github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter.", "github.com/d--j/go-milter."))
}

// testWait bounds every wait of a test for the server; a hung server
// fails the test instead of blocking it.
const testWait = 30 * time.Second

// lockedBuffer collects log output written from the sessions' goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// countObserver counts what the server reports.
type countObserver struct {
	started, refusedPeers, refusedSessions, dropped, truncated, shortages atomic.Int64
	mu                                                                    sync.Mutex
	ended                                                                 map[EndReason]int
	outcomes                                                              map[Outcome]int
	// panicJudged makes the next MessageJudged panic (once): a bug in a
	// handler, for the tests of what a panic ends.
	panicJudged atomic.Bool
}

func newCountObserver() *countObserver {
	return &countObserver{ended: map[EndReason]int{}, outcomes: map[Outcome]int{}}
}

func (o *countObserver) SessionStarted() { o.started.Add(1) }
func (o *countObserver) SessionEnded(r EndReason) {
	o.mu.Lock()
	o.ended[r]++
	o.mu.Unlock()
}
func (o *countObserver) PeerRefused()    { o.refusedPeers.Add(1) }
func (o *countObserver) SessionRefused() { o.refusedSessions.Add(1) }
func (o *countObserver) MessageJudged(out Outcome, _ time.Duration) {
	if o.panicJudged.Swap(false) {
		panic("observer bug")
	}
	o.mu.Lock()
	o.outcomes[out]++
	o.mu.Unlock()
}
func (o *countObserver) RecipientsDropped(n int) { o.dropped.Add(int64(n)) }
func (o *countObserver) HeaderTruncated()        { o.truncated.Add(1) }
func (o *countObserver) AcceptShortage()         { o.shortages.Add(1) }

func (o *countObserver) outcome(out Outcome) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.outcomes[out]
}

func (o *countObserver) endedWith(r EndReason) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ended[r]
}

// testServer is a Server serving on a loopback listener until the test
// ends.
type testServer struct {
	*Server
	addr   string
	logs   *lockedBuffer
	obs    *countObserver
	cancel context.CancelFunc
	done   chan error
}

// startServer serves cfg on 127.0.0.1 (or on ln when given).
func startServer(t *testing.T, cfg Config, ln net.Listener) *testServer {
	t.Helper()
	return startServerWith(t, cfg, ln, nil)
}

// startServerWith is startServer with setup called on the Server before
// it serves.
func startServerWith(t *testing.T, cfg Config, ln net.Listener, setup func(*Server)) *testServer {
	t.Helper()
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatalf("listen: %v", err)
		}
	}
	ts := &testServer{logs: &lockedBuffer{}, obs: newCountObserver(), done: make(chan error, 1)}
	cfg.Logger = slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Observer = ts.obs
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if setup != nil {
		setup(srv)
	}
	ts.Server, ts.addr = srv, ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		ts.stop(t)
		if t.Failed() {
			t.Logf("server log:\n%s", ts.logs.String())
		}
	})
	return ts
}

// stop shuts the server down and waits for Serve to return (once).
func (ts *testServer) stop(t *testing.T) {
	t.Helper()
	ts.cancel()
	if ts.done == nil {
		return
	}
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(testWait):
		t.Errorf("Serve did not return %v after the shutdown", testWait)
	}
	ts.done = nil
}

// waitLog waits until the server's log holds want.
func (ts *testServer) waitLog(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for !strings.Contains(ts.logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the server did not log %q within %v", want, testWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// postfixLike is a go-milter client that negotiates as Postfix 3.7 does:
// protocol 6, every action, every protocol option, the macros Postfix
// has by default for each stage.
func postfixLike(addr string, opts ...gomilter.Option) *gomilter.Client {
	base := []gomilter.Option{
		gomilter.WithReadTimeout(testWait),
		gomilter.WithWriteTimeout(testWait),
	}
	return gomilter.NewClient("tcp", addr, append(base, opts...)...)
}

// rcptIn is one RCPT event: the address (without brackets, as the client
// sends it) and its ESMTP parameters.
type rcptIn struct {
	addr, args string
}

// message is one message as an MTA reports it.
type message struct {
	clientAddr string // connect event address; "" means 127.0.0.1
	saslUser   string // {auth_authen}
	from       string
	rcpts      []rcptIn
	headers    [][2]string // name, value (exact: the leading space is ours to add)
	queueID    string
}

func rcpts(addrs ...string) []rcptIn {
	r := make([]rcptIn, len(addrs))
	for i, a := range addrs {
		r[i] = rcptIn{addr: a}
	}
	return r
}

// outcome is the server's answer to one message.
type outcome struct {
	mods []gomilter.ModifyAction
	act  *gomilter.Action
}

// deleted lists the recipients the server removed.
func (o outcome) deleted() []string {
	var d []string
	for _, m := range o.mods {
		if m.Type == gomilter.ActionDelRcpt {
			d = append(d, m.Rcpt)
		}
	}
	return d
}

// session opens a client session and sends the connect and HELO events.
func openSession(t *testing.T, c *gomilter.Client, macros *gomilter.MacroBag, clientAddr string) *gomilter.ClientSession {
	t.Helper()
	s, err := c.Session(macros)
	if err != nil {
		t.Fatalf("open milter session: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if clientAddr == "" {
		clientAddr = "127.0.0.1"
	}
	fam := gomilter.FamilyInet
	if strings.Contains(clientAddr, ":") {
		fam = gomilter.FamilyInet6
	}
	if _, err := s.Conn("client.example", fam, 25000, clientAddr); err != nil {
		t.Fatalf("connect event: %v", err)
	}
	if _, err := s.Helo("client.example"); err != nil {
		t.Fatalf("helo event: %v", err)
	}
	return s
}

// sendMessage sends msg's events on s and returns the end-of-message
// answer.
func sendMessage(t *testing.T, s *gomilter.ClientSession, macros *gomilter.MacroBag, msg message) outcome {
	t.Helper()
	macros.Set(gomilter.MacroAuthAuthen, msg.saslUser)
	from := msg.from
	if from == "" {
		from = "sender@example.org"
	}
	if _, err := s.Mail(from, ""); err != nil {
		t.Fatalf("mail event: %v", err)
	}
	for _, r := range msg.rcpts {
		macros.Set(gomilter.MacroRcptMailer, "local")
		if _, err := s.Rcpt(r.addr, r.args); err != nil {
			t.Fatalf("rcpt event %s: %v", r.addr, err)
		}
	}
	if _, err := s.DataStart(); err != nil {
		t.Fatalf("data event: %v", err)
	}
	for _, h := range msg.headers {
		if _, err := s.HeaderField(h[0], h[1], nil); err != nil {
			t.Fatalf("header event %s: %v", h[0], err)
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatalf("end-of-header event: %v", err)
	}
	if _, err := s.BodyChunk([]byte("body\r\n")); err != nil {
		t.Fatalf("body event: %v", err)
	}
	qid := msg.queueID
	if qid == "" {
		qid = "4ABCDEF0"
	}
	macros.Set(gomilter.MacroQueueId, qid)
	mods, act, err := s.End()
	if err != nil {
		t.Fatalf("end-of-message event: %v", err)
	}
	return outcome{mods: mods, act: act}
}

// judge sends one message over a session of its own.
func judge(t *testing.T, addr string, msg message) outcome {
	t.Helper()
	macros := gomilter.NewMacroBag()
	s := openSession(t, postfixLike(addr), macros, msg.clientAddr)
	return sendMessage(t, s, macros, msg)
}

// dt is a Delivered-To: header event with the value as Postfix stores it
// after "Delivered-To:" (one leading space).
func dt(addr string) [2]string { return [2]string{"Delivered-To", " " + addr} }

func isLoopReply(act *gomilter.Action, rcpt string) bool {
	return act != nil && act.Type == gomilter.ActionRejectWithCode && act.SMTPCode == 554 &&
		act.SMTPReply == "554 5.4.6 mail forwarding loop for "+rcpt
}

func isAccept(act *gomilter.Action) bool {
	return act != nil && (act.Type == gomilter.ActionAccept || act.Type == gomilter.ActionContinue)
}
