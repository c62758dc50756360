package perf

import (
	"context"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// The paths, in the order each run measures them: the direct path first,
// since the others report what they add to it, and the proxy last, since
// it reports its ratio to both relays.
const (
	pathDirect    = "direct"
	pathRelay     = "relay"     // io.Copy (splice): the floor of any proxy
	pathCopyRelay = "copyrelay" // through a buffer: the floor of a proxy that reads the bytes
	pathProxy     = "proxy"
)

func pathNames() []string { return []string{pathDirect, pathRelay, pathCopyRelay, pathProxy} }

// env is one sink with the paths to it.
type env struct {
	sink      *smtpload.Sink
	relay     *smtpload.Relay
	copyRelay *smtpload.Relay
	proxy     string
	stop      func() // stops them all and waits for their sessions to end
}

func listen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// startEnv starts a sink, the two blind relays to it (splice, and copying
// through a buffer of the proxy's data read size) and the proxy to it, with
// the proxy's defaults except cfg's non-zero fields. The proxy logs to a
// discarding handler: the benchmarks measure the relaying, not the log
// sink. Everything stops at the end of the test, or at e.stop.
func startEnv(tb testing.TB, cfg smtpproxy.Config) *env {
	tb.Helper()
	sink := smtpload.NewSink(listen(tb))
	relay := smtpload.NewRelay(listen(tb), sink.Addr())
	copyRelay := smtpload.NewCopyRelay(listen(tb), sink.Addr(), smtpproxy.DataReadSize)
	cfg.Upstream = sink.Addr()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := smtpproxy.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ln := listen(tb)
	stopProxy := smtptest.Serve(tb, srv, ln)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			if err := stopProxy(); err != nil {
				tb.Errorf("proxy: %v", err)
			}
			relay.Close()
			copyRelay.Close()
			sink.Close()
		})
	}
	tb.Cleanup(stop)
	return &env{sink: sink, relay: relay, copyRelay: copyRelay, proxy: ln.Addr().String(), stop: stop}
}

func (e *env) addr(path string) string {
	switch path {
	case pathRelay:
		return e.relay.Addr()
	case pathCopyRelay:
		return e.copyRelay.Addr()
	case pathProxy:
		return e.proxy
	}
	return e.sink.Addr()
}

// scenario is one load the proxy is measured with.
type scenario struct {
	name    string
	size    int  // message size
	conc    int  // sessions at once
	perConn int  // messages per connection
	nagle   bool // the generator writes as Postfix's smtpd does (smtpload.Load.Nagle)
}

func (sc scenario) load(addr string, msg []byte) *smtpload.Load {
	return &smtpload.Load{Addr: addr, Message: msg, Concurrency: sc.conc, PerConn: sc.perConn, Nagle: sc.nagle}
}

func scenarios() []scenario {
	return []scenario{
		{"msg=10KiB/conc=1/conn=per-msg", 10 << 10, 1, 1, false},
		{"msg=10KiB/conc=32/conn=per-msg", 10 << 10, 32, 1, false},
		{"msg=1MiB/conc=4/conn=per-msg", 1 << 20, 4, 1, false},
		// Several messages per connection: what the proxy costs without
		// the connection setup that Postfix pays for every message.
		{"msg=10KiB/conc=32/conn=10-msgs", 10 << 10, 32, 10, false},
		// The generator with Nagle's algorithm on and Postfix's stream
		// buffer, as Postfix's smtpd writes to a filter: the sender then
		// waits for ACKs, and a path's ACK timing shows.
		{"msg=1MiB/conc=1/conn=per-msg/sender=nagle", 1 << 20, 1, 1, true},
		{"msg=1MiB/conc=4/conn=per-msg/sender=nagle", 1 << 20, 4, 1, true},
	}
}

// measurement is what one path did in one benchmark run.
type measurement struct {
	rate     float64 // messages per second
	p50, p99 time.Duration
	allocs   float64       // heap allocations per message, whole process
	cpu      time.Duration // CPU time per message, whole process
}

