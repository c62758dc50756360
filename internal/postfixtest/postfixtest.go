// Package postfixtest runs a private, real Postfix instance for end-to-end
// tests of the proxy, and gives tests what they need to observe it: an SMTP
// client that returns every reply, the instance's mail log, its queue and the
// mailbox files local(8) delivers to.
//
// An instance lives in its own temporary directory (config_directory,
// queue_directory, data_directory, maillog_file, mailboxes) and listens only
// on loopback ports picked at random; it never touches /etc/postfix (only
// Debian's postfix-files and dynamicmaps.cf are read from there, through
// meta_directory) nor a system-wide Postfix. It offers three SMTP services:
//
//   - the front smtpd, with smtpd_proxy_filter pointing at the filter
//     address (where the test runs the proxy under test);
//   - the after-filter smtpd of SMTPD_PROXY_README, which the proxy relays to
//     and which trusts XFORWARD from 127.0.0.0/8;
//   - a plain front smtpd without the filter, for differential tests: what
//     Postfix alone does with a message.
//
// Mail for local.test is delivered by local(8) to files through aliases,
// so a test reads what was delivered, and bounces go to the sender's mailbox
// so they can be counted.
//
// Use:
//
//	p := postfixtest.New(t, postfixtest.Options{})
//	serve(p.FilterListener(), p.AfterFilterAddr()) // the proxy under test
//	p.Start()
//	res, err := postfixtest.Send(p.FrontAddr(), "sender@local.test",
//		[]string{"loopuser@local.test"}, msg)
//
// The ports are picked and held by New, so the proxy can be started before
// Start (as above) or after it. A proxy that binds its own address instead
// is announced with SetFilterAddr before Start.
//
// Guarantees: the instance is stopped and its directory removed when the test
// ends, whatever happens (t.Cleanup runs on failure and panic too); processes
// of the instance that survive "postfix stop" are killed. Instances left behind
// by a test binary that was killed outright (a -timeout panic, SIGKILL) are
// stopped and removed by the next New in any test binary.
//
// Tests that need Postfix call New or Start; when Postfix is not installed or
// the test does not run as root they are skipped with a message saying how to
// enable them, unless SMTPPROX_REQUIRE_POSTFIX=1 (as in CI), where that is a
// test failure. Every package using the harness has a TestMain that calls
// Main, which says in one line, also without -v, that such tests were
// skipped and why.
//
// Methods that can fail the test (New, Start, Wait*, Mailbox...) must be
// called from the test's goroutine; Client.Send and the log readers that
// return errors may be called from any goroutine.
package postfixtest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Domain is the mail domain the instance delivers locally (mydestination).
const Domain = "local.test"

// Built-in mailboxes: each is an alias delivering to the file of that name.
const (
	// LoopUser is the recipient the loop tests forge Delivered-To: for.
	LoopUser = "loopuser"
	// User is an ordinary recipient.
	User = "user"
	// Sender is the mailbox bounces reach when a test sends from
	// sender@local.test (or sender+anything@local.test).
	Sender = "sender"
	// Postmaster receives Postfix's own notices.
	Postmaster = "postmaster"
)

// RequireEnv names the environment variable that turns "Postfix unavailable"
// from a skip into a failure (CI sets it to 1).
const RequireEnv = "SMTPPROX_REQUIRE_POSTFIX"

// Limits. None is asserted; each only bounds how long a broken instance can
// hold a test up before the test fails with the mail log.
const (
	// StartLimit bounds "postfix start" plus the wait for the ports to accept.
	// Start-up takes well under a second here; a slow CI machine gets room.
	StartLimit = 60 * time.Second
	// WaitLimit bounds each wait for a log line, a delivery or an empty queue.
	// local(8) delivers within a second; qmgr never delays new mail by more
	// than a queue scan, so a minute means something is broken.
	WaitLimit = 60 * time.Second
	// StopLimit bounds "postfix stop", which itself waits up to 5 s before it
	// kills the master's process group.
	StopLimit = 30 * time.Second
	// pollInterval is how often waits look again; the log is a small file.
	pollInterval = 25 * time.Millisecond
	// configAge is how far the configuration files' mtime is set back.
	configAge = time.Minute
	// defaultProxyTimeout is Postfix's own smtpd_proxy_timeout default.
	defaultProxyTimeout = 100 * time.Second
)

