package postfixtest

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
)

func TestUnavailable(t *testing.T) {
	present := func(string) error { return nil }
	missing := func(name string) func(string) error {
		return func(n string) error {
			if n == name {
				return fs.ErrNotExist
			}
			return nil
		}
	}
	tests := []struct {
		name string
		euid int
		stat func(string) error
		want []string // substrings of the reason; none means available
	}{
		{"root with postfix", 0, present, nil},
		{"postfix missing", 0, missing("postfix"), []string{"not installed", "/usr/sbin/postfix", ".ci/install-postfix"}},
		{"postqueue missing", 0, missing("postqueue"), []string{"postqueue", ".ci/install-postfix"}},
		{"not root", 1000, present, []string{"root", "1000"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := unavailable(tc.euid, tc.stat)
			if tc.want == nil {
				if got != "" {
					t.Fatalf("unavailable = %q, want available", got)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("unavailable = %q, want it to mention %q", got, w)
				}
			}
		})
	}
}

func TestFrame(t *testing.T) {
	got := string(frame([]byte("A: b\n.x\r\n\n..y\nlast")))
	want := "A: b\r\n..x\r\n\r\n...y\r\nlast\r\n.\r\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("frame (-want +got):\n%s", diff)
	}
}

// Lines as Postfix 3.7.11 logged them on this project's reference machine.
const sampleLog = `Nov 25 15:21:58 mx postfix/qmgr[6961]: E298C9840F7: from=<sender@local.test>, size=353, nrcpt=1 (queue active)
Nov 25 15:21:58 mx postfix/local[7033]: E3BC19840F8: to=<loopuser@local.test>, relay=local, delay=0.02, delays=0/0.01/0/0, dsn=2.0.0, status=sent (delivered to file: /tmp/x/mail/loopuser)
Nov 25 15:21:58 mx postfix/qmgr[6961]: E3BC19840F8: removed
Nov 25 15:21:58 mx postfix/local[7032]: E298C9840F7: to=<loopuser@local.test>, relay=local, delay=0.03, delays=0.01/0.01/0/0.01, dsn=5.4.6, status=bounced (mail forwarding loop for loopuser@local.test)
Nov 25 15:21:58 mx postfix/bounce[7034]: E298C9840F7: sender non-delivery notification: E90A0984093
Nov 25 15:21:58 mx postfix/local[7040]: AB12: to=<user+x@local.test>, orig_to=<alias@local.test>, relay=local, delay=0.1, delays=0/0/0/0.1, dsn=4.2.0, status=deferred (cannot update mailbox)
`

func TestDeliveries(t *testing.T) {
	got := Deliveries(sampleLog, "E298C9840F7")
	if len(got) != 1 || !got[0].IsLoopBounce() || got[0].Recipient != "loopuser@local.test" || got[0].Agent != "postfix/local" {
		t.Errorf("loop bounce: got %+v", got)
	}
	got = Deliveries(sampleLog, "E3BC19840F8")
	if len(got) != 1 || got[0].IsLoopBounce() || got[0].Status != "sent" || got[0].DSN != "2.0.0" {
		t.Errorf("delivery: got %+v", got)
	}
	got = Deliveries(sampleLog, "AB12")
	if len(got) != 1 || got[0].Recipient != "user+x@local.test" || got[0].Status != "deferred" || got[0].Detail != "cannot update mailbox" {
		t.Errorf("deferred with orig_to: got %+v", got)
	}
	for qid, want := range map[string]bool{"E3BC19840F8": true, "AB12": true, "E298C9840F7": false, "E90A0984093": false} {
		if got := done(sampleLog, qid); got != want {
			t.Errorf("done(%s) = %v, want %v", qid, got, want)
		}
	}
}

// blindRelay stands in for the proxy: it copies bytes both ways between each
// connection it accepts and a new connection to upstream, and changes nothing.
func blindRelay(t *testing.T, ln net.Listener, upstream string) {
	t.Helper()
	r := smtpload.NewRelay(ln, upstream)
	t.Cleanup(func() { r.Close() })
}

