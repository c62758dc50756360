package conformance

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// The real-Postfix differential of recipient expansion (SPEC section 8):
// each variant is a recipient Postfix rewrites (canonical maps, virtual
// aliases, aliases(5), a transport) and a forged Delivered-To: header. It
// is sent to Postfix alone (the plain smtpd: what local(8) or pipe(8) does
// with it after queueing) and through the front smtpd to our proxy and the
// after-filter, with the proxy run five ways: without expansion (the
// literal check of SPEC section 5), and with an expand.Expander on the
// instance's configuration in -loops=any and -loops=postfix, once through
// proxymap(8) (the documented main.cf and master.cf lines of
// docs/expansion.md, chosen by the expander itself) and once through
// postmap(1) (the fallback). It always runs this project's proxy in
// process (PostfixImplEnv does not apply): the expansion is package
// expand's.

// pxVariant is one recipient and the forged Delivered-To: sent with it.
type pxVariant struct {
	name   string
	rcpt   string // the RCPT TO: mailbox: the recipient judged
	params string // ESMTP parameters sent after it
	// before is a recipient that does not loop, sent first in the same
	// transaction ("" for none).
	before string
	forged string // the address of the forged Delivered-To: header
	// loop: Postfix alone bounces the message as a mail forwarding loop
	// for forged (the oracle, checked on every run).
	loop bool
	// anyRefuses: not a loop for Postfix, yet -loops=any refuses it by
	// SPEC section 8: forged is the recipient as spelled, or an address
	// of its expansion whose delivery does not compare Delivered-To:
	// (smtp, pipe(8) without flag D), or the message spells forged in a
	// way local(8) does not compare as forged (dt) and -loops=any does.
	anyRefuses bool
	// dt, when set, is the message's Delivered-To: lines instead of
	// "Delivered-To: <forged>": another spelling of forged (local(8)
	// compares the first physical line exactly).
	dt string
}

// message is the variant's message.
func (v pxVariant) message() []byte {
	dt := v.dt
	if dt == "" {
		dt = "Delivered-To: " + v.forged
	}
	return []byte(dt + "\nSubject: expansion " + v.name + "\nFrom: sender@local.test\n\nbody of " + v.name + "\n")
}

// rcptArgs are the RCPT TO: arguments, in order.
func (v pxVariant) rcptArgs() []string {
	var args []string
	if v.before != "" {
		args = append(args, "<"+v.before+">")
	}
	arg := "<" + v.rcpt + ">"
	if v.params != "" {
		arg += " " + v.params
	}
	return append(args, arg)
}

// literalLoop is SPEC section 5's verdict without expansion: what the
// proxy judged before package expand existed.
func (v pxVariant) literalLoop() bool {
	return loopcheck.Check(v.rcptArgs(), v.message()).Loop
}

// forgedVia: the forged address is not the recipient as spelled, so a
// refusal can only come through the expansion, and the proxy's log line
// names the expanded address that matched.
func (v pxVariant) forgedVia() bool {
	return pxKey(v.rcpt) != pxKey(v.forged)
}

func pxKey(mailbox string) string { return pxParse(mailbox).Key() }

// pxMailbox is the recipient as a loop reply names it: as the client
// spelled it, without the source route.
func pxMailbox(mailbox string) string { return pxParse(mailbox).String() }

func pxParse(mailbox string) address.Addr {
	p, err := address.ParsePath("<" + mailbox + ">")
	if err != nil {
		panic(fmt.Sprintf("variant address %q: %v", mailbox, err))
	}
	return p.Addr
}

