package milter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// memExpander is package expand over in-memory tables, as the command
// hooks it (-loops=any): local.test is the local domain, virtual holds
// virtual_alias_maps entries (address -> comma list), aliases aliases(5)
// entries. A recipient neither table names expands to itself.
func memExpander(t *testing.T, virtual, aliases map[string]string) Expander {
	t.Helper()
	cfg := expand.DefaultConfig("mx.local.test", "local.test", "local.test", "mx.local.test")
	cfg.VirtualAliasMaps = []string{"hash:/etc/postfix/virtual"}
	cfg.AliasMaps = []string{"hash:/etc/aliases"}
	tables := &expand.Memory{}
	tables.Set("hash:/etc/postfix/virtual", expand.MemTable{Entries: virtual})
	if aliases == nil {
		aliases = map[string]string{}
	}
	tables.Set("hash:/etc/aliases", expand.MemTable{Entries: aliases})
	e, err := expand.New(context.Background(), expand.Options{Config: cfg, Backend: tables})
	if err != nil {
		t.Fatalf("expand.New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e.Recipients(expand.ModeAny)
}

// fakeExpander expands by a table (RCPT argument -> addresses); one
// argument may be made to hang until its context ends, another to panic.
// It counts starts and waits, to hold the contract: every started
// expansion is waited for exactly once.
type fakeExpander struct {
	table  map[string][]string
	hang   string // an argument whose wait returns only at ctx's end
	panics string // an argument whose start panics

	mu      sync.Mutex
	started map[string]int
	waited  map[string]int
	ctxDone map[string]int // waits whose context was done on return
}

func newFakeExpander(table map[string][]string) *fakeExpander {
	return &fakeExpander{table: table, started: map[string]int{}, waited: map[string]int{}, ctxDone: map[string]int{}}
}

func (f *fakeExpander) expand(arg string) func(context.Context) loopcheck.Recipient {
	if arg == f.panics {
		panic("expander bug")
	}
	f.mu.Lock()
	f.started[arg]++
	f.mu.Unlock()
	return func(ctx context.Context) loopcheck.Recipient {
		if arg == f.hang {
			<-ctx.Done()
		}
		f.mu.Lock()
		f.waited[arg]++
		if ctx.Err() != nil {
			f.ctxDone[arg]++
		}
		f.mu.Unlock()
		r := loopcheck.NewRecipient(arg)
		if ctx.Err() != nil {
			return r // as spelled, as a real expander does when it runs out of time
		}
		var addrs []address.Addr
		for _, a := range f.table[arg] {
			p, err := address.ParsePath("<" + a + ">")
			if err != nil {
				panic(err)
			}
			addrs = append(addrs, p.Addr)
		}
		if addrs == nil { // not in the table: delivered to itself
			if p, err := address.ParsePath(arg); err == nil {
				addrs = []address.Addr{p.Addr}
			}
		}
		return r.WithExpansion(addrs, false).WithDeliveries(addrs)
	}
}

// balanced reports whether every start was waited for once.
func (f *fakeExpander) balanced(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for arg, n := range f.started {
		if f.waited[arg] != n {
			t.Errorf("expansion of %s started %d times, waited %d times", arg, n, f.waited[arg])
		}
	}
	for arg := range f.waited {
		if f.started[arg] == 0 {
			t.Errorf("expansion of %s waited for, never started", arg)
		}
	}
}

func TestExpansionFindsTheLoop(t *testing.T) {
	fe := newFakeExpander(map[string][]string{
		"<valias@local.test>":    {"loopuser@local.test"},
		"<alias@local.test> X=Y": {"loopuser@local.test"},
	})
	ts := startServer(t, Config{Policy: Policy{Expander: fe.expand}}, nil)
	got := judge(t, ts.addr, message{rcpts: rcpts("user@local.test", "valias@local.test"), headers: [][2]string{dt(loopRcpt)}})
	if !isLoopReply(got.act, "valias@local.test") {
		t.Errorf("answer %v, want the loop reply naming valias@local.test as the client spelled it", got.act)
	}
	ts.waitLog(t, "loop_recipient=valias@local.test loop_via=loopuser@local.test")
	// The expander gets the argument with its parameters.
	got = judge(t, ts.addr, message{rcpts: []rcptIn{{"alias@local.test", "X=Y"}}, headers: [][2]string{dt(loopRcpt)}})
	if !isLoopReply(got.act, "alias@local.test") {
		t.Errorf("with parameters: answer %v, want the loop reply", got.act)
	}
	ts.stop(t)
	fe.balanced(t)
}

func TestExpansionDropRecipient(t *testing.T) {
	fe := newFakeExpander(map[string][]string{"<valias@local.test>": {"loopuser@local.test"}})
	ts := startServer(t, Config{Policy: Policy{Expander: fe.expand, LoopAction: DropRecipient}}, nil)
	got := judge(t, ts.addr, message{rcpts: rcpts("user@local.test", "valias@local.test"), headers: [][2]string{dt(loopRcpt)}})
	// Postfix removes the original recipient with all its expansions.
	if d := got.deleted(); !isAccept(got.act) || len(d) != 1 || d[0] != "<valias@local.test>" {
		t.Errorf("answer %v, removed %q; want accept with <valias@local.test> removed", got.act, d)
	}
	ts.waitLog(t, "recipient=valias@local.test loop_via=loopuser@local.test")
	ts.stop(t)
	fe.balanced(t)
}

// TestExpansionBound: an expansion not done at end of message within
// ExpandWait leaves the recipient judged as spelled; the message is not
// held longer.
func TestExpansionBound(t *testing.T) {
	fe := newFakeExpander(map[string][]string{"<slow@local.test>": {"loopuser@local.test"}})
	fe.hang = "<slow@local.test>"
	ts := startServer(t, Config{Policy: Policy{Expander: fe.expand}, ExpandWait: 50 * time.Millisecond}, nil)
	got := judge(t, ts.addr, message{rcpts: rcpts("slow@local.test"), headers: [][2]string{dt(loopRcpt)}})
	if !isAccept(got.act) {
		t.Errorf("answer %v, want accept (judged as spelled)", got.act)
	}
	// As spelled, it still loops.
	got = judge(t, ts.addr, message{rcpts: rcpts("slow@local.test"), headers: [][2]string{dt("slow@local.test")}})
	if !isLoopReply(got.act, "slow@local.test") {
		t.Errorf("answer %v, want the loop reply for the recipient as spelled", got.act)
	}
	ts.stop(t)
	fe.balanced(t)
	if n := fe.ctxDone["<slow@local.test>"]; n != 2 {
		t.Errorf("%d waits ended by the bound, want 2", n)
	}
}

// TestExpansionReleased: expansions of an aborted message, of a session
// that ends mid-message, and of exempt messages.
func TestExpansionReleased(t *testing.T) {
	fe := newFakeExpander(map[string][]string{"<valias@local.test>": {"loopuser@local.test"}})
	fe.panics = "<bug@local.test>"
	exempt, _ := allowlist.Parse("192.0.2.0/24")
	ts := startServer(t, Config{Policy: Policy{Expander: fe.expand, ExemptClients: exempt, ExemptSASL: true}}, nil)

	// Aborted (RSET): waited with a done context.
	macros := gomilter.NewMacroBag()
	s := openSession(t, postfixLike(ts.addr), macros, "")
	if _, err := s.Mail("a@example.org", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rcpt("valias@local.test", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(nil); err != nil {
		t.Fatal(err)
	}
	// The session ends inside a message.
	if _, err := s.Mail("a@example.org", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rcpt("valias@local.test", ""); err != nil {
		t.Fatal(err)
	}
	s.Close()
	ts.waitLog(t, "reason=closed")

	// Exempt messages start no expansion.
	for _, m := range []message{{clientAddr: "192.0.2.1"}, {saslUser: "alice"}} {
		m.rcpts, m.headers = rcpts("valias@local.test"), [][2]string{dt(loopRcpt)}
		if got := judge(t, ts.addr, m); !isAccept(got.act) {
			t.Errorf("exempt: answer %v, want accept", got.act)
		}
	}
	// A panicking expander: the recipient is judged as spelled.
	got := judge(t, ts.addr, message{rcpts: rcpts("bug@local.test"), headers: [][2]string{dt("bug@local.test")}})
	if !isLoopReply(got.act, "bug@local.test") {
		t.Errorf("panicking expander: answer %v, want the loop reply as spelled", got.act)
	}
	ts.waitLog(t, "recipient expansion failed; judging the recipient as spelled")
	ts.stop(t)
	fe.balanced(t)
	if n := fe.started["<valias@local.test>"]; n != 2 {
		t.Errorf("expansions started %d times, want 2 (none for the exempt messages)", n)
	}
	if n := fe.ctxDone["<valias@local.test>"]; n != 2 {
		t.Errorf("%d released expansions saw a done context, want 2", n)
	}
	if strings.Contains(ts.logs.String(), "session failed") {
		t.Errorf("a session failed")
	}
}

// TestDropOnlyWhatLoopsWhole: under drop-recipient a recipient is removed
// only when every address Postfix delivers it to loops, since Postfix
// removes it with all it expanded to; otherwise the whole message is
// refused (554 5.4.6, the sender is told) and the log says why. Package
// expand over in-memory tables gives the expansions.
func TestDropOnlyWhatLoopsWhole(t *testing.T) {
	virtual := map[string]string{
		"team@local.test":   "loopuser@local.test, other@local.test",
		"valias@local.test": "loopuser@local.test",
		"pair@local.test":   "loopuser@local.test, b@local.test",
	}
	fe := newFakeExpander(nil)
	fe.hang = "<late@local.test>"
	mem := memExpander(t, virtual, nil)
	exp := func(arg string) func(context.Context) loopcheck.Recipient {
		if arg == fe.hang {
			return fe.expand(arg)
		}
		return mem(arg)
	}
	ts := startServer(t, Config{Policy: Policy{LoopAction: DropRecipient, Expander: exp}, ExpandWait: 50 * time.Millisecond}, nil)
	for _, tc := range []struct {
		name    string
		rcpts   []string
		dt      []string
		removed []string // nil: the message is refused
		refused string   // the refusal logged, for a refused message
	}{
		{"a virtual alias to a looping and a clean mailbox", []string{"team@local.test", "user@local.test"}, []string{loopRcpt},
			nil, "drop_refused=partly-looping drop_refused_recipient=team@local.test"},
		{"the alias itself named, its mailboxes clean", []string{"team@local.test", "user@local.test"}, []string{"team@local.test"},
			nil, "drop_refused=partly-looping drop_refused_recipient=team@local.test"},
		{"a virtual alias to the looping mailbox only", []string{"valias@local.test", "user@local.test"}, []string{loopRcpt},
			[]string{"<valias@local.test>"}, ""},
		{"a virtual alias whose every mailbox loops", []string{"user@local.test", "pair@local.test"}, []string{"b@local.test", loopRcpt},
			[]string{"<pair@local.test>"}, ""},
		{"a mailbox", []string{"user@local.test", loopRcpt}, []string{loopRcpt}, []string{"<" + loopRcpt + ">"}, ""},
		{"one removable, one not", []string{"valias@local.test", "team@local.test", "user@local.test"}, []string{loopRcpt},
			nil, "drop_refused=partly-looping drop_refused_recipient=team@local.test"},
		{"an expansion not done in time", []string{"late@local.test", "user@local.test"}, []string{"late@local.test"},
			nil, "drop_refused=expansion-unknown drop_refused_recipient=late@local.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr [][2]string
			for _, a := range tc.dt {
				hdr = append(hdr, dt(a))
			}
			qid := fmt.Sprintf("Q%X", len(ts.logs.String()))
			got := judge(t, ts.addr, message{rcpts: rcpts(tc.rcpts...), headers: hdr, queueID: qid})
			if tc.removed != nil {
				if d := got.deleted(); !isAccept(got.act) || !slices.Equal(d, tc.removed) {
					t.Errorf("answer %v, removed %q; want accept with %q removed", got.act, d, tc.removed)
				}
				ts.waitLog(t, "queue_id="+qid)
				return
			}
			first := ""
			for _, r := range tc.rcpts { // the first looping recipient, in RCPT order
				if r != "user@local.test" && first == "" {
					first = r
				}
			}
			if !isLoopReply(got.act, first) || len(got.mods) != 0 {
				t.Errorf("answer %v with %v; want the loop reply for %s and nothing removed", got.act, got.mods, first)
			}
			ts.waitLog(t, "queue_id="+qid)
			for l := range strings.Lines(ts.logs.String()) {
				if strings.Contains(l, "queue_id="+qid) && (!strings.Contains(l, "verdict=loop") || !strings.Contains(l, tc.refused)) {
					t.Errorf("log line lacks verdict=loop and %s:\n%s", tc.refused, l)
				}
			}
		})
	}
	ts.stop(t)
	fe.balanced(t)
}

// TestDropWithoutExpansion: with no expander, what a recipient expands to
// is unknown, so drop-recipient refuses a looping message whole; the
// start-up log says so.
func TestDropWithoutExpansion(t *testing.T) {
	ts := startServer(t, Config{Policy: Policy{LoopAction: DropRecipient}}, nil)
	ts.waitLog(t, "drop-recipient without recipient expansion")
	got := judge(t, ts.addr, message{rcpts: rcpts("user@local.test", loopRcpt), headers: [][2]string{dt(loopRcpt)}})
	if !isLoopReply(got.act, loopRcpt) || len(got.mods) != 0 {
		t.Errorf("answer %v with %v; want the loop reply and nothing removed", got.act, got.mods)
	}
	ts.waitLog(t, "verdict=loop reply=\"554 5.4.6 mail forwarding loop for loopuser@local.test\" header_bytes=35 drop_refused=expansion-unknown drop_refused_recipient=loopuser@local.test")
}
