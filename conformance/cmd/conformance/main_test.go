package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// implEnv makes this test binary, started by the runner as the
// implementation under test, serve as one: "proxy" runs package
// smtpproxy, "blind" a relay that copies bytes and judges nothing.
// Its arguments are LISTEN UPSTREAM.
const implEnv = "CONFORMANCE_CMD_TEST_IMPL"

func TestMain(m *testing.M) {
	if mode := os.Getenv(implEnv); mode != "" {
		os.Exit(serveAsImplementation(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func serveAsImplementation(mode string, args []string) int {
	if len(args) != 2 {
		os.Stderr.WriteString("want LISTEN UPSTREAM\n")
		return 2
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 1
	}
	switch mode {
	case "proxy":
		srv, err := smtpproxy.New(smtpproxy.Config{Upstream: args[1]})
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			return 1
		}
		if err := srv.Serve(context.Background(), ln); err != nil {
			return 1
		}
	case "blind":
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			go func() {
				u, err := net.Dial("tcp", args[1])
				if err != nil {
					c.Close()
					return
				}
				var wg sync.WaitGroup
				wg.Add(1)
				go func() { defer wg.Done(); io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, u) // until the upstream closes: then so does the client's side
				c.Close()
				u.Close()
				wg.Wait()
			}()
		}
	}
	return 2
}

// template runs this test binary as the implementation.
func template(t *testing.T, mode string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(implEnv, mode)
	return self + " {listen} {upstream}"
}

func runMain(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code := run(context.Background(), args, &out, &out)
	return code, out.String()
}

func TestPassingImplementation(t *testing.T) {
	code, out := runMain(t, "-impl", template(t, "proxy"), "-run", "^(relay-basic|loop-exact)$")
	if code != exitPass || !strings.Contains(out, "2 cases: 2 pass, 0 fail, 0 skipped") {
		t.Fatalf("exit %d, want %d and two passes; output:\n%s", code, exitPass, out)
	}
}

// TestFailingImplementation shows the runner can fail: a relay that lets
// a loop through fails the loop case, and the exit status says so.
func TestFailingImplementation(t *testing.T) {
	code, out := runMain(t, "-impl", template(t, "blind"), "-run", "^(relay-basic|loop-exact)$")
	if code != exitFail {
		t.Errorf("exit %d, want %d; output:\n%s", code, exitFail, out)
	}
	for _, want := range []string{"--- FAIL: loop-exact", "2 cases: 1 pass, 1 fail, 0 skipped"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestExtractedSuiteRuns writes the compiled-in suite out, as a project
// vendoring it would, and runs a case from the copy.
func TestExtractedSuiteRuns(t *testing.T) {
	dir := t.TempDir()
	if code, out := runMain(t, "-extract", dir); code != exitPass {
		t.Fatalf("-extract: exit %d: %s", code, out)
	}
	for _, f := range []string{"README.md", "testdata/FORMAT", "testdata/loop-exact.txt"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("extracted suite: %v", err)
		}
	}
	cases := filepath.Join(dir, "testdata", "*.txt")
	code, out := runMain(t, "-impl", template(t, "proxy"), "-cases", cases, "-run", "^loop-exact$")
	if code != exitPass || !strings.Contains(out, "1 cases: 1 pass") {
		t.Fatalf("running the extracted copy: exit %d; output:\n%s", code, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "testdata", "FORMAT"), []byte("conformance-format: 99\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := runMain(t, "-impl", template(t, "proxy"), "-cases", cases); code != exitFail || !strings.Contains(out, "format 99") {
		t.Errorf("cases of format 99: exit %d, want %d and the format named; output:\n%s", code, exitFail, out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "-impl is required"},
		{[]string{"-impl", "prog {listen}"}, "must contain {listen} and {upstream}"},
		{[]string{"-impl", "prog {listen} {upstream}", "-run", "("}, "-run:"},
		{[]string{"-impl", "prog {listen} {upstream}", "-run", "^no-such-case$"}, "no case matches"},
		{[]string{"-impl", "prog {listen} {upstream}", "extra"}, "unexpected arguments"},
		{[]string{"-impl", "prog {listen} {upstream}", "-parallel", "0"}, "-parallel must be at least 1"},
	} {
		code, out := runMain(t, tc.args...)
		if code != exitUsage || !strings.Contains(out, tc.want) {
			t.Errorf("%q: exit %d, output %q; want %d and %q", tc.args, code, out, exitUsage, tc.want)
		}
	}
}
