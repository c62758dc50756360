package smtpproxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/syncbuf"
)

// These tests run the whole runtime (Serve, sessions, readers, timers)
// inside a synctest bubble over net.Pipe: timeouts of minutes pass in
// fake time, so no test waits, and synctest.Wait makes orderings
// deterministic.

type pipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// bubble is a proxy with a scripted upstream, all in memory.
type bubble struct {
	t      *testing.T
	u      *smtptest.Upstream
	ln     *pipeListener
	cancel context.CancelFunc
	served chan error
	logs   *syncbuf.Buffer
}

func newBubble(t *testing.T, cfg Config) *bubble {
	b := &bubble{t: t, u: smtptest.NewUpstream(t), ln: newPipeListener(), served: make(chan error, 1), logs: &syncbuf.Buffer{}}
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context) (net.Conn, error) {
			a, z := net.Pipe()
			b.u.ServeConn(z)
			return a, nil
		}
	}
	cfg.Upstream = "up.test:10026"
	if cfg.Check == nil {
		cfg.Check = smtptest.CheckDeliveredTo
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(b.logs, nil))
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	go func() { b.served <- srv.Serve(ctx, b.ln) }()
	return b
}

func (b *bubble) dial() *smtptest.Client {
	a, z := net.Pipe()
	b.ln.ch <- z
	return smtptest.NewClient(b.t, a)
}

// open dials the proxy and reads the upstream's greeting.
func (b *bubble) open() *smtptest.Client {
	c := b.dial()
	c.ExpectReply(greeting)
	return c
}

// servedWithin waits for Serve to return after a shutdown that began at
// start, and checks that it returned within a second of the drain
// deadline, drain after start (SPEC section 6).
func (b *bubble) servedWithin(start time.Time, drain time.Duration) {
	b.t.Helper()
	if err := <-b.served; err != nil {
		b.t.Fatalf("Serve: %v", err)
	}
	if took := time.Since(start); took > drain+time.Second {
		b.t.Errorf("Serve returned %v after the shutdown began, want within a second of the %v drain deadline", took, drain)
	}
}

// stop shuts the server down and waits for Serve to return.
func (b *bubble) stop() {
	b.cancel()
	if err := <-b.served; err != nil {
		b.t.Fatalf("Serve: %v", err)
	}
}

func TestClientIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		c := b.open()
		start := time.Now()
		c.ExpectReply("421 4.4.2 timeout\r\n")
		if waited := time.Since(start); waited != DefaultCommandTimeout {
			t.Fatalf("timed out after %v (fake time), want %v", waited, DefaultCommandTimeout)
		}
		c.ExpectEOF()
		b.u.WaitEnded(t)
		if cmds := b.u.Commands(); len(cmds) != 1 || cmds[0] != "QUIT" {
			t.Fatalf("upstream commands %q, want a QUIT", cmds)
		}
		b.stop()
	})
}

// A trickle of bytes does not keep a command open past the timeout.
func TestClientTrickleTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		c := b.open()
		for range 10 {
			c.Send("N")
			time.Sleep(DefaultCommandTimeout / 10)
		}
		synctest.Wait()
		c.ExpectReply("421 4.4.2 timeout\r\n")
		b.stop()
	})
}

func TestClientDataIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		c := b.open()
		c.StartMessage("<s@x>", "<a@x>")
		c.Send("Subject: s\r\n\r\nbody\r\n")
		// Activity restarts the idle clock: 170 s, then data, then 170 s
		// is not yet a timeout.
		time.Sleep(170 * time.Second)
		c.Send("more\r\n")
		time.Sleep(170 * time.Second)
		c.Send("more\r\n")
		start := time.Now()
		c.ExpectReply("421 4.4.2 timeout\r\n")
		if waited := time.Since(start); waited != DefaultDataIdleTimeout {
			t.Fatalf("timed out after %v of silence, want %v", waited, DefaultDataIdleTimeout)
		}
		b.u.WaitEnded(t)
		if raw := b.u.Raw(); strings.Contains(raw, "\r\n.\r\n") || !strings.Contains(raw, "more\r\nmore\r\n") {
			t.Fatalf("upstream received %q", raw)
		}
		b.stop()
	})
}

func TestUpstreamStallTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		b.u.Hook = func(c *smtptest.Conn, cmd string) bool {
			return strings.HasPrefix(cmd, "MAIL FROM:<stall@x>") // never answered
		}
		c := b.open()
		start := time.Now()
		c.Expect("MAIL FROM:<stall@x>", "421 4.4.2 upstream up.test:10026 timed out\r\n")
		if waited := time.Since(start); waited != DefaultReplyTimeout {
			t.Fatalf("waited %v, want %v", waited, DefaultReplyTimeout)
		}
		c.ExpectEOF()
		b.stop()
	})
}

// A stall at end of data: 451, never 250.
func TestUpstreamStallAtEndOfData(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		b.u.DataReply = ""
		c := b.open()
		c.StartMessage("<s@x>", "<a@x>")
		c.Send("Subject: s\r\n\r\nb\r\n.\r\n")
		c.ExpectReply("451 4.4.2 upstream up.test:10026 timed out\r\n")
		c.Expect("NOOP", "421 4.4.2 upstream up.test:10026 timed out\r\n")
		b.stop()
	})
}

func TestUpstreamConnectTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{Dial: func(ctx context.Context) (net.Conn, error) {
			<-ctx.Done() // a black-holed SYN
			return nil, ctx.Err()
		}})
		c := b.dial()
		start := time.Now()
		c.ExpectReply("421 4.4.1 upstream up.test:10026 unreachable: timed out\r\n")
		if waited := time.Since(start); waited != DefaultConnectTimeout {
			t.Fatalf("waited %v, want %v", waited, DefaultConnectTimeout)
		}
		c.ExpectEOF()
		b.stop()
	})
}

func TestUpstreamSilentBeforeGreeting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		b.u.Greeting = ""
		c := b.dial()
		c.ExpectReply("421 4.4.1 upstream up.test:10026 timed out before its greeting\r\n")
		b.stop()
	})
}

func TestShutdownWaitsForTransaction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		idle := b.open()
		busy := b.open()
		busy.StartMessage("<s@x>", "<a@x>")
		busy.Send("Subject: s\r\n\r\nbody\r\n")
		b.cancel()
		synctest.Wait() // every session has seen the shutdown
		idle.ExpectReply("421 4.3.2 shutting down\r\n")
		idle.ExpectEOF()
		time.Sleep(10 * time.Second) // within the drain time
		busy.Send("rest\r\n.\r\n")
		busy.ExpectReply(queued)
		busy.ExpectReply("421 4.3.2 shutting down\r\n")
		busy.ExpectEOF()
		if err := <-b.served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if msgs := b.u.Messages(); len(msgs) != 1 || msgs[0] != "Subject: s\r\n\r\nbody\r\nrest\r\n" {
			t.Fatalf("upstream messages %q", msgs)
		}
	})
}

func TestShutdownDrainDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{DataIdleTimeout: time.Hour})
		c := b.open()
		c.StartMessage("<s@x>", "<a@x>")
		c.Send("Subject: s\r\n\r\nbody\r\n")
		start := time.Now()
		b.cancel()
		c.ExpectReply("421 4.3.2 shutting down\r\n")
		if waited := time.Since(start); waited != DefaultDrainTimeout {
			t.Fatalf("cut after %v, want the drain time %v", waited, DefaultDrainTimeout)
		}
		c.ExpectEOF()
		if err := <-b.served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if raw := b.u.Raw(); strings.Contains(raw, "\r\n.\r\n") || len(b.u.Messages()) != 0 {
			t.Fatalf("cut message reached the upstream: %q", raw)
		}
	})
}