// TestHarnessBlindRelay proves the harness with a relay that changes nothing:
// mail goes front -> relay -> after-filter -> local(8), the client gets the
// after-filter's own "queued as" reply; and the plain front, where local(8)
// sees the forged Delivered-To, bounces it with 5.4.6 (the oracle the
// differential tests rely on).
func TestHarnessBlindRelay(t *testing.T) {
	p := New(t, Options{})
	blindRelay(t, p.FilterListener(), p.AfterFilterAddr())
	p.Start()

	res, err := Client{LocalAddr: "127.0.0.2"}.Send(p.FrontAddr(), "sender@"+Domain, []string{LoopUser + "@" + Domain},
		[]byte("Subject: harness-normal\nFrom: sender@local.test\n\nhello\n.leading dot\n"))
	if err != nil {
		t.Fatalf("send through the filtered front: %v (%+v)", err, res)
	}
	qid := res.QueueID()
	if qid == "" {
		t.Fatalf("no queue id in the end-of-data reply: %v", res.EndOfData)
	}
	// The id is the after-filter's: its smtpd logged the message under it,
	// with the client address XFORWARD carried through the relay.
	p.WaitLog(regexp.MustCompile(`postfix/afterfilter/smtpd\[\d+\]: ` + qid + `: client=\S+\[127\.0\.0\.1\], orig_client=\S*\[127\.0\.0\.2\]`))
	p.WaitLog(regexp.MustCompile(`postfix/front/smtpd\[\d+\]: proxy-accept: END-OF-MESSAGE: 250 .*queued as ` + qid))
	ds := p.WaitDone(qid)
	if len(ds) != 1 || ds[0].Status != "sent" || ds[0].Recipient != LoopUser+"@"+Domain {
		t.Fatalf("deliveries of %s: %v", qid, ds)
	}
	box := p.Mailbox(LoopUser)
	if !strings.Contains(box, "Subject: harness-normal") || !strings.Contains(box, "\n.leading dot\n") {
		t.Errorf("mailbox %s lacks the message:\n%s", LoopUser, box)
	}
	if n := p.Bounces(); n != 0 {
		t.Errorf("Bounces() = %d after a normal delivery", n)
	}

	res, err = Send(p.PlainAddr(), "sender@"+Domain, []string{LoopUser + "@" + Domain},
		[]byte("Delivered-To: loopuser@local.test\nSubject: harness-loop\n\nbody\n"))
	if err != nil {
		t.Fatalf("send through the plain front: %v", err)
	}
	qid = res.QueueID()
	if res.EndOfData.Code != 250 || qid == "" {
		t.Fatalf("plain front end-of-data reply: %v", res.EndOfData)
	}
	if !p.LoopBounced(qid, LoopUser+"@"+Domain) {
		t.Fatalf("local(8) did not bounce %s as a loop: %v", qid, Deliveries(p.Maillog(), qid))
	}
	notice := p.WaitLog(regexp.MustCompile(qid + `: sender non-delivery notification: (\w+)`))[1]
	if ds := p.WaitDone(notice); len(ds) != 1 || ds[0].Status != "sent" || ds[0].Recipient != "sender@"+Domain {
		t.Fatalf("bounce notice %s: %v", notice, ds)
	}
	if n := p.Bounces(); n != 1 {
		t.Errorf("Bounces() = %d, want 1", n)
	}
	if n := p.MailboxMessages(Sender); n != 1 {
		t.Errorf("sender mailbox holds %d messages, want the 1 bounce", n)
	}
	if !strings.Contains(p.Mailbox(Sender), "mail forwarding loop for loopuser@local.test") {
		t.Errorf("bounce notice lacks the loop diagnostic:\n%s", p.Mailbox(Sender))
	}
	p.WaitQueueEmpty()
}

