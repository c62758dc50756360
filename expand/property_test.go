package expand

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// A small universe of addresses, so random tables hit each other: cycles,
// fan-out, catch-alls, extensions, local and remote domains.
var (
	propLocals  = []string{"a", "b", "c", "loop", "owner-a"}
	propDomains = []string{"local.test", "remote.test", "v.test"}
)

func genAddr(t *rapid.T, label string) string {
	l := rapid.SampledFrom(propLocals).Draw(t, label+"-local")
	if rapid.Bool().Draw(t, label+"-ext") {
		l += "+x"
	}
	return l + "@" + rapid.SampledFrom(propDomains).Draw(t, label+"-domain")
}

// genKey draws a key of any form mail_addr_find asks for.
func genKey(t *rapid.T) string {
	switch rapid.IntRange(0, 3).Draw(t, "key-form") {
	case 0:
		return genAddr(t, "key")
	case 1:
		return rapid.SampledFrom(propLocals).Draw(t, "key-local")
	default:
		return "@" + rapid.SampledFrom(propDomains).Draw(t, "key-domain")
	}
}

func genValue(t *rapid.T) string {
	if rapid.IntRange(0, 5).Draw(t, "value-form") == 0 {
		return "@" + rapid.SampledFrom(propDomains).Draw(t, "value-domain")
	}
	n := rapid.IntRange(1, 3).Draw(t, "value-n")
	vs := make([]string, n)
	for i := range vs {
		if rapid.IntRange(0, 4).Draw(t, "value-bare") == 0 {
			vs[i] = rapid.SampledFrom(propLocals).Draw(t, "value-local")
		} else {
			vs[i] = genAddr(t, "value")
		}
	}
	return strings.Join(vs, ", ")
}

func genTable(t *rapid.T, name string, keys func(*rapid.T) string) map[string]string {
	m := map[string]string{}
	for range rapid.IntRange(0, 8).Draw(t, name+"-size") {
		m[keys(t)] = genValue(t)
	}
	return m
}

// propWorld is a random configuration with random tables.
type propWorld struct {
	cfg  *Config
	mem  *Memory
	virt map[string]string
	rcan map[string]string
}

func genWorld(t *rapid.T) propWorld {
	cfg := testConfig()
	cfg.RecipientCanonicalMaps = []string{"hash:rcanon"}
	cfg.VirtualMailboxDomains = parseList("v.test", false, false)
	cfg.PropagateVirtual = rapid.Bool().Draw(t, "propagate-virtual")
	cfg.PropagateAlias = rapid.Bool().Draw(t, "propagate-alias")
	if rapid.Bool().Draw(t, "no-delimiter") {
		cfg.RecipientDelimiter = ""
	}
	w := propWorld{cfg: cfg, mem: &Memory{}}
	w.virt = genTable(t, "virtual", genKey)
	w.rcan = genTable(t, "rcanon", genKey)
	w.mem.Set("hash:virtual", MemTable{Entries: w.virt})
	w.mem.Set("hash:rcanon", MemTable{Entries: w.rcan})
	w.mem.Set("hash:aliases", MemTable{Entries: genTable(t, "aliases", func(t *rapid.T) string {
		return rapid.SampledFrom(propLocals).Draw(t, "alias-name")
	})})
	return w
}

func (w propWorld) expand(t *rapid.T, rcpt string) Result {
	e, err := New(context.Background(), Options{Config: w.cfg, Backend: w.mem, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	res, _ := e.Expand(context.Background(), addr(rcpt))
	return res
}

// TestPropertyExpansion: over random tables, an expansion is
// deterministic, bounded (Postfix's limits and MaxLookups: a cycle ends),
// never fails for a reason other than a limit (the memory backend does not
// fail), holds each address once, and keeps the recipient itself when no
// table has any of its keys (mail_addr_find: nothing matches, cleanup
// leaves it), judged as checking loops when its domain is local.
func TestPropertyExpansion(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		w := genWorld(t)
		rcpt := genAddr(t, "rcpt")
		before := w.mem.Lookups()
		r1 := w.expand(t, rcpt)
		lookups := w.mem.Lookups() - before
		r2 := w.expand(t, rcpt)
		if !reflect.DeepEqual(r1.Targets, r2.Targets) || r1.Complete != r2.Complete || r1.Cause != r2.Cause {
			t.Fatalf("not deterministic:\n%+v\n%+v", r1, r2)
		}
		if lookups > MaxLookups || len(r1.Targets) > MaxTargets {
			t.Fatalf("unbounded: %d lookups, %d targets", lookups, len(r1.Targets))
		}
		if !r1.Complete && r1.Cause != CauseLimit {
			t.Fatalf("incomplete for %v: %v", r1.Cause, r1.Err)
		}
		seen := map[string]bool{}
		for _, tg := range r1.Targets {
			if seen[tg.Addr.Key()] {
				t.Fatalf("%s twice in %q", tg.Addr, targets(r1))
			}
			seen[tg.Addr.Key()] = true
		}
		if r1.Complete && untouched(w, rcpt) {
			k := addr(rcpt).Key()
			local := strings.HasSuffix(rcpt, "@local.test")
			found := false
			for _, tg := range r1.Targets {
				if tg.Addr.Key() == k {
					found = true
					if local && !tg.ChecksLoops {
						t.Fatalf("%s: local recipient not judged as checking loops: %q", rcpt, targets(r1))
					}
				}
			}
			if !found {
				t.Fatalf("%s: no table has it, yet it is not among its targets %q", rcpt, targets(r1))
			}
		}
	})
}

// untouched reports whether no canonical or virtual key of rcpt is in
// the tables: the keys of mail_addr_find_opt, computed here on their own.
func untouched(w propWorld, rcpt string) bool {
	local, domain, _ := strings.Cut(rcpt, "@")
	keys := []string{rcpt, local, "@" + domain}
	if w.cfg.RecipientDelimiter != "" {
		if user, _, ok := strings.Cut(local, "+"); ok {
			keys = append(keys, user+"@"+domain, user)
		}
	}
	for _, k := range keys {
		if _, ok := w.virt[k]; ok {
			return false
		}
		if _, ok := w.rcan[k]; ok {
			return false
		}
	}
	return true
}

// TestPropertyCycle: a cycle of any length in the virtual table ends at
// virtual_alias_recursion_limit as an incomplete result, never a hang;
// the recipient is then judged as spelled.
func TestPropertyCycle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(2, 6).Draw(t, "cycle")
		cfg := testConfig()
		cfg.VirtualAliasRecursionLimit = rapid.IntRange(1, 50).Draw(t, "limit")
		virt := map[string]string{}
		for i := range n {
			virt["n"+itoa(i)+"@local.test"] = "n" + itoa((i+1)%n) + "@local.test"
		}
		mem := &Memory{}
		mem.Set("hash:virtual", MemTable{Entries: virt})
		mem.Set("hash:aliases", MemTable{})
		e, err := New(context.Background(), Options{Config: cfg, Backend: mem, CacheSize: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		res, _ := e.Expand(context.Background(), address.Addr{Local: "n0000", Domain: "local.test"})
		if res.Complete || res.Cause != CauseLimit {
			t.Fatalf("cycle of %d: %+v", n, res)
		}
		if addrs, replace := res.Expansion(ModeAny); addrs != nil || replace {
			t.Fatalf("cycle judged by %v", addrs)
		}
	})
}
