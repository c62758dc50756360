package conformance

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
)

// pfProxyTimeout is the front smtpd's smtpd_proxy_timeout. Shorter than
// Postfix's 100 s default so that a proxy that stalls fails the test sooner;
// longer than anything a working proxy on loopback needs.
const pfProxyTimeout = 30 * time.Second

// pfMainCF adds pfFoldDomain to the local domains, for the variant whose
// recipient domain a UTF-8 spelling folds to.
var pfMainCF = map[string]string{"mydestination": "$myhostname, " + postfixtest.Domain + ", localhost, " + pfFoldDomain}

// pfSendParallelism bounds concurrent SMTP sessions of the differential: below
// the front services' process limit (20), so no session waits for a process.
const pfSendParallelism = 8

// TestPostfixEndToEnd runs the proxy between a real Postfix's front smtpd
// and its after-filter smtpd (SMTPD_PROXY_README) and checks the project's
// claims against it: (1) normal mail is delivered and the client gets the
// after-filter's "queued as" reply; (2) a forged Delivered-To: equal to the
// recipient gets 554 5.4.6 at SMTP time, nothing is queued, no bounce is
// made; (3) XFORWARD carries the real client address to the after-filter;
// (4) every Delivered-To: variant local(8) bounces as a loop when sent around
// the proxy is rejected by the proxy at SMTP time; (5) all of it also with
// smtpd_proxy_options=speed_adjust. One Postfix instance per configuration.
func TestPostfixEndToEnd(t *testing.T) {
	for _, speedAdjust := range []bool{false, true} {
		name := "proxy_options="
		if speedAdjust {
			name += "speed_adjust"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := postfixtest.New(t, postfixtest.Options{
				SpeedAdjust:  speedAdjust,
				ProxyTimeout: pfProxyTimeout,
				Mailboxes:    []string{pfUTF8Box, pfFoldBox},
				Aliases:      map[string]string{pfAliasBox: postfixtest.LoopUser},
				MainCF:       pfMainCF,
			})
			pfStartProxy(t, p)
			p.Start()

			// Subtests share the instance and run one after another: each
			// reads the log and counters of a quiet instance.
			t.Run("1_delivery", func(t *testing.T) { pfTestDelivery(t, p) })
			t.Run("2_loop_rejected_at_smtp_time", func(t *testing.T) { pfTestLoopRejected(t, p) })
			t.Run("3_xforward_client", func(t *testing.T) { pfTestXforward(t, p) })
			t.Run("4_differential", func(t *testing.T) { pfTestDifferential(t, p) })
		})
	}
}

// pfTestDelivery: item (1).
func pfTestDelivery(t *testing.T, p *postfixtest.Instance) {
	const subject = "e2e normal delivery"
	res, err := postfixtest.Send(p.FrontAddr(), "sender@local.test", []string{"user@local.test"},
		[]byte("Subject: "+subject+"\nFrom: sender@local.test\n\nhello\n.a line that starts with a dot\n"))
	if err != nil {
		t.Fatalf("send: %v\n%+v", err, res)
	}
	qid := res.QueueID()
	if res.EndOfData.Code != 250 || qid == "" {
		t.Fatalf("end-of-data reply %v, want 250 ... queued as ID", res.EndOfData)
	}
	// The id is the after-filter's: its smtpd created the queue file, and
	// the front smtpd relayed its reply.
	p.WaitLog(regexp.MustCompile(`postfix/afterfilter/smtpd\[\d+\]: ` + qid + `: client=`))
	p.WaitLog(regexp.MustCompile(`postfix/front/smtpd\[\d+\]: proxy-accept: END-OF-MESSAGE: 250 .*queued as ` + qid + `;`))
	ds := p.WaitDone(qid)
	if len(ds) != 1 || ds[0].Status != "sent" || ds[0].Recipient != "user@local.test" {
		t.Fatalf("deliveries of %s: %v", qid, ds)
	}
	box := p.Mailbox(postfixtest.User)
	if !strings.Contains(box, "Subject: "+subject+"\n") || !strings.Contains(box, "\n.a line that starts with a dot\n") {
		t.Errorf("the delivered message is not intact; mailbox %s:\n%s", postfixtest.User, box)
	}
}