// commandDirectory is where Debian installs postfix, postalias, postqueue.
const commandDirectory = "/usr/sbin"

// dirPrefix names instance directories, so stale ones can be found.
const dirPrefix = "postfixtest-"

// ownerFile holds the pid of the test process that owns an instance.
const ownerFile = "owner.pid"

// Options configure an instance. The zero value is a working instance whose
// filter address is a listener the harness reserves (see FilterListener).
type Options struct {
	// FilterAddr is the address (host:port) the front smtpd hands mail to:
	// the proxy under test. Empty: the harness reserves a loopback port and
	// hands its listener to the test (FilterListener); SetFilterAddr may
	// still change it before Start.
	FilterAddr string
	// SpeedAdjust sets smtpd_proxy_options=speed_adjust on the front smtpd:
	// it receives the whole message before it connects to the filter.
	SpeedAdjust bool
	// ProxyTimeout is the front smtpd's smtpd_proxy_timeout; 0 means
	// Postfix's default, 100 s.
	ProxyTimeout time.Duration
	// Mailboxes are extra local names delivered to files (read them with
	// Mailbox), beside LoopUser, User, Sender and Postmaster.
	Mailboxes []string
	// Aliases are extra aliases(5) entries: name -> right-hand side as
	// written in the aliases file; "{mail}" in it is replaced by the mailbox
	// directory. Example: "valias": "loopuser".
	Aliases map[string]string
	// MainCF are extra main.cf settings; they override the harness's own.
	// "{etc}" and "{mail}" in a value are replaced by the config and
	// mailbox directories: "hash:{etc}/virtual".
	MainCF map[string]string
	// MasterCF is appended to master.cf: extra services, such as a pipe(8)
	// transport or a public proxymap. "{etc}" and "{mail}" are replaced.
	MasterCF string
	// PlainSMTPD are extra "-o name=value" settings of the plain front
	// smtpd (PlainAddr) alone, such as smtpd_milters.
	PlainSMTPD map[string]string
	// Files are extra files written into the config directory before
	// Start: name -> content, "{etc}" and "{mail}" replaced.
	Files map[string]string
	// Postmap lists tables to index with postmap(1) before Start, as
	// TYPE:NAME with NAME one of Files ("hash:virtual").
	Postmap []string
}

// Instance is one private Postfix instance.
type Instance struct {
	t    testing.TB
	opts Options

	dir      string // the instance's root, removed at cleanup
	etcDir   string // config_directory
	spoolDir string // queue_directory
	dataDir  string // data_directory
	mailDir  string // local(8) file deliveries, one file per mailbox
	logPath  string // maillog_file

	frontAddr, plainAddr, afterAddr string

	mu         sync.Mutex
	reserved   []net.Listener // ports held until Start, so nothing else takes them
	filterLn   net.Listener   // reserved filter listener, until the test takes it
	filterAddr string
	started    bool
}

// Unavailable reports why real-Postfix tests cannot run here ("" when they
// can): the postfix commands must exist and the process must run as root.
func Unavailable() string {
	return unavailable(os.Geteuid(), func(name string) error {
		_, err := os.Stat(filepath.Join(commandDirectory, name))
		return err
	})
}

func unavailable(euid int, stat func(name string) error) string {
	for _, cmd := range []string{"postfix", "postalias", "postqueue", "postconf"} {
		if err := stat(cmd); err != nil {
			return fmt.Sprintf("Postfix is not installed (%s/%s missing): install it with `sudo .ci/install-postfix`, then run the tests as root", commandDirectory, cmd)
		}
	}
	if euid != 0 {
		return fmt.Sprintf("real-Postfix tests must run as root (euid is %d): Postfix's master starts as root and drops privileges itself; run `sudo go test ...`", euid)
	}
	return ""
}

// requireOrSkip ends the test when Postfix cannot run: a skip, or a failure
// when RequireEnv=1.
func requireOrSkip(t testing.TB) {
	t.Helper()
	if why := Unavailable(); why != "" {
		skipUnavailable(t, why)
	}
}

