package perf

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// The expansion benchmark's paths: two proxies in front of the same sink,
// alike but for recipient expansion.
const (
	pathExpandOff = "off"    // the proxy without expansion (the literal check)
	pathExpandOn  = "expand" // the proxy with expansion, its cache warm
)

// The tables the expansion reads, in memory: the generator's recipient is
// a virtual alias of a local mailbox, which has an alias of its own, so
// every message is judged by three addresses: the recipient as spelled,
// expTarget and expAliasTarget.
const (
	expDomain      = "example.net" // smtpload.DefaultTo's domain, made local
	expTarget      = "jane@" + expDomain
	expAliasTarget = "jane.doe@" + expDomain
)

// expCounter counts what the expander does: the benchmark reports how
// many expansions were computed rather than served from the cache.
type expCounter struct {
	lookups, hits, misses, incomplete atomic.Int64
}

func (c *expCounter) Lookup()                 { c.lookups.Add(1) }
func (c *expCounter) CacheHit()               { c.hits.Add(1) }
func (c *expCounter) CacheMiss()              { c.misses.Add(1) }
func (c *expCounter) Incomplete(expand.Cause) { c.incomplete.Add(1) }

// expEnv is a sink with the two proxies to it.
type expEnv struct {
	sink    *smtpload.Sink
	off, on string // the proxies' addresses
	obs     *expCounter
}

func (e *expEnv) addr(path string) string {
	if path == pathExpandOn {
		return e.on
	}
	return e.off
}

// startExpEnv starts the sink and both proxies, with the proxy's defaults.
// The expander is a real expand.Expander with its default cache, on a
// Memory backend: with a warm cache no lookup reaches a backend, so what
// is measured is this project's own cost (the hook, the expander's
// bookkeeping, the judging of more addresses), not Postfix's.
func startExpEnv(tb testing.TB) *expEnv {
	tb.Helper()
	sink := smtpload.NewSink(listen(tb))
	tb.Cleanup(func() { sink.Close() })

	cfg := expand.DefaultConfig("mx."+expDomain, expDomain, "mx."+expDomain, expDomain, "localhost")
	cfg.MyOrigin = expDomain
	cfg.RecipientDelimiter = "+"
	cfg.VirtualAliasMaps = []string{"hash:virtual"}
	cfg.AliasMaps = []string{"hash:aliases"}
	mem := &expand.Memory{}
	mem.Set("hash:virtual", expand.MemTable{Entries: map[string]string{smtpload.DefaultTo: expTarget}})
	mem.Set("hash:aliases", expand.MemTable{Entries: map[string]string{"jane": expAliasTarget}})
	obs := &expCounter{}
	exp, err := expand.New(context.Background(), expand.Options{Config: cfg, Backend: mem, Observer: obs})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { exp.Close() }) // after the proxies stop

	serve := func(c smtpproxy.Config) string {
		c.Upstream = sink.Addr()
		c.Logger = slog.New(slog.DiscardHandler)
		srv, err := smtpproxy.New(c)
		if err != nil {
			tb.Fatal(err)
		}
		ln := listen(tb)
		stop := smtptest.Serve(tb, srv, ln)
		tb.Cleanup(func() {
			if err := stop(); err != nil {
				tb.Errorf("proxy: %v", err)
			}
		})
		return ln.Addr().String()
	}
	return &expEnv{
		sink: sink,
		off:  serve(smtpproxy.Config{}),
		on:   serve(smtpproxy.Config{Expand: exp.Recipients(expand.ModeAny)}),
		obs:  obs,
	}
}

// expScenario is the load of the goal: 10 KiB messages, 32 sessions, a
// connection per message, as Postfix's front smtpd sends to a filter.
var expScenario = scenario{"msg=10KiB/conc=32/conn=per-msg", 10 << 10, 32, 1, false}

