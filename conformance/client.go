package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/textform"
)

// The scripted client: steps from a case's client file.

type stepOp uint8

const (
	opSend         stepOp = iota // write data in one Write
	opReply                      // wait for n whole replies
	opLines                      // wait for n lines
	opClosed                     // wait until the implementation closes the connection
	opShutdown                   // half-close: no more bytes from the client
	opClose                      // close the connection
	opConnect                    // open connection name and make it current
	opUse                        // make connection name current
	opWaitUpstream               // wait until upstream connection 1 has received data
)

// mainConn is how steps name the first client connection.
const mainConn = "main"

type step struct {
	op   stepOp
	line int    // in the client file
	text string // the step as written, for reports
	data []byte // opSend
	n    int    // opReply, opLines
	name string // opConnect, opUse
	from string // opConnect: the local IP address to connect from ("" any)
}

func parseClient(text string, files map[string]string, used, conns map[string]bool) ([]step, error) {
	var steps []step
	current := ""
	closed := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		lineNo := i + 1
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		word, arg, _ := strings.Cut(line, " ")
		st := step{line: lineNo, text: line}
		bad := func(format string, a ...any) ([]step, error) {
			return nil, fmt.Errorf("line %d: "+format, append([]any{lineNo}, a...)...)
		}
		switch word {
		case "send":
			b, err := textform.Decode(arg + "\n")
			if err != nil {
				return bad("send: %v", err)
			}
			st.op, st.data = opSend, b
		case "send-file":
			name := strings.TrimSpace(arg)
			switch name {
			case "", fileConfig, fileUpstream, fileClient:
				return bad("send-file wants the name of a data file of the case")
			}
			if strings.HasPrefix(name, fileWantClient) || strings.HasPrefix(name, fileWantUpstream) {
				return bad("send-file cannot send an expectation file")
			}
			data, ok := files[name]
			if !ok {
				return bad("send-file: the case has no file %q", name)
			}
			b, err := textform.Decode(data)
			if err != nil {
				return bad("send-file %s: %v", name, err)
			}
			used[name] = true
			st.op, st.data = opSend, b
		case "reply", "lines":
			st.op, st.n = opReply, 1
			if word == "lines" {
				st.op = opLines
			}
			if arg != "" || word == "lines" {
				n, err := strconv.Atoi(strings.TrimSpace(arg))
				if err != nil || n < 1 {
					return bad("%s wants a count from 1, not %q", word, arg)
				}
				st.n = n
			}
		case "wait-upstream":
			b, err := textform.Decode(arg + "\n")
			if err != nil {
				return bad("wait-upstream: %v", err)
			}
			st.op, st.data = opWaitUpstream, b
		case "closed", "shutdown", "close":
			if arg != "" {
				return bad("%s takes no argument", word)
			}
			st.op = map[string]stepOp{"closed": opClosed, "shutdown": opShutdown, "close": opClose}[word]
		case "connect", "use":
			name, from, hasFrom := strings.Cut(strings.TrimSpace(arg), " from ")
			if hasFrom {
				if word != "connect" {
					return bad("only connect takes \"from ADDR\"")
				}
				ip, err := netip.ParseAddr(strings.TrimSpace(from))
				if err != nil || !ip.IsLoopback() {
					return bad("connect %s from: want a loopback IP address such as 127.0.0.2, not %q", name, from)
				}
				st.from = ip.String()
			}
			if !isKeyword(name) {
				return bad("%s wants a connection name (letters, digits, -)", word)
			}
			if name == mainConn {
				if word == "connect" {
					return bad("%q names the first connection, which is always open at the start", mainConn)
				}
				name = ""
			}
			if word == "connect" {
				if conns[name] {
					return bad("connection %q already exists", name)
				}
				conns[name] = true
				st.op = opConnect
			} else {
				if !conns[name] {
					return bad("no connection %q (connect it first)", name)
				}
				st.op = opUse
			}
			st.name = name
			current = name
		default:
			return bad("unknown step %q (want send, send-file, reply, lines, closed, shutdown, close, connect, use, wait-upstream)", word)
		}
		if closed[current] && st.op != opUse && st.op != opConnect {
			return bad("connection %s was closed by an earlier close step", connLabel(current))
		}
		if st.op == opClose {
			closed[current] = true
		}
		steps = append(steps, st)
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("no steps")
	}
	return steps, nil
}

// clientConn is one connection of the scripted client.
type clientConn struct {
	name   string
	conn   net.Conn
	rec    *stream
	cursor int // bytes already consumed by wait steps
	done   chan struct{}
}