// Under the lead's limits, a pool of idle clients cannot starve others
// (the original's weakness 5: two idle clients blocked a pool of two).
func TestIdleClientsDoNotBlockOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{MaxSessions: 3})
		idle1, idle2 := b.dial(), b.dial()
		idle1.ExpectReply(greeting)
		idle2.ExpectReply(greeting)
		c := b.open()
		c.Expect("NOOP", ok)
		c.Expect("QUIT", "221 2.0.0 Bye\r\n")
		// The idle ones are timed out and their slots freed.
		idle1.ExpectReply("421 4.4.2 timeout\r\n")
		idle2.ExpectReply("421 4.4.2 timeout\r\n")
		synctest.Wait()
		b.open() // a slot is free again
		b.stop()
	})
}

// An upstream that stops reading in the middle of a message: the proxy's
// write to it fails at its write deadline, which armWrite keeps between
// 7/8 of the reply timeout and all of it ahead of any write, and the
// client gets 451 for the message, never 250.
func TestUpstreamStopsReadingTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		stuck := make(chan struct{})
		b.u.DataHook = func(c *smtptest.Conn, line string) bool {
			<-stuck // reads no more, and keeps the connection open
			return true
		}
		c := b.open()
		c.StartMessage("<s@x>", "<a@x>")
		start := time.Now()
		sent := make(chan error, 1)
		go func() {
			// More than net.Pipe and the proxy's buffers hold.
			_, err := c.Conn.Write([]byte("Subject: s\r\n\r\n" + strings.Repeat("a line of the body\r\n", 50000) + ".\r\n"))
			sent <- err
		}()
		c.ExpectReply("451 4.4.2 upstream up.test:10026 timed out\r\n")
		if waited := time.Since(start); waited < DefaultReplyTimeout*7/8 || waited > DefaultReplyTimeout {
			t.Errorf("the stuck write failed after %v, want between 7/8 of %v and all of it", waited, DefaultReplyTimeout)
		}
		if err := <-sent; err != nil {
			t.Errorf("client write: %v", err)
		}
		if n := len(b.u.Messages()); n != 0 {
			t.Errorf("the upstream took %d messages", n)
		}
		close(stuck)
		c.Expect("QUIT", "421 4.4.2 upstream up.test:10026 timed out\r\n")
		c.ExpectEOF()
		b.stop()
	})
}

// armWrite moves a write deadline on only when less than 7/8 of the
// timeout is left, and so always leaves at least that much.
func TestArmWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 80 * time.Second
		var c deadlineConn
		start := time.Now()
		due := armWrite(&c, time.Time{}, timeout)
		for _, step := range []time.Duration{time.Second, 9 * time.Second, time.Nanosecond, 50 * time.Second, 5 * time.Second} {
			time.Sleep(step)
			due = armWrite(&c, due, timeout)
			if left := time.Until(due); left < timeout*7/8 || left > timeout {
				t.Fatalf("at %v the write has %v left", time.Since(start), left)
			}
		}
		// Set at 0; kept at 1 s and 10 s (79 s and 70 s left); moved
		// at 10 s + 1 ns (70 s - 1 ns left) and at 60 s + 1 ns (30 s
		// left); kept at 65 s + 1 ns (75 s left).
		want := []time.Duration{0, 10*time.Second + time.Nanosecond, 60*time.Second + time.Nanosecond}
		var got []time.Duration
		for _, d := range c.set {
			got = append(got, d.Sub(start)-timeout)
		}
		if !slices.Equal(got, want) {
			t.Errorf("deadlines set at %v after the start, want %v", got, want)
		}
	})
}

// deadlineConn records the write deadlines set on it.
type deadlineConn struct {
	net.Conn
	set []time.Time
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.set = append(c.set, t)
	return nil
}

