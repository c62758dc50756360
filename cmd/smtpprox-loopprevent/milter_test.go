package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/syncbuf"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
)

func TestParseMilterArgs(t *testing.T) {
	o, err := parseMilterArgs([]string{"-dry-run", "127.0.0.1:10027", "-loop-action=drop-recipient",
		"-exempt-client", "192.0.2.0/24", "-exempt-client=2001:db8::/32,198.51.100.7", "-exempt-sasl",
		"-allow-client", "10.0.0.0/8", "-max-sessions=7", "-drain-timeout=3s", "-idle-timeout=1m",
		"-write-timeout=2s", "-max-header-bytes=8192", "-log-format=json", "-log-level=debug"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	switch {
	case o.listen != "127.0.0.1:10027":
		t.Errorf("listen %q", o.listen)
	case !c.Policy.DryRun || c.Policy.LoopAction != milter.DropRecipient || !c.Policy.ExemptSASL:
		t.Errorf("policy %+v", c.Policy)
	case c.Policy.ExemptClients.String() != "192.0.2.0/24,2001:db8::/32,198.51.100.7/32":
		t.Errorf("exempt clients %q", c.Policy.ExemptClients)
	case !o.allowGiven || c.AllowClients.String() != "10.0.0.0/8":
		t.Errorf("allow clients %q (given %v)", c.AllowClients, o.allowGiven)
	case c.MaxSessions != 7 || c.DrainTimeout != 3*time.Second || c.IdleTimeout != time.Minute ||
		c.WriteTimeout != 2*time.Second || c.MaxHeaderBytes != 8192 || o.logFormat != "json" || o.logLevel.String() != "DEBUG":
		t.Errorf("limits %+v, log %s %v", c, o.logFormat, o.logLevel)
	}

	d, err := parseMilterArgs([]string{"unix:/run/milter.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d.allowGiven || d.cfg.AllowClients != nil || d.cfg.Policy.ExemptClients != nil || d.cfg.Policy.LoopAction != milter.Reject ||
		d.cfg.MaxSessions != milter.DefaultMaxSessions || d.cfg.DrainTimeout != milter.DefaultDrainTimeout {
		t.Errorf("defaults: %+v", d)
	}
}

func TestParseMilterArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "want one LISTEN address; got none"},
		{[]string{"127.0.0.1:1", "127.0.0.1:2"}, "want one LISTEN address; got 2"},
		{[]string{"localhost"}, "want host:port"},
		{[]string{"-loop-action=drop", "127.0.0.1:1"}, "-loop-action"},
		{[]string{"-allow-client=10.0.0.1/8", "127.0.0.1:1"}, "host bits set"},
		{[]string{"-exempt-client=nonsense", "127.0.0.1:1"}, "not an IP address"},
		{[]string{"-max-sessions=0", "127.0.0.1:1"}, "-max-sessions must be positive"},
		{[]string{"-drain-timeout=0s", "127.0.0.1:1"}, "-drain-timeout must be positive"},
		{[]string{"-idle-timeout=-1s", "127.0.0.1:1"}, "-idle-timeout must be positive"},
		{[]string{"-max-header-bytes=100", "127.0.0.1:1"}, "-max-header-bytes must be at least 4096"},
		{[]string{"-log-format=xml", "127.0.0.1:1"}, "-log-format"},
		{[]string{"-log-level=loud", "127.0.0.1:1"}, "-log-level"},
		{[]string{"-metrics-listen=9125", "127.0.0.1:1"}, "-metrics-listen"},
		{[]string{"-postfix-config=/etc/postfix", "-expansion-wait=2m", "127.0.0.1:1"}, "-expansion-wait must be at most 1m0s"},
	} {
		_, err := parseMilterArgs(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseMilterArgs(%q): %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}

func TestMilterHelpDocumentsEveryFlag(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"milter", "-h"}, nil, io.Discard, &stderr); code != exitOK {
		t.Fatalf("milter -h exit %d", code)
	}
	help := stderr.String()
	var o milterOptions
	fs, _ := milterFlags(&o)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if !strings.Contains(help, "-"+f.Name) {
			t.Errorf("milter -h lacks -%s", f.Name)
		}
	})
	for _, want := range []string{"milter [flags] LISTEN", "smtpd_milters", "(default 1000)", "(default 30m0s)", `(default "reject")`} {
		if !strings.Contains(help, want) {
			t.Errorf("milter -h lacks %q", want)
		}
	}
	if n == 0 {
		t.Errorf("no flags visited")
	}
}

