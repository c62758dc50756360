package expand

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// The documented lines of docs/expansion.md, as a test instance carries
// them: the public proxymap service, and proxy_read_maps holding its full
// default value followed by the tables the expansion reads.
const publicProxymap = "proxymap unix n - n - - proxymap"

// defaultProxyReadMaps is `postconf -d -h proxy_read_maps`: the value an
// administrator pastes before the proxy: entries (a self-reference,
// "$proxy_read_maps ...", makes proxymap die).
func defaultProxyReadMaps(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(command("postconf"), "-d", "-h", "proxy_read_maps").Output()
	if err != nil {
		t.Fatalf("postconf -d -h proxy_read_maps: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// How livePostfix opens the tables to this package.
type liveSetup int

const (
	// setupApproved: the documented lines: the public proxymap service,
	// and proxy_read_maps with its full default value and a proxy: entry
	// for each table.
	setupApproved liveSetup = iota
	// setupProxied: Postfix's own maps are written proxy:TYPE:NAME, so
	// the default proxy_read_maps approves them, and cleanup, local and
	// smtpd look them up through private/proxymap; the public proxymap
	// service as documented.
	setupProxied
	// setupNone: no public proxymap, no approval.
	setupNone
)

// livePostfix starts a private Postfix with tables for every kind of
// expansion: virtual one-to-one, one-to-many, recursive, catch-all and
// regexp, recipient canonical, aliases(5), a pipe(8) transport with flag
// D, and masquerading of envelope recipients (subdomains of local.test).
func livePostfix(t testing.TB, setup liveSetup) *postfixtest.Instance {
	t.Helper()
	tables := "hash:{etc}/virtual regexp:{etc}/virtual.re hash:{etc}/rcanon hash:{etc}/transport hash:{etc}/aliases"
	mainCF := map[string]string{
		"virtual_alias_maps":                   "hash:{etc}/virtual, regexp:{etc}/virtual.re",
		"recipient_canonical_maps":             "hash:{etc}/rcanon",
		"transport_maps":                       "hash:{etc}/transport",
		"pipeloop_destination_recipient_limit": "1",
		"masquerade_domains":                   "local.test",
		"masquerade_classes":                   "envelope_recipient",
	}
	master := "pipeloop unix - n n - - pipe flags=DRq user=nobody argv=/bin/sh -c cat>>{mail}/pipebox"
	switch setup {
	case setupApproved:
		mainCF["proxy_read_maps"] = defaultProxyReadMaps(t) + " proxy:" + strings.ReplaceAll(tables, " ", " proxy:")
		master = publicProxymap + "\n" + master
	case setupProxied:
		for _, k := range []string{"virtual_alias_maps", "recipient_canonical_maps", "transport_maps"} {
			mainCF[k] = "proxy:" + strings.ReplaceAll(mainCF[k], ", ", ", proxy:")
		}
		mainCF["alias_maps"] = "proxy:hash:{etc}/aliases"
		mainCF["local_recipient_maps"] = "proxy:unix:passwd.byname $alias_maps"
		master = publicProxymap + "\n" + master
	}
	return postfixtest.Start(t, postfixtest.Options{
		MainCF:   mainCF,
		MasterCF: master,
		Files: map[string]string{
			"virtual": `catch.test anything
member@local.test loopuser@local.test
member2@local.test loopuser@local.test
move.test anything
@move.test @local.test
valias@local.test loopuser@local.test
multi@local.test loopuser@local.test, user@local.test
rec1@local.test rec2@local.test
rec2@local.test loopuser@local.test
@catch.test loopuser@local.test
vws@local.test user loopuser
`,
			"virtual.re": "/^re-.*@local\\.test$/ loopuser@local.test\n",
			"rcanon":     "canon@local.test valias@local.test\n",
			"transport":  "pipe.test pipeloop:\n",
			"list.inc":   "# members\nmember2\n",
		},
		Postmap: []string{"hash:virtual", "hash:rcanon", "hash:transport"},
		Aliases: map[string]string{
			"lp":         "loopuser",
			"list":       "member2",
			"owner-list": "postmaster",
			"plain":      "member",
			"incl":       ":include:{mail}/../etc/list.inc",
			"ws":         "user loopuser",
			"cmdarg":     "|/bin/true loopuser",
		},
		Mailboxes: []string{"member"},
	})
}

// variant is a recipient and the forged Delivered-To: address sent with
// it; loop says whether Postfix bounces it as a loop for forged. dt, when
// set, is the message's Delivered-To: lines instead of "Delivered-To:
// <forged>": another spelling of forged, which local(8) compares exactly.
type variant struct {
	name, rcpt, forged string
	loop               bool
	dt                 string
}

// header is the variant's Delivered-To: lines.
func (v variant) header() string {
	if v.dt != "" {
		return v.dt
	}
	return "Delivered-To: " + v.forged
}

// headerSpellings are the Delivered-To: spellings of loopuser@local.test
// that local(8) compares (delivered_hdr_init: the first physical line,
// leading white space skipped, case-folded, no address parsing), sent for
// valias@local.test: a loop only when that line is exactly the address.
var headerSpellings = []variant{
	{name: "header: angle brackets", dt: "Delivered-To: <loopuser@local.test>"},
	{name: "header: list", dt: "Delivered-To: x@y, loopuser@local.test"},
	{name: "header: quoted local part", dt: `Delivered-To: "loopuser"@local.test`},
	{name: "header: trailing dot", dt: "Delivered-To: loopuser@LOCAL.TEST."},
	{name: "header: trailing space", dt: "Delivered-To: loopuser@local.test "},
	{name: "header: value on the continuation line", dt: "Delivered-To:\n loopuser@local.test"},
	{name: "header: case and leading white space", dt: "Delivered-To:\t LoopUser@Local.TEST", loop: true},
	{name: "header: continuation after the value", dt: "Delivered-To: loopuser@local.test\n (junk)", loop: true},
	{name: "header: after 1000 other fields", dt: strings.Repeat("Delivered-To: other@local.test\n", 1000) + "Delivered-To: loopuser@local.test"},
	{name: "header: after 999 other fields", dt: strings.Repeat("Delivered-To: other@local.test\n", 999) + "Delivered-To: loopuser@local.test", loop: true},
}

func init() {
	for _, v := range headerSpellings {
		v.rcpt, v.forged = "valias@local.test", "loopuser@local.test"
		liveVariants = append(liveVariants, v)
	}
}

var liveVariants = []variant{
	{"virtual one-to-one", "valias@local.test", "loopuser@local.test", true, ""},
	{"virtual one-to-many", "multi@local.test", "loopuser@local.test", true, ""},
	{"virtual recursive", "rec1@local.test", "loopuser@local.test", true, ""},
	{"virtual catch-all", "anyone@catch.test", "loopuser@local.test", true, ""},
	{"virtual regexp", "re-x@local.test", "loopuser@local.test", true, ""},
	{"recipient canonical", "canon@local.test", "loopuser@local.test", true, ""},
	{"aliases(5)", "lp@local.test", "loopuser@local.test", true, ""},
	{"aliases(5), first level", "lp@local.test", "lp@local.test", true, ""},
	{"aliases(5), extension", "lp+x@local.test", "loopuser@local.test", true, ""},
	{"@domain to @other", "loopuser+x@move.test", "loopuser+x@local.test", true, ""},
	{"@domain keeps the extension", "loopuser+x@move.test", "loopuser@local.test", false, ""},
	{"extension propagated", "valias+ext@local.test", "loopuser@local.test", false, ""},
	{"extension, its own loop", "valias+ext@local.test", "loopuser+ext@local.test", true, ""},
	{"pipe flag D", "u@pipe.test", "u@pipe.test", true, ""},
	{"owner- alias: forwarded through cleanup", "list@local.test", "loopuser@local.test", true, ""},
	{"owner- alias: compared before forwarding", "list@local.test", "member2@local.test", true, ""},
	{"alias to a local mailbox: no cleanup", "plain@local.test", "loopuser@local.test", false, ""},
	{":include: file: forwarded", "incl@local.test", "loopuser@local.test", true, ""},
	{"rewritten away", "valias@local.test", "valias@local.test", false, ""},
	{"virtual, addresses separated by white space", "vws@local.test", "loopuser@local.test", true, ""},
	{"aliases(5), addresses separated by white space", "ws@local.test", "loopuser@local.test", true, ""},
	{"aliases(5), unquoted |cmd arg", "cmdarg@local.test", "loopuser@local.test", true, ""},
	{"masquerade_domains (envelope_recipient)", "loopuser@sub.local.test", "loopuser@local.test", true, ""},
}

// TestLiveDifferential sends each variant through Postfix alone, with its
// forged header, and checks the expansion against what Postfix did: the
// forged address is among the targets that check loops exactly when
// Postfix bounced the message as a loop (for the variants that forge it as
// written), every address Postfix delivered to is a target, and the loop
// check on the message, with the expansion as each front-end hands it
// over, finds a loop in -loops=postfix exactly when Postfix bounced it and
// in -loops=any at least then. It runs with both backends.
func TestLiveDifferential(t *testing.T) {
	p := livePostfix(t, setupApproved)
	type sent struct {
		v   variant
		qid string
	}
	var all []sent
	for _, v := range liveVariants {
		msg := v.header() + "\nSubject: " + v.name + "\n\nbody\n"
		res, err := postfixtest.Send(p.PlainAddr(), "sender@local.test", []string{v.rcpt}, []byte(msg))
		if err != nil {
			t.Fatalf("%s: send: %v", v.name, err)
		}
		if res.EndOfData.Class() != 2 {
			t.Fatalf("%s: Postfix refused the message: %v", v.name, res)
		}
		all = append(all, sent{v, res.QueueID()})
	}
	for _, kind := range []BackendKind{BackendProxymap, BackendPostmap} {
		e, err := New(context.Background(), Options{ConfigDir: p.ConfigDir(), Prefer: kind, CacheSize: -1})
		if err != nil {
			t.Fatalf("backend %d: %v", kind, err)
		}
		t.Logf("backend: %s", e.BackendInfo())
		for _, s := range all {
			deliveries := p.WaitDoneFollowing(s.qid)
			bounced := false
			for _, d := range deliveries {
				if strings.EqualFold(d.Recipient, s.v.forged) && d.IsLoopBounce() {
					bounced = true
				}
			}
			if bounced != s.v.loop {
				t.Errorf("%s: Postfix bounced as a loop: %v, the test expects %v: %v", s.v.name, bounced, s.v.loop, deliveries)
			}
			rcpt, _ := address.ParsePath("<" + s.v.rcpt + ">")
			res, err := e.Expand(context.Background(), rcpt.Addr)
			if err != nil {
				t.Fatalf("%s: expand: %v", s.v.name, err)
			}
			var outcome []string
			for _, d := range deliveries {
				outcome = append(outcome, d.Recipient+" "+d.Status)
			}
			t.Logf("%-24s rcpt %-22s forged %-24s Postfix: %-45s expansion: %q", s.v.name, s.v.rcpt, s.v.forged, strings.Join(outcome, ", "), targets(res))
			var checked []string
			for _, tg := range res.Targets {
				if tg.ChecksLoops {
					checked = append(checked, tg.Addr.Key())
				}
			}
			msg := []byte(s.v.header() + "\r\nSubject: x\r\n\r\nbody\r\n")
			for _, mode := range []Mode{ModeAny, ModePostfix} {
				r := loopcheck.NewRecipient("<" + s.v.rcpt + ">").WithExpansion(res.Expansion(mode))
				v := loopcheck.CheckRecipients([]loopcheck.Recipient{r}, msg)
				if mode == ModePostfix && v.Loop != bounced || mode == ModeAny && bounced && !v.Loop {
					t.Errorf("%s (%s): -loops=%v: loop %v; Postfix bounced: %v", s.v.name, e.BackendInfo()[:8], mode, v.Loop, bounced)
				}
			}
			forged := address.Addr{Local: strings.Split(s.v.forged, "@")[0], Domain: strings.Split(s.v.forged, "@")[1]}.Key()
			if got := slices.Contains(checked, forged); s.v.dt == "" && got != bounced {
				t.Errorf("%s (%s): forged %s among the targets that check loops: %v; Postfix bounced: %v; targets %q",
					s.v.name, e.BackendInfo()[:8], s.v.forged, got, bounced, targets(res))
			}
			for _, d := range deliveries {
				a, err := address.ParsePath("<" + d.Recipient + ">")
				if err != nil {
					t.Fatalf("delivery to %q: %v", d.Recipient, err)
				}
				if !slices.ContainsFunc(res.Targets, func(tg Target) bool { return tg.Addr.Key() == a.Addr.Key() }) {
					t.Errorf("%s: Postfix delivered to %s, not among the targets %q", s.v.name, d.Recipient, targets(res))
				}
			}
		}
		e.Close()
	}
}

// TestLiveProxymapStillDelivers: with the documented lines, Postfix's own
// mail flow works (its cleanup and local(8) read the same tables; with
// setupProxied they do so through proxymap themselves, private/proxymap
// beside the public entry), proxymap logs no error, and this package's
// lookups succeed through public/proxymap.
func TestLiveProxymapStillDelivers(t *testing.T) {
	for _, setup := range []liveSetup{setupApproved, setupProxied} {
		p := livePostfix(t, setup)
		res, err := postfixtest.Send(p.PlainAddr(), "sender@local.test", []string{"valias@local.test", "lp@local.test", "canon@local.test"}, []byte("Subject: plain\n\nbody\n"))
		if err != nil || res.EndOfData.Class() != 2 {
			t.Fatalf("setup %d: send: %v %v", setup, res, err)
		}
		for _, d := range p.WaitDone(res.QueueID()) {
			if d.Status != "sent" {
				t.Errorf("setup %d: delivery with the documented lines: %v", setup, d)
			}
		}
		// Three copies: cleanup keeps one queue recipient per original
		// recipient (enable_original_recipient = yes).
		if n := p.MailboxMessages(postfixtest.LoopUser); n != 3 {
			t.Errorf("setup %d: loopuser got %d messages, want 3 (one per recipient)", setup, n)
		}
		for line := range strings.Lines(p.Maillog()) {
			if strings.Contains(line, "proxymap") && (strings.Contains(line, "fatal") || strings.Contains(line, "panic") || strings.Contains(line, "warning")) {
				t.Errorf("setup %d: proxymap complains: %s", setup, line)
			}
		}
		e, err := New(context.Background(), Options{ConfigDir: p.ConfigDir()})
		if err != nil {
			t.Fatal(err)
		}
		if info := e.BackendInfo(); !strings.HasPrefix(info, "proxymap") {
			t.Fatalf("setup %d: backend %q, want proxymap", setup, info)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for _, rcpt := range []string{"valias@local.test", "canon@local.test", "lp@local.test"} {
			r, err := e.Expand(ctx, addr(rcpt))
			if err != nil {
				t.Fatalf("setup %d: %s: %v", setup, rcpt, err)
			}
			if !slices.ContainsFunc(r.Targets, func(tg Target) bool { return tg.Addr.Key() == "loopuser@local.test" && tg.ChecksLoops }) {
				t.Errorf("setup %d: %s: targets %q", setup, rcpt, targets(r))
			}
		}
		cancel()
		e.Close()
	}
}

// TestLiveBackendChoice: without the documented lines the expander falls
// back to postmap, says why, and still expands.
func TestLiveBackendChoice(t *testing.T) {
	p := livePostfix(t, setupNone)
	e, err := New(context.Background(), Options{ConfigDir: p.ConfigDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	info := e.BackendInfo()
	t.Logf("backend: %s", info)
	if !strings.HasPrefix(info, "postmap") || !strings.Contains(info, "proxy_read_maps does not approve") {
		t.Errorf("backend %q: want postmap, saying which tables lack approval", info)
	}
	r, err := e.Expand(context.Background(), addr("valias@local.test"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(r.Targets, func(tg Target) bool { return tg.Addr.Key() == "loopuser@local.test" }) {
		t.Errorf("targets %q", targets(r))
	}
	if _, err := New(context.Background(), Options{ConfigDir: p.ConfigDir(), Prefer: BackendProxymap}); err == nil {
		t.Errorf("BackendProxymap without approval: no error")
	}
}

// TestLiveProxymapProtocol checks the facts the client rests on against
// Postfix 3.7's proxymap(8): keys of a fixed table are folded
// (DICT_FLAG_FOLD_FIX), open reports DICT_FLAG_FIXED for hash and not for
// regexp, an unapproved table is denied, the 3.11 request form gets
// status BAD (and the client falls back to the other form), and a table rebuilt under a running proxymap is seen after
// the client reconnects.
func TestLiveProxymapProtocol(t *testing.T) {
	p := livePostfix(t, setupApproved)
	sock := (&Config{QueueDirectory: p.Dir() + "/spool"}).ProxymapSocket()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	virtual := "hash:" + p.EtcPath("virtual")
	pm := NewProxymap(sock, false, 2)
	defer pm.Close()
	if v, found, err := pm.Lookup(ctx, virtual, "VALIAS@Local.Test"); err != nil || !found || v != "loopuser@local.test" {
		t.Errorf("folded lookup: %q %v %v", v, found, err)
	}
	for table, want := range map[string]bool{virtual: true, "regexp:" + p.EtcPath("virtual.re"): false} {
		if fixed, err := pm.Fixed(ctx, table); err != nil || fixed != want {
			t.Errorf("Fixed(%s) = %v %v, want %v", table, fixed, err, want)
		}
	}
	pm.mu.Lock()
	t.Logf("open flags: %v", pm.flags)
	pm.mu.Unlock()
	if _, _, err := pm.Lookup(ctx, "hash:"+p.EtcPath("unlisted"), "x"); causeOf(err) != CauseDenied {
		t.Errorf("unapproved table: %v, want cause denied", err)
	}
	newForm := NewProxymap(sock, true, 1)
	defer newForm.Close()
	attrs, err := newForm.roundTrip(ctx, virtual, "", openRequest(virtual, true))
	if v, serr := scanAttrs(attrs, "status", "flags"); err != nil || serr != nil || v[0] != strconv.Itoa(proxyStatBad) {
		t.Errorf("3.11 open request against 3.7: %v %v %v, want status BAD", attrs, err, serr)
	}
	// The client then tries the other form, and keeps it.
	if v, found, err := newForm.Lookup(ctx, virtual, "valias@local.test"); err != nil || !found || v != "loopuser@local.test" || newForm.newForm.Load() {
		t.Errorf("3.11 request form against 3.7, then the other: %q %v %v, new form kept: %v", v, found, err, newForm.newForm.Load())
	}

	// Rebuild the table: proxymap notices the change when it next
	// accepts a connection, and exits; the pooled connection then reads
	// EOF and the client reconnects.
	if err := os.WriteFile(p.EtcPath("virtual"), []byte("added@local.test user@local.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(2 * time.Second)
	if out, err := exec.Command(command("postmap"), "-c", p.ConfigDir(), virtual).CombinedOutput(); err != nil {
		t.Fatalf("postmap: %v %s", err, out)
	}
	os.Chtimes(p.EtcPath("virtual.db"), future, future)
	dials := pm.dials.Load()
	deadline := time.Now().Add(postfixtest.WaitLimit)
	for {
		// A new connection makes the server look at its tables.
		if err := NewProxymap(sock, false, 1).Ping(ctx); err != nil {
			t.Fatal(err)
		}
		v, found, err := pm.Lookup(ctx, virtual, "added@local.test")
		if err != nil {
			t.Fatalf("lookup after the table changed: %v", err)
		}
		if found && v == "user@local.test" {
			t.Logf("rebuilt table seen after %d new connection(s)", pm.dials.Load()-dials)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rebuilt table is not seen through the pooled client")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// helperSocketEnv makes the test binary, run again as another user by
// TestLivePostdrop, only connect to the proxymap socket it names and exit
// with the outcome (see TestMain).
const helperSocketEnv = "EXPAND_TEST_PING_SOCKET"

// TestMain runs the tests, or, as TestLivePostdrop's helper, pings the
// socket in helperSocketEnv as an unprivileged filter would.
func TestMain(m *testing.M) {
	if sock := os.Getenv(helperSocketEnv); sock != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := NewProxymap(sock, false, 1).Ping(ctx)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(postfixtest.Main(m))
}

// TestLivePostdrop: an unprivileged process reaches public/proxymap with
// the supplementary group postdrop (SupplementaryGroups=postdrop in the
// systemd unit), and not without it (public/ is mode 0710
// postfix:postdrop).
func TestLivePostdrop(t *testing.T) {
	p := livePostfix(t, setupApproved)
	sock := (&Config{QueueDirectory: p.Dir() + "/spool"}).ProxymapSocket()
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	postdrop, err := user.LookupGroup("postdrop")
	if err != nil {
		t.Fatal(err)
	}
	// The test binary lives under a directory only root can search:
	// copy it where nobody can run it.
	dir, err := os.MkdirTemp("", "expand-postdrop-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "expand.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	pgid, _ := strconv.Atoi(postdrop.Gid)
	for _, tc := range []struct {
		name   string
		groups []uint32
		ok     bool
	}{{"with postdrop", []uint32{uint32(pgid)}, true}, {"without postdrop", nil, false}} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), helperSocketEnv+"="+sock)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: tc.groups}}
		out, err := cmd.CombinedOutput()
		if (err == nil) != tc.ok {
			t.Errorf("%s: ping as nobody: err=%v, want success %v\n%s", tc.name, err, tc.ok, out)
		}
		if !tc.ok && !strings.Contains(string(out), "permission denied") {
			t.Errorf("%s: failed for another reason than the socket's permissions:\n%s", tc.name, out)
		}
	}
}
