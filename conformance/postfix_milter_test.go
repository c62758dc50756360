package conformance

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
)

// The milter front-end (package milter) on a real Postfix: the plain
// front smtpd gets smtpd_milters = inet:127.0.0.1:PORT, milter_protocol =
// 6. Unless a test says otherwise milter_default_action is tempfail, so
// that a milter that fails shows as 451 rather than as mail that passed.

// pfMilter is a milter.Server serving on loopback until the test ends.
type pfMilter struct {
	addr string
	logs *pfLockedBuffer
	stop func() // shuts it down and waits for Serve (once)
}

func pfStartMilter(t *testing.T, cfg milter.Config) *pfMilter {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &pfMilter{addr: ln.Addr().String(), logs: &pfLockedBuffer{}}
	cfg.Logger = slog.New(slog.NewTextHandler(m.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = pfDrainTimeout
	}
	srv, err := milter.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	var once sync.Once
	m.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-served; err != nil {
				t.Errorf("milter Serve: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		m.stop()
		if t.Failed() {
			t.Logf("milter log:\n%s", m.logs.String())
		}
	})
	return m
}

// pfMilterSMTPD are the plain smtpd's settings that put the milter at addr
// in front of it.
func pfMilterSMTPD(addr, defaultAction string) map[string]string {
	return map[string]string{
		"smtpd_milters":         "inet:" + addr,
		"milter_protocol":       "6",
		"milter_default_action": defaultAction,
	}
}

// TestPostfixMilterDifferential runs the Delivered-To: variants of the
// proxy's differential three ways on one instance: to Postfix alone (the
// after-filter smtpd, which has neither filter nor milter), through the
// proxy (the filtered front smtpd) and through the milter (the plain
// smtpd with smtpd_milters). The milter must give every variant the
// proxy's verdict, with the proxy's reply, and reject at SMTP time every
// loop local(8) bounces.
func TestPostfixMilterDifferential(t *testing.T) {
	t.Parallel()
	p := pfMilterInstance(t, milter.Config{})
	table, problems := pfRunMilterDifferential(t, p)
	t.Logf("Delivered-To: differential through the milter, %d variants:\n%s", len(pfVariants), table)
	for v, msg := range problems {
		t.Errorf("variant %q: %s", v, msg)
	}
	// Postfix logs the milter's rejection as its own.
	p.WaitLog(regexp.MustCompile(`postfix/cleanup\[\d+\]: \w+: milter-reject: END-OF-MESSAGE from .*: 5\.4\.6 mail forwarding loop for loopuser@local\.test;`))
}

// TestPostfixMilterDifferentialCanFail runs the differential through a
// milter that judges but lets everything pass (DryRun): it must report
// every variant SPEC reads as a loop and no other, so each check is shown
// able to fail.
func TestPostfixMilterDifferentialCanFail(t *testing.T) {
	t.Parallel()
	p := pfMilterInstance(t, milter.Config{Policy: milter.Policy{DryRun: true}})
	table, problems := pfRunMilterDifferential(t, p)
	t.Logf("through a dry-run milter:\n%s", table)
	for _, v := range pfVariants {
		_, reported := problems[v.name]
		switch {
		case v.spec == pfSpecLoop && !reported:
			t.Errorf("variant %q: SPEC reads it as a loop, yet a milter passing it was not reported", v.name)
		case v.spec == pfSpecPass && reported:
			t.Errorf("variant %q: reported though SPEC reads it as no loop: %s", v.name, problems[v.name])
		}
	}
}

// pfMilterInstance starts a Postfix instance with the proxy on its front
// smtpd and a milter with cfg on its plain smtpd.
func pfMilterInstance(t *testing.T, cfg milter.Config) *postfixtest.Instance {
	t.Helper()
	m := pfStartMilter(t, cfg)
	p := postfixtest.New(t, postfixtest.Options{
		ProxyTimeout: pfProxyTimeout,
		Mailboxes:    []string{pfUTF8Box, pfFoldBox},
		Aliases:      map[string]string{pfAliasBox: postfixtest.LoopUser},
		MainCF:       pfMainCF,
		PlainSMTPD:   pfMilterSMTPD(m.addr, "tempfail"),
	})
	pfStartProxy(t, p)
	p.Start()
	return p
}

// pfRunMilterDifferential sends every variant the three ways, waits for
// Postfix to finish with what it queued, and returns the table and the
// problems found, by variant.
func pfRunMilterDifferential(t *testing.T, p *postfixtest.Instance) (string, map[string]string) {
	t.Helper()
	paths := []string{p.AfterFilterAddr(), p.FrontAddr(), p.PlainAddr()}
	type row struct{ alone, proxy, milter pfOutcome }
	rows := make([]row, len(pfVariants))
	qids := make([][3]string, len(pfVariants))
	sem := make(chan struct{}, pfSendParallelism)
	var wg sync.WaitGroup
	for i, v := range pfVariants {
		for j, addr := range paths {
			into := []*pfOutcome{&rows[i].alone, &rows[i].proxy, &rows[i].milter}[j]
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				c := postfixtest.Client{SMTPUTF8: v.smtputf8}
				res, err := c.Send(addr, "sender+mdiff@local.test", v.recipients(), v.message())
				into.err, into.smtp = err, res.EndOfData
				if res.EndOfData.Code == 0 {
					for _, r := range append([]postfixtest.Reply{res.Mail}, res.Rcpt...) {
						if r.Class() != 2 {
							into.smtp = r
							break
						}
					}
				}
				qids[i][j] = res.QueueID()
			})
		}
	}
	wg.Wait()
	for i := range rows {
		for j, o := range []*pfOutcome{&rows[i].alone, &rows[i].proxy, &rows[i].milter} {
			if q := qids[i][j]; q != "" {
				o.deliveries = p.WaitDone(q)
			}
		}
	}

	problems := map[string]string{}
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "variant\tPostfix alone\tthrough the proxy\tthrough the milter\tcheck")
	loops := 0
	for i, v := range pfVariants {
		r := rows[i]
		check := "ok"
		fail := func(format string, args ...any) {
			check = "FAIL"
			problems[v.name] = fmt.Sprintf(format, args...)
		}
		switch {
		case r.alone.err != nil || r.proxy.err != nil || r.milter.err != nil:
			t.Errorf("variant %q: send failed: alone %v, proxy %v, milter %v", v.name, r.alone.err, r.proxy.err, r.milter.err)
		case !r.alone.queued():
			t.Errorf("variant %q: Postfix alone did not queue it: %v", v.name, r.alone.smtp)
		case r.alone.loopBounced() && !r.milter.rejectedAsLoop() && v.rewritten == "":
			fail("local(8) bounces it as a loop but the milter did not reject it: %v", r.milter)
		case r.milter.queued() && r.milter.loopBounced() && v.rewritten == "":
			fail("the milter passed a loop local(8) then bounced")
		case r.milter.rejectedAsLoop() != r.proxy.rejectedAsLoop():
			fail("the milter gave %v, the proxy %v", r.milter, r.proxy)
		case r.milter.rejectedAsLoop() && r.milter.smtp.Text() != r.proxy.smtp.Text():
			fail("reply through the milter %q, through the proxy %q", r.milter.smtp.Text(), r.proxy.smtp.Text())
		case !r.milter.rejectedAsLoop() && !r.milter.queued():
			fail("the milter refused it otherwise: %v", r.milter.smtp)
		case (v.spec == pfSpecLoop) != r.milter.rejectedAsLoop():
			fail("SPEC section 5 says %v; the milter gave %v", v.spec, r.milter)
		}
		if r.alone.loopBounced() {
			loops++
		}
		if v.name == "exact" && !r.alone.loopBounced() {
			t.Errorf("local(8) did not bounce the exact forged Delivered-To: %v", r.alone)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.name, r.alone, r.proxy, r.milter, check)
	}
	tw.Flush()
	if loops == 0 {
		t.Errorf("local(8) bounced no variant; the differential proves nothing")
	}
	return table.String(), problems
}