// milterClient opens a go-milter session (as Postfix) on network/addr.
func milterClient(t *testing.T, network, addr string) (*gomilter.ClientSession, *gomilter.MacroBag) {
	t.Helper()
	macros := gomilter.NewMacroBag()
	c := gomilter.NewClient(network, addr, gomilter.WithReadTimeout(hangGuard), gomilter.WithWriteTimeout(hangGuard))
	s, err := c.Session(macros)
	if err != nil {
		t.Fatalf("milter session: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Conn("client.example", gomilter.FamilyInet, 25, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Helo("client.example"); err != nil {
		t.Fatal(err)
	}
	return s, macros
}

// milterMessage sends one message with a Delivered-To: header and returns
// the answer.
func milterMessage(t *testing.T, s *gomilter.ClientSession, rcpt, deliveredTo string) *gomilter.Action {
	t.Helper()
	if _, err := s.Mail("sender@example.org", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rcpt(rcpt, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DataStart(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HeaderField("Delivered-To", " "+deliveredTo, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BodyChunk([]byte("body\r\n")); err != nil {
		t.Fatal(err)
	}
	_, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	return act
}

func TestRunMilterEndToEnd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "milter.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"milter", "-log-format=json", "-exempt-client=192.0.2.0/24", "unix:" + sock}, nil, io.Discard, &stderr)
	}()
	waitForSocket(t, sock)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o660 {
		t.Errorf("socket mode %v, want the default -socket-mode 0660", got)
	}
	s, _ := milterClient(t, "unix", sock)
	// The client address 192.0.2.1 is exempt.
	if act := milterMessage(t, s, "u@example.net", "u@example.net"); act.Type != gomilter.ActionAccept {
		t.Errorf("exempt client: %v, want accept", act)
	}
	s.Close()
	s2, _ := milterClient(t, "unix", sock)
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d after shutdown; stderr:\n%s", code, stderr.String())
	}
	logs := stderr.String()
	for _, want := range []string{`"msg":"listening"`, `"verdict":"exempt"`, `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	if _, err := s2.Mail("a@example.org", ""); err == nil {
		if _, _, err := s2.End(); err == nil {
			t.Errorf("a session answered after the milter stopped")
		}
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket is left behind: %v", err)
	}
}

func TestRunMilterRefusesReachableListen(t *testing.T) {
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"milter", "0.0.0.0:0"}, nil, io.Discard, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "(every interface) without -allow-client") ||
		!strings.Contains(stderr.String(), "-allow-client") {
		t.Fatalf("exit %d, stderr %q; want a refusal naming -allow-client", code, stderr.String())
	}
	// With the peers named, it starts.
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"milter", "-log-format=json", "-allow-client=192.0.2.0/24", "0.0.0.0:0"}, nil, io.Discard, &logs)
	}()
	deadline := time.Now().Add(hangGuard)
	for !strings.Contains(logs.String(), `"msg":"listening"`) {
		if time.Now().After(deadline) {
			t.Fatalf("did not start: %s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d; stderr:\n%s", code, logs.String())
	}
}

// TestMilterSignals runs the real command: SIGHUP re-applies the settings
// and leaves it running; SIGTERM stops it with exit status 0.
func TestMilterSignals(t *testing.T) {
	bin := buildCommand(t)
	p := startCommand(t, "the milter", bin, "milter", "-log-format=json", "-metrics-listen=127.0.0.1:0", "127.0.0.1:0")
	s, _ := milterClient(t, "tcp", p.listen)
	if act := milterMessage(t, s, "u@example.net", "U@Example.Net"); act.Type != gomilter.ActionRejectWithCode ||
		act.SMTPReply != "554 5.4.6 mail forwarding loop for u@example.net" {
		t.Errorf("loop: %v", act)
	}
	p.signal(t, syscall.SIGHUP)
	deadline := time.Now().Add(hangGuard)
	for !strings.Contains(p.logs.String(), "SIGHUP: settings re-applied") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged; stderr:\n%s", p.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Still serving, on the same session and a new one.
	if act := milterMessage(t, s, "u@example.net", "other@example.net"); act.Type != gomilter.ActionAccept {
		t.Errorf("after SIGHUP: %v, want accept", act)
	}
	s2, _ := milterClient(t, "tcp", p.listen)
	if act := milterMessage(t, s2, "u@example.net", "u@example.net"); act.Type != gomilter.ActionRejectWithCode {
		t.Errorf("new session after SIGHUP: %v, want the loop reply", act)
	}
	if code, _ := p.healthz(t); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	p.signal(t, syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v; stderr:\n%s", err, p.logs)
	}
	if !strings.Contains(p.logs.String(), `"msg":"stopped"`) {
		t.Errorf("no stop logged:\n%s", p.logs)
	}
	if _, err := net.DialTimeout("tcp", p.listen, time.Second); err == nil {
		t.Errorf("still listening after the exit")
	}
}

const (
	milterUnitPath    = "../../contrib/systemd/smtpprox-loopprevent-milter.service"
	milterDefaultPath = "../../contrib/systemd/smtpprox-loopprevent-milter.default"
)

// TestMilterSystemdUnit: the milter's unit and environment file start
// this command as it is, leave room for the drain and keep the proxy
// unit's hardening.
func TestMilterSystemdUnit(t *testing.T) {
	unit := readAssignments(t, milterUnitPath)
	env := make(map[string]string)
	for _, e := range unit["Environment"] {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	for k, vs := range readAssignments(t, milterDefaultPath) {
		env[k] = vs[len(vs)-1]
	}
	const execStart = "/usr/local/bin/smtpprox-loopprevent milter $SMTPPROX_MILTER_FLAGS ${SMTPPROX_MILTER_LISTEN}"
	if got := unit["ExecStart"]; len(got) != 1 || got[0] != execStart {
		t.Fatalf("ExecStart %q", got)
	}
	args := append(strings.Fields(env["SMTPPROX_MILTER_FLAGS"]), env["SMTPPROX_MILTER_LISTEN"])
	o, err := parseMilterArgs(args, io.Discard)
	if err != nil {
		t.Fatalf("the unit's command line %q: %v", args, err)
	}
	if !o.cfg.Policy.DryRun || o.metricsListen == "" {
		t.Errorf("the shipped environment file should roll out with -dry-run and metrics on: %q", args)
	}
	if o.listen != "127.0.0.1:10027" {
		t.Errorf("listen %q; docs/milter.md names 127.0.0.1:10027", o.listen)
	}
	stop, err := time.ParseDuration(unit["TimeoutStopSec"][0])
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if stop <= o.cfg.DrainTimeout {
		t.Errorf("TimeoutStopSec %v leaves no room for the drain time %v", stop, o.cfg.DrainTimeout)
	}
	if got := unit["ExecReload"]; len(got) != 1 || got[0] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload %q, want SIGHUP", got)
	}
	// The same hardening as the proxy's unit.
	proxy := readAssignments(t, unitPath)
	for _, key := range []string{
		"KillSignal", "KillMode", "Restart", "DynamicUser", "NoNewPrivileges", "ProtectSystem", "ProtectHome",
		"PrivateTmp", "PrivateDevices", "PrivateUsers", "CapabilityBoundingSet", "RestrictAddressFamilies",
		"SystemCallFilter", "MemoryDenyWriteExecute", "UMask", "MemoryMax", "Before",
	} {
		if got, want := strings.Join(unit[key], " | "), strings.Join(proxy[key], " | "); got != want {
			t.Errorf("%s=%q, the proxy unit has %q", key, got, want)
		}
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the unit file's syntax is not verified by systemd")
		return
	}
	text, err := os.ReadFile(milterUnitPath)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "smtpprox-loopprevent-milter.service")
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(text), "/usr/local/bin/smtpprox-loopprevent", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput(); err != nil || len(out) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
