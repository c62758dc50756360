package expand

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

func addr(s string) address.Addr {
	p, err := address.ParsePath("<" + s + ">")
	if err != nil {
		panic(err)
	}
	return p.Addr
}

// TestModes: what the loop check judges a recipient by, per mode, for a
// result that is complete and one that is not (loopcheck.WithExpansion).
func TestModes(t *testing.T) {
	cfg := testConfig()
	cfg.TransportMaps = []string{"hash:transport"}
	m := tables(t, map[string]string{
		"hash:virtual":   "valias@local.test loopuser@local.test\nlmtpalias@local.test box@lmtp.test\n",
		"hash:transport": "lmtp.test lmtp:unix:private/dovecot-lmtp\n",
	})
	msg := func(dt string) []byte { return []byte("Delivered-To: " + dt + "\r\nSubject: x\r\n\r\nbody\r\n") }
	judge := func(rcpt string, res Result, mode Mode, dt string) loopcheck.Verdict {
		addrs, replace := res.Expansion(mode)
		r := loopcheck.NewRecipient("<"+rcpt+">").WithExpansion(addrs, replace)
		return loopcheck.CheckRecipients([]loopcheck.Recipient{r}, msg(dt))
	}
	for _, tc := range []struct {
		rcpt, dt string
		any, pfx bool
		viaAny   string
		comment  string
	}{
		{rcpt: "valias@local.test", dt: "loopuser@local.test", any: true, pfx: true, viaAny: "loopuser@local.test", comment: "local(8) bounces the rewritten address"},
		{rcpt: "valias@local.test", dt: "valias@local.test", any: true, pfx: false, comment: "the literal recipient: refused in any mode, not in postfix mode (Postfix compares loopuser@)"},
		{rcpt: "lmtpalias@local.test", dt: "box@lmtp.test", any: true, pfx: false, viaAny: "box@lmtp.test", comment: "lmtp(8) never checks"},
		{rcpt: "nosuch@local.test", dt: "nosuch@local.test", any: true, pfx: true, comment: "unrewritten local recipient"},
	} {
		res := expandWith(t, cfg, m, tc.rcpt)
		mustComplete(t, res)
		va := judge(tc.rcpt, res, ModeAny, tc.dt)
		vp := judge(tc.rcpt, res, ModePostfix, tc.dt)
		if va.Loop != tc.any || va.Loop && va.Via != tc.viaAny {
			t.Errorf("%s / %s, mode any: %+v, want loop=%v via %q (%s)", tc.rcpt, tc.dt, va, tc.any, tc.viaAny, tc.comment)
		}
		if vp.Loop != tc.pfx {
			t.Errorf("%s / %s, mode postfix: %+v, want loop=%v (%s)", tc.rcpt, tc.dt, vp, tc.pfx, tc.comment)
		}
	}
	// An incomplete result: the literal recipient alone in both modes.
	bad := Result{Cause: CauseTimeout, Err: errors.New("x"), Targets: []Target{{Addr: addr("loopuser@local.test"), ChecksLoops: true}}}
	for _, mode := range []Mode{ModeAny, ModePostfix} {
		if v := judge("valias@local.test", bad, mode, "loopuser@local.test"); v.Loop {
			t.Errorf("incomplete result, mode %v: judged by its targets: %+v", mode, v)
		}
		if v := judge("valias@local.test", bad, mode, "valias@local.test"); !v.Loop {
			t.Errorf("incomplete result, mode %v: literal recipient not judged: %+v", mode, v)
		}
	}
	for _, s := range []string{"any", "postfix"} {
		if m, err := ParseMode(s); err != nil || m.String() != s {
			t.Errorf("ParseMode(%q) = %v %v", s, m, err)
		}
	}
	if _, err := ParseMode("local"); err == nil {
		t.Errorf("ParseMode accepts an unknown mode")
	}
}