// TestPostfixMilterDropRecipient: -loop-action drop-recipient on a real
// Postfix, with the recipients expanded by package expand on the
// instance's configuration, as the command does with -postfix-config.
// The looping recipient is removed, the others get the message, nobody
// gets a bounce; a recipient that loops through its virtual alias is
// removed with its expansion; a source-routed recipient is removed too
// (smtpd stores it without the route); a virtual alias that expands to
// a looping and a clean mailbox is not removed (that would lose the
// clean one's mail): the message is refused; when every recipient loops,
// the message is refused.
func TestPostfixMilterDropRecipient(t *testing.T) {
	t.Parallel()
	hook, setExpander := pfLateExpander()
	m := pfStartMilter(t, milter.Config{Policy: milter.Policy{LoopAction: milter.DropRecipient, Expander: hook}})
	d := postfixtest.Domain
	p := postfixtest.New(t, postfixtest.Options{
		Mailboxes: []string{"other"},
		MainCF:    map[string]string{"virtual_alias_maps": "hash:{etc}/virtual"},
		Files: map[string]string{"virtual": "valias@" + d + " loopuser@" + d + "\n" +
			"team@" + d + " loopuser@" + d + ", other@" + d + "\n"},
		Postmap:    []string{"hash:virtual"},
		PlainSMTPD: pfMilterSMTPD(m.addr, "tempfail"),
	})
	p.Start()
	setExpander(t, p)

	send := func(addr, subject string, rcpts ...string) postfixtest.Result {
		t.Helper()
		res, err := postfixtest.Send(addr, "sender@local.test", rcpts,
			[]byte("Delivered-To: loopuser@local.test\nSubject: "+subject+"\n\nbody\n"))
		if err != nil {
			t.Fatalf("send %q: %v", subject, err)
		}
		return res
	}
	recipients := func(ds []postfixtest.Delivery) string {
		var r []string
		for _, d := range ds {
			r = append(r, d.Recipient+":"+d.Status)
		}
		slices.Sort(r)
		return strings.Join(r, " ")
	}
	delivered := func(subject string, res postfixtest.Result, want string) {
		t.Helper()
		if res.EndOfData.Code != 250 {
			t.Fatalf("%s: end-of-data %v, want 250", subject, res.EndOfData)
		}
		if got := recipients(p.WaitDone(res.QueueID())); got != want {
			t.Errorf("%s: deliveries %v, want %s", subject, got, want)
		}
	}

	// One of three loops.
	res := send(p.PlainAddr(), "drop direct", "user@local.test", "loopuser@local.test", "other@local.test")
	delivered("drop direct", res, "other@local.test:sent user@local.test:sent")
	// The looping recipient is its virtual alias: Postfix removes the
	// alias with what it expanded to (cleanup_del_rcpt).
	res2 := send(p.PlainAddr(), "drop virtual", "user@local.test", "valias@local.test")
	delivered("drop virtual", res2, "user@local.test:sent")
	// A source-routed recipient: smtpd stores it without the route, and
	// cleanup compares the removal exactly, so the removal must name it
	// without the route.
	resRouted := send(p.PlainAddr(), "drop routed", "user@local.test", "<@relay.example:loopuser@local.test>")
	delivered("drop routed", resRouted, "user@local.test:sent")
	// team expands to loopuser, which loops, and other, which does not:
	// removing team would remove other's copy too. Refused whole.
	resTeam := send(p.PlainAddr(), "drop team", "team@local.test", "user@local.test")
	if resTeam.EndOfData.Code != 554 || resTeam.EndOfData.Text() != "554 5.4.6 mail forwarding loop for team@local.test" {
		t.Errorf("drop team: end-of-data %v, want 554 5.4.6 mail forwarding loop for team@local.test", resTeam.EndOfData)
	}
	// Every recipient loops: rejected.
	res3 := send(p.PlainAddr(), "drop all", "loopuser@local.test", "valias@local.test")
	if res3.EndOfData.Code != 554 || res3.EndOfData.Text() != "554 5.4.6 mail forwarding loop for loopuser@local.test" {
		t.Errorf("drop all: end-of-data %v, want 554 5.4.6 mail forwarding loop for loopuser@local.test", res3.EndOfData)
	}
	p.WaitQueueEmpty()

	for _, subject := range []string{"drop direct", "drop virtual", "drop routed"} {
		if !strings.Contains(p.Mailbox(postfixtest.User), "Subject: "+subject+"\n") {
			t.Errorf("user's mailbox lacks %q", subject)
		}
	}
	if n := p.MailboxMessages("other"); n != 1 {
		t.Errorf("other's mailbox holds %d messages, want 1 (drop direct)", n)
	}
	if box := p.Mailbox(postfixtest.LoopUser); box != "" {
		t.Errorf("the looping recipient's mailbox got mail:\n%s", box)
	}
	if n := p.Bounces(); n != 0 {
		t.Errorf("%d bounce notices; a drop sends none", n)
	}
	if box := p.Mailbox(postfixtest.Sender); box != "" {
		t.Errorf("the sender got mail:\n%s", box)
	}
	logs := m.logs.String()
	if strings.Count(logs, `msg="recipient dropped"`) != 3 ||
		!strings.Contains(logs, "queue_id="+res2.QueueID()+" recipient=valias@local.test loop_via=loopuser@local.test rcpt_mailer=local") ||
		!strings.Contains(logs, "queue_id="+resRouted.QueueID()+" recipient=loopuser@local.test rcpt_mailer=local") {
		t.Errorf("the milter did not log each drop with the queue id:\n%s", logs)
	}
	if !strings.Contains(logs, "drop_refused=partly-looping drop_refused_recipient=team@local.test") {
		t.Errorf("the milter did not log why team@ was not removed:\n%s", logs)
	}

	// The oracle: Postfix alone bounces the first message's loop.
	alone := send(p.AfterFilterAddr(), "alone", "user@local.test", "loopuser@local.test")
	if !p.LoopBounced(alone.QueueID(), "loopuser@local.test") {
		t.Errorf("Postfix alone did not bounce the loop; the test proves nothing")
	}
}

