package smtpproxy

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// chunk is one read from a connection: the bytes (in the reader's own
// buffer) and the error that ended the read, if any.
type chunk struct {
	b   []byte
	err error
}

// reader reads conn into a buffer and hands each chunk to the session
// loop; it reads again only when the loop hands a buffer back (own, or a
// data buffer while message data flows). That is the backpressure: a side
// the session is not ready for is simply not read, and the kernel's flow
// control slows the sender.
//
// When the session ends (done), a client reader lingers: it reads and
// throws away what the client still sends, for a short while, before it
// closes the connection. Closing a TCP socket with unread input sends a
// reset, which can destroy the last reply (a 421 or 221) before the
// client has read it.
//
// The loop may still be reading the last chunk when the reader stops, so
// the reader waits for done, after which the buffers are its alone, before
// it returns them to their pools.
func reader(conn net.Conn, own *[]byte, pools *bufferPools, out chan<- chunk, back <-chan *[]byte, done <-chan struct{}, linger bool) {
	buf := own
	defer func() {
		<-done
		if linger {
			// The session may have written its last reply just now.
			conn.SetReadDeadline(time.Now().Add(closeLinger))
			for total := 0; total < maxLingerBytes; {
				n, err := conn.Read(*own)
				total += n
				if err != nil {
					break
				}
			}
			conn.Close()
		}
		if buf != own {
			pools.put(buf)
		}
		pools.put(own)
	}()
	for {
		n, err := conn.Read(*buf)
		select {
		case out <- chunk{(*buf)[:n], err}:
		case <-done:
			return
		}
		if err != nil {
			return
		}
		select {
		case buf = <-back:
		case <-done:
			return
		}
	}
}

type dialResult struct {
	conn net.Conn
	err  error
}

// runner is the I/O loop of one session: it feeds the core what the
// connections and clocks say and carries out what the core asks.
type runner struct {
	srv    *Server
	s      *core.Session
	log    *slog.Logger
	trace  *tracer
	client net.Conn
	up     net.Conn

	done       chan struct{}
	clientCh   chan chunk
	clientBack chan *[]byte
	upCh       chan chunk
	upBack     chan *[]byte
	// Read buffers: one command buffer per side, and a data buffer for
	// the client while message data flows (nil otherwise). The runner
	// hands them to the readers and, until done, takes the data buffer
	// back to the pool when the message is over.
	clientBuf, upBuf, dataBuf *[]byte

	pending     []byte // client bytes not yet consumed
	holding     bool   // the client reader's buffer is with us
	clientErr   error  // the client's read ended; told to the core once pending is used
	clientGone  bool
	upClosed    bool
	dialCancel  context.CancelFunc
	clientTimer *time.Timer
	upTimer     *time.Timer
	applied     core.Timers
	dataStart   time.Time

	obs         Observer
	inData      bool      // between EventDataStart and EventTxEnd, for obs
	upWaitStart time.Time // when the current wait for an upstream reply began
	upWaitData  bool      // that wait belongs to a message
}

func (s *Server) serveSession(client net.Conn, id string, shutdown, drain <-chan struct{}) {
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
		}),
		client:      client,
		done:        make(chan struct{}),
		clientCh:    make(chan chunk),
		clientBack:  make(chan *[]byte, 1),
		upCh:        make(chan chunk),
		upBack:      make(chan *[]byte, 1),
		clientBuf:   s.bufs.getCommand(),
		clientTimer: stoppedTimer(),
		upTimer:     stoppedTimer(),
	}
	defer func() {
		// A bug in one session must not take the others down with it.
		if p := recover(); p != nil {
			log.Error("session failed", "panic", p)
			r.closeAll()
		}
		if err := tr.close(); err != nil {
			log.Error("debug trace incomplete", "err", err)
		}
		log.Info("session end", "peer", peer, "reason", r.s.EndReason(), "duration", time.Since(start).Round(time.Millisecond))
	}()
	r.run(shutdown, drain)
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