var pxVariants = []pxVariant{
	{name: "virtual one-to-one", rcpt: "valias@local.test", forged: "loopuser@local.test", loop: true},
	{name: "virtual, RCPT in mixed case", rcpt: "VAlias@Local.Test", forged: "loopuser@local.test", loop: true},
	{name: "virtual, RCPT with DSN parameters", rcpt: "valias@local.test", params: "NOTIFY=NEVER ORCPT=rfc822;valias@local.test", forged: "loopuser@local.test", loop: true},
	{name: "virtual, bare local part", rcpt: "valias", forged: "loopuser@local.test", loop: true},
	{name: "virtual, source route", rcpt: "@mx.local.test:valias@local.test", forged: "loopuser@local.test", loop: true},
	{name: "bare Postmaster", rcpt: "Postmaster", forged: "postmaster@local.test", loop: true},
	{name: "virtual, second recipient", before: "user@local.test", rcpt: "valias@local.test", forged: "loopuser@local.test", loop: true},
	{name: "virtual one-to-many", rcpt: "multi@local.test", forged: "loopuser@local.test", loop: true},
	{name: "virtual recursive", rcpt: "rec1@local.test", forged: "loopuser@local.test", loop: true},
	{name: "virtual catch-all @dom", rcpt: "anyone@catch.test", forged: "loopuser@local.test", loop: true},
	{name: "virtual regexp table", rcpt: "re-x@local.test", forged: "loopuser@local.test", loop: true},
	{name: "recipient_canonical_maps", rcpt: "canon@local.test", forged: "loopuser@local.test", loop: true},
	{name: "aliases(5), first level", rcpt: "lp@local.test", forged: "lp@local.test", loop: true},
	{name: "aliases(5), second level", rcpt: "lp@local.test", forged: "loopuser@local.test", loop: true},
	{name: "aliases(5), extension", rcpt: "lp+x@local.test", forged: "loopuser@local.test", loop: true},
	{name: "extension propagated", rcpt: "valias+ext@local.test", forged: "loopuser@local.test"},
	{name: "extension, its own loop", rcpt: "valias+ext@local.test", forged: "loopuser+ext@local.test", loop: true},
	{name: "pipe(8) flag D", rcpt: "u@pipe.test", forged: "u@pipe.test", loop: true},
	{name: "virtual to pipe(8) flag D", rcpt: "pvalias@local.test", forged: "u@pipe.test", loop: true},
	{name: "pipe(8) without flag D", rcpt: "u@nod.test", forged: "u@nod.test", anyRefuses: true},
	{name: "virtual to remote (smtp)", rcpt: "rvalias@local.test", forged: "far@remote.test", anyRefuses: true},
	{name: "remote (smtp) as spelled", rcpt: "far@remote.test", forged: "far@remote.test", anyRefuses: true},
	{name: "owner- alias, forwarded", rcpt: "list@local.test", forged: "loopuser@local.test", loop: true},
	{name: ":include:, forwarded", rcpt: "incl@local.test", forged: "loopuser@local.test", loop: true},
	{name: "alias to a mailbox, no cleanup", rcpt: "plain@local.test", forged: "loopuser@local.test"},
	{name: "rewritten away", rcpt: "valias@local.test", forged: "valias@local.test", anyRefuses: true},
	// Spellings of the forged address that local(8) does or does not
	// compare as it (delivered_hdr_init: the first physical line, leading
	// white space skipped, case-folded, no address parsing).
	{name: "header <addr>", rcpt: "valias@local.test", forged: "loopuser@local.test", dt: "Delivered-To: <loopuser@local.test>", anyRefuses: true},
	{name: "header list", rcpt: "valias@local.test", forged: "loopuser@local.test", dt: "Delivered-To: x@y, loopuser@local.test", anyRefuses: true},
	{name: "header quoted local part", rcpt: "valias@local.test", forged: "loopuser@local.test", dt: `Delivered-To: "loopuser"@local.test`, anyRefuses: true},
	{name: "header trailing dot", rcpt: "valias@local.test", forged: "loopuser@local.test", dt: "Delivered-To: loopuser@LOCAL.TEST.", anyRefuses: true},
	{name: "header <addr>, as spelled", rcpt: "loopuser@local.test", forged: "loopuser@local.test", dt: "Delivered-To: <loopuser@local.test>", anyRefuses: true},
	{name: "header case, leading white space", rcpt: "valias@local.test", forged: "loopuser@local.test", dt: "Delivered-To:\t LoopUser@Local.TEST", loop: true},
	{name: "header after 1000 other fields", rcpt: "valias@local.test", forged: "loopuser@local.test", dt: strings.Repeat("Delivered-To: other@local.test\n", 1000) + "Delivered-To: loopuser@local.test", anyRefuses: true},
}

// Bounds of the expansion runs, longer than the command's defaults
// (-expansion-wait 5 s, an expansion's own 10 s) so that a slow machine
// running postmap(1) for every lookup never turns into a timeout, which
// would judge a recipient as spelled; the front smtpd's
// smtpd_proxy_timeout stays above them. The test asserts no expansion was
// incomplete, so a timeout fails it with its cause.
const (
	pxExpansionWait = 30 * time.Second
	pxProxyTimeout  = 60 * time.Second
)

// pxRun is one way a variant is sent.
type pxRun struct {
	tag     string // also the sender's extension: sender+TAG-N@local.test
	title   string // the table's column
	plain   bool   // Postfix alone, the plain smtpd
	backend expand.BackendKind
	expand  bool // the proxy with expansion (else the literal check)
	mode    expand.Mode
}