// Start is New followed by Instance.Start.
func Start(t testing.TB, opts Options) *Instance {
	t.Helper()
	p := New(t, opts)
	p.Start()
	return p
}

// New prepares an instance: directories and loopback ports, no process yet.
// The service addresses are known from here on, so a test can start the
// proxy (pointed at AfterFilterAddr) before or after Start.
func New(t testing.TB, opts Options) *Instance {
	t.Helper()
	requireOrSkip(t)
	reapStale(t)

	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatalf("postfixtest: create instance directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("postfixtest: remove instance directory: %v", err)
		}
	})
	p := &Instance{
		t:        t,
		opts:     opts,
		dir:      dir,
		etcDir:   filepath.Join(dir, "etc"),
		spoolDir: filepath.Join(dir, "spool"),
		dataDir:  filepath.Join(dir, "data"),
		mailDir:  filepath.Join(dir, "mail"),
		logPath:  filepath.Join(dir, "maillog"),
	}
	t.Cleanup(p.releaseReserved)
	if err := p.makeDirs(); err != nil {
		t.Fatalf("postfixtest: %v", err)
	}

	// Reserve every port now and hold it until Start, so the addresses can be
	// handed out before Postfix runs and nothing else takes them meanwhile.
	reserve := func() string {
		ln, err := listenServicePort()
		if err != nil {
			t.Fatalf("postfixtest: reserve a loopback port: %v", err)
		}
		p.reserved = append(p.reserved, ln)
		return ln.Addr().String()
	}
	p.frontAddr = reserve()
	p.plainAddr = reserve()
	p.afterAddr = reserve()
	if opts.FilterAddr != "" {
		p.filterAddr = opts.FilterAddr
	} else {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("postfixtest: reserve the filter port: %v", err)
		}
		p.filterLn = ln
		p.filterAddr = ln.Addr().String()
	}
	return p
}

// Service ports are picked below the kernel's ephemeral range: a service
// port is free between releasePorts and master's bind (a few hundred ms of
// "postfix start" checks), and an outgoing connection of any process could
// take a port of the ephemeral range in that window; none takes one below it.
const (
	servicePortLow   = 10000 // above the well-known and most registered ports
	servicePortTries = 50    // random tries before falling back to port 0
)

// listenServicePort listens on a random free loopback port below the
// ephemeral range, or on one the kernel picks if none is found.
func listenServicePort() (net.Listener, error) {
	high := ephemeralLow()
	for range servicePortTries {
		if high <= servicePortLow {
			break
		}
		port := servicePortLow + rand.IntN(high-servicePortLow)
		if ln, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			return ln, nil
		}
	}
	return net.Listen("tcp4", "127.0.0.1:0")
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	const linuxDefault = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return linuxDefault
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return linuxDefault
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return linuxDefault
	}
	return n
}

// makeDirs creates the instance tree with the ownership Postfix insists on:
// everything root-owned and not group/other-writable except data_directory
// (owned by the postfix user) and the mailbox directory (owned by nobody,
// default_privs, as whom local(8) writes alias file deliveries). Every parent
// must be searchable by those users.
func (p *Instance) makeDirs() error {
	if err := os.Chmod(p.dir, 0o755); err != nil {
		return fmt.Errorf("chmod instance directory: %w", err)
	}
	for d := filepath.Dir(p.dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by other users, so Postfix's unprivileged daemons cannot reach the instance under it; set TMPDIR to a directory like /tmp", d)
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	if err := os.WriteFile(filepath.Join(p.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("write owner file: %w", err)
	}
	postfixUID, postfixGID, err := lookupUser("postfix")
	if err != nil {
		return err
	}
	nobodyUID, nobodyGID, err := lookupUser("nobody")
	if err != nil {
		return err
	}
	for _, d := range []struct {
		path     string
		uid, gid int
	}{
		{p.etcDir, 0, 0},
		{p.spoolDir, 0, 0},
		{p.dataDir, postfixUID, postfixGID},
		{p.mailDir, nobodyUID, nobodyGID},
	} {
		if err := os.Mkdir(d.path, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d.path, err)
		}
		if err := os.Chown(d.path, d.uid, d.gid); err != nil {
			return fmt.Errorf("chown %s: %w", d.path, err)
		}
	}
	return nil
}

func lookupUser(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("look up user %q (the postfix package creates it): %w", name, err)
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err = strconv.Atoi(u.Gid)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: gid %q: %w", name, u.Gid, err)
	}
	return uid, gid, nil
}

