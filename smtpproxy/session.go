package smtpproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/accept"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// The session runtime. The goroutine that reads a connection drives the
// core itself: it takes the session lock, hands the core what it read,
// writes what the core produced and arms the clocks, then reads again.
// Both readers run on the server's pooled goroutines (goPool). So a
// command, a reply or a piece of message data costs one wake-up of the
// goroutine that reads it, as in a blind relay, rather than a hand-over
// between goroutines for every read, which costs scheduler time per
// message (docs/performance.md). The clocks, shutdown and the drain
// deadline are callbacks (time.AfterFunc, context.AfterFunc) that give the
// core their input under the same lock: no goroutine waits for them, and
// one runs only when they fire.
//
// Backpressure: the client is read only when the core can use the bytes.
// The client goroutine holds what it read (one buffer) and
// waits, without the lock, until the core takes input again; a side the
// session is not ready for is simply not read, and the kernel's flow
// control slows the sender.

// sessionLock is a mutex made of a channel. Whoever waits for it is
// blocked on a channel, which testing/synctest counts as durably blocked
// (a sync.Mutex it does not), so the runtime's tests can let fake time
// pass while a goroutine waits for the lock; it costs about what a
// sync.Mutex does here, where it is rarely contended.
type sessionLock chan struct{}

func (l sessionLock) Lock()   { l <- struct{}{} }
func (l sessionLock) Unlock() { <-l }

// TryLock takes the lock if it is free and reports whether it did.
func (l sessionLock) TryLock() bool {
	select {
	case l <- struct{}{}:
		return true
	default:
		return false
	}
}

// runner is one session's runtime. mu guards the core and every field
// below it; the readers, the clocks and shutdown all go through it.
type runner struct {
	srv    *Server
	log    *slog.Logger
	client net.Conn
	obs    Observer
	acker  *dataAcker // hurries the ACKs of message data (nil: not TCP)

	done       chan struct{} // closed when the session is over
	clientWake chan struct{} // the client goroutine may find the core ready
	pool       *goPool       // runs the upstream side and the client's linger
	drain      context.Context
	// waits ends at the drain deadline or when the session is over: the
	// context of its waits on pooled goroutines (header memory, recipient
	// expansions), which a session that is over no longer needs.
	waits    context.Context
	endWaits context.CancelFunc

	// The drain deadline must reach a session whatever holds its lock: a
	// write to a peer that reads no more holds it until the write's
	// timeout. So expire interrupts the connections' I/O first, which
	// needs the upstream connection without the lock: ioMu guards upIO,
	// a copy of up. live counts the session's two goroutines (the
	// client's side and the upstream's, each with its linger); the last
	// to end stops the drain registration (stopExpire).
	ioMu       sync.Mutex
	upIO       net.Conn
	live       atomic.Int32
	stopExpire func() bool

	mu             sessionLock
	s              *core.Session
	trace          *tracer
	up             net.Conn
	clientWaiting  bool        // the client goroutine waits for clientWake
	clientHolds    bool        // ... holding client bytes the core has not taken
	dataBuf        *[]byte     // the client's read buffer while message data flows
	rcvbufSet      bool        // the client socket's SO_RCVBUF was set (streamSocketBuffer)
	iov            [2][]byte   // writev's vector and the
	iovBufs        net.Buffers // ... slice of it WriteTo consumes: no allocation per write
	clientGone     bool
	upClosed       bool // closed, or left to upstreamLoop to close (upHandoff)
	upHandoff      bool // upstreamLoop closes the upstream once it has closed
	upReaderDone   bool // upstreamLoop reads the upstream no more
	dialCancel     context.CancelFunc
	stopShutdown   func() bool // ends the registration for shutdown
	clientClock    clock
	upClock        clock
	applied        core.Timers
	clientWriteDue time.Time // the client's write deadline (armWrite)
	upWriteDue     time.Time // the upstream's
	// writeLimit is, once the drain deadline has passed, the latest any
	// write may end (UnixNano; 0 before): expire sets it, from another
	// goroutine than the one that may be writing, so it is atomic.
	writeLimit atomic.Int64
	dataStart  time.Time

	upErrDetail string // the Go error behind the next upstream error event, for its log line
	inData      bool   // between EventDataStart and EventTxEnd, for obs

	// Recipient expansion (Config.Expand): the waits of the transaction's
	// accepted recipients, by index, and whether the wait for them runs.
	expansions []func(context.Context) loopcheck.Recipient
	judging    bool
	// Header memory (Server.budget): what the session holds of it, and
	// whether a wait for more runs.
	charged     int64
	acquiring   bool
	upWaitStart time.Time // when the current wait for an upstream reply began
	upWaitData  bool      // that wait belongs to a message
}

