package postfixtest

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// skipped records the real-Postfix tests of this test binary that were
// skipped, and why, for Main to report once at the end. It is process
// state because a test binary is one process and TestMain sees no test's
// outcome; every Instance method still reaches its own test only.
var skipped struct {
	mu  sync.Mutex
	n   int
	why string
}

// skipUnavailable ends a test that cannot have Postfix: a failure when
// RequireEnv=1 (as in CI), else a skip that Main will report.
func skipUnavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1 but %s", RequireEnv, why)
	}
	skipped.mu.Lock()
	skipped.n++
	skipped.why = why
	skipped.mu.Unlock()
	t.Skipf("skipping real-Postfix test: %s (set %s=1 to make this a failure)", why, RequireEnv)
}

// Main runs a test binary's tests and returns its exit code. Every package
// whose tests use this harness calls it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(postfixtest.Main(m)) }
//
// When real-Postfix tests were skipped (Postfix missing, not root), it
// prints one line saying how many, in which package and why, also when
// `go test ./...` runs without -v. The go command discards the output of
// a passing package unless -v is given, so in that case the line goes to
// the go command's own standard output or error, when that is a terminal
// or a pipe (Linux; elsewhere, and for a redirect to a file, the line is
// only in the test's own output). A cached result prints nothing, as the
// tests do not run: `go test -count=1` runs them again.
func Main(m *testing.M) int {
	code := m.Run()
	skipped.mu.Lock()
	n, why := skipped.n, skipped.why
	skipped.mu.Unlock()
	if n == 0 {
		return code
	}
	line := skipNote(packageDir(), n, why)
	if code == 0 && !testing.Verbose() {
		if w := goCommandOutput(); w != nil {
			fmt.Fprint(w, line)
			w.Close()
			return code
		}
	}
	fmt.Fprint(os.Stdout, line)
	return code
}

// skipNote is Main's line.
func skipNote(pkg string, n int, why string) string {
	tests := "tests"
	if n == 1 {
		tests = "test"
	}
	return fmt.Sprintf("%s: skipped %d real-Postfix %s: %s (set %s=1 to make this a failure)\n", pkg, n, tests, why, RequireEnv)
}

// packageDir names the package under test as the go command runs it: its
// directory (the test binary's working directory) relative to the module
// root, "./conformance"; the directory's name when no go.mod is found.
func packageDir() string {
	wd, err := os.Getwd()
	if err != nil {
		return "this package"
	}
	for dir := wd; ; {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if rel, err := filepath.Rel(dir, wd); err == nil {
				return "./" + filepath.ToSlash(rel)
			}
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return filepath.Base(wd)
}

// goCommandOutput opens the standard output (else standard error) of the go
// command that started this test binary, when the parent process is the go
// command and that stream is a terminal or a pipe; nil otherwise. A file
// is left alone: the go command writes it at its own offset and would
// overwrite the line.
func goCommandOutput() io.WriteCloser {
	ppid := os.Getppid()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	if err != nil || strings.TrimSuffix(filepath.Base(exe), " (deleted)") != "go" {
		return nil
	}
	for _, fd := range []int{1, 2} {
		f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", ppid, fd), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			continue
		}
		if fi, err := f.Stat(); err == nil && fi.Mode()&(os.ModeNamedPipe|os.ModeCharDevice) != 0 {
			return f
		}
		f.Close()
	}
	return nil
}