// FrontAddr is the filtered front smtpd (smtpd_proxy_filter = FilterAddr).
func (p *Instance) FrontAddr() string { return p.frontAddr }

// PlainAddr is the front smtpd without a filter.
func (p *Instance) PlainAddr() string { return p.plainAddr }

// AfterFilterAddr is the after-filter smtpd: the proxy's upstream.
func (p *Instance) AfterFilterAddr() string { return p.afterAddr }

// FilterAddr is where the front smtpd connects for each message.
func (p *Instance) FilterAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.filterAddr
}

// FilterListener hands the test the listener reserved for the filter address
// (Options.FilterAddr empty); the test serves the proxy on it and closes it.
// It may be taken and served before or after Start: until it is served, the
// front smtpd's connections wait in its backlog. It returns nil after
// SetFilterAddr or when Options.FilterAddr was set, and on a second call.
func (p *Instance) FilterListener() net.Listener {
	p.mu.Lock()
	defer p.mu.Unlock()
	ln := p.filterLn
	p.filterLn = nil
	return ln
}

// SetFilterAddr changes the filter address; only before Start.
func (p *Instance) SetFilterAddr(addr string) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		p.t.Fatalf("postfixtest: SetFilterAddr(%q) after Start", addr)
	}
	if p.filterLn != nil {
		p.filterLn.Close()
		p.filterLn = nil
	}
	p.filterAddr = addr
}

// Dir is the instance's root directory; ConfigDir its config_directory.
func (p *Instance) Dir() string       { return p.dir }
func (p *Instance) ConfigDir() string { return p.etcDir }

// MailboxPath is the file local(8) delivers the mailbox name to.
func (p *Instance) MailboxPath(name string) string { return filepath.Join(p.mailDir, name) }

// releasePorts closes the listeners holding the service ports, just before
// master binds them.
func (p *Instance) releasePorts() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ln := range p.reserved {
		ln.Close()
	}
	p.reserved = nil
}

// releaseReserved closes every listener the harness still holds, the filter
// listener included when the test never took it.
func (p *Instance) releaseReserved() {
	p.releasePorts()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.filterLn != nil {
		p.filterLn.Close()
		p.filterLn = nil
	}
}

// mainCF returns the main.cf settings: the private-instance settings of
// reference/postfix.md, then Options.MainCF over them.
func (p *Instance) mainCF() map[string]string {
	m := map[string]string{
		"compatibility_level": "3.6",
		"queue_directory":     p.spoolDir,
		"data_directory":      p.dataDir,
		// Debian's postfix-files and dynamicmaps.cf, read-only.
		"meta_directory":       "/etc/postfix",
		"inet_interfaces":      "loopback-only",
		"inet_protocols":       "ipv4",
		"mynetworks":           "127.0.0.0/8",
		"myhostname":           "mx." + Domain,
		"mydomain":             Domain,
		"myorigin":             Domain,
		"mydestination":        "$myhostname, " + Domain + ", localhost",
		"alias_maps":           "hash:" + filepath.Join(p.etcDir, "aliases"),
		"alias_database":       "",
		"local_recipient_maps": "$alias_maps",
		"allow_mail_to_files":  "alias",
		// Alias file deliveries run as default_privs when root owns the
		// alias database; the mailbox directory belongs to nobody.
		"default_privs":              "nobody",
		"smtp_dns_support_level":     "disabled",
		"smtpd_peername_lookup":      "no", // no DNS wait for 127.0.0.2
		"biff":                       "no",
		"maillog_file":               p.logPath,
		"maillog_file_prefixes":      "/var, /dev/stdout, " + p.dir,
		"smtputf8_enable":            "yes",
		"recipient_delimiter":        "+",
		"notify_classes":             "resource, software",
		"smtpd_banner":               "$myhostname ESMTP postfixtest",
		"delay_warning_time":         "0h",
		"multi_instance_directories": "",
	}
	for k, v := range p.opts.MainCF {
		m[k] = p.expand(v)
	}
	return m
}

