package expand

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// testConfig is the configuration of postfixtest's private instance:
// mydestination = mx.local.test, local.test, localhost; myorigin =
// local.test; recipient_delimiter = +; a hash virtual table and a hash
// alias table.
func testConfig() *Config {
	c := DefaultConfig("mx.local.test", "local.test", "mx.local.test", "local.test", "localhost")
	c.MyOrigin = "local.test"
	c.RecipientDelimiter = "+"
	c.VirtualAliasMaps = []string{"hash:virtual"}
	c.AliasMaps = []string{"hash:aliases"}
	return c
}

// recorder is a Backend that logs every lookup, over a Memory.
type recorder struct {
	*Memory
	mu   sync.Mutex
	keys []string // "table key"
}

func (r *recorder) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	r.mu.Lock()
	r.keys = append(r.keys, table+" "+key)
	r.mu.Unlock()
	return r.Memory.Lookup(ctx, table, key)
}

func (r *recorder) asked(table string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, k := range r.keys {
		if t, key, _ := strings.Cut(k, " "); t == table {
			out = append(out, key)
		}
	}
	return out
}

// tables builds a Memory from fixed-string tables given as "key value"
// lines.
func tables(t testing.TB, ts map[string]string) *Memory {
	t.Helper()
	m := &Memory{}
	for name, text := range ts {
		entries := map[string]string{}
		for line := range strings.Lines(text) {
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			k, v, ok := strings.Cut(line, " ")
			if !ok {
				t.Fatalf("table %s: line %q has no value", name, line)
			}
			entries[k] = strings.TrimSpace(v)
		}
		m.Set(name, MemTable{Entries: entries})
	}
	return m
}

// withEmpty adds the tables of cfg that m lacks, empty.
func withEmpty(cfg *Config, m *Memory) *Memory {
	for _, tb := range cfg.tables() {
		if isBuiltin(tb) {
			continue
		}
		if _, err := m.table(tb); err != nil {
			m.Set(tb, MemTable{Entries: map[string]string{}})
		}
	}
	return m
}

// expandWith runs one expansion without the Expander's cache.
func expandWith(t testing.TB, cfg *Config, be Backend, rcpt string) Result {
	t.Helper()
	if m, ok := be.(*Memory); ok {
		withEmpty(cfg, m)
	}
	if r, ok := be.(*recorder); ok {
		withEmpty(cfg, r.Memory)
	}
	e, err := New(context.Background(), Options{Config: cfg, Backend: be, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	p, err := address.ParsePath("<" + rcpt + ">")
	if err != nil {
		t.Fatalf("parse %q: %v", rcpt, err)
	}
	res, _ := e.Expand(context.Background(), p.Addr)
	return res
}

// targets renders the targets as "addr transport" with a "!" for those
// that check loops, for compact expectations.
func targets(r Result) []string {
	var out []string
	for _, t := range r.Targets {
		s := t.Addr.String() + " " + t.Transport
		if t.ChecksLoops {
			s += " !"
		}
		out = append(out, s)
	}
	return out
}

func mustComplete(t testing.TB, r Result) {
	t.Helper()
	if !r.Complete {
		t.Fatalf("expansion incomplete: %v (%v)", r.Cause, r.Err)
	}
}

func equalTargets(t testing.TB, what string, r Result, want ...string) {
	t.Helper()
	mustComplete(t, r)
	got := targets(r)
	if !slices.Equal(got, want) {
		t.Errorf("%s: targets\n got %q\nwant %q", what, got, want)
	}
}

func fmtList(s []string) string { return fmt.Sprintf("%q", s) }