// instanceProcesses lists live processes of the instance configured in etcDir.
func instanceProcesses(etcDir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && processLive(pid) && processHasEnv(pid, "MAIL_CONFIG="+etcDir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestCleanup checks that an instance's processes and directory are gone
// when its test ends, also when its master was killed so "postfix stop"
// cannot stop it.
func TestCleanup(t *testing.T) {
	for _, killMaster := range []bool{false, true} {
		var dir, etcDir string
		var before []int
		t.Run("killMaster="+strconv.FormatBool(killMaster), func(t *testing.T) {
			p := Start(t, Options{})
			dir, etcDir = p.Dir(), p.ConfigDir()
			before = instanceProcesses(etcDir)
			if len(before) == 0 {
				t.Fatalf("no process of the running instance found by MAIL_CONFIG=%s", etcDir)
			}
			if killMaster {
				b, err := os.ReadFile(filepath.Join(p.spoolDir, "pid", "master.pid"))
				if err != nil {
					t.Fatal(err)
				}
				pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
				if err != nil {
					t.Fatal(err)
				}
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill master %d: %v", pid, err)
				}
			}
		})
		if left := instanceProcesses(etcDir); len(left) > 0 {
			t.Errorf("killMaster=%v: processes %v of the instance survive its test (it had %v)", killMaster, left, before)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("killMaster=%v: instance directory %s survives its test: %v", killMaster, dir, err)
		}
	}
}

// TestFilterServedAfterStart starts the stand-in proxy only after Postfix:
// the reserved filter listener survives Start, and the front smtpd's
// connection waits in its backlog until it is served.
func TestFilterServedAfterStart(t *testing.T) {
	p := Start(t, Options{})
	ln := p.FilterListener()
	if ln == nil {
		t.Fatal("FilterListener() = nil after Start")
	}
	blindRelay(t, ln, p.AfterFilterAddr())
	res, err := Send(p.FrontAddr(), "sender@"+Domain, []string{User + "@" + Domain}, []byte("Subject: after start\n\nbody\n"))
	if err != nil || res.QueueID() == "" {
		t.Fatalf("send: %v, end-of-data reply %v", err, res.EndOfData)
	}
	if ds := p.WaitDone(res.QueueID()); len(ds) != 1 || ds[0].Status != "sent" {
		t.Fatalf("deliveries: %v", ds)
	}
	if p.FilterListener() != nil {
		t.Error("FilterListener() handed out the listener twice")
	}
}

func TestServicePortBelowEphemeralRange(t *testing.T) {
	ln, err := listenServicePort()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if port < servicePortLow || port >= ephemeralLow() {
		t.Errorf("service port %d is outside [%d, %d): an outgoing connection could take it before master binds it", port, servicePortLow, ephemeralLow())
	}
}

// TestExtraConfiguration checks the options that shape an instance beyond
// the defaults: an extra table (Files, Postmap, MainCF with {etc}), an
// extra master.cf service and a setting of the plain smtpd alone.
func TestExtraConfiguration(t *testing.T) {
	p := Start(t, Options{
		MainCF:     map[string]string{"virtual_alias_maps": "hash:{etc}/virtual"},
		Files:      map[string]string{"virtual": "valias@" + Domain + " " + LoopUser + "@" + Domain + "\n"},
		Postmap:    []string{"hash:virtual"},
		MasterCF:   "extra unix - n n - - pipe\n  flags=D user=nobody argv=/bin/cat {etc}/unused",
		PlainSMTPD: map[string]string{"smtpd_banner": "$myhostname ESMTP plain-extra"},
	})
	if _, err := os.Stat(p.EtcPath("virtual.db")); err != nil {
		t.Fatalf("postmap did not index the table: %v", err)
	}
	master, err := os.ReadFile(p.EtcPath("master.cf"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "argv=/bin/cat " + p.EtcPath("unused"); !strings.Contains(string(master), want) {
		t.Errorf("master.cf lacks the extra service %q:\n%s", want, master)
	}
	c, err := net.Dial("tcp4", p.PlainAddr())
	if err != nil {
		t.Fatal(err)
	}
	banner := make([]byte, 512)
	n, _ := c.Read(banner)
	c.Close()
	if !strings.Contains(string(banner[:n]), "plain-extra") {
		t.Errorf("plain smtpd banner %q lacks its extra setting", banner[:n])
	}
	res, err := Send(p.PlainAddr(), "sender@"+Domain, []string{"valias@" + Domain}, []byte("Subject: virtual\n\nbody\n"))
	if err != nil {
		t.Fatal(err)
	}
	if res.EndOfData.Class() != 2 {
		t.Fatalf("not accepted: %v", res)
	}
	d := p.WaitDone(res.QueueID())
	if len(d) != 1 || d[0].Recipient != LoopUser+"@"+Domain || d[0].Status != "sent" {
		t.Errorf("valias@ was not rewritten to %s@ and delivered: %+v", LoopUser, d)
	}
}