// expand replaces "{etc}" and "{mail}" in an option's text.
func (p *Instance) expand(v string) string {
	return strings.NewReplacer("{etc}", p.etcDir, "{mail}", p.mailDir).Replace(v)
}

// EtcPath is the path of a file in the config directory.
func (p *Instance) EtcPath(name string) string { return filepath.Join(p.etcDir, name) }

// masterCF returns master.cf: the three SMTP services and the standard
// services of Debian's master.cf, all with chroot n (the chroot would need a
// copy of /etc files inside the temporary directory).
func (p *Instance) masterCF() string {
	proxyOptions := ""
	if p.opts.SpeedAdjust {
		proxyOptions = "speed_adjust"
	}
	timeout := p.opts.ProxyTimeout
	if timeout <= 0 {
		timeout = defaultProxyTimeout
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s inet n - n - 20 smtpd\n"+
		"  -o syslog_name=postfix/front\n"+
		"  -o smtpd_proxy_filter=%s\n"+
		"  -o smtpd_proxy_options=%s\n"+
		"  -o smtpd_proxy_timeout=%ds\n",
		p.frontAddr, p.FilterAddr(), proxyOptions, int(timeout.Round(time.Second)/time.Second))
	// The after-filter smtpd as in SMTPD_PROXY_README.
	fmt.Fprintf(&b, "%s inet n - n - - smtpd\n"+
		"  -o syslog_name=postfix/afterfilter\n"+
		"  -o smtpd_authorized_xforward_hosts=127.0.0.0/8\n"+
		"  -o smtpd_client_restrictions=\n"+
		"  -o smtpd_helo_restrictions=\n"+
		"  -o smtpd_sender_restrictions=\n"+
		"  -o smtpd_relay_restrictions=\n"+
		"  -o smtpd_recipient_restrictions=permit_mynetworks,reject\n"+
		"  -o smtpd_data_restrictions=\n"+
		"  -o mynetworks=127.0.0.0/8\n"+
		"  -o receive_override_options=no_unknown_recipient_checks\n", p.afterAddr)
	fmt.Fprintf(&b, "%s inet n - n - 20 smtpd\n"+
		"  -o syslog_name=postfix/plain\n", p.plainAddr)
	for _, k := range slices.Sorted(maps.Keys(p.opts.PlainSMTPD)) {
		// The { name = value } form (Postfix 3.0) lets a value hold spaces.
		fmt.Fprintf(&b, "  -o { %s = %s }\n", k, p.expand(p.opts.PlainSMTPD[k]))
	}
	b.WriteString(standardServices)
	if p.opts.MasterCF != "" {
		b.WriteString(p.expand(strings.TrimSuffix(p.opts.MasterCF, "\n")) + "\n")
	}
	return b.String()
}

const standardServices = `pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
virtual    unix  - n n -     - virtual
lmtp       unix  - - n -     - lmtp
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
`

// aliases returns the aliases file.
func (p *Instance) aliases() string {
	boxes := []string{LoopUser, User, Sender, Postmaster}
	boxes = append(boxes, p.opts.Mailboxes...)
	var b strings.Builder
	for _, name := range boxes {
		fmt.Fprintf(&b, "%s: %s\n", name, p.MailboxPath(name))
	}
	b.WriteString("mailer-daemon: postmaster\nroot: postmaster\n")
	for _, name := range slices.Sorted(maps.Keys(p.opts.Aliases)) {
		rhs := strings.ReplaceAll(p.opts.Aliases[name], "{mail}", p.mailDir)
		fmt.Fprintf(&b, "%s: %s\n", name, rhs)
	}
	return b.String()
}

