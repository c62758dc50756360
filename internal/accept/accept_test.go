package accept

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// script is a listener whose Accept returns its results in order, then
// blocks until closed.
type script struct {
	results []error // nil: a connection
	closed  chan struct{}
	conns   []net.Conn
}

func (l *script) Accept() (net.Conn, error) {
	if len(l.results) == 0 {
		<-l.closed
		return nil, net.ErrClosed
	}
	err := l.results[0]
	l.results = l.results[1:]
	if err != nil {
		return nil, err
	}
	a, b := net.Pipe()
	l.conns = append(l.conns, b)
	return a, nil
}

func (l *script) Close() error   { close(l.closed); return nil }
func (l *script) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25} }

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func emfile() error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
}

// TestRetriesShortagesAndTimeouts: descriptor shortages and timeouts are
// waited out, each shortage counted, the waits doubling from FirstWait.
func TestRetriesShortagesAndTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := &script{results: []error{emfile(), emfile(), timeoutErr{}, nil, emfile(), nil}, closed: make(chan struct{})}
		var logs strings.Builder
		shortages := 0
		l := New(ln, slog.New(slog.NewTextHandler(&logs, nil)), func() { shortages++ })
		start := time.Now()
		if _, err := l.Next(t.Context()); err != nil {
			t.Fatalf("Next after two shortages and a timeout: %v", err)
		}
		// The bubble's clock moves only by the waits: 5 + 10 + 20 ms.
		if got, want := time.Since(start), 35*time.Millisecond; got != want {
			t.Errorf("waited %v before the first connection, want %v (5, 10 and 20 ms)", got, want)
		}
		start = time.Now()
		if _, err := l.Next(t.Context()); err != nil {
			t.Fatalf("Next after one more shortage: %v", err)
		}
		if got := time.Since(start); got != FirstWait {
			t.Errorf("waited %v after a connection, want the wait to start again at %v", got, FirstWait)
		}
		if shortages != 3 {
			t.Errorf("%d shortages counted, want 3 (the timeout is not one)", shortages)
		}
		if n := strings.Count(logs.String(), "out of file descriptors"); n != 3 {
			t.Errorf("%d shortage log lines, want 3:\n%s", n, logs.String())
		}
		if !strings.Contains(logs.String(), "open_files_limit=") {
			t.Errorf("a shortage's log line does not give the open files limit:\n%s", logs.String())
		}
	})
}

// TestWaitsAtMostMaxWait: a long shortage is retried every MaxWait, not
// less often.
func TestWaitsAtMostMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		results := make([]error, 20)
		for i := range results {
			results[i] = emfile()
		}
		ln := &script{results: append(results, nil), closed: make(chan struct{})}
		l := New(ln, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		start := time.Now()
		if _, err := l.Next(t.Context()); err != nil {
			t.Fatal(err)
		}
		// 5 ms doubling to 1 s: 5+10+...+640 ms (8 waits), then 12 of 1 s.
		if got, want := time.Since(start), 1275*time.Millisecond+12*MaxWait; got != want {
			t.Errorf("20 shortages waited %v, want %v", got, want)
		}
	})
}

// TestOtherErrorsEndAccepting: an error that does not pass ends the
// loop, named with the listener.
func TestOtherErrorsEndAccepting(t *testing.T) {
	ln := &script{results: []error{errors.New("bad file descriptor")}, closed: make(chan struct{})}
	var logs strings.Builder
	_, err := New(ln, slog.New(slog.NewTextHandler(&logs, nil)), nil).Next(t.Context())
	if err == nil || !strings.Contains(err.Error(), "accept on 127.0.0.1:25: bad file descriptor") {
		t.Errorf("Next = %v, want the error naming the listener", err)
	}
	if !strings.Contains(logs.String(), "not accepting any more") {
		t.Errorf("the end of accepting was not logged:\n%s", logs.String())
	}
}

// TestContextEndsTheLoop: a done context ends Next, during a wait and
// when the closed listener fails.
func TestContextEndsTheLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		ln := &script{results: []error{emfile()}, closed: make(chan struct{})}
		l := New(ln, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		done := make(chan error)
		go func() {
			_, err := l.Next(ctx)
			done <- err
		}()
		synctest.Wait() // Next waits out the shortage
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Next during a wait = %v, want the context's error", err)
		}

		ctx, cancel = context.WithCancel(t.Context())
		go func() {
			_, err := l.Next(ctx)
			done <- err
		}()
		synctest.Wait() // Next blocks in Accept
		cancel()
		ln.Close()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Next on the listener closed at shutdown = %v, want the context's error", err)
		}
	})
}

func TestIsResourceShortage(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{emfile(), true},
		{os.NewSyscallError("socket", syscall.ENFILE), true},
		{syscall.ECONNREFUSED, false},
		{timeoutErr{}, false},
		{nil, false},
	} {
		if got := IsResourceShortage(c.err); got != c.want {
			t.Errorf("IsResourceShortage(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