func (r *runner) run(shutdown, drain <-chan struct{}) {
	defer r.closeAll()
	go reader(r.client, r.clientBuf, r.srv.bufs, r.clientCh, r.clientBack, r.done, true)

	dialCh := make(chan dialResult)
	ctx, cancel := context.WithTimeout(context.Background(), r.srv.cfg.ConnectTimeout)
	r.dialCancel = cancel
	go func() {
		conn, err := r.srv.dial(ctx)
		select {
		case dialCh <- dialResult{conn, err}:
		case <-r.done:
			if conn != nil {
				conn.Close()
			}
		}
	}()

	for !r.s.Done() {
		r.feedClient()
		if r.s.Done() {
			break
		}
		r.applyTimers()
		select {
		case res := <-dialCh:
			r.dialCancel()
			switch {
			case res.err != nil:
				r.log.Warn("upstream unreachable", "upstream", r.srv.upstreamName(), "err", res.err)
				r.trace.note("upstream unreachable: " + res.err.Error())
				r.s.UpstreamConnectFailed(connectPhrase(res.err))
			case r.s.UpstreamGone():
				res.conn.Close()
			default:
				r.up = res.conn
				r.upBuf = r.srv.bufs.getCommand()
				go reader(r.up, r.upBuf, r.srv.bufs, r.upCh, r.upBack, r.done, false)
				r.s.UpstreamConnected()
			}
		case c := <-r.clientCh:
			r.holding = true
			r.trace.record(traceClientIn, c.b)
			r.pending = c.b
			if c.err != nil {
				r.clientErr = c.err
			}
		case c := <-r.upCh:
			r.trace.record(traceUpIn, c.b)
			if len(c.b) > 0 {
				r.s.UpstreamData(c.b)
				r.observeReply()
			}
			if c.err != nil {
				if !r.s.UpstreamGone() {
					r.log.Debug("upstream read ended", "err", c.err)
				}
				r.s.UpstreamClosed(ioPhrase(c.err))
			} else {
				r.upBack <- r.upBuf
			}
		case <-r.clientTimer.C:
			r.s.TimerExpired(r.applied.Client)
		case <-r.upTimer.C:
			r.s.TimerExpired(core.TimerUpstreamReply)
		case <-shutdown:
			shutdown = nil
			r.s.Shutdown()
		case <-drain:
			drain = nil
			r.s.DrainExpired()
		}
		r.flush()
	}
	r.flush()
}

// feedClient gives the core the client bytes it is ready for; once all
// are used the buffer goes back to the reader. The end of the client's
// input is reported only when the core is ready for more input: a client
// that sends QUIT, or its last message, and half-closes at once still
// gets its reply.
func (r *runner) feedClient() {
	for len(r.pending) > 0 && r.s.WantsClientInput() {
		n := r.s.ClientData(r.pending)
		r.pending = r.pending[n:]
		r.flush()
	}
	if len(r.pending) > 0 || !r.holding {
		return
	}
	if r.clientErr == nil {
		r.holding = false
		r.clientBack <- r.nextClientBuffer()
		return
	}
	if r.s.WantsClientInput() || r.s.Done() || r.clientGone {
		r.holding = false
		if !r.s.Done() {
			r.log.Debug("client read ended", "err", r.clientErr)
			r.s.ClientClosed()
			r.flush()
		}
	}
}

// nextClientBuffer is the buffer for the next client read: the data
// buffer while message data flows, else the command buffer (the data
// buffer, no longer read into, goes back to the pool).
func (r *runner) nextClientBuffer() *[]byte {
	if r.s.Timers().Client == core.TimerClientData {
		if r.dataBuf == nil {
			r.dataBuf = r.srv.bufs.getData()
		}
		return r.dataBuf
	}
	if r.dataBuf != nil {
		r.srv.bufs.putData(r.dataBuf)
		r.dataBuf = nil
	}
	return r.clientBuf
}