func (s *Server) serveSession(client net.Conn, id string, pool *goPool, shutdown, drain context.Context) {
	start := time.Now()
	log := s.log.With("session", id)
	peer := client.RemoteAddr().String()
	log.Info("session start", "peer", peer)
	s.cfg.Observer.SessionStarted()
	defer s.cfg.Observer.SessionEnded()
	var tr *tracer
	if s.cfg.DebugTrace != "" {
		var err error
		if tr, err = openTrace(s.cfg.DebugTrace, id); err != nil {
			log.Error("debug trace not written", "err", err)
		}
	}
	r := &runner{
		srv:   s,
		log:   log,
		trace: tr,
		obs:   s.cfg.Observer,
		s: core.NewSession(core.Config{
			UpstreamName:     s.upstreamName(),
			MaxHeaderBytes:   s.cfg.MaxHeaderBytes,
			DryRun:           s.cfg.DryRun,
			BareLF:           s.cfg.BareLF,
			DropEHLOKeywords: s.cfg.DropEHLOKeywords,
			Check:            s.cfg.Check,
			AwaitRecipients:  s.cfg.Expand != nil,
			Exempt:           exemptFunc(s.cfg.ExemptClients),
			MeterHeader:      true,
			// Canonical message data goes upstream straight from the
			// read buffer; the client side reads into that buffer again
			// only after flush has written it.
			LendInput: true,
		}),
		client:     client,
		acker:      newDataAcker(client),
		mu:         make(sessionLock, 1),
		done:       make(chan struct{}),
		clientWake: make(chan struct{}, 1),
	}
	r.clientClock.t = stoppedTimer(r.clientClockFired)
	r.upClock.t = stoppedTimer(r.upClockFired)
	defer func() {
		// A bug in one session must not take the others down with it.
		if p := recover(); p != nil {
			r.failed(p)
		}
		// The goroutine that ended the session may still hold the lock;
		// once it is ours, nothing touches the core or the trace again.
		r.mu.Lock()
		reason := r.s.EndReason()
		err := tr.close()
		r.releaseHeaderMemory()
		if r.endWaits != nil {
			r.endWaits() // closeAll did, unless the session ended otherwise
		}
		r.mu.Unlock()
		if err != nil {
			log.Error("debug trace incomplete", "err", err)
		}
		log.Info("session end", "peer", peer, "reason", reason, "duration", time.Since(start).Round(time.Millisecond))
	}()
	r.run(pool, shutdown, drain)
}

// stoppedTimer is a stopped timer that runs fn when it fires.
func stoppedTimer(fn func()) *time.Timer {
	t := time.AfterFunc(time.Hour, fn)
	t.Stop()
	return t
}

// run starts the upstream side on a pooled goroutine and registers for
// shutdown and the drain deadline, then reads the client until the
// session is over.
func (r *runner) run(pool *goPool, shutdown, drain context.Context) {
	ctx, cancel := context.WithTimeout(context.Background(), r.srv.cfg.ConnectTimeout)
	r.pool, r.drain = pool, drain
	r.waits, r.endWaits = context.WithCancel(drain)
	r.live.Store(2)
	r.input(func() {
		r.dialCancel = cancel
		r.stopShutdown = context.AfterFunc(shutdown, func() { r.callback(r.s.HandleShutdown) })
		r.stopExpire = context.AfterFunc(drain, r.expire)
	})
	pool.Go(func() { r.upstreamLoop(ctx) })
	r.clientLoop()
}

// sideDone is called by each of the session's two goroutines when it
// has ended, lingering included; the last one ends the drain
// registration, so that nothing of the session stays reachable.
func (r *runner) sideDone() {
	if r.live.Add(-1) == 0 && r.stopExpire != nil {
		r.stopExpire()
	}
}

// finalReplyGrace bounds the write of the reply a session gets at the
// drain deadline ("421 4.3.2 shutting down"): the process is to exit
// within a second of the deadline, whatever its peers do.
const finalReplyGrace = 500 * time.Millisecond

// expire is the drain deadline. From now on no write may end later than
// finalReplyGrace from now (writeLimit, which arm keeps). A goroutine that
// holds the lock in a write to a peer that does not read is interrupted
// first, so the lock comes free: its upstream write at once (the message
// is then never acknowledged), its client write at the limit (a reply
// under way, such as the upstream's 250 relayed, gets the grace to
// arrive). The session then ends as the core says, its final reply
// written within the limit. Reads still going on, a linger's included,
// end now.
func (r *runner) expire() {
	defer func() {
		if p := recover(); p != nil {
			r.failed(p)
		}
	}()
	limit := time.Now().Add(finalReplyGrace)
	r.writeLimit.Store(limit.UnixNano())
	if !r.mu.TryLock() {
		r.client.SetWriteDeadline(limit)
		if up := r.upstreamIO(); up != nil {
			up.SetWriteDeadline(time.Now())
		}
		r.mu.Lock()
	}
	defer r.mu.Unlock()
	if !r.isDone() {
		r.clientWriteDue = r.arm(r.client, r.clientWriteDue, r.srv.cfg.CommandTimeout)
		r.s.HandleDrainExpired()
		r.settle()
	}
	now := time.Now()
	r.client.SetReadDeadline(now)
	if up := r.upstreamIO(); up != nil {
		up.SetReadDeadline(now)
	}
}

