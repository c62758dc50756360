package smtpload

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a Load.
const (
	DefaultFrom = "sender@example.org"
	DefaultTo   = "rcpt@example.net"
	defaultHelo = "front.example"
	// xforward is what Postfix's front smtpd sends when the filter's EHLO
	// reply lists XFORWARD (reference/postfix.md, wire sample).
	xforward = "XFORWARD NAME=client.example ADDR=192.0.2.1 PORT=54268 HELO=client.example IDENT=[UNAVAILABLE] PROTO=ESMTP SOURCE=REMOTE\r\n"
)

// ioTimeout bounds every exchange of the generator with its peer: a hang
// guard so that a broken path fails the run instead of stalling it. It is
// far above any reply time on loopback and is not a measurement.
const ioTimeout = 2 * time.Minute

// maxReplyLines bounds one reply read by the generator (an EHLO reply has
// about a dozen lines); more means the peer is broken.
const maxReplyLines = 100

// Load is a batch of messages sent the way Postfix's front smtpd sends
// them to a filter. Its zero value is not usable: Addr and Message are
// required.
type Load struct {
	// Addr is the host:port to send to.
	Addr string
	// Message is the content to send: CRLF lines, dot-stuffed, without the
	// final "." (see Message).
	Message []byte
	// Concurrency is the number of sessions sending at once; 0 means 1.
	Concurrency int
	// PerConn is the number of messages sent over one connection; 0 or 1
	// means a new connection for every message, as Postfix's front smtpd
	// does towards a filter.
	PerConn int
	// From and To are the envelope; empty means DefaultFrom and DefaultTo.
	From, To string
	// WaitQuit waits for the reply to QUIT before closing; Postfix does
	// not wait.
	WaitQuit bool
	// Nagle writes the way Postfix's smtpd writes to its filter (and
	// smtp-source to its server): with Nagle's algorithm on, which Postfix
	// keeps (vstream_tweak_tcp grows the stream buffer to 4 MSS instead of
	// setting TCP_NODELAY), and the content through a buffer of that size
	// (postfixBuffer), written each time it fills, the rest with the final
	// "." in one write. Without it the generator writes with TCP_NODELAY
	// (Go's default), the content in one write and the "." in another.
	Nagle bool
}

// Postfix's stream buffer (vstream_tweak_tcp): VSTREAM_BUFSIZE, or 4 times
// the connection's MSS, read just after connect, when that is larger than
// a quarter of it. Over loopback that MSS is 32 or 64 KiB, depending on
// the kernel.
const (
	vstreamBufSize = 4096
	loopbackMSS    = 65483 // where the MSS cannot be read (tcpMSS)
)

func postfixBuffer(mss int) int {
	if mss > vstreamBufSize/4 {
		return 4 * mss
	}
	return vstreamBufSize
}

// Result is what a Run saw.
type Result struct {
	// Accepted counts 2xx end-of-data replies, Rejected 4xx and 5xx ones.
	Accepted, Rejected int
	// Latencies has one entry per message, in no particular order: from
	// the start of the message's work (the dial for a message that opens
	// its connection, else the MAIL command) to its end-of-data reply.
	Latencies []time.Duration
	// LastReply is the last end-of-data reply seen, for diagnostics.
	LastReply string
}

// Percentile returns the p-th percentile (0 < p <= 100) of the latencies,
// nearest rank; it sorts them.
func (r *Result) Percentile(p float64) time.Duration {
	return Percentile(r.Latencies, p)
}

// Percentile returns the p-th percentile (0 < p <= 100) of d by nearest
// rank, sorting d; 0 when d is empty.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	rank := int(math.Ceil(float64(len(d))*p/100)) - 1
	return d[min(max(rank, 0), len(d)-1)]
}

