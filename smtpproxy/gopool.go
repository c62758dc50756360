package smtpproxy

import (
	"sync"
	"time"
)

// workerIdleTime is how long a pooled goroutine waits for more work
// before it ends.
const workerIdleTime = 10 * time.Second

// goPool runs functions on goroutines that outlive them for a while and
// take the next one. Postfix opens a connection per message, so every
// session's goroutines would otherwise be created, and grow their stacks
// (dialing, the loop check, logging), anew for every message, which shows
// in the CPU profiles (docs/performance.md).
// A pool never holds more goroutines than ran at once; an idle one ends
// after workerIdleTime or when stop is closed.
type goPool struct {
	jobs chan func()
	stop <-chan struct{}
	wg   sync.WaitGroup
}

func newGoPool(stop <-chan struct{}) *goPool {
	return &goPool{jobs: make(chan func()), stop: stop}
}

// Go runs fn on an idle goroutine of the pool, or on a new one. It must
// not be called once wait has been.
func (p *goPool) Go(fn func()) {
	select {
	case p.jobs <- fn:
	default:
		p.wg.Add(1)
		go p.work(fn)
	}
}

func (p *goPool) work(fn func()) {
	defer p.wg.Done()
	idle := time.NewTimer(workerIdleTime)
	defer idle.Stop()
	for {
		fn()
		fn = nil // nothing of the last job stays reachable while idle
		idle.Reset(workerIdleTime)
		select {
		case fn = <-p.jobs:
		case <-idle.C:
			return
		case <-p.stop:
			return
		}
	}
}

// wait waits until every goroutine of the pool has ended; stop must be
// closed and no job be running or to come.
func (p *goPool) wait() { p.wg.Wait() }