// upstreamIO returns the upstream connection, or nil, without the
// session lock.
func (r *runner) upstreamIO() net.Conn {
	r.ioMu.Lock()
	defer r.ioMu.Unlock()
	return r.upIO
}

// callback gives the core the input of a clock, shutdown or the drain
// deadline, on the goroutine the callback runs on.
func (r *runner) callback(fn func()) {
	defer func() {
		if p := recover(); p != nil {
			r.failed(p)
		}
	}()
	r.input(fn)
}

func (r *runner) clientClockFired() {
	r.callback(func() {
		if r.clientClock.fired(time.Now()) && r.applied.Client != core.TimerNone {
			r.s.HandleTimeout(r.applied.Client)
		}
	})
}

func (r *runner) upClockFired() {
	r.callback(func() {
		if r.upClock.fired(time.Now()) && r.applied.Upstream {
			r.s.HandleTimeout(core.TimerUpstreamReply)
		}
	})
}

// clock is one of a session's clocks: its timer t runs the clock's
// callback, which gives the core its input when due has come. The core
// restarts its clocks at every step (a command, a reply, a piece of data
// each start one anew), and resetting a runtime timer each time costs CPU
// time (docs/performance.md); so the timer is reset only when due moves
// earlier than it is set to fire. When due moves later, or the clock
// stops, the timer fires as it was set to, finds due not come (fired), and
// is set for the rest. A clock never runs out late; its callback may run
// early and find nothing to do. Guarded by the session lock.
type clock struct {
	t     *time.Timer
	due   time.Time // when the clock runs out; zero: stopped
	fires time.Time // when t fires; zero: t is not set
}

// set starts the clock to run out at due.
func (c *clock) set(due time.Time) {
	c.due = due
	if c.fires.IsZero() || c.fires.After(due) {
		c.fires = due
		c.t.Reset(time.Until(due))
	}
}

// stop stops the clock; its timer may still fire, to no effect.
func (c *clock) stop() { c.due = time.Time{} }

// halt stops the clock and its timer, for good at the end of a session.
func (c *clock) halt() {
	c.due, c.fires = time.Time{}, time.Time{}
	c.t.Stop()
}

// fired is called when t has fired (now); it reports whether the clock
// has run out, and sets t again for the rest when it has not.
func (c *clock) fired(now time.Time) bool {
	c.fires = time.Time{}
	switch {
	case c.due.IsZero():
		return false
	case now.Before(c.due):
		c.fires = c.due
		c.t.Reset(c.due.Sub(now))
		return false
	}
	return true
}

// input gives the core one input under the lock, unless the session is
// over, and carries out what it asks.
func (r *runner) input(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.isDone() {
		return
	}
	fn()
	r.settle()
}

func (r *runner) isDone() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// settle carries out what the core asks after an input: writes, closes,
// clocks; it ends the session when the core is done and lets a waiting
// client goroutine look again. Called with the lock held.
func (r *runner) settle() {
	// When the core takes client input again and the waiting client
	// goroutine holds some (the body after the upstream's 354, typically),
	// the upstream output waits for it, so that both go in one write.
	r.flush(r.clientWaiting && r.clientHolds && r.s.WantsClientInput())
	if r.s.Done() {
		r.closeAll()
		return
	}
	r.meterHeader()
	if r.s.WantsRecipients() && !r.judging {
		r.judge()
	}
	r.applyTimers()
	if r.clientWaiting {
		select {
		case r.clientWake <- struct{}{}:
		default:
		}
	}
}