// Run sends n messages with l.Concurrency sessions at once and returns what
// it saw. It stops at the first protocol error (a reply other than the one
// due, except the end-of-data reply, which may be anything) and returns it.
func (l *Load) Run(ctx context.Context, n int) (*Result, error) {
	conc := max(l.Concurrency, 1)
	cmds := l.commands()
	res := &Result{Latencies: make([]time.Duration, n)}
	var next atomic.Int64
	var accepted, rejected atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var lastReply []byte
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{l: l, cmds: cmds, r: bufio.NewReaderSize(nil, 4<<10)}
			defer w.close()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				lat, ok, err := w.send(ctx, i == n-1)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				res.Latencies[i] = lat
				if ok {
					accepted.Add(1)
				} else {
					rejected.Add(1)
				}
				if i == n-1 {
					mu.Lock()
					lastReply = append(lastReply[:0], w.lastReply...)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	res.Accepted, res.Rejected = int(accepted.Load()), int(rejected.Load())
	res.LastReply = string(lastReply)
	if firstErr != nil {
		return res, firstErr
	}
	if err := ctx.Err(); err != nil && res.Accepted+res.Rejected < n {
		return res, err
	}
	return res, nil
}

// commands are the command lines of one transaction, built once.
type commands struct {
	ehlo, xforward, mail, rcpt, data, end, quit []byte
}

func (l *Load) commands() *commands {
	from, to := l.From, l.To
	if from == "" {
		from = DefaultFrom
	}
	if to == "" {
		to = DefaultTo
	}
	return &commands{
		ehlo:     []byte("EHLO " + defaultHelo + "\r\n"),
		xforward: []byte(xforward),
		// Postfix passes the client's MAIL line on as it is, parameters
		// included.
		mail: []byte("MAIL FROM:<" + from + "> SIZE=" + strconv.Itoa(len(l.Message)) + " BODY=8BITMIME\r\n"),
		rcpt: []byte("RCPT TO:<" + to + ">\r\n"),
		data: []byte("DATA\r\n"),
		end:  []byte(".\r\n"),
		quit: []byte("QUIT\r\n"),
	}
}

// worker is one sending session at a time.
type worker struct {
	l         *Load
	cmds      *commands
	conn      net.Conn
	r         *bufio.Reader
	sent      int // messages sent on conn
	lastReply []byte
	tail      []byte // with Nagle: the content's last part and the "."
	bufSize   int    // with Nagle: Postfix's stream buffer for conn
}

// send sends one message, opening a connection first when none is open,
// and closes the connection after it when it has carried PerConn messages
// or last is set. ok reports a 2xx end-of-data reply.
func (w *worker) send(ctx context.Context, last bool) (lat time.Duration, ok bool, err error) {
	start := time.Now()
	if w.conn == nil {
		if err := w.open(ctx); err != nil {
			return 0, false, err
		}
	}
	c := w.cmds
	w.conn.SetDeadline(start.Add(ioTimeout))
	if err := w.command(c.mail, 2, "MAIL"); err != nil {
		return 0, false, err
	}
	if err := w.command(c.rcpt, 2, "RCPT"); err != nil {
		return 0, false, err
	}
	if err := w.command(c.data, 3, "DATA"); err != nil {
		return 0, false, err
	}
	if err := w.content(); err != nil {
		return 0, false, err
	}
	code, err := w.reply(&w.lastReply)
	if err != nil {
		return 0, false, w.fail("end-of-data reply", err)
	}
	lat = time.Since(start)
	w.sent++
	if last || w.sent >= max(w.l.PerConn, 1) {
		if err := w.quit(); err != nil {
			return 0, false, err
		}
	}
	return lat, code/100 == 2, nil
}

// content writes the message and the final ".".
func (w *worker) content() error {
	msg, end := w.l.Message, w.cmds.end
	if !w.l.Nagle {
		if _, err := w.conn.Write(msg); err != nil {
			return w.fail("message content", err)
		}
		if _, err := w.conn.Write(end); err != nil {
			return w.fail("end of data", err)
		}
		return nil
	}
	// As through Postfix's stream buffer: each time it fills, it is
	// written; what is left goes with the final "." when it is flushed.
	for len(msg) >= w.bufSize {
		if _, err := w.conn.Write(msg[:w.bufSize]); err != nil {
			return w.fail("message content", err)
		}
		msg = msg[w.bufSize:]
	}
	w.tail = append(append(w.tail[:0], msg...), end...)
	if _, err := w.conn.Write(w.tail); err != nil {
		return w.fail("end of data", err)
	}
	return nil
}

// open connects and says hello the way Postfix's front smtpd does.
func (w *worker) open(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", w.l.Addr)
	if err != nil {
		return fmt.Errorf("smtpload: connect to %s: %w", w.l.Addr, err)
	}
	if w.l.Nagle {
		w.bufSize = vstreamBufSize
		if tc, ok := conn.(*net.TCPConn); ok {
			if err := tc.SetNoDelay(false); err != nil {
				conn.Close()
				return fmt.Errorf("smtpload: turning Nagle's algorithm on: %w", err)
			}
			w.bufSize = postfixBuffer(tcpMSS(tc))
		}
	}
	w.conn, w.sent = conn, 0
	w.r.Reset(conn)
	conn.SetDeadline(time.Now().Add(ioTimeout))
	if err := w.expect(2, "greeting"); err != nil {
		return err
	}
	if _, err := conn.Write(w.cmds.ehlo); err != nil {
		return w.fail("EHLO", err)
	}
	offersXForward := false
	code, err := w.replyLines(func(line []byte) {
		if len(line) > 4 && hasKeyword(line[4:], "XFORWARD") {
			offersXForward = true
		}
	})
	if err != nil {
		return w.fail("EHLO reply", err)
	}
	if code/100 != 2 {
		return w.unexpected("EHLO", code)
	}
	if offersXForward {
		if err := w.command(w.cmds.xforward, 2, "XFORWARD"); err != nil {
			return err
		}
	}
	return nil
}

// quit sends QUIT and closes, waiting for the reply only when asked.
func (w *worker) quit() error {
	defer w.close()
	if _, err := w.conn.Write(w.cmds.quit); err != nil {
		return w.fail("QUIT", err)
	}
	if w.l.WaitQuit {
		return w.expect(2, "QUIT")
	}
	return nil
}

func (w *worker) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

// command writes line and checks that the reply is of class want.
func (w *worker) command(line []byte, want int, what string) error {
	if _, err := w.conn.Write(line); err != nil {
		return w.fail(what, err)
	}
	return w.expect(want, what)
}

func (w *worker) expect(want int, what string) error {
	code, err := w.reply(&w.lastReply)
	if err != nil {
		return w.fail(what+" reply", err)
	}
	if code/100 != want {
		return w.unexpected(what, code)
	}
	return nil
}

func (w *worker) unexpected(what string, code int) error {
	err := fmt.Errorf("smtpload: %s: unexpected reply %d from %s: %q", what, code, w.l.Addr, w.lastReply)
	w.close()
	return err
}

func (w *worker) fail(what string, err error) error {
	w.close()
	return fmt.Errorf("smtpload: %s with %s: %w", what, w.l.Addr, err)
}

// reply reads one reply, keeps its last line in *keep and returns its code.
func (w *worker) reply(keep *[]byte) (int, error) {
	return w.replyLines(func(line []byte) { *keep = append((*keep)[:0], line...) })
}

var errBadReply = errors.New("malformed reply")

// replyLines reads one reply, calling each for every line (valid only
// during the call), and returns the code of its last line.
func (w *worker) replyLines(each func(line []byte)) (int, error) {
	for range maxReplyLines {
		line, err := w.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return 0, fmt.Errorf("%w: %q", errBadReply, line)
		}
		each(line)
		code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
		if code < 200 || code > 599 {
			return 0, fmt.Errorf("%w: %q", errBadReply, line)
		}
		if len(line) == 3 || line[3] != '-' {
			return code, nil
		}
	}
	return 0, fmt.Errorf("%w: more than %d lines", errBadReply, maxReplyLines)
}

