package conformance

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFlagMap(t *testing.T) {
	m, err := ParseFlagMap([]byte(`
# comment
dry-run=true        --dry-run
bare-lf=normalize
bare-lf             --bare={value} --strict
command-timeout     --idle {value}
`))
	if err != nil {
		t.Fatal(err)
	}
	c := &Case{Config: []Option{{OptDryRun, "true"}, {OptBareLF, "normalize"}, {OptCommandTimeout, "1s"}}}
	args, err := m.Args(c)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"--dry-run", "--idle", "1s"}, args); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}
	c.Config[1].Value = "reject"
	if args, _ := m.Args(c); !cmp.Equal(args, []string{"--dry-run", "--bare=reject", "--strict", "--idle", "1s"}) {
		t.Errorf("Args with bare-lf=reject = %q", args)
	}
	c.Config = append(c.Config, Option{OptMaxSessions, "1"}, Option{OptDryRun, "false"})
	_, err = m.Args(c)
	var needs *NeedsError
	if !errors.As(err, &needs) || !cmp.Equal(needs.Needs, []string{"max-sessions=1", "dry-run=false"}) {
		t.Errorf("Args with unmapped keys: %v", err)
	}

	for _, bad := range []struct{ text, want string }{
		{"colour --red\n", `unknown configuration key "colour"`},
		{"dry-run=maybe --x\n", "true or false"},
		{"dry-run -a\ndry-run -b\n", "listed twice"},
	} {
		if _, err := ParseFlagMap([]byte(bad.text)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseFlagMap(%q) = %v, want an error containing %q", bad.text, err, bad.want)
		}
	}
	empty, err := ParseFlagMap(nil)
	if err != nil || len(empty) != 0 {
		t.Errorf("ParseFlagMap(nil) = %v, %v", empty, err)
	}
}

func TestDefaultFlagMapCoversEveryKey(t *testing.T) {
	m := DefaultFlagMap()
	for _, k := range OptionKeys() {
		if len(m[k]) == 0 {
			t.Errorf("DefaultFlagMap has no flag for %s", k)
		}
	}
}

func TestParseCommand(t *testing.T) {
	for _, bad := range []string{"", "   ", "prog {listen}", "prog {upstream}"} {
		if _, err := ParseCommand(bad, DefaultFlagMap()); err == nil {
			t.Errorf("ParseCommand(%q) accepted", bad)
		}
	}
	c, err := ParseCommand("prog  {flags} --to={upstream} {listen}", nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"prog", "{flags}", "--to={upstream}", "{listen}"}, c.Template); diff != "" {
		t.Errorf("Template (-want +got):\n%s", diff)
	}
}

// helperEnv makes the test binary act as a blind relay program, so that
// the command-template machinery (process start, listening detection,
// process-group stop) is tested without building anything.
const helperEnv = "CONFORMANCE_TEST_HELPER_RELAY"

// TestHelperRelayProcess is not a test: run by TestCommandImplementation
// as a child process with helperEnv set, it is the helper program.
func TestHelperRelayProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("only run as a child process of TestCommandImplementation")
	}
	os.Exit(helperRelay(os.Args[len(os.Args)-2], os.Args[len(os.Args)-1]))
}

// helperRelay is a minimal program: listen, relay bytes both ways to
// upstream, exit on SIGTERM.
func helperRelay(listen, upstream string) int {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		os.Exit(0)
	}()
	for {
		client, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer client.Close()
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(up, client); done <- struct{}{} }()
			go func() { io.Copy(client, up); done <- struct{}{} }()
			<-done
		}()
	}
}

func TestCommandImplementation(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(helperEnv, "1")
	cmd, err := ParseCommand(self+" -test.run=^TestHelperRelayProcess$ {flags} -- {listen} {upstream}", FlagMap{OptDryRun: {"-test.v"}})
	if err != nil {
		t.Fatal(err)
	}
	basic, err := LoadCases("testdata/relay-basic.txt")
	if err != nil {
		t.Fatal(err)
	}
	if r := RunCase(context.Background(), basic[0], cmd, sanityLimit); r.Status != Pass {
		t.Errorf("relay-basic through the helper program: %s: %s\n%s", r.Status, r.Reason, r.Detail)
	}
	loop, err := LoadCases("testdata/loop-exact.txt")
	if err != nil {
		t.Fatal(err)
	}
	if r := RunCase(context.Background(), loop[0], cmd, sanityLimit); r.Status != Fail {
		t.Errorf("loop-exact through a blind relay program: %s, want a failure", r.Status)
	}
	sessions, err := LoadCases("testdata/limit-max-sessions.txt")
	if err != nil {
		t.Fatal(err)
	}
	r := RunCase(context.Background(), sessions[0], cmd, sanityLimit)
	if r.Status != Skip || r.Reason != "needs max-sessions=1" {
		t.Errorf("a case the program cannot be configured for: %s %q, want skipped, needs max-sessions=1", r.Status, r.Reason)
	}
}

func TestCommandThatNeverListens(t *testing.T) {
	cmd, err := ParseCommand("/bin/sh -c exit {listen} {upstream}", nil)
	if err != nil {
		t.Fatal(err)
	}
	basic, err := LoadCases("testdata/relay-basic.txt")
	if err != nil {
		t.Fatal(err)
	}
	r := RunCase(context.Background(), basic[0], cmd, sanityLimit)
	if r.Status != Fail || !strings.Contains(r.Reason, "did not start listening") {
		t.Errorf("a program that exits at once: %s %q", r.Status, r.Reason)
	}
}

func TestFormatTable(t *testing.T) {
	a := &Case{Name: "a-case", Rules: []string{"SPEC 1", "RFC 2"}}
	b := &Case{Name: "b", Rules: []string{"SPEC 3"}}
	results := []Result{
		{Case: b, Status: Skip, Reason: "needs x=1"},
		{Case: a, Status: Fail, Reason: strings.Repeat("d", 200)},
	}
	SortResults(results)
	got := FormatTable("impl", results)
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("table:\n%s", got)
	}
	if !strings.HasPrefix(lines[2], "a-case  SPEC 1; RFC 2  FAIL     ddd") || !strings.HasSuffix(lines[2], "d…") {
		t.Errorf("row %q", lines[2])
	}
	if !strings.HasPrefix(lines[3], "b       SPEC 3         skipped  needs x=1") {
		t.Errorf("row %q", lines[3])
	}
	if lines[4] != "2 cases: 0 pass, 1 fail, 1 skipped" {
		t.Errorf("count line %q", lines[4])
	}
}