// meterHeader settles the session's header memory with the budget: what
// its header buffer gave up goes back, and what it asks for is granted at
// once when free, or waited for on a pooled goroutine (headerMemoryWait
// at most, never past the drain deadline), the session taking no client
// input meanwhile. Called with the lock held, after the outputs are
// written.
func (r *runner) meterHeader() {
	b := r.srv.budget
	if held := int64(r.s.HeaderMemoryHeld()); held < r.charged {
		b.release(r.charged - held)
		r.obs.HeaderMemory(held - r.charged)
		r.charged = held
	}
	want := int64(r.s.HeaderMemoryWanted())
	if want == 0 || r.acquiring {
		return
	}
	delta := want - r.charged
	if b.tryAcquire(delta) {
		r.charged = want
		r.obs.HeaderMemory(delta)
		r.s.HandleHeaderMemory(true)
		return
	}
	r.acquiring = true
	waits := r.waits
	r.pool.Go(func() {
		ctx, cancel := context.WithTimeout(waits, r.srv.headerWait)
		granted := b.acquire(ctx, delta)
		cancel()
		delivered := false
		r.callback(func() {
			delivered = true
			r.acquiring = false
			if granted {
				r.charged += delta
				r.obs.HeaderMemory(delta)
			} else {
				r.log.Warn("no header memory free: the message gets 451 4.3.1", "wanted", delta, "max_header_memory", b.size)
			}
			r.s.HandleHeaderMemory(granted)
		})
		if granted && !delivered {
			b.release(delta) // the session ended meanwhile
		}
	})
}

// releaseHeaderMemory gives back what the session held, once it is over.
func (r *runner) releaseHeaderMemory() {
	if r.charged > 0 {
		r.srv.budget.release(r.charged)
		r.obs.HeaderMemory(-r.charged)
		r.charged = 0
	}
}

// maxExpandedRecipients bounds the recipients of one transaction whose
// expansion is started; the others are judged as spelled. Postfix's
// smtpd_recipient_limit is 1000 by default; an expansion holds a
// goroutine while it runs.
const maxExpandedRecipients = 1000

// expandRecipient starts the expansion of an accepted recipient: the
// index-th of its transaction (0 starts a new list).
func (r *runner) expandRecipient(index int, arg string) {
	if index == 0 {
		clear(r.expansions)
		r.expansions = r.expansions[:0]
	}
	if index != len(r.expansions) || index >= maxExpandedRecipients {
		return // judged as spelled (HandleRecipients fills the rest)
	}
	r.expansions = append(r.expansions, r.startExpansion(arg))
}

// startExpansion calls Config.Expand for a recipient. A panic in it, or
// later in its wait, is logged and leaves the recipient judged as spelled
// (SPEC section 8: a broken lookup fails open): it never ends the session
// nor, from the wait's pooled goroutine, the process.
func (r *runner) startExpansion(arg string) (wait func(context.Context) loopcheck.Recipient) {
	spelled := func(context.Context) loopcheck.Recipient { return loopcheck.NewRecipient(arg) }
	broken := func(p any) {
		r.log.Error("recipient expansion failed; the recipient is judged as spelled", "recipient", arg, "panic", p)
	}
	defer func() {
		if p := recover(); p != nil {
			broken(p)
			wait = spelled
		}
	}()
	w := r.srv.cfg.Expand(arg)
	if w == nil {
		return spelled
	}
	return func(ctx context.Context) (rcpt loopcheck.Recipient) {
		defer func() {
			if p := recover(); p != nil {
				broken(p)
				rcpt = loopcheck.NewRecipient(arg)
			}
		}()
		return w(ctx)
	}
}

// judge waits, on a pooled goroutine, for the expansions of the message's
// recipients (ExpansionWait at most, and never past the drain deadline),
// then gives the core the recipients to judge by. Called with the lock
// held.
func (r *runner) judge() {
	r.judging = true
	n := len(r.s.RecipientsToJudge())
	waits := slices.Clone(r.expansions[:min(n, len(r.expansions))])
	bound := r.srv.cfg.ExpansionWait
	sessionWaits := r.waits
	r.pool.Go(func() {
		ctx, cancel := context.WithTimeout(sessionWaits, bound)
		rcpts := make([]loopcheck.Recipient, len(waits))
		for i, wait := range waits {
			rcpts[i] = wait(ctx)
		}
		cancel()
		r.callback(func() {
			r.judging = false
			r.s.HandleRecipients(rcpts)
		})
	})
}

// failed ends a session whose code panicked.
func (r *runner) failed(p any) {
	r.log.Error("session failed", "panic", p)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeAll()
}

// clientStep says what the client goroutine does after offering a read.
type clientStep uint8

const (
	clientRead clientStep = iota // read again
	clientWait                   // wait for clientWake, then offer the rest
	clientStop                   // the session is over
)