var pxRuns = []pxRun{
	{tag: "plain", title: "Postfix alone", plain: true},
	{tag: "literal", title: "literal proxy"},
	{tag: "pm-any", title: "proxymap any", expand: true, backend: expand.BackendAuto, mode: expand.ModeAny},
	{tag: "pm-postfix", title: "proxymap postfix", expand: true, backend: expand.BackendAuto, mode: expand.ModePostfix},
	{tag: "pq-any", title: "postmap any", expand: true, backend: expand.BackendPostmap, mode: expand.ModeAny},
	{tag: "pq-postfix", title: "postmap postfix", expand: true, backend: expand.BackendPostmap, mode: expand.ModePostfix},
}

// pxOutcome is what happened to one variant on one run.
type pxOutcome struct {
	sender     string
	res        postfixtest.Result
	err        error
	deliveries []postfixtest.Delivery // of the message and of what local(8) forwarded it as
}

func (o pxOutcome) queued() bool { return o.err == nil && o.res.EndOfData.Code == 250 }

func (o pxOutcome) refusedAsLoop() bool {
	return o.err == nil && o.res.EndOfData.Code == 554 && strings.HasPrefix(o.res.EndOfData.Text(), "554 5.4.6 ")
}

// loopBounced: some delivery bounced as a loop for addr.
func (o pxOutcome) loopBounced(addr string) bool {
	return slices.ContainsFunc(o.deliveries, func(d postfixtest.Delivery) bool {
		return d.IsLoopBounce() && pxKey(d.Recipient) == pxKey(addr)
	})
}

// fates are the deliveries as "recipient status", sorted: what Postfix
// did with the message, independent of queue ids.
func (o pxOutcome) fates() []string {
	var f []string
	for _, d := range o.deliveries {
		s := strings.ToLower(d.Recipient) + " " + d.Status
		if d.IsLoopBounce() {
			s += " (loop)"
		}
		f = append(f, s)
	}
	slices.Sort(f)
	return f
}

func (o pxOutcome) String() string {
	switch {
	case o.err != nil:
		return "error: " + o.err.Error()
	case o.refusedAsLoop():
		return "554 5.4.6"
	case !o.queued():
		return "refused: " + o.res.EndOfData.String()
	}
	loops := slices.ContainsFunc(o.deliveries, postfixtest.Delivery.IsLoopBounce)
	sent := !slices.ContainsFunc(o.deliveries, func(d postfixtest.Delivery) bool { return d.Status != "sent" })
	switch {
	case loops:
		return "queued, loop bounce"
	case sent:
		return "queued, delivered"
	}
	return "queued, " + strings.Join(o.fates(), ", ")
}

// pxObserver counts what the expanders did.
type pxObserver struct {
	lookups, hits, misses atomic.Int64
	mu                    sync.Mutex
	incomplete            map[expand.Cause]int
}

func (o *pxObserver) Lookup()    { o.lookups.Add(1) }
func (o *pxObserver) CacheHit()  { o.hits.Add(1) }
func (o *pxObserver) CacheMiss() { o.misses.Add(1) }
func (o *pxObserver) Incomplete(c expand.Cause) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.incomplete == nil {
		o.incomplete = map[expand.Cause]int{}
	}
	o.incomplete[c]++
}

// pxSwitch hands each connection accepted on the filter address to the
// proxy of the run in progress, so that one Postfix instance (one front
// smtpd) serves every run. Connections stay the kernel's TCP connections;
// only the accept is shared.
type pxSwitch struct {
	mu  sync.Mutex
	cur *pxListener
}

// pxListener is the listener one proxy serves: the connections the switch
// hands it.
type pxListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pxListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pxListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pxListener) Addr() net.Addr { return l.addr }