// TestDeliveries: every target of a complete result, in mode any; in
// mode postfix only when every target's delivery compares Delivered-To:;
// none for an incomplete result. Through the hook, Match.Whole follows.
func TestDeliveries(t *testing.T) {
	cfg := testConfig()
	cfg.TransportMaps = []string{"hash:transport"}
	m := tables(t, map[string]string{
		"hash:virtual":   "team@local.test loopuser@local.test, other@local.test\nvalias@local.test loopuser@local.test\nmixed@local.test loopuser@local.test, box@lmtp.test\n",
		"hash:transport": "lmtp.test lmtp:unix:private/dovecot-lmtp\n",
	})
	keys := func(as []address.Addr) []string {
		var k []string
		for _, a := range as {
			k = append(k, a.String())
		}
		return k
	}
	for _, tc := range []struct {
		rcpt     string
		any, pfx []string
	}{
		{"loopuser@local.test", []string{"loopuser@local.test"}, []string{"loopuser@local.test"}},
		{"team@local.test", []string{"loopuser@local.test", "other@local.test"}, []string{"loopuser@local.test", "other@local.test"}},
		{"mixed@local.test", []string{"loopuser@local.test", "box@lmtp.test"}, nil},
	} {
		res := expandWith(t, cfg, m, tc.rcpt)
		mustComplete(t, res)
		if got := keys(res.Deliveries(ModeAny)); !slices.Equal(got, tc.any) {
			t.Errorf("%s, mode any: deliveries %q, want %q", tc.rcpt, got, tc.any)
		}
		if got := keys(res.Deliveries(ModePostfix)); !slices.Equal(got, tc.pfx) {
			t.Errorf("%s, mode postfix: deliveries %q, want %q", tc.rcpt, got, tc.pfx)
		}
	}
	bad := Result{Cause: CauseTimeout, Err: errors.New("x"), Targets: []Target{{Addr: addr("loopuser@local.test"), ChecksLoops: true}}}
	if d := bad.Deliveries(ModeAny); d != nil {
		t.Errorf("incomplete result: deliveries %v, want none", d)
	}

	e, err := New(context.Background(), Options{Config: cfg, Backend: withEmpty(cfg, m)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	hook := e.Recipients(ModeAny)
	var rs []loopcheck.Recipient
	for _, arg := range []string{"<team@local.test>", "<valias@local.test>", "<loopuser@local.test>"} {
		rs = append(rs, hook(arg)(context.Background()))
	}
	got := loopcheck.Loops(rs, []byte("Delivered-To: loopuser@local.test\r\n\r\n"))
	want := []loopcheck.Match{{Index: 0, Via: "loopuser@local.test"}, {Index: 1, Via: "loopuser@local.test", Whole: true}, {Index: 2, Whole: true}}
	if !slices.Equal(got, want) {
		t.Errorf("through the hook: %+v, want %+v", got, want)
	}
}

// blocking is a Backend whose lookups wait until released or their
// context ends.
type blocking struct {
	*Memory
	release chan struct{}
	started chan struct{}
	once    sync.Once
}

func (b *blocking) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	b.once.Do(func() { close(b.started) })
	select {
	case <-b.release:
	case <-ctx.Done():
		return "", false, &LookupError{Backend: "test", Table: table, Key: key, Cause: causeOf(ctx.Err()), Err: ctx.Err()}
	}
	return b.Memory.Lookup(ctx, table, key)
}

// counting is an Observer that counts.
type counting struct {
	lookups, hits, misses atomic.Int64
	mu                    sync.Mutex
	causes                map[Cause]int
}

func (c *counting) Lookup()    { c.lookups.Add(1) }
func (c *counting) CacheHit()  { c.hits.Add(1) }
func (c *counting) CacheMiss() { c.misses.Add(1) }
func (c *counting) Incomplete(cause Cause) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.causes == nil {
		c.causes = map[Cause]int{}
	}
	c.causes[cause]++
}