// Start writes the configuration, checks it and starts the instance, then
// waits until the three SMTP ports accept. It registers the stop.
func (p *Instance) Start() {
	p.t.Helper()
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		p.t.Fatalf("postfixtest: Start called twice")
	}
	p.started = true
	p.mu.Unlock()

	var mainCF strings.Builder
	settings := p.mainCF()
	for name, content := range p.opts.Files {
		path := filepath.Join(p.etcDir, name)
		if err := os.WriteFile(path, []byte(p.expand(content)), 0o644); err != nil {
			p.t.Fatalf("postfixtest: write %s: %v", name, err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&mainCF, "%s = %s\n", k, settings[k])
	}
	for name, content := range map[string]string{
		"main.cf":   mainCF.String(),
		"master.cf": p.masterCF(),
		"aliases":   p.aliases(),
	} {
		path := filepath.Join(p.etcDir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			p.t.Fatalf("postfixtest: write %s: %v", name, err)
		}
		// Postfix re-reads a configuration file modified within the last
		// second (in 300 ms steps) in case an editor is still writing it;
		// dating the files back spares each command that wait.
		past := time.Now().Add(-configAge)
		if err := os.Chtimes(path, past, past); err != nil {
			p.t.Fatalf("postfixtest: date back %s: %v", name, err)
		}
	}
	p.run("postalias", "-c", p.etcDir, "hash:"+filepath.Join(p.etcDir, "aliases"))
	for _, table := range p.opts.Postmap {
		typ, name, ok := strings.Cut(table, ":")
		if !ok {
			p.t.Fatalf("postfixtest: Postmap entry %q is not TYPE:NAME", table)
		}
		p.run("postmap", "-c", p.etcDir, typ+":"+filepath.Join(p.etcDir, name))
	}
	if out := p.run("postfix", "-c", p.etcDir, "check"); out != "" {
		p.t.Logf("postfixtest: postfix check: %s", out)
	}

	// Give the ports back just before master binds them. The stop is
	// registered before the start so that a start that half worked is
	// cleaned up too.
	p.releasePorts()
	p.t.Cleanup(p.stop)
	p.run("postfix", "-c", p.etcDir, "start")

	deadline := time.Now().Add(StartLimit)
	for _, addr := range []string{p.frontAddr, p.plainAddr, p.afterAddr} {
		for {
			c, err := net.DialTimeout("tcp4", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				p.t.Fatalf("postfixtest: %s does not accept connections %v after start: %v\nmaillog:\n%s", addr, StartLimit, err, p.Maillog())
			}
			time.Sleep(pollInterval)
		}
	}
}

// run runs a Postfix command and fails the test if it fails; it returns the
// command's trimmed output.
func (p *Instance) run(name string, args ...string) string {
	p.t.Helper()
	out, err := p.command(StartLimit, name, args...)
	if err != nil {
		p.t.Fatalf("postfixtest: %s %s: %v\n%s\nmaillog:\n%s", name, strings.Join(args, " "), err, out, p.Maillog())
	}
	return out
}

func (p *Instance) command(limit time.Duration, name string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(commandDirectory, name), args...)
	cmd.Env = append(os.Environ(), "MAIL_CONFIG="+p.etcDir)
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	timer := time.AfterFunc(limit, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	return strings.TrimSpace(out.String()), err
}

// stop stops the instance and kills whatever of it survives.
func (p *Instance) stop() {
	if out, err := p.command(StopLimit, "postfix", "-c", p.etcDir, "stop"); err != nil {
		p.t.Logf("postfixtest: postfix stop failed (%v) %s; killing what is left of the instance", err, out)
	}
	if n := killInstance(p.etcDir, p.spoolDir); n > 0 {
		p.t.Logf("postfixtest: killed %d leftover process(es) of the instance", n)
	}
}