// flush writes what the core produced, in order, and closes what it
// asks to close. A failed write is an input to the core like any other.
func (r *runner) flush() {
	for {
		progress := false
		if out := r.s.TakeUpstreamOutput(); len(out) > 0 && r.up != nil && !r.upClosed {
			progress = true
			r.trace.record(traceUpOut, out)
			r.up.SetWriteDeadline(time.Now().Add(r.srv.cfg.ReplyTimeout))
			n, err := r.up.Write(out)
			r.obs.Relayed(n, 0)
			if err != nil {
				r.log.Debug("upstream write failed", "err", err)
				r.s.UpstreamClosed(ioPhrase(err))
			}
		}
		if out := r.s.TakeClientOutput(); len(out) > 0 && !r.clientGone {
			progress = true
			r.trace.record(traceClientOut, out)
			r.client.SetWriteDeadline(time.Now().Add(r.srv.cfg.CommandTimeout))
			n, err := r.client.Write(out)
			r.obs.Relayed(0, n)
			if err != nil {
				r.log.Debug("client write failed", "err", err)
				r.clientGone = true
				r.s.ClientClosed()
			}
		}
		r.logEvents(r.s.TakeEvents())
		if r.s.UpstreamGone() && !r.upClosed {
			r.upClosed = true
			if r.up != nil {
				r.up.Close()
			} else if r.dialCancel != nil {
				r.dialCancel()
			}
		}
		if !progress {
			return
		}
	}
}

// applyTimers starts and stops the clocks as the core asks.
func (r *runner) applyTimers() {
	t := r.s.Timers()
	if t.Client != r.applied.Client || t.ClientGen != r.applied.ClientGen {
		switch t.Client {
		case core.TimerClientCommand:
			r.clientTimer.Reset(r.srv.cfg.CommandTimeout)
		case core.TimerClientData:
			r.clientTimer.Reset(r.srv.cfg.DataIdleTimeout)
		default:
			r.clientTimer.Stop()
		}
	}
	if t.Upstream != r.applied.Upstream || t.UpstreamGen != r.applied.UpstreamGen {
		if t.Upstream {
			r.upWaitStart, r.upWaitData = time.Now(), r.inData
			r.upTimer.Reset(r.srv.cfg.ReplyTimeout)
		} else {
			r.upTimer.Stop()
		}
	}
	r.applied = t
}

// observeReply tells the observer how long the upstream took when the
// bytes just read ended the wait the timers were armed for.
func (r *runner) observeReply() {
	t := r.s.Timers()
	if r.applied.Upstream && (!t.Upstream || t.UpstreamGen != r.applied.UpstreamGen) {
		r.obs.UpstreamReplied(time.Since(r.upWaitStart), r.upWaitData)
	}
}

func (r *runner) closeAll() {
	select {
	case <-r.done:
		return
	default:
	}
	close(r.done)
	// The client reader closes the client connection after lingering;
	// the half-close tells the client at once that nothing more comes.
	if cw, ok := r.client.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	r.client.SetReadDeadline(time.Now().Add(closeLinger))
	if r.up != nil {
		r.up.Close()
	}
	if r.dialCancel != nil {
		r.dialCancel()
	}
	r.clientTimer.Stop()
	r.upTimer.Stop()
}

func (r *runner) logEvents(events []core.Event) {
	for _, e := range events {
		switch e.Kind {
		case core.EventDataStart:
			r.dataStart = time.Now()
			r.inData = true
		case core.EventTxEnd:
			r.logTx(e.Tx)
			r.inData = false
			var d time.Duration
			if !r.dataStart.IsZero() {
				d = time.Since(r.dataStart)
			}
			r.obs.TransactionEnded(e.Tx, d)
		case core.EventUpstreamError:
			r.obs.UpstreamFailed(e.Reason)
			r.log.Warn("upstream error", "upstream", r.srv.upstreamName(), "error", e.Reason)
			r.trace.note("upstream error: " + e.Reason)
		case core.EventLocalReply:
			r.log.Debug("answered locally", "reply", e.Reason)
		case core.EventCheckFailed:
			r.log.Error("loop check failed", "panic", e.Reason)
		}
	}
}

// logTx writes the one line per transaction of SPEC section 6.
func (r *runner) logTx(tx *core.Transaction) {
	level := slog.LevelInfo
	if tx.Outcome == core.OutcomeUpstreamFailed || tx.Outcome == core.OutcomeCheckFailed {
		level = slog.LevelWarn
	}
	if !r.log.Enabled(context.Background(), level) {
		return // parsing the addresses for a line nobody reads is waste
	}
	rcpts := make([]string, len(tx.Recipients))
	for i, a := range tx.Recipients {
		rcpts[i] = mailbox(a)
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
	if tx.LoopRecipient != "" {
		attrs = append(attrs, "loop_recipient", tx.LoopRecipient)
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
