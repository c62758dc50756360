package expand

import (
	"context"
	"testing"
)

// BenchmarkExpandLive measures one recipient's expansion with a cold
// cache (the cache off) against a real Postfix, through proxymap(8) and
// through postmap(1), beside the same expansion answered from the cache:
// compare the three in one run.
func BenchmarkExpandLive(b *testing.B) {
	p := livePostfix(b, setupApproved)
	rcpt := addr("valias@local.test")
	for _, bc := range []struct {
		name  string
		kind  BackendKind
		cache int
	}{
		{"proxymap-cold", BackendProxymap, -1},
		{"postmap-cold", BackendPostmap, -1},
		{"proxymap-warm", BackendProxymap, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			obs := &counting{}
			e, err := New(context.Background(), Options{ConfigDir: p.ConfigDir(), Prefer: bc.kind, CacheSize: bc.cache, Observer: obs})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			if _, err := e.Expand(context.Background(), rcpt); err != nil {
				b.Fatal(err)
			}
			obs.lookups.Store(0)
			b.ResetTimer()
			for b.Loop() {
				if _, err := e.Expand(context.Background(), rcpt); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(obs.lookups.Load())/float64(b.N), "lookups/op")
		})
	}
}

// BenchmarkExpandMemory measures the expansion logic alone (the memory
// backend, the cache off) beside a cache hit, in one run.
func BenchmarkExpandMemory(b *testing.B) {
	cfg := testConfig()
	m := withEmpty(cfg, tables(b, map[string]string{
		"hash:virtual": "valias@local.test lp@local.test\n",
		"hash:aliases": "lp loopuser\n",
	}))
	rcpt := addr("valias+ext@local.test")
	for _, bc := range []struct {
		name  string
		cache int
	}{{"cold", -1}, {"warm", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			e, err := New(context.Background(), Options{Config: cfg, Backend: m, CacheSize: bc.cache})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Expand(context.Background(), rcpt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
