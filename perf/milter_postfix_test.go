package perf

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// What the milter costs a real Postfix: smtp-source, Postfix's own load
// generator, sends the same load to four smtpd services of one private
// instance, in alternating turns:
//
//	plain       smtpd alone
//	nullmilter  the same smtpd with a milter that only accepts: go-milter's
//	            NoOpMilter, negotiated as package milter negotiates (the
//	            same events, options and macros) and acknowledging reads
//	            at once as it does. The floor of any milter that sees what
//	            this one sees: Postfix's own cost of a milter, and the
//	            protocol's.
//	milter      the same smtpd with the milter (package milter)
//	proxy       the front smtpd -> the proxy -> the after-filter smtpd
//	            (smtpd_proxy_filter, for the record)
//
// Delivery is discard(8) (local_transport), so the figures are smtpd's,
// cleanup's and the queue's, not a mailbox's. Every message gets its own
// connection, as smtp-source does without -d.

const smtpSource = "/usr/sbin/smtp-source"

// milterLoad is one scenario: message size and concurrent sessions.
type milterLoad struct {
	name     string
	size     int
	sessions int
}

func milterLoads() []milterLoad {
	return []milterLoad{
		{"10KiB-10sess", 10 << 10, 10},
		{"1MiB-10sess", 1 << 20, 10},
	}
}

// judgedCounter counts the messages the milter judged.
type judgedCounter struct {
	milter.NopObserver
	n atomic.Int64
}

func (c *judgedCounter) MessageJudged(milter.Outcome, time.Duration) { c.n.Add(1) }

// pfBench is the Postfix instance with its three paths.
type pfBench struct {
	p      *postfixtest.Instance
	addrs  map[string]string
	judged *judgedCounter
}

const (
	pfPathPlain      = "plain"
	pfPathNullMilter = "nullmilter"
	pfPathMilter     = "milter"
	pfPathProxy      = "proxy"
)

func pfBenchPaths() []string {
	return []string{pfPathPlain, pfPathNullMilter, pfPathMilter, pfPathProxy}
}

// nullMilterProtocol is what package milter asks of Postfix (its
// wantProtocol; TestNegotiation there lists it).
const nullMilterProtocol = gomilter.OptNoHelo | gomilter.OptNoData | gomilter.OptNoUnknown | gomilter.OptNoBody |
	gomilter.OptNoConnReply | gomilter.OptNoHeloReply | gomilter.OptNoMailReply | gomilter.OptNoRcptReply |
	gomilter.OptNoDataReply | gomilter.OptNoUnknownReply | gomilter.OptNoHeaderReply | gomilter.OptNoEOHReply |
	gomilter.OptNoBodyReply | gomilter.OptHeaderLeadingSpace

