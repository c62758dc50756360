package smtpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/syncbuf"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// upstream is a scripted SMTP server on 127.0.0.1 standing in for the
// after-filter smtpd. By default it answers like Postfix; hooks change
// that per test. It records every byte it receives.
type upstream struct {
	t  testing.TB
	ln net.Listener

	mu       sync.Mutex
	raw      bytes.Buffer
	commands []string
	messages []string // contents as received (stuffed), without the final dot
	ended    chan struct{}

	greeting  string
	replies   map[string]string
	dataReply string
	// hook, when set, runs before each command is answered; returning
	// true means it handled the command (and maybe closed the connection).
	hook func(c *upConn, cmd string) bool
	// dataHook runs after each content line; returning true stops reading.
	dataHook func(c *upConn, line string) bool
	// discard: do not keep message contents (for the benchmark).
	discard bool
	sized   int64
	// accepted counts the connections the listener accepted.
	accepted atomic.Int32
}

type upConn struct {
	net.Conn
	r *bufio.Reader
	u *upstream
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := newScript(t)
	u.ln = ln
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			go u.serve(&upConn{Conn: conn, r: bufio.NewReader(conn), u: u})
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return u
}

// newScript returns an upstream script without a listener.
func newScript(t testing.TB) *upstream {
	return &upstream{
		t:        t,
		ended:    make(chan struct{}, 100),
		greeting: "220 after.example ESMTP Postfix\r\n",
		replies: map[string]string{
			"EHLO": "250-after.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
			"HELO": "250 after.example\r\n",
			"DATA": "354 End data with <CR><LF>.<CR><LF>\r\n",
			"QUIT": "221 2.0.0 Bye\r\n",
		},
		dataReply: "250 2.0.0 Ok: queued as 4XyZ1\r\n",
	}
}

func (u *upstream) addr() string { return u.ln.Addr().String() }

func (c *upConn) readLine() (string, error) {
	line, err := c.r.ReadString('\n')
	c.u.mu.Lock()
	c.u.raw.WriteString(line)
	c.u.mu.Unlock()
	return line, err
}

func (c *upConn) send(s string) { c.Write([]byte(s)) }

func (u *upstream) serve(c *upConn) {
	defer func() {
		c.Close()
		u.ended <- struct{}{}
	}()
	c.send(u.greeting)
	for {
		line, err := c.readLine()
		if err != nil {
			return
		}
		cmd := strings.TrimRight(line, "\r\n")
		u.mu.Lock()
		u.commands = append(u.commands, cmd)
		u.mu.Unlock()
		if u.hook != nil && u.hook(c, cmd) {
			continue
		}
		verb, _, _ := strings.Cut(cmd, " ")
		verb = strings.ToUpper(verb)
		reply, ok := u.replies[verb]
		if !ok {
			reply = "250 2.0.0 Ok\r\n"
		}
		c.send(reply)
		switch {
		case verb == "QUIT":
			return
		case strings.HasPrefix(reply, "354"):
			if !u.readData(c) {
				return
			}
			c.send(u.dataReply)
		}
	}
}

// readData reads message data the lenient way up to the "." line.
func (u *upstream) readData(c *upConn) bool {
	var msg strings.Builder
	for {
		var line string
		var err error
		if u.discard {
			b, e := c.r.ReadSlice('\n')
			line, err = "", e
			if e == bufio.ErrBufferFull {
				u.sized += int64(len(b))
				continue
			}
			u.sized += int64(len(b))
			if string(b) == ".\r\n" {
				u.mu.Lock()
				u.messages = append(u.messages, "")
				u.mu.Unlock()
				return true
			}
			if err != nil {
				return false
			}
			continue
		}
		line, err = c.readLine()
		if err != nil {
			return false
		}
		if line == ".\r\n" || line == ".\n" {
			u.mu.Lock()
			u.messages = append(u.messages, msg.String())
			u.mu.Unlock()
			return true
		}
		msg.WriteString(line)
		if u.dataHook != nil && u.dataHook(c, line) {
			return false
		}
	}
}

func (u *upstream) rawString() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.raw.String()
}

func (u *upstream) cmds() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.commands...)
}

func (u *upstream) msgs() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.messages...)
}

// waitEnded waits until an upstream connection has ended.
func (u *upstream) waitEnded(t testing.TB) {
	t.Helper()
	select {
	case <-u.ended:
	case <-time.After(10 * time.Second): // a hang guard, not a timing assertion
		t.Fatal("upstream connection did not end")
	}
}

// proxy is a running Server on 127.0.0.1.
type proxy struct {
	addr string
	stop func() error
	logs *syncbuf.Buffer
}

// checkDeliveredTo is a simple injected verdict for runtime tests: a loop
// when a Delivered-To line names an accepted recipient's mailbox.
func checkDeliveredTo(rcpts []string, section []byte) loopcheck.Verdict {
	for _, line := range strings.Split(string(section), "\r\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "Delivered-To") {
			continue
		}
		for _, r := range rcpts {
			mbox := strings.Trim(strings.Fields(r + " x")[0], "<>")
			if strings.EqualFold(strings.TrimSpace(value), mbox) {
				return loopcheck.Verdict{Loop: true, Recipient: mbox}
			}
		}
	}
	return loopcheck.Verdict{}
}

func startProxy(t testing.TB, cfg Config) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveProxy(t, cfg, ln)
}

func serveProxy(t testing.TB, cfg Config, ln net.Listener) *proxy {
	t.Helper()
	return serveTuned(t, cfg, ln, nil)
}

// serveTuned is serveProxy with tune, if not nil, run on the Server
// before it serves: for tests of settings Config does not hold.
func serveTuned(t testing.TB, cfg Config, ln net.Listener, tune func(*Server)) *proxy {
	t.Helper()
	logs := &syncbuf.Buffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			serveErr = <-errc
		})
		return serveErr
	}
	t.Cleanup(func() { stop() })
	return &proxy{addr: ln.Addr().String(), stop: stop, logs: logs}
}

// client is a raw SMTP client that reads whole replies.
type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialClient(t testing.TB, addr string) *client {
	t.Helper()
	network, address, err := SplitAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

// reply reads one whole reply ("" at EOF).
func (c *client) reply() string {
	c.t.Helper()
	var b strings.Builder
	for {
		line, err := c.r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
				return b.String()
			}
			c.t.Fatalf("client read: %v (got %q)", err, b.String())
		}
		if len(line) < 4 || line[3] != '-' {
			return b.String()
		}
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}

// cmd sends a line and returns the reply.
func (c *client) cmd(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.reply()
}

func (c *client) expect(line, want string) {
	c.t.Helper()
	if got := c.cmd(line); got != want {
		c.t.Fatalf("%q: got %q, want %q", line, got, want)
	}
}

func (c *client) expectReply(want string) {
	c.t.Helper()
	if got := c.reply(); got != want {
		c.t.Fatalf("got %q, want %q", got, want)
	}
}

// expectEOF checks that the proxy closed the connection, then closes the
// client's end too, as a real client does (the proxy lingers until then).
func (c *client) expectEOF() {
	c.t.Helper()
	if got := c.reply(); got != "" {
		c.t.Fatalf("expected the connection closed, got %q", got)
	}
	c.conn.Close()
}
