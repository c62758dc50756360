package smtptest

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Upstream is a scripted SMTP server: by default it answers like
// Postfix's smtpd (Greeting, EHLOReply, OK, Data354, Queued, Bye), reads
// message data the lenient way (a line ends at LF) up to the "." line, and
// records every byte, command line and message it receives. The script's
// fields may be changed before the connection they should affect.
type Upstream struct {
	Greeting  string
	Replies   map[string]string // by upper-case verb; OK for any other
	DataReply string            // the end-of-data reply
	// Hook, when set, runs before each command is answered; returning
	// true means it answered it (or closed the connection).
	Hook func(c *Conn, cmd string) bool
	// DataHook runs after each content line; returning true stops the
	// connection.
	DataHook func(c *Conn, line string) bool
	// Discard keeps no message content (for benchmarks): each message is
	// recorded as "", and its octets counted (Size).
	Discard bool

	t     testing.TB
	ln    net.Listener
	wg    sync.WaitGroup // connections being served
	ended chan struct{}

	mu       sync.Mutex
	conns    []net.Conn // every connection served, in order
	closed   bool
	raw      bytes.Buffer
	commands []string
	messages []string
	size     int64
}

// NewUpstream returns the default script with no listener: serve
// connections with ServeConn.
func NewUpstream(t testing.TB) *Upstream {
	u := &Upstream{
		t:        t,
		ended:    make(chan struct{}, 1024),
		Greeting: Greeting,
		Replies: map[string]string{
			"EHLO": EHLOReply,
			"HELO": "250 after.example\r\n",
			"DATA": Data354,
			"QUIT": Bye,
		},
		DataReply: Queued,
	}
	t.Cleanup(u.stop)
	return u
}

// StartUpstream returns the default script serving on a loopback TCP
// listener (Addr).
func StartUpstream(t testing.TB) *Upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := NewUpstream(t)
	u.ServeListener(ln)
	return u
}

// ServeListener serves every connection ln accepts, until the test ends.
func (u *Upstream) ServeListener(ln net.Listener) {
	u.mu.Lock()
	if u.ln == nil {
		u.ln = ln
	}
	u.mu.Unlock()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			u.ServeConn(conn)
		}
	}()
	u.t.Cleanup(func() { ln.Close() })
}

// ServeConn serves conn on a goroutine of its own.
func (u *Upstream) ServeConn(conn net.Conn) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		conn.Close()
		return
	}
	u.conns = append(u.conns, conn)
	u.wg.Add(1)
	u.mu.Unlock()
	go func() {
		defer u.wg.Done()
		u.serve(&Conn{Conn: conn, r: bufio.NewReader(conn), u: u})
	}()
}

// stop closes the listener and every connection, and waits for their
// goroutines.
func (u *Upstream) stop() {
	u.mu.Lock()
	u.closed = true
	if u.ln != nil {
		u.ln.Close()
	}
	for _, c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// Accepted is how many connections the Upstream has served.
func (u *Upstream) Accepted() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.conns)
}

// Addr is the listener's address.
func (u *Upstream) Addr() string { return u.ln.Addr().String() }

// Conn is one connection to the Upstream, as its hooks see it.
type Conn struct {
	net.Conn
	r *bufio.Reader
	u *Upstream
}

// ReadLine reads one line, recording it.
func (c *Conn) ReadLine() (string, error) {
	line, err := c.r.ReadString('\n')
	c.u.mu.Lock()
	c.u.raw.WriteString(line)
	c.u.mu.Unlock()
	return line, err
}

// ReadByte reads one byte, not recorded.
func (c *Conn) ReadByte() (byte, error) { return c.r.ReadByte() }

// Send writes s; a failure shows in the test's next read.
func (c *Conn) Send(s string) { c.Write([]byte(s)) }

func (u *Upstream) serve(c *Conn) {
	defer func() {
		c.Close()
		select {
		case u.ended <- struct{}{}:
		default: // nobody counts this many ends
		}
	}()
	c.Send(u.Greeting)
	for {
		line, err := c.ReadLine()
		if err != nil {
			return
		}
		cmd := strings.TrimRight(line, "\r\n")
		u.mu.Lock()
		u.commands = append(u.commands, cmd)
		u.mu.Unlock()
		if u.Hook != nil && u.Hook(c, cmd) {
			continue
		}
		verb, _, _ := strings.Cut(cmd, " ")
		verb = strings.ToUpper(verb)
		reply, ok := u.Replies[verb]
		if !ok {
			reply = OK
		}
		c.Send(reply)
		switch {
		case verb == "QUIT":
			return
		case strings.HasPrefix(reply, "354"):
			if !c.ReadData() {
				return
			}
			c.Send(u.DataReply)
		}
	}
}

// ReadData reads message data the lenient way up to the "." line and
// records the message; it reports whether it got there (not when the
// connection ended or DataHook stopped it).
func (c *Conn) ReadData() bool {
	u := c.u
	var msg strings.Builder
	for {
		if u.Discard {
			b, err := c.r.ReadSlice('\n')
			u.mu.Lock()
			u.size += int64(len(b))
			u.mu.Unlock()
			if err == bufio.ErrBufferFull {
				continue
			}
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
		line, err := c.ReadLine()
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
		if u.DataHook != nil && u.DataHook(c, line) {
			return false
		}
	}
}

// Raw returns every byte received on every connection.
func (u *Upstream) Raw() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.raw.String()
}

// Commands returns the command lines received, without line ends.
func (u *Upstream) Commands() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.commands...)
}

// Messages returns the messages received whole: their content as it came
// (still stuffed), without the final dot.
func (u *Upstream) Messages() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.messages...)
}

// Size is the octets of message data read with Discard, final dots
// included.
func (u *Upstream) Size() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.size
}

// hangGuard bounds WaitEnded: a guard against a test that hangs, not a
// timing assertion.
const hangGuard = 10 * time.Second

// WaitEnded waits until one more connection has ended.
func (u *Upstream) WaitEnded(t testing.TB) {
	t.Helper()
	select {
	case <-u.ended:
	case <-time.After(hangGuard):
		t.Fatal("upstream connection did not end")
	}
}