// startNullMilter serves go-milter's NoOpMilter, negotiated as package
// milter negotiates, until the test ends.
func startNullMilter(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := gomilter.NewServer(
		gomilter.WithMilter(func() gomilter.Milter { return gomilter.NoOpMilter{} }),
		gomilter.WithActions(gomilter.OptRemoveRcpt),
		gomilter.WithProtocols(nullMilterProtocol),
		gomilter.WithMacroRequest(gomilter.StageMail, []string{gomilter.MacroAuthAuthen}),
		gomilter.WithMacroRequest(gomilter.StageRcpt, []string{gomilter.MacroRcptMailer}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []string{gomilter.MacroQueueId}),
	)
	go srv.Serve(ackingListener{ln})
	tb.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// ackingListener hands out ackingConns.
type ackingListener struct{ net.Listener }

func (l ackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return ackingConn{c}, nil
}

func startPostfixBench(tb testing.TB) *pfBench {
	tb.Helper()
	if _, err := exec.LookPath(smtpSource); err != nil {
		tb.Skipf("%s not installed (Debian's postfix package)", smtpSource)
	}
	// The milter.
	mln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	judged := &judgedCounter{}
	msrv, err := milter.New(milter.Config{Observer: judged})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mdone := make(chan error, 1)
	go func() { mdone <- msrv.Serve(ctx, mln) }()
	tb.Cleanup(func() { cancel(); <-mdone })

	twin, nullTwin := servicePort(tb), servicePort(tb)
	null := startNullMilter(tb)

	p := postfixtest.New(tb, postfixtest.Options{
		MainCF: map[string]string{"local_transport": "discard"},
		PlainSMTPD: map[string]string{
			"smtpd_milters":         "inet:" + mln.Addr().String(),
			"milter_protocol":       "6",
			"milter_default_action": "tempfail",
		},
		MasterCF: twin + " inet n - n - 20 smtpd\n  -o syslog_name=postfix/nomilter\n" +
			nullTwin + " inet n - n - 20 smtpd\n  -o syslog_name=postfix/nullmilter\n" +
			"  -o smtpd_milters=inet:" + null + "\n  -o milter_protocol=6\n  -o milter_default_action=tempfail\n",
	})
	proxy, err := smtpproxy.New(smtpproxy.Config{Upstream: p.AfterFilterAddr()})
	if err != nil {
		tb.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan error, 1)
	go func() { pdone <- proxy.Serve(pctx, p.FilterListener()) }()
	tb.Cleanup(func() { pcancel(); <-pdone })
	p.Start()
	return &pfBench{
		p: p,
		addrs: map[string]string{pfPathPlain: twin, pfPathNullMilter: nullTwin,
			pfPathMilter: p.PlainAddr(), pfPathProxy: p.FrontAddr()},
		judged: judged,
	}
}

// servicePort picks a free loopback port for the smtpd without a milter
// (the plain smtpd's twin), below Linux's default ephemeral range so that
// no outgoing connection takes it before Postfix's master binds it.
func servicePort(tb testing.TB) string {
	tb.Helper()
	for range 50 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(10000+rand.IntN(22000)))
		if ln, err := net.Listen("tcp4", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	tb.Fatal("no free loopback port found for the smtpd without a milter")
	return ""
}

// send runs smtp-source: n messages of ld to path. The milter path's
// messages must each have been judged.
func (e *pfBench) send(tb testing.TB, path string, ld milterLoad, n int) (wall, cpu time.Duration) {
	tb.Helper()
	before := e.judged.n.Load()
	cmd := exec.Command(smtpSource, "-s", strconv.Itoa(ld.sessions), "-l", strconv.Itoa(ld.size), "-m", strconv.Itoa(n),
		"-f", "sender@"+postfixtest.Domain, "-t", "user@"+postfixtest.Domain, e.addrs[path])
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start, cpu0 := time.Now(), cpuTime()
	err := cmd.Run()
	wall, cpu = time.Since(start), cpuTime()-cpu0
	if err != nil || out.Len() != 0 {
		tb.Fatalf("%s: smtp-source: %v\n%s", path, err, out.String())
	}
	if judged := e.judged.n.Load() - before; path == pfPathMilter && judged != int64(n) {
		tb.Fatalf("milter path: %d of %d messages judged", judged, n)
	}
	return wall, cpu
}

// BenchmarkPostfixMilter sends each load to the four paths in turns
// (plain, nullmilter, milter, proxy, then the reverse order), so they
// share the same background, and reports each path's messages/s, the
// ratios milter/plain, nullmilter/plain, milter/nullmilter and
// proxy/plain, and the CPU time per message of this process on each path
// (the milter's, the null milter's or the proxy's own, beside the cost of
// starting smtp-source, which the plain path shows alone; smtp-source and
// Postfix run in processes of their own). b.N is the number of messages
// per path.
func BenchmarkPostfixMilter(b *testing.B) {
	e := startPostfixBench(b)
	for _, ld := range milterLoads() {
		b.Run(ld.name, func(b *testing.B) {
			turn := max(20, 4*ld.sessions)
			paths := pfBenchPaths()
			rates, _ := interleave(b, paths, turn, func(i, n int) (time.Duration, time.Duration) {
				w, c := e.send(b, paths[i], ld, n)
				b.StopTimer()
				e.p.WaitQueueEmpty() // the next turn starts on an empty queue
				b.StartTimer()
				return w, c
			})
			b.ReportMetric(rates[pfPathMilter]/rates[pfPathPlain], "milter/plain")
			b.ReportMetric(rates[pfPathNullMilter]/rates[pfPathPlain], "nullmilter/plain")
			b.ReportMetric(rates[pfPathMilter]/rates[pfPathNullMilter], "milter/nullmilter")
			b.ReportMetric(rates[pfPathProxy]/rates[pfPathPlain], "proxy/plain")
		})
	}
}

// TestPostfixMilterBench keeps the benchmark honest: each path takes a few
// messages of each load, and the milter path judges each.
func TestPostfixMilterBench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Postfix instance")
	}
	e := startPostfixBench(t)
	for _, ld := range milterLoads() {
		for _, path := range pfBenchPaths() {
			e.send(t, path, ld, 3)
		}
	}
	e.p.WaitQueueEmpty()
	if got := e.judged.n.Load(); got != int64(3*len(milterLoads())) {
		t.Errorf("the milter judged %d messages, want %d", got, 3*len(milterLoads()))
	}
	t.Logf("paths %v", e.addrs)
}
