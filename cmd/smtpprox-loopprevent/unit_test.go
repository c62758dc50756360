package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// The systemd unit and its environment file in contrib/systemd must start
// this command as it is: the flags they pass must parse, the stop timeout
// must leave room for the drain, and the hardening must stay on.

const (
	unitPath    = "../../contrib/systemd/smtpprox-loopprevent.service"
	defaultPath = "../../contrib/systemd/smtpprox-loopprevent.default"
)

// readAssignments reads KEY=VALUE lines (systemd unit or environment
// file), skipping comments and section headers and removing the double
// quotes around a value; repeated keys keep every value in order.
func readAssignments(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kv := make(map[string][]string)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not KEY=VALUE", path, line)
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1] // systemd strips the quotes
		}
		kv[k] = append(kv[k], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kv
}

func TestSystemdUnit(t *testing.T) {
	unit := readAssignments(t, unitPath)
	env := make(map[string]string)
	for _, e := range unit["Environment"] {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	for k, vs := range readAssignments(t, defaultPath) {
		env[k] = vs[len(vs)-1]
	}
	// The command line systemd builds: $SMTPPROX_FLAGS splits at white
	// space, ${SMTPPROX_LISTEN} and ${SMTPPROX_UPSTREAM} are one word each.
	if got := unit["ExecStart"]; len(got) != 1 || got[0] != "/usr/local/bin/smtpprox-loopprevent $SMTPPROX_FLAGS ${SMTPPROX_LISTEN} ${SMTPPROX_UPSTREAM}" {
		t.Fatalf("ExecStart %q", got)
	}
	args := append(strings.Fields(env["SMTPPROX_FLAGS"]), env["SMTPPROX_LISTEN"], env["SMTPPROX_UPSTREAM"])
	o, err := parseArgs(args, io.Discard)
	if err != nil {
		t.Fatalf("the unit's command line %q: %v", args, err)
	}
	if !o.cfg.DryRun || o.metricsListen == "" {
		t.Errorf("the shipped environment file should roll out with -dry-run and metrics on: %q", args)
	}
	if o.exp.configDir != "/etc/postfix" {
		t.Errorf("the shipped environment file should judge recipients by Postfix's rewriting (-postfix-config=/etc/postfix): %q", args)
	}

	stop, err := time.ParseDuration(unit["TimeoutStopSec"][0])
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if stop <= o.cfg.DrainTimeout || stop <= smtpproxy.DefaultDrainTimeout {
		t.Errorf("TimeoutStopSec %v leaves no room for the drain time %v", stop, o.cfg.DrainTimeout)
	}
	for key, want := range map[string]string{
		"KillSignal": "SIGTERM", "Restart": "on-failure", "DynamicUser": "yes", "NoNewPrivileges": "yes",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
		"CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	} {
		if got := unit[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s=%q, want %q", key, got, want)
		}
	}
	if got := unit["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" {
		t.Errorf("SystemCallFilter=%q, want @system-service first", got)
	}
	if len(unit["MemoryMax"]) != 1 {
		t.Errorf("MemoryMax=%q, want one limit", unit["MemoryMax"])
	}

	// systemd's own check, where systemd is installed; the ExecStart
	// binary only has to exist, so this test's binary stands in for it.
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the unit file's syntax is not verified by systemd")
		return
	}
	text, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "smtpprox-loopprevent.service")
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(text), "/usr/local/bin/smtpprox-loopprevent", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput(); err != nil || len(out) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
