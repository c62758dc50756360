package perf

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// idleSessions is the number of sessions held open at once: the proxy's
// default session limit.
const idleSessions = smtpproxy.DefaultMaxSessions

// maxIdleSessionBytes bounds the memory of one idle proxy session, heap
// objects and goroutine stacks together, so that the default 1000
// sessions fit in 64 MiB.
const maxIdleSessionBytes = 64 << 10

// idleDeadline bounds each exchange while sessions are opened: a hang
// guard, not a measurement.
const idleDeadline = time.Minute

var errUnexpectedReply = errors.New("unexpected reply")

// memory is the Go memory that is in use: live heap objects (after a full
// collection) and goroutine stacks.
type memory struct{ heap, stacks float64 }

func readMemory() memory {
	// Two cycles: the first may leave finalizer-held objects to the second.
	runtime.GC()
	runtime.GC()
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	metrics.Read(s)
	return memory{float64(s[0].Value.Uint64()), float64(s[1].Value.Uint64())}
}

// openIdle opens n sessions to addr, each past its greeting and EHLO, and
// returns them; the caller closes them.
func openIdle(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	r := bufio.NewReader(nil)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return conns, fmt.Errorf("session %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(idleDeadline))
		r.Reset(c)
		if err := expectReply(r, "220"); err != nil {
			return conns, fmt.Errorf("session %d greeting: %w", len(conns), err)
		}
		if _, err := c.Write([]byte("EHLO front.example\r\n")); err != nil {
			return conns, fmt.Errorf("session %d EHLO: %w", len(conns), err)
		}
		if err := expectReply(r, "250"); err != nil {
			return conns, fmt.Errorf("session %d EHLO: %w", len(conns), err)
		}
		c.SetDeadline(time.Time{})
	}
	return conns, nil
}

// expectReply reads one whole reply and checks its code.
func expectReply(r *bufio.Reader, code string) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if len(line) < 4 || line[:3] != code {
			return fmt.Errorf("%w %q, want %s", errUnexpectedReply, line, code)
		}
		if line[3] != '-' {
			return nil
		}
	}
}

// idleCost opens n idle sessions along path of a fresh env and returns the
// memory they added per session.
func idleCost(tb testing.TB, path string, n int) memory {
	tb.Helper()
	e := startEnv(tb, smtpproxy.Config{})
	before := readMemory()
	conns, err := openIdle(e.addr(path), n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		// Everything of this env is gone before the next measure starts.
		e.stop()
	}()
	if err != nil {
		tb.Fatal(err)
	}
	if open := e.sink.Open(); open != n {
		tb.Fatalf("%s: %d sessions open at the sink, want %d", path, open, n)
	}
	after := readMemory()
	return memory{(after.heap - before.heap) / float64(n), (after.stacks - before.stacks) / float64(n)}
}

// proxyIdleCost is the memory of one idle proxy session: the cost of
// sessions through the proxy less the same sessions straight to a sink
// (the client's and the sink's share).
func proxyIdleCost(tb testing.TB) (proxy, direct memory) {
	direct = idleCost(tb, pathDirect, idleSessions)
	through := idleCost(tb, pathProxy, idleSessions)
	return memory{through.heap - direct.heap, through.stacks - direct.stacks}, direct
}

// TestIdleSessionMemory holds 1000 idle sessions open through the proxy
// and checks the memory of one against maxIdleSessionBytes.
func TestIdleSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2000 sessions")
	}
	proxy, direct := proxyIdleCost(t)
	t.Logf("idle proxy session: heap %.1f KiB, stacks %.1f KiB (client and sink share, subtracted: heap %.1f KiB, stacks %.1f KiB)",
		proxy.heap/1024, proxy.stacks/1024, direct.heap/1024, direct.stacks/1024)
	if raceEnabled {
		t.Log("race detector on: memory not checked")
		return
	}
	if total := proxy.heap + proxy.stacks; total > maxIdleSessionBytes {
		t.Errorf("idle proxy session uses %.0f bytes (heap %.0f, stacks %.0f), bound %d", total, proxy.heap, proxy.stacks, maxIdleSessionBytes)
	}
	if proxy.heap <= 0 {
		t.Errorf("idle proxy session measured at %.0f heap bytes: the measure is broken", proxy.heap)
	}
}

// BenchmarkIdleSessions reports the memory of one idle proxy session with
// 1000 open (each op opens and closes 1000 through the proxy and 1000
// straight to the sink). Run it with -benchtime 1x.
func BenchmarkIdleSessions(b *testing.B) {
	for b.Loop() {
		proxy, _ := proxyIdleCost(b)
		b.ReportMetric(proxy.heap/1024, "heap-KiB/session")
		b.ReportMetric(proxy.stacks/1024, "stack-KiB/session")
		b.ReportMetric((proxy.heap+proxy.stacks)/1024, "KiB/session")
	}
}
