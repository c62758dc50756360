// Package leakcheck fails a test binary whose goroutines outlive its
// tests. A package's TestMain calls Main instead of m.Run:
//
//	func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m, "github.com/.../smtpproxy.")) }
//
// After the tests it looks for goroutines running code of the named
// packages (a stack frame whose function name starts with one of the
// prefixes). Goroutines ending on their own (a linger, a pooled worker
// finishing its job) are given Settle to do so; any left then are
// printed with their stacks, and the binary fails. Hand-written rather
// than go.uber.org/goleak: the check is a few lines over runtime.Stack,
// and it needs to look only for this project's own goroutines.
package leakcheck

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Settle bounds the wait for goroutines that end on their own after a
// test: above the runtime's longest linger (2 s) with room for a slow
// machine. It delays only a failing binary.
const Settle = 10 * time.Second

// pollInterval is how often the goroutines are looked at again.
const pollInterval = 10 * time.Millisecond

// Main runs the tests, then fails (exit status 1) if goroutines of the
// packages named by prefix are still running; it returns the exit status.
func Main(m *testing.M, prefix ...string) int {
	code := m.Run()
	if code != 0 {
		return code
	}
	if leaked := Wait(Settle, prefix...); len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "leakcheck: %d goroutine(s) outlived the tests:\n\n%s\n", len(leaked), strings.Join(leaked, "\n\n"))
		return 1
	}
	return 0
}

// Wait waits up to limit for every goroutine running code of the
// prefixes to end, and returns the stacks of those left.
func Wait(limit time.Duration, prefix ...string) []string {
	deadline := time.Now().Add(limit)
	for {
		leaked := Find(prefix...)
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(pollInterval)
	}
}

// Find returns the stacks of the goroutines, other than the caller's,
// with a frame whose function name starts with one of the prefixes.
func Find(prefix ...string) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var leaked []string
	for i, g := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 {
			continue // the caller's own goroutine comes first
		}
		if ours(string(g), prefix) {
			leaked = append(leaked, string(g))
		}
	}
	return leaked
}

// ours reports whether a goroutine's stack has a frame of the prefixes:
// function lines are the lines not indented by a tab.
func ours(stack string, prefix []string) bool {
	for line := range strings.Lines(stack) {
		if strings.HasPrefix(line, "\t") || strings.HasPrefix(line, "goroutine ") {
			continue
		}
		for _, p := range prefix {
			if strings.HasPrefix(line, p) {
				return true
			}
		}
	}
	return false
}
