package smtpproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/accept"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// Server is the proxy: it accepts client connections and runs one session
// per connection against its upstream.
type Server struct {
	cfg  Config
	dial func(ctx context.Context) (net.Conn, error)
	log  *slog.Logger
	bufs *bufferPools
	// budget is the header memory all sessions share; a session waits
	// for it at most headerWait (headerMemoryWait; tests shorten it).
	budget     *headerBudget
	headerWait time.Duration

	// streamRcvbuf is the SO_RCVBUF of a client socket whose message
	// body streams (streamSocketBuffer); 0: left to the kernel, for the
	// reason rcvbufOff.
	streamRcvbuf int
	rcvbufOff    error

	idBase string
	nextID atomic.Uint64
	active atomic.Int64
}

// New checks cfg, fills in defaults and returns a Server.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	dial, err := cfg.dialer()
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if cfg.Dial == nil && cfg.Upstream == "" {
		return nil, errors.New("upstream: no address")
	}
	if need := int64(core.HeaderCaptureMax(cfg.MaxHeaderBytes)); cfg.MaxHeaderMemory < need {
		return nil, fmt.Errorf("the header memory (%d bytes) cannot hold one maximal header section (%d bytes with -max-header-bytes %d)", cfg.MaxHeaderMemory, need, cfg.MaxHeaderBytes)
	}
	rcvbuf, rcvbufOff := streamRcvbuf()
	return &Server{
		cfg:          cfg,
		dial:         dial,
		log:          cfg.Logger,
		bufs:         newBufferPools(),
		budget:       newHeaderBudget(cfg.MaxHeaderMemory),
		headerWait:   headerMemoryWait,
		streamRcvbuf: rcvbuf,
		rcvbufOff:    rcvbufOff,
		idBase:       strconv.Itoa(os.Getpid()),
	}, nil
}

// ListenAndServe listens on addr (host:port, [v6addr]:port or unix:/path)
// and serves until ctx is done; see Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx is done, then shuts down
// gracefully (SPEC section 6): the listener is closed, a session between
// transactions gets "421 4.3.2 shutting down" at once, one inside a
// transaction finishes it first; after the drain time every session left
// is closed. Serve returns when every session has ended: nil after a
// shutdown, or the accept error that stopped it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// Sessions learn of shutdown and the drain deadline from these
	// contexts' ends (context.AfterFunc): no goroutine per session waits.
	shutdown, closeShutdown := context.WithCancel(context.Background())
	drain, closeDrain := context.WithCancel(context.Background())
	defer closeDrain()
	var wg sync.WaitGroup // sessions and refusals
	// Sessions run on pooled goroutines (see goPool).
	pool := newGoPool(shutdown.Done())
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	loops := "refuse"
	if s.cfg.DryRun {
		loops = "log only (dry run)"
	}
	s.log.Info("listening", "listen", ln.Addr().String(), "upstream", s.upstreamName(), "loops", loops, "allow_client", s.cfg.AllowClient.String())
	if s.cfg.DryRun {
		s.log.Warn("dry run: loops are logged (verdict=dry-run-loop) and let through; remove -dry-run to refuse them")
	}
	if s.rcvbufOff != nil {
		s.log.Info("message bodies: client socket receive buffers left to the kernel", "reason", s.rcvbufOff)
	}
	var acceptErr error
	accepts := accept.New(ln, s.log, func() { s.cfg.Observer.ResourceShortage(ResourceAccept) })
	for {
		conn, err := accepts.Next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				acceptErr = err
			}
			break
		}
		wg.Add(1)
		if !s.cfg.AllowClient.Allows(conn.RemoteAddr()) {
			go func() {
				defer wg.Done()
				s.refusePeer(conn)
			}()
			continue
		}
		// Only this loop adds sessions, so the check and the add below
		// cannot race; rejected connections do not count as sessions.
		if s.active.Load() >= int64(s.cfg.MaxSessions) {
			go func() {
				defer wg.Done()
				s.reject(conn)
			}()
			continue
		}
		s.active.Add(1)
		id := s.idBase + "." + strconv.FormatUint(s.nextID.Add(1), 10)
		pool.Go(func() {
			defer wg.Done()
			defer s.active.Add(-1)
			s.serveSession(conn, id, pool, shutdown, drain)
		})
	}
	closeShutdown()
	s.log.Info("shutting down", "sessions", s.active.Load(), "drain", s.cfg.DrainTimeout)
	t := time.AfterFunc(s.cfg.DrainTimeout, closeDrain)
	wg.Wait()
	pool.wait()
	t.Stop()
	s.log.Info("stopped")
	return acceptErr
}

// reject answers a connection over the session limit.
func (s *Server) reject(conn net.Conn) {
	defer conn.Close()
	s.cfg.Observer.SessionRefused()
	s.log.Warn("too many connections", "peer", conn.RemoteAddr().String(), "max_sessions", s.cfg.MaxSessions)
	conn.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
	conn.Write([]byte(core.ReplyTooMany))
}

// refusePeer answers a connection from a peer outside AllowClient, before
// anything else happens for it: no upstream connection is opened.
func (s *Server) refusePeer(conn net.Conn) {
	defer conn.Close()
	s.cfg.Observer.PeerRefused()
	s.log.Warn("client not allowed", "peer", conn.RemoteAddr().String(), "allow_client", s.cfg.AllowClient.String())
	conn.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
	conn.Write([]byte(core.ReplyNotAllowed))
}

func (s *Server) upstreamName() string {
	if s.cfg.Upstream != "" {
		return s.cfg.Upstream
	}
	return "upstream"
}