// pfTestLoopRejected: item (2).
func pfTestLoopRejected(t *testing.T, p *postfixtest.Instance) {
	// A sender of its own, so every log line about this message is known.
	const sender = "sender+e2eloop@local.test"
	bouncesBefore := p.Bounces()
	loopBoxBefore := p.MailboxMessages(postfixtest.LoopUser)

	res, err := postfixtest.Send(p.FrontAddr(), sender, []string{pfLoopRcpt},
		[]byte("Delivered-To: loopuser@local.test\nSubject: e2e forged loop\n\nbody\n"))
	if err != nil {
		t.Fatalf("send: %v\n%+v", err, res)
	}
	if res.EndOfData.Code != 554 || !strings.HasPrefix(res.EndOfData.Text(), "554 5.4.6 ") ||
		!strings.Contains(res.EndOfData.Text(), "mail forwarding loop for loopuser@local.test") {
		t.Fatalf("end-of-data reply %v, want 554 5.4.6 mail forwarding loop for loopuser@local.test", res.EndOfData)
	}
	p.WaitLog(regexp.MustCompile(`postfix/front/smtpd\[\d+\]: proxy-reject: END-OF-MESSAGE: 554 5\.4\.6 .*from=<` + regexp.QuoteMeta(sender) + `>`))
	// The after-filter's own count of that session's commands: the
	// transaction was reset, and DATA never reached it (SPEC 2.2). This is
	// the only session with a RSET so far on this instance.
	if m := p.WaitLog(regexp.MustCompile(`postfix/afterfilter/smtpd\[\d+\]: disconnect from .* rset=\d`)); strings.Contains(m[0], " data=") {
		t.Errorf("the after-filter saw DATA of the rejected message: %s", m[0])
	}

	// A message sent after it on the same path is delivered: by then
	// anything the rejected one had put in the queue would have been
	// delivered or bounced too.
	after, err := postfixtest.Send(p.FrontAddr(), sender, []string{"user@local.test"}, []byte("Subject: e2e after the loop\n\nbody\n"))
	if err != nil || after.QueueID() == "" {
		t.Fatalf("send after the rejection: %v %v", err, after.EndOfData)
	}
	p.WaitDone(after.QueueID())
	p.WaitQueueEmpty()

	log := p.Maillog()
	queued := regexp.MustCompile(`: from=<`+regexp.QuoteMeta(sender)+`>`).FindAllString(log, -1)
	if len(queued) != 1 { // only the message sent after it
		t.Errorf("%d messages from %s entered the queue, want 1 (the one after the rejected loop):\n%s", len(queued), sender, log)
	}
	if n := p.Bounces(); n != bouncesBefore {
		t.Errorf("bounce notices went from %d to %d", bouncesBefore, n)
	}
	if strings.Contains(log, "to=<"+sender+">") {
		t.Errorf("something was delivered to the forged sender %s:\n%s", sender, log)
	}
	if n := p.MailboxMessages(postfixtest.LoopUser); n != loopBoxBefore {
		t.Errorf("mailbox %s went from %d to %d messages", postfixtest.LoopUser, loopBoxBefore, n)
	}
}

// pfTestXforward: item (3). The client connects from 127.0.0.2, the proxy
// from 127.0.0.1; the after-filter logs the former only through XFORWARD.
func pfTestXforward(t *testing.T, p *postfixtest.Instance) {
	c := postfixtest.Client{LocalAddr: "127.0.0.2", Helo: "xforward.client.example"}
	res, err := c.Send(p.FrontAddr(), "sender@local.test", []string{"user@local.test"}, []byte("Subject: e2e xforward\n\nbody\n"))
	if err != nil || res.QueueID() == "" {
		t.Fatalf("send: %v, end-of-data reply %v", err, res.EndOfData)
	}
	qid := res.QueueID()
	m := p.WaitLog(regexp.MustCompile(`postfix/afterfilter/smtpd\[\d+\]: ` + qid + `: client=(\S+), orig_client=(\S+)$`))
	if !strings.HasSuffix(m[1], "[127.0.0.1]") || !strings.HasSuffix(m[2], "[127.0.0.2]") {
		t.Errorf("after-filter logged client=%s orig_client=%s, want the proxy [127.0.0.1] and the real client [127.0.0.2]", m[1], m[2])
	}
	p.WaitDone(qid)
}

