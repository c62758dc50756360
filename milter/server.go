package milter

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/accept"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/quickack"
)

// Server is the milter: it accepts the MTA's connections and runs one
// session per connection. Its zero value is not usable; call New.
type Server struct {
	cfg    Config
	log    *slog.Logger
	obs    Observer
	policy atomic.Pointer[Policy]

	idBase string
	nextID atomic.Uint64
	active atomic.Int64

	// draining is set when the listener has closed: idle sessions end,
	// sessions inside a message end after it.
	draining atomic.Bool

	mu       sync.Mutex
	sessions map[*guardConn]struct{}
	wg       sync.WaitGroup

	// checkHook, when set, is called at the start of every verdict: the
	// tests make the check fail with it. Set before Serve; nil otherwise.
	checkHook func()
}

// New checks cfg, fills in defaults and returns a Server.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Policy.check(); err != nil {
		return nil, err
	}
	if cfg.MaxHeaderBytes < MinHeaderBytes {
		return nil, fmt.Errorf("header limit %d is below the minimum of %d bytes", cfg.MaxHeaderBytes, MinHeaderBytes)
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		obs:      cfg.Observer,
		idBase:   strconv.Itoa(os.Getpid()),
		sessions: make(map[*guardConn]struct{}),
	}
	p := cfg.Policy
	s.policy.Store(&p)
	return s, nil
}

// Reload puts p in force for every message whose MAIL event comes after
// it; messages in progress keep the policy they began with.
func (s *Server) Reload(p Policy) error {
	if err := p.check(); err != nil {
		return err
	}
	s.policy.Store(&p)
	s.warnPolicy(&p)
	return nil
}

// warnPolicy logs what an operator must know about p: that drop-recipient
// without recipient expansion removes nobody.
func (s *Server) warnPolicy(p *Policy) {
	if p.LoopAction == DropRecipient && p.Expander == nil {
		s.log.Warn("drop-recipient without recipient expansion (-postfix-config): what a recipient expands to is unknown, " +
			"so none can be removed without risking mail for addresses that do not loop; a looping message is refused whole (554 5.4.6)")
	}
}

// Serve accepts connections on ln until ctx is done, then shuts down
// gracefully: the listener is closed, sessions between messages are
// closed at once, a session inside a message is closed after its reply;
// at the drain deadline (DrainTimeout) every session left is closed.
// Postfix applies milter_default_action to whatever a closed session
// would still have judged. Serve returns when every session has ended:
// nil after a shutdown, or the accept error that stopped it. A Server
// serves once.
//
// A peer outside AllowClients is closed before any milter exchange, as
// is a connection over MaxSessions.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	p := s.policy.Load()
	s.log.Info("listening", "listen", ln.Addr().String(), "allow_client", s.cfg.AllowClients.String(),
		"loop_action", p.LoopAction.String(), "dry_run", p.DryRun)
	if p.DryRun {
		s.log.Warn("dry run: loops are logged (verdict=dry-run-loop) and let through; remove -dry-run to refuse them")
	}
	s.warnPolicy(p)

	var acceptErr error
	accepts := accept.New(ln, s.log, s.cfg.Observer.AcceptShortage)
	for {
		conn, err := accepts.Next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				acceptErr = err
			}
			break
		}
		peer := conn.RemoteAddr()
		if !s.cfg.AllowClients.Allows(peer) {
			conn.Close()
			s.obs.PeerRefused()
			s.log.Warn("peer refused: not in -allow-client", "peer", addrString(peer), "allow_client", s.cfg.AllowClients.String())
			continue
		}
		if s.active.Load() >= int64(s.cfg.MaxSessions) {
			conn.Close()
			s.obs.SessionRefused()
			s.log.Warn("too many sessions; connection closed", "peer", addrString(peer), "max_sessions", s.cfg.MaxSessions)
			continue
		}
		s.start(conn)
	}

	s.draining.Store(true)
	s.mu.Lock()
	n := len(s.sessions)
	for g := range s.sessions {
		g.kick()
	}
	s.mu.Unlock()
	s.log.Info("shutting down", "sessions", n, "drain", s.cfg.DrainTimeout)
	t := time.AfterFunc(s.cfg.DrainTimeout, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.sessions) > 0 {
			s.log.Warn("drain time over; closing the sessions left", "sessions", len(s.sessions))
		}
		for g := range s.sessions {
			g.abort(errShuttingDown)
		}
	})
	s.wg.Wait()
	t.Stop()
	s.log.Info("stopped")
	return acceptErr
}

