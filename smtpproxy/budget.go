package smtpproxy

// The header memory budget (Config.MaxHeaderMemory): one process-wide
// bound on the bytes all sessions' header sections hold, so that many
// sessions with large header sections at once cannot take the process
// past its memory limit (the systemd unit's MemoryMax). A session's
// header buffer grows only by grants from it (core Config.MeterHeader);
// one that cannot get its grant within headerMemoryWait gets
// "451 4.3.1" for that message, after its data is read.

import (
	"context"
	"time"

	"golang.org/x/sync/semaphore"
)

// headerMemoryWait bounds how long a session waits for header memory
// before its message is refused with 451 4.3.1. Other sessions' messages
// end within moments, giving theirs back; far below the client data
// timeout (3 min), which runs on meanwhile, and Postfix's
// smtpd_proxy_timeout (100 s).
const headerMemoryWait = 10 * time.Second

// headerBudget hands out header memory, first come first served, so a
// large request is not starved by small ones.
type headerBudget struct {
	sem  *semaphore.Weighted
	size int64
}

func newHeaderBudget(size int64) *headerBudget {
	return &headerBudget{sem: semaphore.NewWeighted(size), size: size}
}

// tryAcquire takes n bytes if they are free now and no one waits.
func (b *headerBudget) tryAcquire(n int64) bool { return b.sem.TryAcquire(n) }

// acquire takes n bytes, waiting until they are free or ctx ends; it
// reports whether it took them.
func (b *headerBudget) acquire(ctx context.Context, n int64) bool {
	return b.sem.Acquire(ctx, n) == nil
}

// release gives n bytes back.
func (b *headerBudget) release(n int64) {
	if n > 0 {
		b.sem.Release(n)
	}
}