// pfOutcome is what happened to one variant on one path.
type pfOutcome struct {
	smtp       postfixtest.Reply      // the end-of-data reply, or the refusal
	deliveries []postfixtest.Delivery // when it was queued
	err        error
}

func (o pfOutcome) queued() bool { return o.smtp.Code == 250 }

func (o pfOutcome) loopBounced() bool {
	for _, d := range o.deliveries {
		if d.IsLoopBounce() {
			return true
		}
	}
	return false
}

func (o pfOutcome) rejectedAsLoop() bool {
	return o.smtp.Code == 554 && strings.HasPrefix(o.smtp.Text(), "554 5.4.6 ")
}

func (o pfOutcome) String() string {
	switch {
	case o.err != nil:
		return "error: " + o.err.Error()
	case o.rejectedAsLoop():
		return "554 5.4.6 at SMTP time"
	case !o.queued():
		return "refused: " + o.smtp.String()
	case o.loopBounced():
		return "queued, local(8) loop bounce"
	default:
		var st []string
		for _, d := range o.deliveries {
			st = append(st, d.Status)
		}
		return "queued, " + strings.Join(st, "+")
	}
}

// pfTestDifferential: item (4).
func pfTestDifferential(t *testing.T, p *postfixtest.Instance) {
	table, problems := pfRunDifferential(t, p)
	t.Logf("Delivered-To: differential, %d variants:\n%s", len(pfVariants), table)
	for _, pr := range problems {
		t.Errorf("variant %q: %s", pr.name, pr.msg)
	}
}

// pfProblem is one way a variant breaks the differential or SPEC.
type pfProblem struct {
	name string // the variant
	kind pfProblemKind
	msg  string
}

type pfProblemKind int

const (
	pfOracleBroken   pfProblemKind = iota // Postfix alone did not judge it as expected
	pfSendFailed                          // an SMTP session failed
	pfMissedLoop                          // local(8) bounces it, the proxy did not reject it
	pfLoopLetThrough                      // the proxy passed it and local(8) bounced it
	pfSpecMismatch                        // the proxy's verdict differs from SPEC section 5
)

