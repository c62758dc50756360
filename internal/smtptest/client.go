package smtptest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// Client is a raw SMTP client for tests: it writes what it is given as it
// is and reads whole replies, so a test asserts the exact bytes.
type Client struct {
	t        testing.TB
	Conn     net.Conn
	r        *bufio.Reader
	received int // octets read
}

// NewClient wraps conn, which the test's end closes.
func NewClient(t testing.TB, conn net.Conn) *Client {
	t.Cleanup(func() { conn.Close() })
	return &Client{t: t, Conn: conn, r: bufio.NewReader(conn)}
}

// Dial connects to addr on network.
func Dial(t testing.TB, network, addr string) *Client {
	t.Helper()
	conn, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	return NewClient(t, conn)
}

// Send writes s as it is.
func (c *Client) Send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.Conn, s); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

// Reply reads one whole reply, every line of it; "" once the connection
// has ended.
func (c *Client) Reply() string {
	c.t.Helper()
	var b strings.Builder
	for {
		line, err := c.r.ReadString('\n')
		b.WriteString(line)
		c.received += len(line)
		if err != nil {
			var ne *net.OpError
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) {
				return b.String()
			}
			c.t.Fatalf("client read: %v (got %q)", err, b.String())
		}
		if len(line) < 4 || line[3] != '-' {
			return b.String()
		}
	}
}

// Received is the number of octets the client has read.
func (c *Client) Received() int { return c.received }

// Cmd sends line with CRLF and returns the reply.
func (c *Client) Cmd(line string) string {
	c.t.Helper()
	c.Send(line + "\r\n")
	return c.Reply()
}

// Expect sends line with CRLF and fails the test unless the reply is want.
func (c *Client) Expect(line, want string) {
	c.t.Helper()
	if got := c.Cmd(line); got != want {
		c.t.Fatalf("%q: got %q, want %q", line, got, want)
	}
}

// ExpectReply fails the test unless the next reply is want.
func (c *Client) ExpectReply(want string) {
	c.t.Helper()
	if got := c.Reply(); got != want {
		c.t.Fatalf("got %q, want %q", got, want)
	}
}

// ExpectEOF fails the test unless the connection has ended, then closes
// the client's end too, as a real client does (a proxy lingers until
// then, and its Serve waits for that).
func (c *Client) ExpectEOF() {
	c.t.Helper()
	if got := c.Reply(); got != "" {
		c.t.Fatalf("expected the connection closed, got %q", got)
	}
	c.Conn.Close()
}

// StartMessage opens a message through a proxy of the default script:
// MAIL FROM:from, then RCPT TO: each of rcpts, each answered OK, then
// DATA, answered Data354.
func (c *Client) StartMessage(from string, rcpts ...string) {
	c.t.Helper()
	c.Expect("MAIL FROM:"+from, OK)
	for _, r := range rcpts {
		c.Expect("RCPT TO:"+r, OK)
	}
	c.Expect("DATA", Data354)
}

// Server is a server under test: smtpproxy.Server.
type Server interface {
	Serve(ctx context.Context, ln net.Listener) error
}

// Serve runs srv on ln until stop, or the end of the test; stop returns
// when Serve has, with its error.
func Serve(t testing.TB, srv Server, ln net.Listener) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-errc
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}