// A clock runs out exactly when due, however its due time moves: later
// (the timer fires early and is set for the rest), earlier (the timer is
// reset), or away (stopped: the timer fires to no effect).
func TestClockRunsOutWhenDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var c clock
		var ranOut []time.Duration
		start := time.Now()
		c.t = stoppedTimer(func() {
			mu.Lock()
			defer mu.Unlock()
			if c.fired(time.Now()) {
				ranOut = append(ranOut, time.Since(start))
			}
		})
		at := func(d time.Duration, fn func()) {
			time.Sleep(time.Until(start.Add(d)))
			mu.Lock()
			fn()
			mu.Unlock()
		}
		at(0, func() { c.set(start.Add(10 * time.Second)) })
		at(time.Second, func() { c.set(start.Add(30 * time.Second)) })     // later
		at(2*time.Second, func() { c.set(start.Add(5 * time.Second)) })    // earlier
		at(6*time.Second, func() { c.set(start.Add(20 * time.Second)) })   // after running out
		at(7*time.Second, func() { c.stop() })                             // stopped
		at(40*time.Second, func() { c.set(start.Add(50 * time.Second)) })  // again
		at(45*time.Second, func() { c.set(start.Add(100 * time.Second)) }) // later
		at(60*time.Second, func() { c.set(start.Add(70 * time.Second)) })  // earlier than set
		time.Sleep(time.Until(start.Add(200 * time.Second)))
		mu.Lock()
		defer mu.Unlock()
		want := []time.Duration{5 * time.Second, 70 * time.Second}
		if !slices.Equal(ranOut, want) {
			t.Errorf("the clock ran out at %v, want %v", ranOut, want)
		}
		c.halt()
	})
}

// After QUIT the upstream closes first (TIME_WAIT stays with it): the
// proxy reads on after the 221 and closes its side only when the
// upstream has, or after closeLinger when it never does. Either way the
// client has its 221 and its end of the connection at once.
func TestUpstreamClosesFirstAfterQuit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		proxyClosed := make(chan time.Duration, 1)
		b.u.Hook = func(c *smtptest.Conn, cmd string) bool {
			if cmd != "QUIT" {
				return false
			}
			c.Send("221 2.0.0 Bye\r\n")
			start := time.Now()
			if _, err := c.ReadByte(); err == nil {
				t.Error("the proxy sent something after QUIT")
			}
			proxyClosed <- time.Since(start)
			return true
		}
		c := b.open()
		c.Expect("QUIT", "221 2.0.0 Bye\r\n")
		c.ExpectEOF()
		if waited := <-proxyClosed; waited != closeLinger {
			t.Errorf("the proxy closed the upstream %v after the 221, want %v (it waits for the upstream to close first)", waited, closeLinger)
		}
		b.stop()
	})
}

// The drain deadline ends a session whose upstream stopped reading in
// the middle of a message, although the runtime is blocked in a write to
// it: Serve returns within a second of the deadline, long before the
// write's own timeout, and the message is never acknowledged.
func TestDrainDeadlineEndsStalledUpstreamWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const drain = 2 * time.Second
		b := newBubble(t, Config{DrainTimeout: drain, ReplyTimeout: 30 * time.Second})
		stuck := make(chan struct{})
		defer close(stuck)
		b.u.DataHook = func(c *smtptest.Conn, line string) bool {
			<-stuck // reads no more, and keeps the connection open
			return true
		}
		c := b.dial()
		c.ExpectReply(greeting)
		c.Expect("MAIL FROM:<s@x>", ok)
		c.Expect("RCPT TO:<a@x>", ok)
		c.Expect("DATA", local354)
		go c.Conn.Write([]byte("Subject: s\r\n\r\n" + strings.Repeat("a line of the body\r\n", 50000) + ".\r\n"))
		synctest.Wait() // the proxy is blocked writing to the upstream
		start := time.Now()
		b.cancel()
		c.ExpectReply("421 4.3.2 shutting down\r\n")
		c.ExpectEOF()
		b.servedWithin(start, drain)
		if n := len(b.u.Messages()); n != 0 {
			t.Errorf("the upstream took %d messages", n)
		}
	})
}