// killInstance SIGKILLs every process of the instance whose config directory
// is etcDir: the master (its pid file) and every process whose environment
// has MAIL_CONFIG=etcDir (master passes it to each daemon it spawns). It
// returns how many it signalled.
func killInstance(etcDir, spoolDir string) int {
	n := 0
	if b, err := os.ReadFile(filepath.Join(spoolDir, "pid", "master.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && processLive(pid) && processHasEnv(pid, "MAIL_CONFIG="+etcDir) {
			syscall.Kill(-pid, syscall.SIGKILL) // master leads its process group
			syscall.Kill(pid, syscall.SIGKILL)
			n++
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return n
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 || pid == os.Getpid() {
			continue
		}
		if processLive(pid) && processHasEnv(pid, "MAIL_CONFIG="+etcDir) {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	return n
}

// processLive reports whether pid names a process that still runs (not a
// zombie waiting to be reaped by someone else).
func processLive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

func processHasEnv(pid int, kv string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	return slices.ContainsFunc(bytes.Split(b, []byte{0}), func(e []byte) bool { return string(e) == kv })
}

// reapStale stops and removes instances whose owning test process is gone:
// a test binary killed by -timeout or a signal runs no cleanup.
func reapStale(t testing.TB) {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	if err != nil {
		return
	}
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or still being created
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || processLive(owner) {
			continue
		}
		etcDir := filepath.Join(dir, "etc")
		if _, err := os.Stat(filepath.Join(etcDir, "main.cf")); err == nil {
			cmd := exec.Command(filepath.Join(commandDirectory, "postfix"), "-c", etcDir, "stop")
			cmd.Run() // fails harmlessly when it is not running
		}
		killInstance(etcDir, filepath.Join(dir, "spool"))
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Logf("postfixtest: remove stale instance %s: %v", dir, err)
		} else {
			t.Logf("postfixtest: removed stale instance %s (owner pid %d gone)", dir, owner)
		}
	}
}

// Maillog returns the instance's mail log so far ("" before there is one).
func (p *Instance) Maillog() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// WaitLog waits until a line of the mail log matches re and returns the
// submatches of the first such line; after WaitLimit it fails the test with
// the log.
func (p *Instance) WaitLog(re *regexp.Regexp) []string {
	p.t.Helper()
	var m []string
	p.waitFor(fmt.Sprintf("a log line matching %q", re), func(log string) bool {
		for line := range strings.Lines(log) {
			if m = re.FindStringSubmatch(strings.TrimRight(line, "\n")); m != nil {
				return true
			}
		}
		return false
	})
	return m
}

// waitFor polls the mail log until done returns true; after WaitLimit it
// fails the test.
func (p *Instance) waitFor(what string, done func(log string) bool) {
	p.t.Helper()
	deadline := time.Now().Add(WaitLimit)
	for {
		log := p.Maillog()
		if done(log) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("postfixtest: no %s within %v; maillog:\n%s", what, WaitLimit, log)
		}
		time.Sleep(pollInterval)
	}
}

// Mailbox returns the contents of a mailbox file ("" when nothing was
// delivered to it).
func (p *Instance) Mailbox(name string) string {
	p.t.Helper()
	b, err := os.ReadFile(p.MailboxPath(name))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.t.Fatalf("postfixtest: read mailbox %s: %v", name, err)
	}
	return string(b)
}

// MailboxMessages counts the messages in a mailbox file (mbox "From " lines;
// local(8) quotes body lines that begin with "From ").
func (p *Instance) MailboxMessages(name string) int {
	p.t.Helper()
	n := 0
	for line := range strings.Lines(p.Mailbox(name)) {
		if strings.HasPrefix(line, "From ") {
			n++
		}
	}
	return n
}

// WaitQueueEmpty waits until postqueue -p reports an empty queue.
func (p *Instance) WaitQueueEmpty() {
	p.t.Helper()
	deadline := time.Now().Add(WaitLimit)
	for {
		out, err := p.QueueListing()
		if err == nil && strings.Contains(out, "Mail queue is empty") {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("postfixtest: queue not empty within %v: %v\n%s\nmaillog:\n%s", WaitLimit, err, out, p.Maillog())
		}
		time.Sleep(pollInterval)
	}
}

// QueueListing returns the output of postqueue -p.
func (p *Instance) QueueListing() (string, error) {
	return p.command(WaitLimit, "postqueue", "-c", p.etcDir, "-p")
}

// Bounces counts the non-delivery notices Postfix has generated so far.
func (p *Instance) Bounces() int {
	return len(bounceNoticeRE.FindAllStringIndex(p.Maillog(), -1))
}

var bounceNoticeRE = regexp.MustCompile(`(?m): sender non-delivery notification: `)