// hasKeyword reports whether an EHLO line's text starts with keyword (any
// case), alone or followed by a space.
func hasKeyword(text []byte, keyword string) bool {
	if len(text) < len(keyword) || !bytes.EqualFold(text[:len(keyword)], []byte(keyword)) {
		return false
	}
	return len(text) == len(keyword) || text[len(keyword)] == ' '
}

// Message returns a message of about size bytes (at least its header
// section) as Postfix's front smtpd passes it on: its own Received: on top,
// a realistic header section with a Delivered-To: for another mailbox (so
// the loop check reads and rejects an address), extra header lines (CRLF
// ended, may be empty) after it, and a body of 78-character lines. It is
// in wire form: CRLF lines, no line starting with ".", no final ".".
func Message(size int, extra string) []byte {
	var b bytes.Buffer
	b.Grow(size + 1024)
	b.WriteString("Received: from client.example (client.example [192.0.2.1])\r\n" +
		"\tby front.example (Postfix) with ESMTP id 4ZQ1x2Y3z4\r\n" +
		"\tfor <" + DefaultTo + ">; Mon, 1 Jun 2026 12:00:00 +0000 (UTC)\r\n" +
		"Delivered-To: someone-else@example.net\r\n" +
		"From: Sender <" + DefaultFrom + ">\r\n" +
		"To: Recipient <" + DefaultTo + ">\r\n" +
		"Subject: load test message\r\n" +
		"Date: Mon, 1 Jun 2026 12:00:00 +0000\r\n" +
		"Message-ID: <load.test@example.org>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n")
	b.WriteString(extra)
	b.WriteString("\r\n")
	const line = "The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqrst\r\n"
	bodyLines := 0
	for b.Len()+len(line) <= size {
		b.WriteString(line)
		bodyLines++
	}
	switch rest := size - b.Len(); {
	case rest > 2:
		b.WriteString(line[:rest-2])
		b.WriteString("\r\n")
	case rest > 0 && bodyLines > 0:
		// Too short for a line of its own: the last line grows instead.
		b.Truncate(b.Len() - 2)
		b.WriteString("xx"[:rest])
		b.WriteString("\r\n")
	}
	return b.Bytes()
}