// BenchmarkPaths sends each scenario's load along the four paths in the
// same run; see the package comment for the metrics.
func BenchmarkPaths(b *testing.B) {
	e := startEnv(b, smtpproxy.Config{})
	for _, sc := range scenarios() {
		b.Run(sc.name, func(b *testing.B) {
			msg := smtpload.Message(sc.size, "")
			got := map[string]measurement{}
			for _, path := range pathNames() {
				b.Run("path="+path, func(b *testing.B) {
					m := measure(b, e, path, msg, sc)
					got[path] = m
					b.ReportMetric(m.rate, "msgs/s")
					b.ReportMetric(float64(m.p50.Microseconds()), "p50-us")
					b.ReportMetric(float64(m.p99.Microseconds()), "p99-us")
					b.ReportMetric(float64(m.cpu.Nanoseconds())/1e3, "cpu-us/msg")
					if path == pathDirect {
						return
					}
					if d, ok := got[pathDirect]; ok {
						b.ReportMetric(float64((m.p50 - d.p50).Microseconds()), "added-p50-us")
						b.ReportMetric(float64((m.p99 - d.p99).Microseconds()), "added-p99-us")
						b.ReportMetric(m.allocs-d.allocs, "added-allocs/msg")
						b.ReportMetric(float64((m.cpu-d.cpu).Nanoseconds())/1e3, "added-cpu-us/msg")
					}
					if r, ok := got[pathRelay]; ok && path == pathProxy {
						b.ReportMetric(m.rate/r.rate, "ratio-to-relay")
					}
					if r, ok := got[pathCopyRelay]; ok && path == pathProxy {
						b.ReportMetric(m.rate/r.rate, "ratio-to-copyrelay")
					}
				})
			}
		})
	}
}

// measure sends b.N messages along path and checks that the sink took
// every one of them.
func measure(b *testing.B, e *env, path string, msg []byte, sc scenario) measurement {
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	l := sc.load(e.addr(path), msg)
	before := e.sink.Messages()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ResetTimer()
	cpu0 := cpuTime()
	res, err := l.Run(context.Background(), b.N)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	if err != nil {
		b.Fatalf("%s: %v", path, err)
	}
	if res.Accepted != b.N || e.sink.Messages()-before != int64(b.N) {
		b.Fatalf("%s: %d of %d messages accepted, sink took %d (last reply %q)", path, res.Accepted, b.N, e.sink.Messages()-before, res.LastReply)
	}
	return measurement{
		rate:   float64(b.N) / b.Elapsed().Seconds(),
		p50:    res.Percentile(50),
		p99:    res.Percentile(99),
		allocs: float64(ms1.Mallocs-ms0.Mallocs) / float64(b.N),
		cpu:    cpu / time.Duration(b.N),
	}
}

// BenchmarkInterleaved sends each scenario's load along the four paths
// in turns of a few hundred milliseconds (direct, relay, copyrelay, proxy,
// then the reverse order), so that all four share the same background
// load, and reports each path's messages/s and CPU per message and the
// ratios proxy/relay, proxy/copyrelay, proxy/direct, relay/direct and
// copyrelay/relay. b.N is the number of messages per path. On a shared machine these ratios are steadier than
// those of BenchmarkPaths, whose paths run a second or more apart.
func BenchmarkInterleaved(b *testing.B) {
	e := startEnv(b, smtpproxy.Config{})
	for _, sc := range scenarios() {
		b.Run(sc.name, func(b *testing.B) {
			msg := smtpload.Message(sc.size, "")
			b.SetBytes(int64(len(msg)))
			// A turn gives each worker several messages, so the wait for
			// the slowest worker at its end weighs little.
			turn := max(16, 8*sc.conc)
			paths := pathNames()
			rates, _ := interleave(b, paths, turn, func(i, n int) (time.Duration, time.Duration) {
				return sendLoad(b, paths[i], sc.load(e.addr(paths[i]), msg), n)
			})
			direct, relay, copyRelay, proxy := rates[pathDirect], rates[pathRelay], rates[pathCopyRelay], rates[pathProxy]
			b.ReportMetric(proxy/relay, "proxy/relay")
			b.ReportMetric(proxy/copyRelay, "proxy/copyrelay")
			b.ReportMetric(proxy/direct, "proxy/direct")
			b.ReportMetric(relay/direct, "relay/direct")
			b.ReportMetric(copyRelay/relay, "copyrelay/relay")
		})
	}
}