// goroutines waits until the number of goroutines is at most n, and
// reports the last count.
func goroutines(n int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		g := runtime.NumGoroutine()
		if g <= n || time.Now().After(deadline) {
			return g
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStartWait: a prefetch started at RCPT time and waited on later. Wait
// never blocks past its context; concurrent starts of one recipient share
// the expansion; the result fills the cache; Close ends everything and
// leaves no goroutine behind.
func TestStartWait(t *testing.T) {
	before := runtime.NumGoroutine()
	cfg := testConfig()
	mem := withEmpty(cfg, tables(t, map[string]string{"hash:virtual": "valias@local.test loopuser@local.test\n"}))
	be := &blocking{Memory: mem, release: make(chan struct{}), started: make(chan struct{})}
	obs := &counting{}
	e, err := New(context.Background(), Options{Config: cfg, Backend: be, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	p1 := e.Start(addr("valias@local.test"))
	p2 := e.Start(addr("valias@local.test"))
	if p1 != p2 {
		t.Errorf("two starts of one recipient did not share the expansion")
	}
	<-be.started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	r := p1.Wait(ctx)
	cancel()
	if r.Complete || r.Cause != CauseTimeout {
		t.Errorf("Wait past its bound: %+v, want incomplete with cause timeout", r)
	}
	obs.mu.Lock()
	if obs.causes[CauseTimeout] != 1 {
		t.Errorf("the wait's timeout was not counted: %v", obs.causes)
	}
	obs.mu.Unlock()
	close(be.release)
	r = p2.Wait(context.Background())
	equalTargets(t, "after release", r, "loopuser@local.test local !")
	// The result is cached: a new start answers without a lookup.
	n := mem.Lookups()
	r = e.Start(addr("valias@local.test")).Wait(context.Background())
	equalTargets(t, "from the cache", r, "loopuser@local.test local !")
	if mem.Lookups() != n || obs.hits.Load() != 1 {
		t.Errorf("cached expansion: %d more lookups, %d cache hits", mem.Lookups()-n, obs.hits.Load())
	}

	// Close while an expansion waits on the backend.
	be2 := &blocking{Memory: mem, release: make(chan struct{}), started: make(chan struct{})}
	e2, err := New(context.Background(), Options{Config: cfg, Backend: be2})
	if err != nil {
		t.Fatal(err)
	}
	p := e2.Start(addr("other@local.test"))
	<-be2.started
	e2.Close()
	if r := p.Wait(context.Background()); r.Complete || r.Cause != CauseClosed {
		t.Errorf("expansion cut by Close: %+v, want incomplete with cause closed", r)
	}
	if r := e2.Start(addr("x@local.test")).Wait(context.Background()); r.Cause != CauseClosed {
		t.Errorf("Start after Close: %+v", r)
	}
	if _, err := e2.Expand(context.Background(), addr("x@local.test")); causeOf(err) != CauseClosed {
		t.Errorf("Expand after Close: %v", err)
	}
	e.Close()
	e.Close()
	if g := goroutines(before); g > before {
		t.Errorf("%d goroutines after Close, %d before New", g, before)
	}
}

// TestReload: Reload empties the cache (a changed table is seen at once)
// and keeps the expander working.
func TestReload(t *testing.T) {
	cfg := testConfig()
	mem := withEmpty(cfg, tables(t, map[string]string{"hash:virtual": "valias@local.test loopuser@local.test\n"}))
	e, err := New(context.Background(), Options{Config: cfg, Backend: mem, CacheTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r, _ := e.Expand(context.Background(), addr("valias@local.test"))
	equalTargets(t, "before", r, "loopuser@local.test local !")
	mem.Set("hash:virtual", MemTable{Entries: map[string]string{"valias@local.test": "user@local.test"}})
	r, _ = e.Expand(context.Background(), addr("valias@local.test"))
	equalTargets(t, "cached", r, "loopuser@local.test local !")
	if err := e.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	r, _ = e.Expand(context.Background(), addr("valias@local.test"))
	equalTargets(t, "after Reload", r, "user@local.test local !")
	if e.BackendInfo() == "" {
		t.Errorf("no backend info")
	}
}

// TestCacheBounds: entries, targets in all, and TTL.
func TestCacheBounds(t *testing.T) {
	c := newCache(2, 100, time.Minute)
	t0 := time.Unix(1000, 0)
	c.put("a", Result{Complete: true}, t0)
	c.put("b", Result{Complete: true}, t0)
	c.get("a", t0) // a is now the most recent
	c.put("c", Result{Complete: true}, t0)
	if _, ok := c.get("b", t0); ok {
		t.Errorf("the least recently used entry survived a full cache")
	}
	if _, ok := c.get("a", t0.Add(59*time.Second)); !ok {
		t.Errorf("entry gone before its TTL")
	}
	if _, ok := c.get("a", t0.Add(time.Minute)); ok {
		t.Errorf("entry served at its TTL")
	}
	// The targets of all entries are bounded too: one list alias under
	// many extensions must not fill memory (a test that fails without
	// the bound: three entries of 20 stay with the entry count alone).
	c = newCache(100, 50, time.Minute)
	twenty := Result{Complete: true, Targets: make([]Target, 20)}
	for _, k := range []string{"all+1", "all+2", "all+3"} {
		c.put(k, twenty, t0)
	}
	if _, ok := c.get("all+1", t0); ok {
		t.Errorf("60 targets held under a bound of 50")
	}
	if c.held != 40 || c.lru.Len() != 2 {
		t.Errorf("held %d targets in %d entries, want 40 in 2", c.held, c.lru.Len())
	}
	c.put("huge", Result{Complete: true, Targets: make([]Target, 51)}, t0)
	if _, ok := c.get("huge", t0); ok || c.lru.Len() != 2 {
		t.Errorf("a result over the whole bound was cached, or evicted others")
	}
	c.put("all+2", Result{Complete: true}, t0) // replaced: its targets leave the count
	if c.held != 20 {
		t.Errorf("held %d targets after a replacement, want 20", c.held)
	}
	if _, ok := c.get("all+3", t0.Add(time.Minute)); ok || c.held != 0 {
		t.Errorf("expired entry served, or its targets still counted (%d)", c.held)
	}
	var off *cache
	off.put("a", Result{}, t0)
	if _, ok := off.get("a", t0); ok {
		t.Errorf("a nil cache served an entry")
	}
}

// TestFailOpen: a failing table makes the expansion incomplete with its
// cause, counted by the observer, logged once per cause per interval.
func TestFailOpen(t *testing.T) {
	for _, cause := range []Cause{CauseTimeout, CauseDenied, CauseUnreachable, CauseLookup, CauseProtocol} {
		cfg := testConfig()
		mem := withEmpty(cfg, &Memory{})
		mem.Set("hash:virtual", MemTable{Err: cause})
		var log bytes.Buffer
		obs := &counting{}
		e, err := New(context.Background(), Options{Config: cfg, Backend: mem, Observer: obs,
			Logger: slog.New(slog.NewTextHandler(&log, nil))})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			res, err := e.Expand(context.Background(), addr("valias@local.test"))
			if res.Complete || res.Cause != cause || err == nil {
				t.Errorf("%v: %+v, want incomplete with that cause", cause, res)
			}
		}
		e.Close()
		if obs.causes[cause] != 3 {
			t.Errorf("%v: observer counted %v", cause, obs.causes)
		}
		if n := strings.Count(log.String(), "level=WARN"); n != 1 || !strings.Contains(log.String(), "cause="+cause.String()) {
			t.Errorf("%v: %d warnings logged, want 1 naming the cause:\n%s", cause, n, log.String())
		}
	}
	if got := (Cause(99)).String(); got != "cause(99)" {
		t.Errorf("unknown cause string %q", got)
	}
}

// TestWarnLimiter: one warning per cause per interval, with the count of
// those held back.
func TestWarnLimiter(t *testing.T) {
	var log bytes.Buffer
	now := time.Unix(0, 0)
	w := NewWarnLimiter(slog.New(slog.NewTextHandler(&log, nil)), time.Minute, func() time.Time { return now })
	if !w.Warn(CauseTimeout, "x") || w.Warn(CauseTimeout, "x") || w.Warn(CauseTimeout, "x") {
		t.Errorf("second warning within the interval logged")
	}
	if !w.Warn(CauseDenied, "y") {
		t.Errorf("another cause held back")
	}
	now = now.Add(time.Minute)
	if !w.Warn(CauseTimeout, "x") || !strings.Contains(log.String(), "suppressed=2") {
		t.Errorf("warning after the interval: %s", log.String())
	}
}

// TestInclude follows local/include.c deliver_include: an :include: file's
// addresses are compared and forwarded; a missing file bounces (nothing
// to compare, no error); an unreadable one makes the expansion
// incomplete.
func TestInclude(t *testing.T) {
	cfg := testConfig()
	m := withEmpty(cfg, tables(t, map[string]string{
		"hash:virtual": "member2@local.test loopuser@local.test\n",
		"hash:aliases": "list :include:/lists/list\nmissing :include:/lists/missing\nsecret :include:/lists/secret\n",
	}))
	files := map[string]string{"/lists/list": "# members\nmember1\nmember2@local.test, \"|/bin/cmd\"\n"}
	read := func(path string) ([]byte, error) {
		if path == "/lists/secret" {
			return nil, fs.ErrPermission
		}
		if s, ok := files[path]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrNotExist
	}
	e, err := New(context.Background(), Options{Config: cfg, Backend: m, ReadFile: read, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r, _ := e.Expand(context.Background(), addr("list@local.test"))
	// Members are compared at the next level, then forwarded through
	// cleanup, whose virtual alias maps rewrite member2.
	equalTargets(t, "include", r, "list@local.test local !", "member1@local.test local !",
		"member2@local.test local !", "loopuser@local.test local !")
	r, _ = e.Expand(context.Background(), addr("missing@local.test"))
	equalTargets(t, "missing include", r, "missing@local.test local !")
	if r, _ := e.Expand(context.Background(), addr("secret@local.test")); r.Complete || r.Cause != CauseLookup {
		t.Errorf("unreadable include: %+v", r)
	}
}

// TestOwnerAlias follows deliver_alias and deliver_switch: with an
// owner-list alias, the members of list are compared, then forwarded as a
// new message, whose cleanup rewrites them again.
func TestOwnerAlias(t *testing.T) {
	cfg := testConfig()
	m := tables(t, map[string]string{
		"hash:virtual": "member@local.test loopuser@local.test\n",
		"hash:aliases": "list member\nowner-list admin\nplain member\n",
	})
	equalTargets(t, "owner alias", expandWith(t, cfg, m, "list@local.test"),
		"list@local.test local !", "member@local.test local !", "loopuser@local.test local !")
	// Without owner-: delivered at once by this local(8), no cleanup.
	equalTargets(t, "no owner alias", expandWith(t, cfg, m, "plain@local.test"),
		"plain@local.test local !", "member@local.test local !")
}

// TestSenderDependentTransport: with sender_dependent_default_transport_maps
// the default class's transport is not known from the recipient: judged
// as checking loops.
func TestSenderDependentTransport(t *testing.T) {
	cfg := testConfig()
	cfg.SenderDependentDefaultTransport = true
	equalTargets(t, "sender dependent", expandWith(t, cfg, &Memory{}, "u@remote.test"), "u@remote.test  !")
}

// TestBuiltinTables: static:, inline: and fail: need no backend.
func TestBuiltinTables(t *testing.T) {
	cfg := testConfig()
	cfg.VirtualAliasMaps = []string{"inline:{ valias@local.test=loopuser@local.test, { spaced@local.test = a@local.test, b@local.test } }", "hash:virtual"}
	m := &Memory{}
	equalTargets(t, "inline", expandWith(t, cfg, m, "VAlias@local.test"), "loopuser@local.test local !")
	equalTargets(t, "inline, braces", expandWith(t, cfg, m, "spaced@local.test"), "a@local.test local !", "b@local.test local !")
	cfg.VirtualAliasMaps = []string{"static:{ loopuser@local.test }"}
	equalTargets(t, "static", expandWith(t, cfg, m, "anything@remote.test"), "loopuser@local.test local !")
	cfg.VirtualAliasMaps = []string{"fail:down"}
	if r := expandWith(t, cfg, m, "x@local.test"); r.Complete || r.Cause != CauseLookup {
		t.Errorf("fail: table: %+v", r)
	}
}

// Start runs at most MaxInflight distinct expansions at once: beyond that
// a recipient is judged as spelled (CauseBusy, counted), and a recipient
// already running shares its expansion as always.
func TestStartBoundsInflight(t *testing.T) {
	cfg := testConfig()
	mem := withEmpty(cfg, tables(t, map[string]string{"hash:virtual": "valias@local.test loopuser@local.test\n"}))
	be := &blocking{Memory: mem, release: make(chan struct{}), started: make(chan struct{})}
	obs := &counting{}
	e, err := New(context.Background(), Options{Config: cfg, Backend: be, Observer: obs, MaxInflight: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	p1 := e.Start(addr("valias@local.test"))
	<-be.started
	if r := e.Start(addr("other@local.test")).Wait(context.Background()); r.Complete || r.Cause != CauseBusy {
		t.Errorf("a second distinct expansion: %+v, want incomplete with cause busy", r)
	}
	if p := e.Start(addr("valias@local.test")); p != p1 {
		t.Error("the running recipient did not share its expansion")
	}
	close(be.release)
	equalTargets(t, "the first", p1.Wait(context.Background()), "loopuser@local.test local !")
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.causes[CauseBusy] != 1 {
		t.Errorf("busy counted %d times, want 1", obs.causes[CauseBusy])
	}
}

// Recipients is the front-ends' hook: the recipient judged with its
// expansion once waited for; as spelled when the path does not parse or
// the wait's context ends first.
func TestRecipientsHook(t *testing.T) {
	cfg := testConfig()
	mem := withEmpty(cfg, tables(t, map[string]string{"hash:virtual": "valias@local.test loopuser@local.test\n"}))
	be := &blocking{Memory: mem, release: make(chan struct{}), started: make(chan struct{})}
	e, err := New(context.Background(), Options{Config: cfg, Backend: be})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	hook := e.Recipients(ModeAny)
	section := []byte("Delivered-To: loopuser@local.test\r\n\r\n")

	wait := hook("<valias@local.test> NOTIFY=NEVER")
	<-be.started
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // ended before the expansion: as spelled
	if v := loopcheck.CheckRecipients([]loopcheck.Recipient{wait(ctx)}, section); v.Loop {
		t.Errorf("judged with an expansion not waited for: %+v", v)
	}
	close(be.release)
	v := loopcheck.CheckRecipients([]loopcheck.Recipient{hook("<valias@local.test>")(context.Background())}, section)
	if !v.Loop || v.Recipient != "valias@local.test" || v.Via != "loopuser@local.test" {
		t.Errorf("with its expansion: %+v, want a loop for valias@ via loopuser@", v)
	}
	if v := loopcheck.CheckRecipients([]loopcheck.Recipient{hook("<unterminated@local.test")(context.Background())}, []byte("Delivered-To: unterminated@local.test\r\n\r\n")); !v.Loop {
		t.Errorf("a path that does not parse is judged as spelled: %+v", v)
	}
}

// Targets are told apart as local(8) compares them
// (global/delivered_hdr.c delivered_hdr_find: quote_822_local, then
// fold_addr), not by loopcheck's looser key: a composed and a decomposed
// spelling are two targets, and -loops=postfix finds a loop through
// either.
func TestTargetsExactSpellings(t *testing.T) {
	cfg := testConfig()
	m := tables(t, map[string]string{"hash:virtual": "two@local.test \u00fcser@local.test, u\u0308ser@local.test\n"})
	res := expandWith(t, cfg, m, "two@local.test")
	equalTargets(t, "two spellings", res, "\u00fcser@local.test local !", "u\u0308ser@local.test local !")
	for _, dt := range []string{"\u00fcser@local.test", "u\u0308ser@local.test"} {
		r := loopcheck.NewRecipient("<two@local.test>").WithExpansion(res.Expansion(ModePostfix))
		if v := loopcheck.CheckRecipients([]loopcheck.Recipient{r}, []byte("Delivered-To: "+dt+"\r\n\r\n")); !v.Loop {
			t.Errorf("-loops=postfix, Delivered-To: %q: %+v, want a loop", dt, v)
		}
	}
}

// slowKeys is a Backend whose lookups of keys holding "slow" wait until
// released; the others answer at once.
type slowKeys struct {
	*Memory
	release, started chan struct{}
	once             sync.Once
}

func (b *slowKeys) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	if strings.Contains(key, "slow") {
		b.once.Do(func() { close(b.started) })
		select {
		case <-b.release:
		case <-ctx.Done():
			return "", false, ctx.Err()
		}
	}
	return b.Memory.Lookup(ctx, table, key)
}

// A full in-flight budget bounds the expansions that run, not the cache:
// Start serves a cached expansion whatever the budget.
func TestStartCacheBeforeBudget(t *testing.T) {
	cfg := testConfig()
	mem := withEmpty(cfg, tables(t, map[string]string{"hash:virtual": "valias@local.test loopuser@local.test\n"}))
	be := &slowKeys{Memory: mem, release: make(chan struct{}), started: make(chan struct{})}
	obs := &counting{}
	e, err := New(context.Background(), Options{Config: cfg, Backend: be, Observer: obs, MaxInflight: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	defer close(be.release)
	if _, err := e.Expand(context.Background(), addr("valias@local.test")); err != nil {
		t.Fatal(err)
	}
	e.Start(addr("slow@local.test"))
	<-be.started
	equalTargets(t, "cached while the budget is full", e.Start(addr("valias@local.test")).Wait(context.Background()), "loopuser@local.test local !")
	if r := e.Start(addr("other@local.test")).Wait(context.Background()); r.Cause != CauseBusy {
		t.Errorf("an uncached recipient while the budget is full: %+v, want cause busy", r)
	}
	if obs.hits.Load() != 1 {
		t.Errorf("cache hits %d, want 1", obs.hits.Load())
	}
}

// TestIncludeFiles follows local/include.c deliver_include with the
// default reader: a regular file is read; a FIFO and a world-writable file
// are refused (local(8) bounces the recipient: nothing in them is
// compared), and reading a FIFO never waits for a writer; a file over the
// size bound makes the expansion incomplete.
func TestIncludeFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	regular := write("list", "member1\n", 0o644)
	open := write("open", "member1\n", 0o666)
	large := write("large", strings.Repeat("member1\n", maxIncludeFile/8+1), 0o644)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	m := tables(t, map[string]string{"hash:aliases": "regular :include:" + regular + "\nopen :include:" + open +
		"\nlarge :include:" + large + "\nfifo :include:" + fifo + "\nlink :include:" + link + "\n"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		equalTargets(t, "regular", expandWith(t, cfg, m, "regular@local.test"), "regular@local.test local !", "member1@local.test local !")
		equalTargets(t, "symbolic link", expandWith(t, cfg, m, "link@local.test"), "link@local.test local !", "member1@local.test local !")
		equalTargets(t, "world-writable", expandWith(t, cfg, m, "open@local.test"), "open@local.test local !")
		equalTargets(t, "FIFO", expandWith(t, cfg, m, "fifo@local.test"), "fifo@local.test local !")
		if r := expandWith(t, cfg, m, "large@local.test"); r.Complete || r.Cause != CauseLookup {
			t.Errorf("a file over %d bytes: %+v, want incomplete (lookup-error)", maxIncludeFile, r)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		// Not a timing assertion: a read that never ends (the FIFO) is
		// the failure.
		t.Fatal("reading the :include: files hangs")
	}
}

// A read of an :include: file that never returns (a hung NFS mount) does
// not hold the expansion nor Close: the expansion ends incomplete
// (closed), and Close returns while the read still blocks.
func TestIncludeHungRead(t *testing.T) {
	cfg := testConfig()
	m := withEmpty(cfg, tables(t, map[string]string{"hash:aliases": "hung :include:/nfs/list\n"}))
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	read := func(string) ([]byte, error) {
		close(started)
		<-release
		return []byte("member1\n"), nil
	}
	e, err := New(context.Background(), Options{Config: cfg, Backend: m, ReadFile: read, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	p := e.Start(addr("hung@local.test"))
	<-started
	closed := make(chan struct{})
	go func() { e.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("Close waits for a read that does not return")
	}
	if r := p.Wait(context.Background()); r.Complete || r.Cause != CauseClosed {
		t.Errorf("the expansion of a hung read after Close: %+v, want incomplete (closed)", r)
	}
}