// pfRunDifferential sends every variant around and through the proxy, waits
// for Postfix to finish with each queued message, and returns the table of
// outcomes and the problems found.
func pfRunDifferential(t *testing.T, p *postfixtest.Instance) (string, []pfProblem) {
	t.Helper()
	type pfResult struct{ plain, proxy pfOutcome }
	results := make([]pfResult, len(pfVariants))

	// Send everything at once, both paths; the instance delivers in parallel.
	sem := make(chan struct{}, pfSendParallelism)
	var wg sync.WaitGroup
	queueIDs := make([][2]string, len(pfVariants))
	send := func(addr string, v pfVariant, into *pfOutcome, qid *string) {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c := postfixtest.Client{SMTPUTF8: v.smtputf8}
			// Bounces of the plain path go to the sender's mailbox.
			res, err := c.Send(addr, "sender+diff@local.test", v.recipients(), v.message())
			into.err = err
			into.smtp = res.EndOfData
			if res.EndOfData.Code == 0 { // refused before DATA: keep the refusal
				for _, r := range append([]postfixtest.Reply{res.Mail}, res.Rcpt...) {
					if r.Class() != 2 {
						into.smtp = r
						break
					}
				}
			}
			*qid = res.QueueID()
			if err == nil && res.EndOfData.Code == 250 && *qid == "" {
				into.err = fmt.Errorf("250 without a queue id: %v", res.EndOfData)
			}
		})
	}
	for i, v := range pfVariants {
		send(p.PlainAddr(), v, &results[i].plain, &queueIDs[i][0])
		send(p.FrontAddr(), v, &results[i].proxy, &queueIDs[i][1])
	}
	wg.Wait()
	for i := range results {
		if qid := queueIDs[i][0]; qid != "" {
			results[i].plain.deliveries = p.WaitDone(qid)
		}
		if qid := queueIDs[i][1]; qid != "" {
			results[i].proxy.deliveries = p.WaitDone(qid)
		}
	}

	var problems []pfProblem
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "variant\tPostfix alone (plain front)\tthrough the proxy\tSPEC\tcheck")
	loops, passes := 0, 0
	for i, v := range pfVariants {
		r := results[i]
		check := "ok"
		report := func(kind pfProblemKind, format string, args ...any) {
			check = "FAIL"
			problems = append(problems, pfProblem{name: v.name, kind: kind, msg: fmt.Sprintf(format, args...)})
		}
		switch {
		case r.plain.err != nil || r.proxy.err != nil:
			report(pfSendFailed, "send failed: plain: %v; proxy: %v", r.plain.err, r.proxy.err)
		case !r.plain.queued():
			// The oracle must judge every variant: a refusal is a broken setup.
			report(pfOracleBroken, "the plain front did not queue it: %v", r.plain.smtp)
		case r.plain.loopBounced() && !r.proxy.rejectedAsLoop() && v.rewritten == "":
			report(pfMissedLoop, "local(8) bounces it as a loop but the proxy did not reject it at SMTP time: %v", r.proxy)
		case r.proxy.queued() && r.proxy.loopBounced() && v.rewritten == "":
			report(pfLoopLetThrough, "the proxy passed a loop that local(8) then bounced: %v", r.proxy.deliveries)
		case v.spec == pfSpecLoop && !r.proxy.rejectedAsLoop():
			report(pfSpecMismatch, "SPEC section 5 reads it as a loop but the proxy gave %v", r.proxy)
		case v.spec == pfSpecPass && !r.proxy.queued():
			report(pfSpecMismatch, "SPEC section 5 reads it as no loop but the proxy gave %v", r.proxy)
		case v.rewritten != "":
			check = "ok (rewritten: " + v.rewritten + ")"
		}
		if r.plain.loopBounced() {
			loops++
		} else if r.plain.queued() {
			passes++
		}
		// The oracle itself: an exact forged Delivered-To: must be a loop
		// for local(8), a body-only one must not; else the table proves nothing.
		if v.name == "exact" && !r.plain.loopBounced() {
			report(pfOracleBroken, "local(8) did not bounce the exact forged Delivered-To: %v", r.plain)
		}
		if v.name == "body only" && r.plain.loopBounced() {
			report(pfOracleBroken, "local(8) bounced a message with Delivered-To: only in its body")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.name, r.plain, r.proxy, v.spec, check)
	}
	tw.Flush()
	if loops == 0 || passes == 0 {
		problems = append(problems, pfProblem{name: "(all)", kind: pfOracleBroken,
			msg: fmt.Sprintf("local(8) bounced %d and passed %d variants; both must occur", loops, passes)})
	}
	return table.String(), problems
}

// TestPostfixDifferentialCanFail runs the differential through a blind relay
// that detects nothing: it must report every loop variant and no other, so
// each check of the differential is shown able to fail, and the oracle
// (Postfix alone) is shown to judge as expected.
func TestPostfixDifferentialCanFail(t *testing.T) {
	t.Parallel()
	p := postfixtest.New(t, postfixtest.Options{
		ProxyTimeout: pfProxyTimeout,
		Mailboxes:    []string{pfUTF8Box, pfFoldBox},
		Aliases:      map[string]string{pfAliasBox: postfixtest.LoopUser},
		MainCF:       pfMainCF,
	})
	pfServeBlindRelay(t, p.FilterListener(), p.AfterFilterAddr())
	p.Start()

	table, problems := pfRunDifferential(t, p)
	t.Logf("through a blind relay:\n%s", table)
	byVariant := map[string][]pfProblemKind{}
	for _, pr := range problems {
		byVariant[pr.name] = append(byVariant[pr.name], pr.kind)
		if pr.kind == pfOracleBroken || pr.kind == pfSendFailed {
			t.Errorf("variant %q: %s", pr.name, pr.msg)
		}
	}
	if !slices.Contains(byVariant["exact"], pfMissedLoop) {
		t.Errorf("the exact forged Delivered-To: through a blind relay was not reported as a missed loop: %v", byVariant["exact"])
	}
	for _, v := range pfVariants {
		got := byVariant[v.name]
		switch {
		case v.spec == pfSpecLoop && len(got) == 0:
			t.Errorf("variant %q: SPEC reads it as a loop, yet a blind relay passing it was not reported", v.name)
		case v.spec == pfSpecPass && len(got) != 0:
			t.Errorf("variant %q: SPEC reads it as no loop and a blind relay passes it, yet it was reported: %v", v.name, got)
		}
	}
}