// start runs a session on conn: go-milter's session on a guardConn, with
// a session of ours as its backend.
func (s *Server) start(conn net.Conn) {
	id := s.idBase + "." + strconv.FormatUint(s.nextID.Add(1), 10)
	sess := &session{srv: s, id: id, log: s.log.With("session", id), started: time.Now()}
	// Postfix writes to a milter with Nagle's algorithm on and flushes
	// each milter command on its own. With the no-reply options most
	// events get no answer, so nothing carries an ACK back: Nagle holds
	// the MTA's next short packet until the first is acknowledged, which
	// Linux delays once the session has written (the negotiation). So
	// every read is acknowledged at once; a reply carries its own ACK.
	g := &guardConn{Conn: conn, srv: s, sess: sess, ack: quickack.New(conn)}
	g.in = bufio.NewReaderSize(ackReader{g}, readBufferSize)
	sess.conn = g
	s.active.Add(1)
	s.wg.Add(1)
	s.mu.Lock()
	s.sessions[g] = struct{}{}
	s.mu.Unlock()
	s.obs.SessionStarted()
	sess.log.Debug("session start", "peer", addrString(conn.RemoteAddr()))

	// One go-milter server per connection: its Serve starts the session's
	// goroutine for the one connection oneConn hands it and returns, so
	// the backend it creates is tied to this connection.
	gm := gomilter.NewServer(
		gomilter.WithDynamicMilter(sess.newBackend),
		gomilter.WithNegotiationCallback(sess.negotiate),
		gomilter.WithMacroRequest(gomilter.StageMail, []string{gomilter.MacroAuthAuthen}),
		gomilter.WithMacroRequest(gomilter.StageRcpt, []string{gomilter.MacroRcptMailer}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []string{gomilter.MacroQueueId}),
		gomilter.WithReadTimeout(s.cfg.IdleTimeout),
		gomilter.WithWriteTimeout(s.cfg.WriteTimeout),
	)
	gm.Serve(&oneConn{conn: g}) // returns at once; the session runs on
}

// ended is called once per session, when it has closed its connection.
func (s *Server) ended(g *guardConn) {
	s.mu.Lock()
	delete(s.sessions, g)
	s.mu.Unlock()
	s.active.Add(-1) // before the log line, which tests take as the end
	sess := g.sess
	// A failed negotiation is the cause of whatever end go-milter made of
	// it (it closes without a QUIT, which end reads as errLibrary).
	var r EndReason
	var err error
	if sess.failure != nil {
		r, err = EndProtocol, sess.failure
	} else {
		r, err = g.end()
	}
	attrs := []any{"reason", r.String(), "duration", time.Since(sess.started).Round(time.Millisecond)}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	switch r {
	case EndClosed, EndShutdown:
		sess.log.Debug("session end", attrs...)
	default:
		sess.log.Warn("session failed", attrs...)
	}
	sess.release()
	s.obs.SessionEnded(r)
	s.wg.Done()
}

// oneConn is a listener that hands out one connection, then reports
// itself closed.
type oneConn struct {
	conn net.Conn
}

func (l *oneConn) Accept() (net.Conn, error) {
	if l.conn == nil {
		return nil, net.ErrClosed
	}
	c := l.conn
	l.conn = nil
	return c, nil
}

func (l *oneConn) Close() error { return nil }

func (l *oneConn) Addr() net.Addr { return oneConnAddr{} }

type oneConnAddr struct{}

func (oneConnAddr) Network() string { return "milter" }
func (oneConnAddr) String() string  { return "session" }

// addrString names a peer for logs.
func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	if s := a.String(); s != "" {
		return s
	}
	return a.Network()
}