// clientLoop reads the client and drives the core with what it reads,
// until the session is over.
func (r *runner) clientLoop() {
	own := r.srv.bufs.getCommand()
	buf := own
	var readErr error // how the last read ended
	defer func() {
		if p := recover(); p != nil {
			r.failed(p)
		}
		<-r.done
		// The session is over: the buffers are this goroutine's alone.
		if buf != own {
			r.srv.bufs.put(buf)
		}
		if readErr != nil && !errors.Is(readErr, os.ErrDeadlineExceeded) {
			// The client's input has ended: nothing is left unread.
			r.client.Close()
			r.srv.bufs.put(own)
			r.sideDone()
			return
		}
		// The linger runs on the pool, so that Serve, which waits for
		// the pool, returns only when the connection is closed.
		r.pool.Go(func() {
			r.linger(own)
			r.sideDone()
		})
	}()
	for {
		n, err := r.client.Read(*buf)
		readErr = err
		if n > 0 && buf != own {
			// Message data: acknowledge it before anything else, so the
			// client's held-back tail can follow (dataAcker).
			if err := r.acker.Ack(); err != nil {
				r.log.Debug("quick ACK not available", "err", err)
			}
		}
		p := (*buf)[:n]
		step := r.offerClient(&p, err, true)
		for step == clientWait {
			select {
			case <-r.clientWake:
			case <-r.done:
				return
			}
			step = r.offerClient(&p, err, false)
		}
		if step == clientStop {
			return
		}
		buf = r.nextClientBuffer(own)
	}
}

// linger reads and throws away what the client still sends, for a short
// while, before it closes the connection. Closing a TCP socket with unread
// input sends a reset, which can destroy the last reply (a 421 or 221)
// before the client has read it.
func (r *runner) linger(buf *[]byte) {
	r.client.SetReadDeadline(r.lingerUntil())
	for total := 0; total < maxLingerBytes; {
		n, err := r.client.Read(*buf)
		total += n
		if err != nil {
			break
		}
	}
	r.client.Close()
	r.srv.bufs.put(buf)
}

// lingerUntil is when a linger ends: closeLinger from now, or now once
// the drain deadline has passed. A linger sets its read deadline to it
// before it reads; expire sets it to now after the drain context is done,
// so whichever comes second, a linger never outlasts the deadline.
func (r *runner) lingerUntil() time.Time {
	if r.drain != nil && r.drain.Err() != nil {
		return time.Now()
	}
	return time.Now().Add(closeLinger)
}

// offerClient gives the core the client bytes *p it is ready for. The
// end of the client's input (err) is reported only when the core is ready
// for more input: a client that sends QUIT, or its last message, and
// half-closes at once still gets its reply.
func (r *runner) offerClient(p *[]byte, err error, fresh bool) clientStep {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clientWaiting, r.clientHolds = false, false
	if r.isDone() {
		return clientStop
	}
	if fresh {
		r.trace.record(traceClientIn, *p)
	}
	for len(*p) > 0 && r.s.WantsClientInput() {
		k := r.s.HandleClientData(*p)
		*p = (*p)[k:]
		r.settle()
		if r.isDone() {
			return clientStop
		}
	}
	if len(*p) > 0 {
		r.clientWaiting, r.clientHolds = true, true
		return clientWait
	}
	if err == nil {
		return clientRead
	}
	if !r.s.WantsClientInput() && !r.clientGone {
		r.clientWaiting = true
		return clientWait
	}
	r.log.Debug("client read ended", "err", err)
	r.s.HandleClientClosed()
	r.settle()
	return clientStop
}

// nextClientBuffer is the buffer for the next client read: while message
// data flows a data buffer, the large one once the body streams; else the
// command buffer own. A data buffer no longer read into goes back to its
// pool.
func (r *runner) nextClientBuffer(own *[]byte) *[]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := 0
	switch r.s.ClientReading() {
	case core.ReadingBody:
		size = streamBufferSize
	case core.ReadingMessage:
		size = dataBufferSize
	}
	if r.dataBuf != nil && cap(*r.dataBuf) != size {
		r.srv.bufs.put(r.dataBuf)
		r.dataBuf = nil
	}
	if size == 0 {
		return own
	}
	if r.dataBuf == nil {
		r.dataBuf = r.srv.bufs.get(size)
	}
	if size == streamBufferSize && !r.rcvbufSet {
		r.rcvbufSet = true
		r.fixReceiveBuffer()
	}
	return r.dataBuf
}

// fixReceiveBuffer gives the client's socket the fixed receive buffer of
// a streaming body (streamSocketBuffer), where the Server has one. It is
// best effort: a refusal leaves the kernel's sizing, and the debug log
// says so.
func (r *runner) fixReceiveBuffer() {
	tc, ok := r.client.(*net.TCPConn)
	if !ok || r.srv.streamRcvbuf == 0 {
		return
	}
	if err := tc.SetReadBuffer(r.srv.streamRcvbuf); err != nil {
		r.log.Debug("socket receive buffer not set", "err", err)
	}
}