// serveSwitch accepts on ln until the test ends.
func pxServeSwitch(t *testing.T, ln net.Listener) *pxSwitch {
	s := &pxSwitch{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			to := s.cur
			s.mu.Unlock()
			if to == nil {
				c.Close()
				continue
			}
			select {
			case to.conns <- c:
			case <-to.done:
				c.Close()
			}
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return s
}

func (s *pxSwitch) listener(addr net.Addr) *pxListener {
	return &pxListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (s *pxSwitch) route(l *pxListener) {
	s.mu.Lock()
	s.cur = l
	s.mu.Unlock()
}

// pxProxy is one proxy configuration under test.
type pxProxy struct {
	ln   *pxListener
	logs *pfLockedBuffer
	exp  *expand.Expander // nil for the literal check
	obs  *pxObserver
}

// pxPostfix starts the instance: virtual aliases one-to-one, one-to-many,
// recursive, catch-all and in a regexp table, recipient_canonical_maps,
// aliases(5) with owner- and :include:, a pipe(8) transport with flag D
// and one without, and a remote domain whose smtp transport delivers to
// sink. It carries the documented lines of docs/expansion.md: the public
// proxymap service, and proxy_read_maps holding its full default value
// and a proxy: entry for each table.
func pxPostfix(t *testing.T, sink string) *postfixtest.Instance {
	t.Helper()
	p := postfixtest.New(t, postfixtest.Options{
		ProxyTimeout: pxProxyTimeout,
		MainCF: map[string]string{
			"virtual_alias_maps":                   "hash:{etc}/virtual, regexp:{etc}/virtual.re",
			"recipient_canonical_maps":             "hash:{etc}/rcanon",
			"transport_maps":                       "hash:{etc}/transport",
			"pipeloop_destination_recipient_limit": "1",
			"pipenod_destination_recipient_limit":  "1",
			"proxy_read_maps": pxDefaultProxyReadMaps(t) +
				" proxy:hash:{etc}/virtual proxy:regexp:{etc}/virtual.re proxy:hash:{etc}/rcanon" +
				" proxy:hash:{etc}/transport proxy:hash:{etc}/aliases",
		},
		MasterCF: "proxymap unix n - n - - proxymap\n" +
			"pipeloop unix - n n - - pipe flags=DRq user=nobody argv=/bin/sh -c cat>>{mail}/pipebox\n" +
			"pipenod unix - n n - - pipe flags=Rq user=nobody argv=/bin/sh -c cat>>{mail}/pipenodbox\n",
		Files: map[string]string{
			"virtual": `catch.test anything
member@local.test loopuser@local.test
member2@local.test loopuser@local.test
valias@local.test loopuser@local.test
multi@local.test loopuser@local.test, user@local.test
rec1@local.test rec2@local.test
rec2@local.test loopuser@local.test
@catch.test loopuser@local.test
pvalias@local.test u@pipe.test
rvalias@local.test far@remote.test
`,
			"virtual.re": "/^re-.*@local\\.test$/ loopuser@local.test\n",
			"rcanon":     "canon@local.test valias@local.test\n",
			"transport":  "pipe.test pipeloop:\nnod.test pipenod:\nremote.test smtp:" + sink + "\n",
			"list.inc":   "# members\nmember2\n",
		},
		Postmap: []string{"hash:virtual", "hash:rcanon", "hash:transport"},
		Aliases: map[string]string{
			"lp":         "loopuser",
			"list":       "member2",
			"owner-list": "postmaster",
			"plain":      "member",
			"incl":       ":include:{mail}/../etc/list.inc",
		},
		Mailboxes: []string{"member"},
	})
	return p
}

// pxDefaultProxyReadMaps is `postconf -d -h proxy_read_maps`, the value
// docs/expansion.md tells the administrator to paste.
func pxDefaultProxyReadMaps(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("/usr/sbin/postconf", "-d", "-h", "proxy_read_maps").Output()
	if err != nil {
		t.Fatalf("postconf -d -h proxy_read_maps: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestPostfixExpansionDifferential: every variant Postfix alone bounces as
// a loop is refused with 554 5.4.6 at SMTP time by the proxy with
// expansion, in both modes and with both backends, and nothing of it is
// queued; with -loops=postfix nothing Postfix would deliver is refused;
// -loops=any refuses exactly the loops and the variants SPEC section 8
// adds; what the proxy passes, Postfix then treats exactly as it treats
// the message alone. The literal proxy is held to SPEC section 5 and the
// loops it misses (the rewritten ones) are recorded: the same checks
// applied to it must report them, so the differential is shown able to
// fail.
func TestPostfixExpansionDifferential(t *testing.T) {
	t.Parallel()
	sinkLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink := smtpload.NewSink(sinkLn)
	t.Cleanup(func() { sink.Close() })

	// The smtp transport's next hop: [host]:port, no MX lookup.
	p := pxPostfix(t, "[127.0.0.1]:"+strconv.Itoa(sinkLn.Addr().(*net.TCPAddr).Port))
	filter := p.FilterListener()
	p.Start()
	sw := pxServeSwitch(t, filter)

	// One proxy per run, each serving the connections the switch hands
	// it. Expanders are closed after the proxies stop (cleanups run last
	// registered first).
	proxies := map[string]*pxProxy{}
	for _, run := range pxRuns {
		if run.plain {
			continue
		}
		px := &pxProxy{ln: sw.listener(filter.Addr()), logs: &pfLockedBuffer{}}
		cfg := smtpproxy.Config{
			Upstream:      p.AfterFilterAddr(),
			DrainTimeout:  pfDrainTimeout,
			ExpansionWait: pxExpansionWait,
			Logger:        slog.New(slog.NewTextHandler(px.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		if run.expand {
			px.obs = &pxObserver{}
			e, err := expand.New(context.Background(), expand.Options{
				ConfigDir: p.ConfigDir(),
				Prefer:    run.backend,
				Timeout:   pxExpansionWait,
				Observer:  px.obs,
				Logger:    cfg.Logger,
			})
			if err != nil {
				t.Fatalf("%s: expand.New: %v", run.tag, err)
			}
			t.Cleanup(func() { e.Close() })
			info := e.BackendInfo()
			t.Logf("%s: backend %s", run.tag, info)
			// The documented lines make the expander choose proxymap by
			// itself; the fallback is forced.
			if want := map[expand.BackendKind]string{expand.BackendAuto: "proxymap", expand.BackendPostmap: "postmap"}[run.backend]; !strings.HasPrefix(info, want) {
				t.Fatalf("%s: backend %q, want %s", run.tag, info, want)
			}
			px.exp = e
			cfg.Expand = e.Recipients(run.mode)
		}
		srv, err := smtpproxy.New(cfg)
		if err != nil {
			t.Fatalf("%s: smtpproxy.New: %v", run.tag, err)
		}
		stop := smtptest.Serve(t, srv, px.ln)
		t.Cleanup(func() {
			if err := stop(); err != nil {
				t.Errorf("%s: proxy Serve: %v", run.tag, err)
			}
			if t.Failed() {
				t.Logf("%s proxy log:\n%s", run.tag, px.logs.String())
			}
		})
		proxies[run.tag] = px
	}

	// Send: run after run, each variant after the other.
	out := make([][]pxOutcome, len(pxRuns))
	start := time.Now()
	for r, run := range pxRuns {
		addr := p.FrontAddr()
		if run.plain {
			addr = p.PlainAddr()
		} else {
			sw.route(proxies[run.tag].ln)
		}
		out[r] = make([]pxOutcome, len(pxVariants))
		for i, v := range pxVariants {
			o := &out[r][i]
			o.sender = fmt.Sprintf("sender+%s-%d@local.test", run.tag, i)
			o.res, o.err = postfixtest.Send(addr, o.sender, v.rcptArgs(), v.message())
			if o.err == nil && o.queued() && o.res.QueueID() == "" {
				o.err = fmt.Errorf("250 without a queue id: %v", o.res.EndOfData)
			}
		}
	}
	sw.route(nil)
	for r := range pxRuns {
		for i := range pxVariants {
			if o := &out[r][i]; o.queued() {
				o.deliveries = p.WaitDoneFollowing(o.res.QueueID())
			}
		}
	}
	t.Logf("%d messages sent and done in %v", len(pxRuns)*len(pxVariants), time.Since(start).Round(time.Millisecond))

	// What entered the queue, by sender: qmgr logs "QID: from=<...>" once
	// for every message committed to the queue (a message local(8)
	// forwards from an :include: file keeps its sender).
	queuedFrom := map[string][]string{}
	for _, m := range regexp.MustCompile(`qmgr\[\d+\]: ([0-9A-Za-z]+): from=<([^>]*)>`).FindAllStringSubmatch(p.Maillog(), -1) {
		queuedFrom[strings.ToLower(m[2])] = append(queuedFrom[strings.ToLower(m[2])], m[1])
	}

	missed := 0 // loops the literal proxy let through
	for i, v := range pxVariants {
		plain := out[0][i]
		fail := func(run pxRun, format string, args ...any) {
			t.Errorf("%s / %s (RCPT %s, Delivered-To: %s): %s", v.name, run.title, v.rcpt, v.forged, fmt.Sprintf(format, args...))
		}
		// The oracle: Postfix alone queues every variant and bounces it as
		// a loop for the forged address exactly when the variant says.
		if !plain.queued() {
			fail(pxRuns[0], "Postfix alone did not queue it: %v %v", plain.res.EndOfData, plain.err)
			continue
		}
		if got := plain.loopBounced(v.forged); got != v.loop {
			fail(pxRuns[0], "Postfix bounced it as a loop for %s: %v, the variant says %v: %v", v.forged, got, v.loop, plain.deliveries)
			continue
		}
		for r, run := range pxRuns[1:] {
			o := out[r+1][i]
			if o.err != nil {
				fail(run, "send: %v", o.err)
				continue
			}
			var wantRefused bool
			switch {
			case !run.expand:
				wantRefused = v.literalLoop() // SPEC section 5
			case run.mode == expand.ModeAny:
				wantRefused = v.loop || v.anyRefuses
			default:
				wantRefused = v.loop // exactly what Postfix bounces
			}
			switch {
			case o.refusedAsLoop():
				if want := "mail forwarding loop for " + pxMailbox(v.rcpt); !strings.Contains(o.res.EndOfData.Text(), want) {
					fail(run, "the refusal %q does not name the recipient as spelled (%q)", o.res.EndOfData.Text(), want)
				}
				if run.expand && v.forgedVia() && !pxLogged(proxies[run.tag].logs.String(), o.sender, "loop_via="+v.forged) {
					fail(run, "no transaction log line with loop_via=%s", v.forged)
				}
			case !o.queued():
				fail(run, "neither queued nor refused as a loop: %v", o.res.EndOfData)
				continue
			case !slices.Equal(o.fates(), plain.fates()):
				fail(run, "passed, and Postfix then did %q, alone %q", o.fates(), plain.fates())
			}
			switch qids := queuedFrom[o.sender]; {
			case !o.queued() && len(qids) > 0:
				fail(run, "refused with %v, yet queued as %v", o.res.EndOfData, qids)
			case o.queued() && !slices.Contains(qids, o.res.QueueID()):
				fail(run, "250 %s, yet qmgr logged no message %s from %s", o.res.QueueID(), o.res.QueueID(), o.sender)
			}
			refused := o.refusedAsLoop()
			if !run.expand {
				if v.loop && !refused {
					missed++
				}
				if refused != wantRefused {
					fail(run, "refused: %v; SPEC section 5 says %v", refused, wantRefused)
				}
				continue
			}
			switch {
			case v.loop && !refused:
				fail(run, "Postfix bounces it as a loop, the proxy passed it: %v", o)
			case !v.loop && refused && run.mode == expand.ModePostfix:
				fail(run, "Postfix delivers it, -loops=postfix refused it")
			case refused != wantRefused:
				fail(run, "refused: %v; SPEC section 8 says %v", refused, wantRefused)
			}
		}
	}
	// The literal proxy misses the loops that appear only after
	// rewriting: the checks above, applied to it, would report them.
	if missed == 0 {
		t.Errorf("the literal proxy missed no loop: the variants do not exercise expansion")
	}
	for _, run := range pxRuns {
		if px := proxies[run.tag]; px != nil && px.obs != nil {
			px.obs.mu.Lock()
			t.Logf("%s: %d lookups, %d cache hits, %d misses, incomplete %v", run.tag, px.obs.lookups.Load(), px.obs.hits.Load(), px.obs.misses.Load(), px.obs.incomplete)
			if len(px.obs.incomplete) > 0 {
				t.Errorf("%s: incomplete expansions %v: a recipient was judged as spelled", run.tag, px.obs.incomplete)
			}
			px.obs.mu.Unlock()
		}
	}

	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "variant\tRCPT\tDelivered-To")
	for _, run := range pxRuns {
		fmt.Fprint(tw, "\t"+run.title)
	}
	fmt.Fprintln(tw, "\tPostfix alone delivered")
	for i, v := range pxVariants {
		fmt.Fprintf(tw, "%s\t%s\t%s", v.name, v.rcpt, v.forged)
		for r := range pxRuns {
			fmt.Fprint(tw, "\t"+out[r][i].String())
		}
		fmt.Fprintln(tw, "\t"+strings.Join(out[0][i].fates(), ", "))
	}
	tw.Flush()
	t.Logf("recipient expansion differential (%d loops missed by the literal proxy):\n%s", missed, table.String())
}

// pxLogged reports whether a transaction line of sender holds want.
func pxLogged(logs, sender, want string) bool {
	for line := range strings.Lines(logs) {
		if strings.Contains(line, "msg=transaction") && strings.Contains(line, "sender="+sender) &&
			strings.Contains(strings.ToLower(line), strings.ToLower(want)) {
			return true
		}
	}
	return false
}
