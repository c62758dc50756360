package conformance

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// PostfixImplEnv names an environment variable that points the real-Postfix
// end-to-end tests at another implementation: a command template in which
// {listen} and {upstream} are replaced by host:port, split on spaces (no
// shell quoting), e.g.
//
//	SMTPPROX_E2E_IMPL='perl /path/to/smtpprox-loopprevent {listen} {upstream}'
//
// Unset, the tests run our proxy (package smtpproxy) in-process.
const PostfixImplEnv = "SMTPPROX_E2E_IMPL"

// pfImplStartLimit bounds the wait for an external implementation to listen.
const pfImplStartLimit = 30 * time.Second

// pfStartProxy serves the implementation under test on the instance's filter
// address, relaying to its after-filter smtpd, until the test ends.
func pfStartProxy(t *testing.T, p *postfixtest.Instance) {
	t.Helper()
	if tmpl := os.Getenv(PostfixImplEnv); tmpl != "" {
		pfStartExternalProxy(t, p, tmpl)
		return
	}
	pfStartInProcessProxy(t, p)
}

// pfDrainTimeout bounds the proxy's graceful shutdown at the end of a test;
// the front smtpd holds no session open between messages, so none waits.
const pfDrainTimeout = 5 * time.Second

// pfStartInProcessProxy runs our proxy (smtpproxy.Server, with the verdict
// of loopcheck.Check) on the reserved filter listener. Its log is shown when
// the test fails.
func pfStartInProcessProxy(t *testing.T, p *postfixtest.Instance) {
	t.Helper()
	ln := p.FilterListener()
	if ln == nil {
		t.Fatalf("no filter listener for the in-process proxy")
	}
	logs := &pfLockedBuffer{}
	srv, err := smtpproxy.New(smtpproxy.Config{
		Upstream:     p.AfterFilterAddr(),
		DrainTimeout: pfDrainTimeout,
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("smtpproxy.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("proxy Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
}

// pfLockedBuffer collects log output written from the proxy's goroutines.
type pfLockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *pfLockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *pfLockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// pfStartExternalProxy runs the command template on the filter address.
func pfStartExternalProxy(t *testing.T, p *postfixtest.Instance, tmpl string) {
	t.Helper()
	ln := p.FilterListener()
	if ln == nil {
		t.Fatalf("no filter listener to hand to %s", PostfixImplEnv)
	}
	listen := ln.Addr().String()
	ln.Close() // the command binds it itself
	var args []string
	for _, f := range strings.Fields(tmpl) {
		f = strings.ReplaceAll(f, "{listen}", listen)
		f = strings.ReplaceAll(f, "{upstream}", p.AfterFilterAddr())
		args = append(args, f)
	}
	if len(args) == 0 {
		t.Fatalf("%s is blank", PostfixImplEnv)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so its workers go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", args, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if out.Len() > 0 {
			t.Logf("output of %q:\n%s", args, out.String())
		}
	})
	deadline := time.Now().Add(pfImplStartLimit)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("%q exited before listening on %s: %v\n%s", args, listen, err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q does not listen on %s after %v", args, listen, pfImplStartLimit)
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Logf("implementation under test: %q", args)
}