// upstreamLoop connects to the upstream, then reads it and drives the
// core with what it reads.
func (r *runner) upstreamLoop(ctx context.Context) {
	defer func() {
		if p := recover(); p != nil {
			r.failed(p)
		}
		r.sideDone()
	}()
	conn, err := r.srv.dial(ctx)
	if !r.connected(conn, err) {
		return
	}
	buf := r.srv.bufs.getCommand()
	for {
		var n int
		n, err = conn.Read(*buf)
		if !r.offerUpstream((*buf)[:n], err) {
			break
		}
	}
	r.mu.Lock()
	r.upReaderDone = true
	handoff := r.upHandoff
	r.mu.Unlock()
	if handoff {
		// The upstream was told QUIT: it closes first (closeUpstream).
		// What it still sends (its 221) is read and dropped.
		for total := 0; err == nil && total < maxLingerBytes; {
			var n int
			n, err = conn.Read(*buf)
			total += n
		}
		conn.Close()
	}
	// Nothing reads the buffer once offerUpstream has returned.
	r.srv.bufs.putCommand(buf)
}

// connected reports the dial's outcome to the core; it returns whether
// the connection is the session's upstream now.
func (r *runner) connected(conn net.Conn, err error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dialCancel()
	if r.isDone() {
		if conn != nil {
			conn.Close()
		}
		return false
	}
	switch {
	case err != nil && accept.IsResourceShortage(err):
		r.obs.ResourceShortage(ResourceUpstreamConnect)
		r.log.Error("out of file descriptors: cannot connect to the upstream; the client gets 421 4.3.2", "upstream", r.srv.upstreamName(), "err", err, "open_files_limit", accept.OpenFilesLimit())
		r.trace.note("out of file descriptors: " + err.Error())
		r.s.HandleLocalResourcesExhausted(shortagePhrase(err))
	case err != nil:
		// The core's upstream error event is logged (logEvents) with
		// this detail: one line for one failure.
		r.upErrDetail = err.Error()
		r.trace.note("upstream unreachable: " + err.Error())
		r.s.HandleUpstreamConnectFailed(connectPhrase(err))
	case r.s.UpstreamGone():
		conn.Close()
	default:
		r.up = conn
		r.ioMu.Lock()
		r.upIO = conn
		r.ioMu.Unlock()
		r.s.HandleUpstreamConnected()
	}
	r.settle()
	return r.up == conn && conn != nil && !r.isDone()
}

// offerUpstream gives the core what the upstream sent; it returns whether
// to read on.
func (r *runner) offerUpstream(p []byte, err error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.isDone() {
		return false
	}
	r.trace.record(traceUpIn, p)
	if len(p) > 0 {
		r.s.HandleUpstreamData(p)
		r.observeReply()
	}
	if err != nil {
		if !r.s.UpstreamGone() {
			r.log.Debug("upstream read ended", "err", err)
		}
		r.s.HandleUpstreamClosed(upstreamEnd(err))
	}
	r.settle()
	return err == nil && !r.isDone()
}

// flush writes what the core produced, in order, and closes what it
// asks to close. A failed write is an input to the core like any other.
// With holdUp the upstream output stays in the core, to go with what the
// next input adds to it; if that input discards it instead (the upstream
// lost, a message refused), it was never to be sent.
func (r *runner) flush(holdUp bool) {
	for {
		progress := false
		if !holdUp {
			progress = r.writeUpstream()
		}
		if out := r.s.TakeClientOutput(); len(out) > 0 && !r.clientGone {
			progress = true
			r.trace.record(traceClientOut, out)
			r.clientWriteDue = r.arm(r.client, r.clientWriteDue, r.srv.cfg.CommandTimeout)
			n, err := r.client.Write(out)
			r.obs.Relayed(0, n)
			if err != nil {
				r.log.Debug("client write failed", "err", err)
				r.clientGone = true
				r.s.HandleClientClosed()
			}
		}
		r.logEvents(r.s.TakeEvents())
		if r.s.UpstreamGone() && !r.upClosed {
			r.closeUpstream()
		}
		if !progress {
			return
		}
	}
}

// writeUpstream writes the core's upstream output, its own bytes then the
// client input it lent, if any; it reports whether there was some.
func (r *runner) writeUpstream() bool {
	out, lent := r.s.TakeUpstreamOutput(), r.s.TakeUpstreamLent()
	if len(out)+len(lent) == 0 || r.up == nil || r.upClosed {
		return false
	}
	r.upWriteDue = r.arm(r.up, r.upWriteDue, r.srv.cfg.ReplyTimeout)
	var n int
	var err error
	switch {
	case len(lent) == 0:
		r.trace.record(traceUpOut, out)
		n, err = r.up.Write(out)
	case len(out) == 0:
		r.trace.record(traceUpOut, lent)
		n, err = r.up.Write(lent)
	default:
		// Both in one system call (writev).
		r.trace.record(traceUpOut, out)
		r.trace.record(traceUpOut, lent)
		r.iov = [2][]byte{out, lent}
		r.iovBufs = r.iov[:]
		var n64 int64
		n64, err = r.iovBufs.WriteTo(r.up)
		n = int(n64)
		r.iov = [2][]byte{} // the session's and the client's bytes are not kept
	}
	r.obs.Relayed(n, 0)
	if err != nil {
		r.log.Debug("upstream write failed", "err", err)
		r.s.HandleUpstreamClosed(upstreamEnd(err))
	}
	return true
}