// pfLateExpander is a milter.Expander for a milter started before its
// Postfix instance exists: set makes package expand on the instance's
// configuration (-loops=any, through postmap), as the command hooks it
// with -postfix-config; it must be called before any mail is sent.
func pfLateExpander() (hook milter.Expander, set func(*testing.T, *postfixtest.Instance)) {
	var exp atomic.Pointer[expand.Expander]
	hook = func(arg string) func(context.Context) loopcheck.Recipient {
		return exp.Load().Recipients(expand.ModeAny)(arg)
	}
	set = func(t *testing.T, p *postfixtest.Instance) {
		t.Helper()
		e, err := expand.New(context.Background(), expand.Options{ConfigDir: p.ConfigDir(), Prefer: expand.BackendPostmap})
		if err != nil {
			t.Fatalf("expand.New: %v", err)
		}
		t.Cleanup(func() { e.Close() })
		exp.Store(e)
	}
	return hook, set
}

// TestPostfixMilterDropNoOriginalRecipient: with enable_original_recipient
// = no a removal still matches the recipient as the client spelled it,
// not what cleanup rewrote it to: cleanup writes the original recipient
// record either way (cleanup_out_recipient); the setting changes only its
// duplicate elimination, by the rewritten address alone. So a virtual
// alias, a recipient in another case and one given twice over two
// spellings are removed as with the default.
func TestPostfixMilterDropNoOriginalRecipient(t *testing.T) {
	t.Parallel()
	hook, setExpander := pfLateExpander()
	m := pfStartMilter(t, milter.Config{Policy: milter.Policy{LoopAction: milter.DropRecipient, Expander: hook}})
	d := postfixtest.Domain
	p := postfixtest.New(t, postfixtest.Options{
		MainCF: map[string]string{
			"virtual_alias_maps":        "hash:{etc}/virtual",
			"enable_original_recipient": "no",
		},
		Files:      map[string]string{"virtual": "valias@" + d + " loopuser@" + d + "\n"},
		Postmap:    []string{"hash:virtual"},
		PlainSMTPD: pfMilterSMTPD(m.addr, "tempfail"),
	})
	p.Start()
	setExpander(t, p)
	for _, rcpts := range [][]string{
		{"user@local.test", "valias@local.test"},
		{"user@local.test", "LoopUser@Local.Test"},
		{"valias@local.test", "user@local.test", "loopuser@local.test"},
	} {
		res, err := postfixtest.Send(p.PlainAddr(), "sender@local.test", rcpts,
			[]byte("Delivered-To: loopuser@local.test\nSubject: x\n\nbody\n"))
		if err != nil || res.EndOfData.Code != 250 {
			t.Fatalf("%v: %v, end-of-data %v; want 250", rcpts, err, res.EndOfData)
		}
		var got []string
		for _, d := range p.WaitDone(res.QueueID()) {
			got = append(got, d.Recipient+":"+d.Status)
		}
		if strings.Join(got, " ") != "user@local.test:sent" {
			t.Errorf("%v: deliveries %v, want user@local.test only", rcpts, got)
		}
	}
	p.WaitQueueEmpty()
	if n := p.Bounces(); n != 0 {
		t.Errorf("%d bounce notices; want none", n)
	}
	if n := strings.Count(m.logs.String(), `msg="recipient dropped"`); n != 4 {
		t.Errorf("%d recipients logged as dropped, want 4", n)
	}
	// The setting is in force in the instance.
	if out, err := exec.Command("postconf", "-c", p.ConfigDir(), "-h", "enable_original_recipient").Output(); err != nil || strings.TrimSpace(string(out)) != "no" {
		t.Errorf("enable_original_recipient in the instance: %q, %v; want no", out, err)
	}
}

