package expand

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Observer is told what the expander does, for metrics. Its methods are
// called from many goroutines and must not block.
type Observer interface {
	// Lookup counts one table lookup sent to the backend (the proxymap
	// request or the postmap process), cached or builtin tables aside.
	Lookup()
	// CacheHit counts an expansion served from the cache, CacheMiss one
	// that was computed.
	CacheHit()
	CacheMiss()
	// Incomplete counts an expansion that ended without its result, by
	// cause: the recipient is then judged as spelled.
	Incomplete(Cause)
}

// nopObserver is the Observer of an expander given none.
type nopObserver struct{}

func (nopObserver) Lookup()          {}
func (nopObserver) CacheHit()        {}
func (nopObserver) CacheMiss()       {}
func (nopObserver) Incomplete(Cause) {}

// observed counts the lookups that reach a backend.
type observed struct {
	Backend
	obs Observer
}

func (o observed) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	o.obs.Lookup()
	return o.Backend.Lookup(ctx, table, key)
}

// DefaultWarnEvery is how often WarnLimiter lets one warning through per
// cause: a broken lookup fails every recipient, and one line a minute
// says so without flooding the log.
const DefaultWarnEvery = time.Minute

// WarnLimiter logs at most one warning per cause per interval, and says
// how many it held back since the last one. It is safe for concurrent use.
type WarnLimiter struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	last map[Cause]time.Time
	held map[Cause]int
}

// NewWarnLimiter returns a limiter logging to log, one warning per cause
// per every (DefaultWarnEvery when 0). now is the clock (time.Now when
// nil).
func NewWarnLimiter(log *slog.Logger, every time.Duration, now func() time.Time) *WarnLimiter {
	if every <= 0 {
		every = DefaultWarnEvery
	}
	if now == nil {
		now = time.Now
	}
	return &WarnLimiter{log: log, every: every, now: now,
		last: map[Cause]time.Time{}, held: map[Cause]int{}}
}

// Warn logs msg with args and the cause, unless a warning of the same
// cause was logged less than the interval ago; it reports whether it
// logged.
func (w *WarnLimiter) Warn(cause Cause, msg string, args ...any) bool {
	now := w.now()
	w.mu.Lock()
	if last, ok := w.last[cause]; ok && now.Sub(last) < w.every {
		w.held[cause]++
		w.mu.Unlock()
		return false
	}
	held := w.held[cause]
	w.last[cause], w.held[cause] = now, 0
	w.mu.Unlock()
	args = append(args, "cause", cause.String())
	if held > 0 {
		args = append(args, "suppressed", held)
	}
	w.log.Warn(msg, args...)
	return true
}
