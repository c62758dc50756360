package smtpproxy

import (
	"fmt"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

const noMemory = "451 4.3.1 insufficient system resources, try again later\r\n"

// A session holds a header section that uses up the header memory; a
// second one, whose section grows past the unmetered part, waits for its
// share, and headerMemoryWait later its message gets 451 4.3.1 once its
// data is read: never a hang, never a 250. A small section needs no
// share and passes meanwhile. When the holder is done, its memory is free
// again and a large section passes.
func TestHeaderMemoryBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const maxHeader = 32 << 10
		budget := int64(core.HeaderCaptureMax(maxHeader)) // the least allowed: one maximal section
		obs := &recordingObserver{}
		b := newBubble(t, Config{MaxHeaderBytes: maxHeader, MaxHeaderMemory: budget, Observer: obs})
		held := func() int64 {
			obs.mu.Lock()
			defer obs.mu.Unlock()
			return obs.headerMemory
		}
		large := "Subject: " + strings.Repeat("s", 20000) + "\r\n\r\nbody\r\n.\r\n" // past core.HeaderUnmetered

		holder := b.open()
		holder.StartMessage("<s@x>", "<a@x>")
		holder.Send("Subject: s\r\n" + strings.Repeat("n", maxHeader+2000)) // a line still undecided, running into the lookahead
		synctest.Wait()
		if h := held(); h <= budget-int64(2*core.HeaderUnmetered) {
			t.Fatalf("the holder holds %d bytes of header memory, want more than %d", h, budget-int64(2*core.HeaderUnmetered))
		}

		waiting := b.open()
		waiting.StartMessage("<s@x>", "<a@x>")
		start := time.Now()
		waiting.Send(strings.Replace(large, "Subject:", "X-Refused-For-Want-Of-Memory:", 1))
		small := b.open()
		small.StartMessage("<s@x>", "<a@x>")
		small.Send("Subject: small\r\n\r\nbody\r\n.\r\n")
		small.ExpectReply(queued)
		waiting.ExpectReply(noMemory)
		if waited := time.Since(start); waited != headerMemoryWait {
			t.Errorf("refused after %v, want headerMemoryWait %v", waited, headerMemoryWait)
		}

		// The holder's line turns out no header line: the section ends and
		// the message passes; its memory comes back.
		holder.Send("\r\n\r\nbody\r\n.\r\n")
		holder.ExpectReply(queued)
		next := b.open()
		next.StartMessage("<s@x>", "<a@x>")
		next.Send(large)
		next.ExpectReply(queued)
		for _, c := range []*smtptest.Client{holder, waiting, small, next} {
			c.Expect("QUIT", "221 2.0.0 Bye\r\n")
		}
		b.stop()
		if h := held(); h != 0 {
			t.Errorf("%d bytes of header memory still held after every session ended", h)
		}
		for _, msg := range b.u.Messages() {
			if strings.Contains(msg, "X-Refused-For-Want-Of-Memory") {
				t.Errorf("the refused message reached the upstream")
			}
		}
	})
}

// Many concurrent maximal header sections: the header memory budget
// bounds the live heap, measured with runtime/metrics; the sessions past
// it wait, then get 451 4.3.1; the others pass.
func TestHeaderMemoryBoundsLiveHeap(t *testing.T) {
	const (
		sessions  = 40
		maxHeader = 1 << 20
		budget    = 8 << 20 // seven maximal sections
		// perSession bounds what a session holds besides its header
		// section: read buffers (the 64 KiB data buffer among them), the
		// core, goroutines' stacks. Generous: the point is the header
		// sections, 40 MiB without the budget.
		perSession = 160 << 10
	)
	// The race detector's instrumentation grows what each session holds
	// (measured: 14.9 MiB at most against 14 MiB allowed); the bound stays
	// far below the 40 MiB the sections would take without the budget.
	perSessionHeld := uint64(perSession)
	if raceEnabled {
		perSessionHeld *= 2
	}
	u := smtptest.StartUpstream(t)
	u.Discard = true // the test's own memory stays out of the measure
	// Sessions past the budget wait a second, not headerMemoryWait.
	p := serveTuned(t, Config{Upstream: u.Addr(), Check: smtptest.CheckDeliveredTo,
		MaxHeaderBytes: maxHeader, MaxHeaderMemory: budget}, listenLoopback(t), func(s *Server) { s.headerWait = time.Second })
	liveBefore := liveHeap()

	line := []byte("X-Filler: " + strings.Repeat("f", maxHeader-100) + "\r\n") // one copy for every client
	clients := make([]*smtptest.Client, sessions)
	for i := range clients {
		c := dialClient(t, p.addr)
		c.ExpectReply(greeting)
		c.StartMessage("<s@x>", "<a@x>")
		clients[i] = c
	}
	var sent sync.WaitGroup
	for _, c := range clients {
		sent.Add(1)
		go func() {
			defer sent.Done()
			c.Conn.Write(line) // blocks while the proxy does not read: the sessions that wait
		}()
	}
	allSent := make(chan struct{})
	go func() { sent.Wait(); close(allSent) }()
	// The live heap while the sections grow, until every section is in
	// (held, or drained after a refusal).
	var live uint64
	guard := time.After(60 * time.Second) // a hang guard, not a timing assertion
	for done := false; !done; {
		select {
		case <-allSent:
			done = true
		case <-guard:
			t.Fatal("the header sections were not all read within a minute")
		case <-time.After(50 * time.Millisecond):
		}
		live = max(live, liveHeap())
	}
	if limit := liveBefore + budget + sessions*perSessionHeld; live > limit {
		t.Errorf("live heap %d MiB over %d MiB (before %d MiB, budget %d MiB, %d sessions)", live>>20, limit>>20, liveBefore>>20, budget>>20, sessions)
	}
	t.Logf("live heap: %.1f MiB before, %.1f MiB at most with %d sessions writing %d MiB header sections under a %d MiB budget",
		float64(liveBefore)/(1<<20), float64(live)/(1<<20), sessions, maxHeader>>20, budget>>20)
	passed, refused := 0, 0
	for _, c := range clients {
		c.Send("\r\nbody\r\n.\r\n")
		switch got := c.Reply(); got {
		case queued:
			passed++
		case noMemory:
			refused++
		default:
			t.Errorf("a session got %q", got)
		}
	}
	if passed == 0 || refused == 0 || passed+refused != sessions {
		t.Errorf("%d passed, %d refused of %d: want both, and nothing else", passed, refused, sessions)
	}
	t.Logf("%d messages passed, %d refused with 451 4.3.1", passed, refused)
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// liveHeap is the heap the last forced collection found live.
func liveHeap() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		panic(fmt.Sprintf("no live heap metric: %v", s[0].Value.Kind()))
	}
	return s[0].Value.Uint64()
}