// A client that pipelines commands and never reads its replies holds the
// runtime in a write to it; the drain deadline ends that too.
func TestDrainDeadlineEndsClientThatNeverReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const drain = 2 * time.Second
		b := newBubble(t, Config{DrainTimeout: drain})
		c := b.dial()
		c.ExpectReply(greeting)
		go c.Conn.Write([]byte(strings.Repeat("NOOP\r\n", 10000)))
		synctest.Wait() // the proxy is blocked writing a reply to the client
		start := time.Now()
		b.cancel()
		b.servedWithin(start, drain)
		// The session is closed: the client's read ends (the pipe holds
		// no bytes, so the replies it never read are gone).
		if _, err := io.ReadAll(c.Conn); err != nil {
			t.Fatalf("reading after the shutdown: %v", err)
		}
	})
}

// A client inside a message that stops reading while the session waits
// for its data: at the drain deadline its final reply cannot be written,
// and that write gets finalReplyGrace, not the command timeout.
func TestDrainDeadlineBoundsTheFinalReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const drain = 2 * time.Second
		b := newBubble(t, Config{DrainTimeout: drain})
		c := b.dial()
		c.ExpectReply(greeting)
		c.Expect("MAIL FROM:<s@x>", ok)
		c.Expect("RCPT TO:<a@x>", ok)
		c.Expect("DATA", local354)
		if _, err := c.Conn.Write([]byte("Subject: s\r\n\r\nthe body, unfinished\r\n")); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the session waits for data, holding no lock; the client reads no more
		start := time.Now()
		b.cancel()
		b.servedWithin(start, drain)
		if n := len(b.u.Messages()); n != 0 {
			t.Errorf("the upstream took %d messages", n)
		}
	})
}

// At the drain deadline, the goroutine holding the lock in a write to an
// upstream that stopped reading is interrupted; the core's reply to that
// (451 4.4.2) goes to a client that reads no more, long after its last
// reply, when writing would move the deadline on by the command timeout.
// The limit holds that write too.
func TestDrainDeadlineBoundsWritesAfterAnInterruptedOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const drain = 2 * time.Second
		b := newBubble(t, Config{DrainTimeout: drain, ReplyTimeout: 30 * time.Second})
		stuck := make(chan struct{})
		defer close(stuck)
		b.u.DataHook = func(c *smtptest.Conn, line string) bool {
			<-stuck // reads no more, and keeps the connection open
			return true
		}
		c := b.dial()
		c.ExpectReply(greeting)
		c.Expect("MAIL FROM:<s@x>", ok)
		c.Expect("RCPT TO:<a@x>", ok)
		c.Expect("DATA", local354)
		time.Sleep(60 * time.Second)
		go c.Conn.Write([]byte(strings.Repeat("X-Filler: "+strings.Repeat("x", 90)+"\r\n", 1000) + "\r\nbody\r\n"))
		synctest.Wait() // the proxy is blocked writing to the upstream
		start := time.Now()
		b.cancel()
		b.servedWithin(start, drain)
		if n := len(b.u.Messages()); n != 0 {
			t.Errorf("the upstream took %d messages", n)
		}
	})
}

// Serve returns only when every client connection is closed: a session
// that lingers after its last reply (to keep a reset from destroying it)
// is waited for.
func TestServeWaitsForLingeringConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, Config{})
		a, z := net.Pipe()
		proxySide := &closeRecorder{Conn: z}
		b.ln.ch <- proxySide
		t.Cleanup(func() { a.Close() })
		c := smtptest.NewClient(t, a)
		c.ExpectReply(greeting)
		c.Send("QUIT\r\n")
		c.ExpectReply("221 2.0.0 Bye\r\n")
		// The client neither reads on nor closes: the proxy lingers.
		b.stop()
		if !proxySide.closed.Load() {
			t.Fatal("Serve returned with the client connection still open")
		}
	})
}

// closeRecorder is a connection that records being closed.
type closeRecorder struct {
	net.Conn
	closed atomic.Bool
}

func (c *closeRecorder) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}