// BenchmarkExpansion sends the same load to the proxy without expansion
// and with it (cache warm) in alternating turns of a few hundred messages
// (off, expand, then expand, off), so both share the same background
// load, and reports each path's messages/s and CPU per message, the ratio
// expand/off (the goal is at least 0.95), the CPU expansion adds per
// message, and how many expansions were computed per message on the
// expand path (about 0: the cache serves them). b.N is the number of
// messages per path.
func BenchmarkExpansion(b *testing.B) {
	e := startExpEnv(b)
	sc := expScenario
	b.Run(sc.name, func(b *testing.B) {
		msg := smtpload.Message(sc.size, "")
		b.SetBytes(int64(len(msg)))
		// Warm the cache: one message through the expand path.
		if res, err := sc.load(e.on, msg).Run(context.Background(), 1); err != nil || res.Accepted != 1 {
			b.Fatalf("warm-up: %v %+v", err, res)
		}
		misses0 := e.obs.misses.Load()
		turn := max(16, 8*sc.conc)
		paths := []string{pathExpandOff, pathExpandOn}
		rates, cpu := interleave(b, paths, turn, func(i, n int) (time.Duration, time.Duration) {
			return sendLoad(b, paths[i], sc.load(e.addr(paths[i]), msg), n)
		})
		b.ReportMetric(cpu[pathExpandOn]-cpu[pathExpandOff], "added-cpu-us/msg")
		b.ReportMetric(rates[pathExpandOn]/rates[pathExpandOff], "expand/off")
		b.ReportMetric(float64(e.obs.misses.Load()-misses0)/float64(b.N), "expansions/msg")
		if n := e.obs.incomplete.Load(); n > 0 {
			b.Fatalf("%d expansions incomplete: the expand path judged recipients as spelled", n)
		}
	})
}

// TestExpansionPathJudges shows the benchmark's two paths differ only by
// expansion, and that the expand path uses it: a message whose
// Delivered-To: names an address the recipient expands to (not the
// recipient itself) is refused there and passed by the other path; the
// benchmark's message is taken by both; and after the first message the
// cache serves the recipient (no expansion is computed again).
func TestExpansionPathJudges(t *testing.T) {
	e := startExpEnv(t)
	send := func(path string, msg []byte, n int) *smtpload.Result {
		t.Helper()
		res, err := (&smtpload.Load{Addr: e.addr(path), Message: msg, Concurrency: 2}).Run(context.Background(), n)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return res
	}
	plain := smtpload.Message(expScenario.size, "")
	for _, path := range []string{pathExpandOff, pathExpandOn} {
		before := e.sink.Messages()
		if res := send(path, plain, 4); res.Accepted != 4 || e.sink.Messages()-before != 4 {
			t.Fatalf("%s: %d of 4 accepted, sink took %d", path, res.Accepted, e.sink.Messages()-before)
		}
	}
	if m := e.obs.misses.Load(); m != 1 {
		t.Errorf("%d expansions computed for 4 messages to one recipient, want 1 (the cache serves the rest)", m)
	}
	for _, forged := range []string{expTarget, expAliasTarget} {
		loop := smtpload.Message(expScenario.size, "Delivered-To: "+forged+"\r\n")
		for _, c := range []struct {
			path     string
			accepted int
		}{{pathExpandOff, 2}, {pathExpandOn, 0}} {
			before := e.sink.Messages()
			res := send(c.path, loop, 2)
			if res.Accepted != c.accepted || e.sink.Messages()-before != int64(c.accepted) {
				t.Fatalf("%s, Delivered-To: %s: %d accepted, sink took %d; want %d", c.path, forged, res.Accepted, e.sink.Messages()-before, c.accepted)
			}
			if c.path == pathExpandOn && !strings.HasPrefix(res.LastReply, "554 5.4.6 mail forwarding loop for "+smtpload.DefaultTo) {
				t.Errorf("%s: end-of-data reply %q", c.path, res.LastReply)
			}
		}
	}
	if n := e.obs.incomplete.Load(); n > 0 {
		t.Errorf("%d expansions incomplete", n)
	}
}
