//go:build linux

package smtpproxy

import (
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"

	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The descriptor-exhaustion test runs the proxy in a child process (this
// test binary again) whose RLIMIT_NOFILE is lowered: the limit is the
// process's, so it must not be the test binary's own.
const (
	emfileChildEnv = "SMTPPROX_EMFILE_CHILD_UPSTREAM"
	// emfileIdle is how many idle sessions fill the child's descriptors.
	emfileIdle = 3
)

// When the proxy runs out of file descriptors opening the upstream
// connection, the client gets "421 4.3.2" naming the local shortage (not
// "421 4.4.1 upstream ... unreachable"), the log says so once, and the
// upstream-error count does not move; once descriptors are free again,
// sessions are served.
func TestDescriptorExhaustion(t *testing.T) {
	if up := os.Getenv(emfileChildEnv); up != "" {
		emfileChild(up)
		return
	}
	u := smtptest.StartUpstream(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDescriptorExhaustion$")
	cmd.Env = append(os.Environ(), emfileChildEnv+"="+u.Addr())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		t.Fatalf("the child did not start: %q, %v", line, err)
	}

	// Every idle session holds two descriptors; the child left room for
	// emfileIdle of them and one descriptor more.
	var idle []*smtptest.Client
	for range emfileIdle {
		c := dialGuarded(t, addr)
		c.ExpectReply(greeting)
		idle = append(idle, c)
	}
	short := "421 4.3.2 proxy out of resources (too many open files), try again later\r\n"
	c := dialGuarded(t, addr)
	if got := c.Reply(); got != short {
		t.Fatalf("with the descriptors used up: got %q, want %q", got, short)
	}
	c.ExpectEOF()

	// Descriptors come free: a session ends, and new ones are served.
	idle[0].Expect("QUIT", "221 2.0.0 Bye\r\n")
	idle[0].ExpectEOF()
	for deadline := time.Now().Add(10 * time.Second); ; { // a hang guard
		c := dialGuarded(t, addr)
		got := c.Reply()
		c.Conn.Close()
		if got == greeting {
			break
		}
		if got != short || time.Now().After(deadline) {
			t.Fatalf("after a session ended: %q, want the greeting", got)
		}
		time.Sleep(time.Millisecond) // the ended session's descriptors close just after its reply
	}
	stdin.Close() // the child shuts down
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, logs.String())
	}

	var shortages, upErrors int
	for l := range strings.Lines(logs.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil {
			continue
		}
		switch {
		case rec["msg"] == "out of file descriptors: cannot connect to the upstream; the client gets 421 4.3.2":
			shortages++
			if rec["open_files_limit"] == nil || !strings.Contains(fmt.Sprint(rec["err"]), "too many open files") {
				t.Errorf("the shortage line lacks the limit or the error: %v", rec)
			}
		case rec["msg"] == "upstream error":
			upErrors++
		}
	}
	if shortages < 1 || upErrors != 0 {
		t.Errorf("%d shortage lines and %d upstream errors logged, want at least one and none:\n%s", shortages, upErrors, logs.String())
	}
	if strings.Contains(logs.String(), "unreachable") {
		t.Errorf("the shortage was reported as the upstream's:\n%s", logs.String())
	}
}

func dialGuarded(t *testing.T, addr string) *smtptest.Client {
	t.Helper()
	c := dialClient(t, addr)
	c.Conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hang guard
	return c
}

// emfileChild serves the proxy with room for emfileIdle sessions and one
// descriptor more, until its standard input closes.
func emfileChild(upstream string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	srv, err := New(Config{Upstream: upstream, Check: smtptest.CheckDeliveredTo,
		Logger: slog.New(slog.NewJSONHandler(os.Stderr, nil))})
	if err != nil {
		fail(err)
	}
	// RLIMIT_NOFILE bounds descriptor numbers, not their count: a new
	// descriptor takes the lowest free number below it. So the limit is
	// set a little above the highest number in use, every free number
	// below it is taken with /dev/null, and then exactly the room wanted
	// is given back.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fail(err)
	}
	highest := 0
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n < 1024 {
			highest = max(highest, n)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	lim.Cur = uint64(highest) + 2*emfileIdle + 16
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	var fillers []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break // EMFILE: every number below the limit is taken
		}
		fillers = append(fillers, f)
	}
	room := 2*emfileIdle + 1
	if len(fillers) < room {
		fail(fmt.Errorf("only %d descriptors free below the limit %d", len(fillers), lim.Cur))
	}
	for _, f := range fillers[len(fillers)-room:] {
		f.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	fmt.Println("listening " + ln.Addr().String())
	if err := srv.Serve(ctx, ln); err != nil {
		fail(err)
	}
	runtime.KeepAlive(fillers) // their finalizers would close them
	os.Exit(0)
}

// An accept that fails for want of descriptors is reported as the local
// shortage it is, and the listener retries.
func TestAcceptShortageRetried(t *testing.T) {
	u := smtptest.StartUpstream(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &failingListener{Listener: inner, fails: 2, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}}
	obs := &recordingObserver{}
	cfg := baseConfig(u)
	cfg.Observer = obs
	p := serveProxy(t, cfg, ln)
	c := dialGuarded(t, p.addr)
	c.ExpectReply(greeting)
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	c.ExpectEOF()
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.shortages) != 2 || obs.shortages[0] != ResourceAccept || obs.shortages[1] != ResourceAccept {
		t.Errorf("shortages observed %v, want two at accept", obs.shortages)
	}
	if n := len(logRecords(t, p.logs.String(), "out of file descriptors: cannot accept a connection; retrying")); n != 2 {
		t.Errorf("%d shortage log lines, want 2:\n%s", n, p.logs.String())
	}
}

// failingListener fails its first Accepts with err.
type failingListener struct {
	net.Listener
	fails int
	err   error
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, l.err
	}
	return l.Listener.Accept()
}