func dialClient(ctx context.Context, name, addr, from string) (*clientConn, error) {
	var d net.Dialer
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("client connection %s: %w", connLabel(name), err)
	}
	c := &clientConn{name: name, conn: conn, rec: newStream(), done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

func (c *clientConn) readLoop() {
	defer close(c.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := c.conn.Read(buf)
		c.rec.append(buf[:n])
		if err != nil {
			note := "closed by the implementation"
			if !errors.Is(err, io.EOF) {
				note = "ended: " + err.Error()
			}
			c.rec.close(note)
			return
		}
	}
}

// clientRun executes a client script.
type clientRun struct {
	addr  string
	up    *upstreamServer // nil when the case's upstream is down
	conns map[string]*clientConn
	order []string
	mu    sync.Mutex
}

// stepError says which step could not complete.
type stepError struct {
	step step
	err  error
}

func (e *stepError) Error() string {
	return fmt.Sprintf("client line %d %q: %v", e.step.line, e.step.text, e.err)
}

func (r *clientRun) run(ctx context.Context, steps []step) (warnings []string, err error) {
	cur, err := r.connect(ctx, "", "")
	if err != nil {
		return nil, err
	}
	for _, st := range steps {
		switch st.op {
		case opConnect:
			if cur, err = r.connect(ctx, st.name, st.from); err != nil {
				return warnings, &stepError{st, err}
			}
		case opUse:
			cur = r.conns[st.name]
		case opSend:
			if _, err := cur.conn.Write(st.data); err != nil {
				// The implementation may rightly have closed the
				// connection; the transcripts tell whether it should have.
				warnings = append(warnings, (&stepError{st, err}).Error())
			}
		case opShutdown:
			if tc, ok := cur.conn.(*net.TCPConn); ok {
				if err := tc.CloseWrite(); err != nil {
					warnings = append(warnings, (&stepError{st, err}).Error())
				}
			}
		case opClose:
			cur.conn.Close()
			<-cur.done
		case opWaitUpstream:
			if err := r.waitUpstream(ctx, st); err != nil {
				return warnings, err
			}
		case opReply, opLines, opClosed:
			if err := cur.await(ctx, st); err != nil {
				return warnings, err
			}
		}
	}
	return warnings, nil
}

func (r *clientRun) connect(ctx context.Context, name, from string) (*clientConn, error) {
	c, err := dialClient(ctx, name, r.addr, from)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conns[name] = c
	r.order = append(r.order, name)
	return c, nil
}

// waitUpstream waits until upstream connection 1 has received st.data.
func (r *clientRun) waitUpstream(ctx context.Context, st step) error {
	if r.up == nil {
		return &stepError{st, fmt.Errorf("the case's upstream is down")}
	}
	rec, err := r.up.first(ctx)
	if err != nil {
		return &stepError{st, fmt.Errorf("no upstream connection when the case time limit ran out")}
	}
	var closed bool
	err = rec.wait(ctx, func(buf []byte, c bool) bool {
		closed = c
		return bytes.Contains(buf, st.data) || c
	})
	got, _ := rec.snapshot()
	switch {
	case err != nil:
		return &stepError{st, fmt.Errorf("still waiting when the case time limit ran out; the upstream has received %s", textform.Quote(got))}
	case !bytes.Contains(got, st.data) && closed:
		return &stepError{st, fmt.Errorf("the upstream connection ended before it came")}
	}
	return nil
}

// closeAll closes every connection and waits for their readers.
func (r *clientRun) closeAll() {
	r.mu.Lock()
	conns := make([]*clientConn, 0, len(r.conns))
	for _, c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.conn.Close()
		<-c.done
	}
}

// await waits for the replies, lines or close a step wants. A connection
// the implementation closes ends the wait early: that is reported as a
// step error, besides whatever the transcripts show.
func (c *clientConn) await(ctx context.Context, st step) error {
	var end int
	var short bool
	err := c.rec.wait(ctx, func(buf []byte, closed bool) bool {
		rest := buf[c.cursor:]
		switch st.op {
		case opClosed:
			end = len(buf)
			return closed
		case opReply:
			n, ok := replyEnds(rest, st.n)
			end = c.cursor + n
			short = !ok
			return ok || closed
		default: // opLines
			n, ok := lineEnds(rest, st.n)
			end = c.cursor + n
			short = !ok
			return ok || closed
		}
	})
	if err != nil {
		got, _ := c.rec.snapshot()
		return &stepError{st, fmt.Errorf("still waiting when the case time limit ran out; connection %s has received %s after what earlier steps took",
			connLabel(c.name), textform.Quote(got[c.cursor:]))}
	}
	c.cursor = end
	if short {
		return &stepError{st, fmt.Errorf("connection %s was closed by the implementation before it came", connLabel(c.name))}
	}
	return nil
}

// replyEnds returns the length of the first n complete replies in b. A
// reply is lines (each ended by LF) up to one whose fourth byte is not
// "-" (RFC 5321 4.2.1).
func replyEnds(b []byte, n int) (int, bool) {
	off := 0
	for got := 0; got < n; {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return off, false
		}
		line := b[off : off+i+1]
		off += i + 1
		if len(line) < 4 || line[3] != '-' {
			got++
		}
	}
	return off, true
}

// lineEnds returns the length of the first n lines (each ended by LF) in b.
func lineEnds(b []byte, n int) (int, bool) {
	off := 0
	for got := 0; got < n; got++ {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return off, false
		}
		off += i + 1
	}
	return off, true
}