// writeDeadlineShare is the share of a write timeout that may pass before
// armWrite moves the deadline on: a write gets at least 7/8 of its
// timeout and at most all of it. Moving a deadline changes a runtime
// timer, which before every write costs CPU time (docs/performance.md);
// a session's writes now move it about once.
const writeDeadlineShare = 8

// armWrite makes sure the next write to c has at least 7/8 of timeout
// before it fails, moving c's write deadline (due) on to timeout from now
// only when less than that remains; it returns the deadline now set.
func armWrite(c net.Conn, due time.Time, timeout time.Duration) time.Time {
	now := time.Now()
	if due.Sub(now) >= timeout-timeout/writeDeadlineShare {
		return due
	}
	due = now.Add(timeout)
	c.SetWriteDeadline(due)
	return due
}

// arm is armWrite bounded by the drain deadline: once expire has set
// writeLimit, every write to c is due then, never later. The limit is
// read again after a deadline is moved, as expire may set it meanwhile;
// either that read sees it, or expire's own SetWriteDeadline comes after
// the move.
func (r *runner) arm(c net.Conn, due time.Time, timeout time.Duration) time.Time {
	if l := r.writeLimit.Load(); l != 0 {
		limit := time.Unix(0, l)
		if !due.Equal(limit) {
			c.SetWriteDeadline(limit)
		}
		return limit
	}
	moved := armWrite(c, due, timeout)
	if moved.Equal(due) {
		return due
	}
	if l := r.writeLimit.Load(); l != 0 {
		limit := time.Unix(0, l)
		c.SetWriteDeadline(limit)
		return limit
	}
	return moved
}

// applyTimers starts and stops the clocks as the core asks.
func (r *runner) applyTimers() {
	t := r.s.PollTimers()
	if t.Client != r.applied.Client || t.ClientGen != r.applied.ClientGen {
		var d time.Duration
		switch t.Client {
		case core.TimerClientCommand:
			d = r.srv.cfg.CommandTimeout
		case core.TimerClientData:
			d = r.srv.cfg.DataIdleTimeout
		}
		if d > 0 {
			r.clientClock.set(time.Now().Add(d))
		} else {
			r.clientClock.stop()
		}
	}
	if t.Upstream != r.applied.Upstream || t.UpstreamGen != r.applied.UpstreamGen {
		if t.Upstream {
			r.upWaitStart, r.upWaitData = time.Now(), r.inData
			r.upClock.set(r.upWaitStart.Add(r.srv.cfg.ReplyTimeout))
		} else {
			r.upClock.stop()
		}
	}
	r.applied = t
}

// observeReply tells the observer how long the upstream took when the
// bytes just read ended the wait the timers were armed for.
func (r *runner) observeReply() {
	t := r.s.PollTimers()
	if r.applied.Upstream && (!t.Upstream || t.UpstreamGen != r.applied.UpstreamGen) {
		r.obs.UpstreamReplied(time.Since(r.upWaitStart), r.upWaitData)
	}
}

// closeUpstream ends the upstream connection, or the dial. An upstream
// that was told QUIT closes the connection itself (core UpstreamQuit):
// then upstreamLoop reads on until it has, for at most closeLinger, and
// closes its side after it, so TCP's TIME_WAIT stays with the upstream,
// as after any SMTP client's QUIT, not with the proxy, which opens a
// connection to the same upstream address for every message. Any other
// end closes at once. Called with the lock held.
func (r *runner) closeUpstream() {
	r.upClosed = true
	switch {
	case r.up == nil:
		if r.dialCancel != nil {
			r.dialCancel()
		}
	case r.s.UpstreamQuit() && !r.upReaderDone:
		r.upHandoff = true
		r.up.SetReadDeadline(r.lingerUntil())
	default:
		r.up.Close()
	}
}

// closeAll ends the session: the readers stop at their next look (a read
// of the client in progress returns at once), the upstream is closed, and
// the client gets a half-close at once; the client side closes it, after
// lingering if its input has not ended. Called with the lock held.
func (r *runner) closeAll() {
	if r.isDone() {
		return
	}
	close(r.done)
	// The half-close tells the client at once that nothing more comes.
	if cw, ok := r.client.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	r.client.SetReadDeadline(time.Now())
	if !r.upClosed {
		r.closeUpstream()
	}
	if r.dialCancel != nil {
		r.dialCancel()
	}
	r.clientClock.halt()
	r.upClock.halt()
	if r.endWaits != nil {
		r.endWaits()
	}
	if r.stopShutdown != nil {
		r.stopShutdown()
	}
}