// TestPostfixMilterStopped: with milter_default_action = accept, mail
// flows when the milter is gone (unchecked: local(8) bounces the loop).
// Set for this milter alone (Postfix 3.0's per-milter settings), over a
// global tempfail, as docs/milter.md shows beside other milters.
func TestPostfixMilterStopped(t *testing.T) {
	t.Parallel()
	m := pfStartMilter(t, milter.Config{})
	p := postfixtest.New(t, postfixtest.Options{
		MainCF: map[string]string{
			"loopprevent_milter": "{ inet:" + m.addr + ", default_action=accept, protocol=6 }",
		},
		PlainSMTPD: map[string]string{
			"smtpd_milters":         "$loopprevent_milter",
			"milter_default_action": "tempfail",
		},
	})
	p.Start()
	loop := []byte("Delivered-To: loopuser@local.test\nSubject: loop\n\nbody\n")

	res, err := postfixtest.Send(p.PlainAddr(), "sender@local.test", []string{"loopuser@local.test"}, loop)
	if err != nil || res.EndOfData.Code != 554 {
		t.Fatalf("milter running: %v, end-of-data %v; want 554\nmaillog:\n%s", err, res.EndOfData, p.Maillog())
	}
	m.stop()

	res, err = postfixtest.Send(p.PlainAddr(), "sender@local.test", []string{"user@local.test"}, []byte("Subject: plain\n\nbody\n"))
	if err != nil || res.QueueID() == "" {
		t.Fatalf("milter stopped: %v, end-of-data %v; want the message queued", err, res.EndOfData)
	}
	if ds := p.WaitDone(res.QueueID()); len(ds) != 1 || ds[0].Status != "sent" {
		t.Errorf("milter stopped: deliveries %v", ds)
	}
	res, err = postfixtest.Send(p.PlainAddr(), "sender@local.test", []string{"loopuser@local.test"}, loop)
	if err != nil || res.QueueID() == "" {
		t.Fatalf("milter stopped, a loop: %v, end-of-data %v; want it queued (unchecked)", err, res.EndOfData)
	}
	if !p.LoopBounced(res.QueueID(), "loopuser@local.test") {
		t.Errorf("the unchecked loop was not bounced by local(8)")
	}
	p.WaitLog(regexp.MustCompile(`postfix/plain/smtpd\[\d+\]: warning: connect to Milter service inet:` + regexp.QuoteMeta(m.addr) + `: Connection refused`))
}