// TestPathsDeliver runs every scenario's message, and a 1 MiB one, along
// every path with a few messages, and checks the sink took them all: the
// benchmark harness can fail, and a path that loses messages is not timed.
func TestPathsDeliver(t *testing.T) {
	e := startEnv(t, smtpproxy.Config{})
	for _, path := range pathNames() {
		for _, sc := range scenarios() {
			msg := smtpload.Message(sc.size, "")
			n := 3 * min(sc.conc, 4)
			l := sc.load(e.addr(path), msg)
			l.Concurrency = min(sc.conc, 4)
			msgs, bytes := e.sink.Messages(), e.sink.Bytes()
			relayed, copied := e.relay.Sessions(), e.copyRelay.Sessions()
			res, err := l.Run(context.Background(), n)
			if err != nil {
				t.Fatalf("%s %s: %v", path, sc.name, err)
			}
			if res.Accepted != n || e.sink.Messages()-msgs != int64(n) {
				t.Fatalf("%s %s: %d of %d accepted, sink took %d", path, sc.name, res.Accepted, n, e.sink.Messages()-msgs)
			}
			// The proxy forwards canonical content byte for byte
			// (SPEC 2.6), so every path delivers the same bytes.
			if got, want := e.sink.Bytes()-bytes, int64(n*len(msg)); got != want {
				t.Errorf("%s %s: sink got %d bytes, want %d", path, sc.name, got, want)
			}
			if !strings.Contains(res.LastReply, "queued as SINK") {
				t.Errorf("%s %s: end-of-data reply %q is not the sink's", path, sc.name, res.LastReply)
			}
			if relayedNow := e.relay.Sessions() - relayed; (path == pathRelay) != (relayedNow > 0) {
				t.Errorf("%s %s: the relay carried %d sessions", path, sc.name, relayedNow)
			}
			if copiedNow := e.copyRelay.Sessions() - copied; (path == pathCopyRelay) != (copiedNow > 0) {
				t.Errorf("%s %s: the copying relay carried %d sessions", path, sc.name, copiedNow)
			}
		}
	}
}

// TestProxyPathJudges shows the proxy path is the proxy: a message whose
// Delivered-To: names its recipient gets 554 and never reaches the sink,
// while the blind relays let it through.
func TestProxyPathJudges(t *testing.T) {
	e := startEnv(t, smtpproxy.Config{})
	loop := smtpload.Message(10<<10, "Delivered-To: "+smtpload.DefaultTo+"\r\n")
	for _, c := range []struct {
		path         string
		wantAccepted int
	}{{pathProxy, 0}, {pathRelay, 2}, {pathCopyRelay, 2}} {
		before := e.sink.Messages()
		l := &smtpload.Load{Addr: e.addr(c.path), Message: loop, Concurrency: 2}
		res, err := l.Run(context.Background(), 2)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		if res.Accepted != c.wantAccepted || e.sink.Messages()-before != int64(c.wantAccepted) {
			t.Fatalf("%s: %d accepted, sink took %d; want %d", c.path, res.Accepted, e.sink.Messages()-before, c.wantAccepted)
		}
		if c.path == pathProxy && !strings.HasPrefix(res.LastReply, "554 5.4.6 mail forwarding loop for "+smtpload.DefaultTo) {
			t.Errorf("proxy: end-of-data reply %q", res.LastReply)
		}
	}
}

// maxAllocGrowth bounds how many more heap allocations per message a
// 1 MiB message may cost than a 10 KiB one (allocations per message are
// independent of message size); a little slack covers the runtime's own
// bookkeeping.
const maxAllocGrowth = 4

// TestAllocsPerMessageIndependentOfSize sends the same number of 10 KiB
// and 1 MiB messages through the proxy and compares the allocations per
// message of the whole process (the generator and the sink allocate
// nothing that depends on the size).
func TestAllocsPerMessageIndependentOfSize(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 20 MiB")
	}
	e := startEnv(t, smtpproxy.Config{})
	const n = 20
	perMessage := func(size int) float64 {
		l := &smtpload.Load{Addr: e.addr(pathProxy), Message: smtpload.Message(size, ""), Concurrency: 2}
		if _, err := l.Run(context.Background(), 2); err != nil { // warm the pools
			t.Fatal(err)
		}
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		res, err := l.Run(context.Background(), n)
		runtime.ReadMemStats(&ms1)
		if err != nil || res.Accepted != n {
			t.Fatalf("%d-byte messages: %d of %d accepted: %v", size, res.Accepted, n, err)
		}
		return float64(ms1.Mallocs-ms0.Mallocs) / n
	}
	small, large := perMessage(10<<10), perMessage(1<<20)
	t.Logf("allocations per message, whole process: %.1f at 10 KiB, %.1f at 1 MiB", small, large)
	if large-small > maxAllocGrowth {
		t.Errorf("a 1 MiB message costs %.1f allocations, a 10 KiB one %.1f: allocation grows with size", large, small)
	}
}
