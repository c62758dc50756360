// Package accept is the accept loop both front-ends share: it hands out
// the listener's connections and waits out the failures that pass, so a
// front-end neither spins on nor gives up over a shortage of file
// descriptors.
//
// Guarantees: a timeout or a descriptor shortage (EMFILE, ENFILE) is
// logged and retried after a wait that doubles from FirstWait to MaxWait,
// so the log gets at most a line per MaxWait while it lasts and accepting
// resumes within MaxWait of descriptors coming free; any other error ends
// accepting for good and is returned; a done context ends it at once.
package accept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"
)

// The retry waits. FirstWait is short enough that a passing fault costs
// nothing visible; MaxWait bounds both the delay before accepting resumes
// and the rate of log lines while the shortage lasts.
const (
	FirstWait = 5 * time.Millisecond
	MaxWait   = time.Second
)

// Loop accepts from one listener. Its zero value is not usable; make one
// with New. A Loop is used by one goroutine.
type Loop struct {
	ln       net.Listener
	log      *slog.Logger
	shortage func()
	wait     time.Duration
}

// New returns a loop over ln that logs to log and calls shortage (when
// not nil) once per descriptor shortage met, for a metric.
func New(ln net.Listener, log *slog.Logger, shortage func()) *Loop {
	return &Loop{ln: ln, log: log, shortage: shortage}
}

// Next returns the next connection. It returns ctx's error once ctx is
// done (the caller closes the listener then, to end a blocked Accept), or
// the error that ends accepting, naming the listener.
func (l *Loop) Next(ctx context.Context) (net.Conn, error) {
	for {
		conn, err := l.ln.Accept()
		if err == nil {
			l.wait = 0
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ne net.Error
		shortage := IsResourceShortage(err)
		if !shortage && !(errors.As(err, &ne) && ne.Timeout()) {
			l.log.Error("accept failed; not accepting any more", "err", err)
			return nil, fmt.Errorf("accept on %s: %w", l.ln.Addr(), err)
		}
		l.wait = min(max(2*l.wait, FirstWait), MaxWait)
		if shortage {
			if l.shortage != nil {
				l.shortage()
			}
			l.log.Error("out of file descriptors: cannot accept a connection; retrying", "err", err, "retry_in", l.wait, "open_files_limit", OpenFilesLimit())
		} else {
			l.log.Error("accept failed; retrying", "err", err, "retry_in", l.wait)
		}
		select {
		case <-time.After(l.wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// IsResourceShortage reports whether err says the process or the system
// ran out of file descriptors: a local fault, not a peer's.
func IsResourceShortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