func (r *runner) logEvents(events []core.Event) {
	for _, e := range events {
		switch e.Kind {
		case core.EventDataStart:
			r.dataStart = time.Now()
			r.inData = true
		case core.EventRecipientAccepted:
			if r.srv.cfg.Expand != nil {
				r.expandRecipient(e.Index, e.Reason)
			}
		case core.EventTxEnd:
			r.logTx(e.Tx)
			r.inData = false
			var d time.Duration
			if !r.dataStart.IsZero() {
				d = time.Since(r.dataStart)
			}
			r.obs.TransactionEnded(e.Tx, d)
		case core.EventUpstreamError:
			r.obs.UpstreamFailed(e.Failure)
			if r.upErrDetail != "" {
				r.log.Warn("upstream error", "upstream", r.srv.upstreamName(), "error", e.Reason, "detail", r.upErrDetail)
				r.upErrDetail = ""
			} else {
				r.log.Warn("upstream error", "upstream", r.srv.upstreamName(), "error", e.Reason)
			}
			r.trace.note("upstream error: " + e.Reason)
		case core.EventLocalReply:
			r.log.Debug("answered locally", "reply", e.Reason)
		case core.EventCheckFailed:
			r.log.Error("loop check failed", "panic", e.Reason)
		}
	}
}

// maxLoggedRecipients bounds the recipients a transaction line lists; a
// count follows for the rest. An SMTP transaction may have any number of
// recipients (Postfix's smtpd_recipient_limit is 1000 by default, and
// may be raised), while journald cuts lines at 48 KiB by default
// (LineMax=): a line should stay whole.
const maxLoggedRecipients = 100

// logTx writes the one line per transaction of SPEC section 6.
func (r *runner) logTx(tx *core.Transaction) {
	level := slog.LevelInfo
	if tx.Outcome == core.OutcomeUpstreamFailed || tx.Outcome == core.OutcomeCheckFailed {
		level = slog.LevelWarn
	}
	if !r.log.Enabled(context.Background(), level) {
		return // parsing the addresses for a line nobody reads is waste
	}
	rcpts := make([]string, min(len(tx.Recipients), maxLoggedRecipients))
	for i := range rcpts {
		rcpts[i] = mailbox(tx.Recipients[i])
	}
	attrs := []any{
		"client", clientOf(tx, r.client),
		"sender", mailbox(tx.Sender),
		"recipients", rcpts,
		"verdict", tx.Outcome.String(),
		"reply", tx.Reply,
		"size", tx.Size,
		"header_bytes", tx.HeaderBytes,
	}
	if len(tx.Recipients) > len(rcpts) {
		attrs = append(attrs, "recipients_total", len(tx.Recipients))
	}
	if tx.LoopRecipient != "" {
		attrs = append(attrs, "loop_recipient", tx.LoopRecipient)
	}
	if tx.LoopVia != "" {
		attrs = append(attrs, "loop_via", tx.LoopVia)
	}
	if tx.UpstreamReply != "" {
		attrs = append(attrs, "upstream_reply", tx.UpstreamReply)
	}
	if !r.dataStart.IsZero() {
		attrs = append(attrs, "duration", time.Since(r.dataStart).Round(time.Millisecond))
	}
	r.log.Log(context.Background(), level, "transaction", attrs...)
}

// mailbox gives the mailbox of a MAIL/RCPT argument for logs, or the
// argument itself when it does not parse.
func mailbox(arg string) string {
	p, err := address.ParsePath(arg)
	switch {
	case err != nil:
		return strings.TrimSpace(arg)
	case p.Null:
		return "<>"
	}
	return p.Addr.String()
}

// exemptFunc is the core's Exempt for a list: an XFORWARD ADDR value in
// it ("IPv6:" before an IPv6 address, as Postfix writes it), or nil for
// an empty list.
func exemptFunc(l *allowlist.List) func(clientAddr string) bool {
	if l.Empty() {
		return nil
	}
	return func(clientAddr string) bool {
		a := clientAddr
		if len(a) > 5 && strings.EqualFold(a[:5], "IPv6:") {
			a = a[5:]
		}
		ip, err := netip.ParseAddr(a)
		return err == nil && l.Contains(ip)
	}
}

// clientOf names the real client: from XFORWARD when the front smtpd sent
// it, else the connection's peer (the front smtpd itself).
func clientOf(tx *core.Transaction, conn net.Conn) string {
	switch {
	case tx.ClientName != "" && tx.ClientAddr != "":
		return tx.ClientName + "[" + tx.ClientAddr + "]"
	case tx.ClientAddr != "":
		return "[" + tx.ClientAddr + "]"
	}
	return conn.RemoteAddr().String()
}
