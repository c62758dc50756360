package main

// The demo subcommand: the proxy and a recording SMTP server in this
// process, a clean message and a forged loop sent through them over real
// TCP on loopback, and both sides of each session printed.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// Exit codes of the demo subcommand.
const (
	demoOK    = 0 // both messages got the replies SPEC promises
	demoWrong = 1 // they did not: the output says what differed
	demoUsage = 2 // bad arguments
)

// demoLimit bounds the whole demo. Both sessions take milliseconds on
// loopback; the limit only keeps a broken build from hanging.
const demoLimit = 30 * time.Second

// demoMaxLine bounds a line the demo's upstream or client reads: every
// line in the demo is short, so a longer one is a fault to report.
const demoMaxLine = 4096

// The demo's addresses and messages. The recipient is the one a forged
// Delivered-To: names in the second message.
const (
	demoSender    = "alice@example.org"
	demoRecipient = "user@example.com"
	demoClean     = "From: Alice <alice@example.org>\r\n" +
		"To: user@example.com\r\n" +
		"Subject: hello\r\n" +
		"\r\n" +
		"An ordinary message: no Delivered-To: names its recipient.\r\n"
	demoLoop = "Delivered-To: user@example.com\r\n" +
		"From: Forged <someone@example.net>\r\n" +
		"To: user@example.com\r\n" +
		"Subject: a forged loop\r\n" +
		"\r\n" +
		"Spam whose header claims it was delivered to user@example.com already.\r\n"
)

// demoUsageText is the demo's -h.
const demoUsageText = "usage: smtpprox-loopprevent demo\n\n" +
	"Runs the proxy and a recording SMTP server (standing in for Postfix's after-filter\n" +
	"smtpd) in this process on 127.0.0.1, sends a clean message and a forged loop\n" +
	"through the proxy over TCP, and prints both sides of each session. Exit 0 when the\n" +
	"clean message was queued (250) and the loop refused (554 5.4.6) without reaching\n" +
	"the upstream, 1 otherwise.\n"

// newDemoFlags defines the demo's flags: none but -h, so that the man page
// and -h list every subcommand the same way.
func newDemoFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// runDemo is the demo subcommand.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newDemoFlags()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, demoUsageText)
			return demoOK
		}
		fmt.Fprintf(stderr, "demo: %v\nRun with -h for usage.\n", err)
		return demoUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "demo: takes no arguments, got %q\nRun with -h for usage.\n", fs.Args())
		return demoUsage
	}
	ctx, cancel := context.WithTimeout(ctx, demoLimit)
	defer cancel()
	if err := demo(ctx, stdout); err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return demoWrong
	}
	return demoOK
}

// demo runs the two sessions and prints them; an error says what went
// wrong or which reply differed from what SPEC promises.
func demo(ctx context.Context, w io.Writer) error {
	up, err := startRecordingUpstream()
	if err != nil {
		return err
	}
	defer up.close()

	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{} // the demo's output reads better without
			}
			return a
		},
	}))
	srv, err := smtpproxy.New(smtpproxy.Config{Upstream: up.addr(), Logger: logger})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening for the proxy: %w", err)
	}
	serveCtx, stopServe := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln) }()
	var stopOnce sync.Once
	var serveErr error
	stopProxy := func() error {
		stopOnce.Do(func() {
			stopServe()
			serveErr = <-served
		})
		return serveErr
	}
	defer stopProxy()

	fmt.Fprintf(w, "The proxy listens on %s and relays to a recording SMTP server on %s,\n", ln.Addr(), up.addr())
	fmt.Fprintf(w, "which stands in for Postfix's after-filter smtpd. Both run in this process.\n")
	fmt.Fprintf(w, "C: is what the client (Postfix's front smtpd) sent, S: what it got back.\n")

	clean, err := demoSession(ctx, w, 1, "a clean message", ln.Addr().String(), up, demoClean)
	if err != nil {
		return err
	}
	loop, err := demoSession(ctx, w, 2, "a forged loop: its Delivered-To: names the recipient", ln.Addr().String(), up, demoLoop)
	if err != nil {
		return err
	}
	if err := stopProxy(); err != nil {
		return fmt.Errorf("the proxy stopped with an error: %w", err)
	}

	fmt.Fprintf(w, "\n=== The proxy's log, one transaction line per message\n\n")
	logMu.Lock()
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "msg=transaction") {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
	logMu.Unlock()

	var problems []string
	if !strings.HasPrefix(clean.endOfData, "250 ") {
		problems = append(problems, fmt.Sprintf("the clean message got %q, want the upstream's 250", clean.endOfData))
	}
	if want := "554 5.4.6 mail forwarding loop for " + demoRecipient; loop.endOfData != want {
		problems = append(problems, fmt.Sprintf("the loop got %q, want %q", loop.endOfData, want))
	}
	if bytes.Contains(loop.upstream, []byte("DATA")) || bytes.Contains(loop.upstream, []byte("Subject:")) {
		problems = append(problems, "content of the loop reached the upstream")
	}
	fmt.Fprintf(w, "\n=== Result\n\n")
	fmt.Fprintf(w, "  clean message: %s   (the upstream's own reply, relayed)\n", clean.endOfData)
	fmt.Fprintf(w, "  forged loop:   %s   (refused at end of DATA; the upstream got RSET and not one byte of the message)\n", loop.endOfData)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// demoResult is what one session showed.
type demoResult struct {
	endOfData string // the first line of the end-of-data reply
	upstream  []byte // every byte the upstream received
}

// demoSession sends one message through the proxy in one session, as
// Postfix's front smtpd does (one session per message), and prints both
// transcripts.
func demoSession(ctx context.Context, w io.Writer, n int, title, proxyAddr string, up *recordingUpstream, message string) (demoResult, error) {
	var res demoResult
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return res, fmt.Errorf("connecting to the proxy: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	fmt.Fprintf(w, "\n=== %d. %s\n\n", n, title)
	r := bufio.NewReaderSize(conn, demoMaxLine)
	var transcript strings.Builder
	reply := func() (string, error) {
		first := ""
		for {
			line, err := readLine(r)
			if err != nil {
				return "", fmt.Errorf("reading the proxy's reply: %w", err)
			}
			fmt.Fprintf(&transcript, "  S: %s\n", line)
			if first == "" {
				first = line
			}
			if len(line) < 4 || line[3] != '-' {
				return first, nil
			}
		}
	}
	send := func(lines string) error {
		for _, l := range strings.SplitAfter(lines, "\r\n") {
			if l != "" {
				fmt.Fprintf(&transcript, "  C: %s\n", strings.TrimSuffix(l, "\r\n"))
			}
		}
		_, err := io.WriteString(conn, lines)
		return err
	}
	step := func(cmd string) (string, error) {
		if err := send(cmd + "\r\n"); err != nil {
			return "", err
		}
		return reply()
	}
	if _, err := reply(); err != nil { // the greeting
		return res, err
	}
	for _, cmd := range []string{"EHLO front.example", "MAIL FROM:<" + demoSender + ">", "RCPT TO:<" + demoRecipient + ">", "DATA"} {
		if _, err := step(cmd); err != nil {
			return res, err
		}
	}
	if err := send(message + ".\r\n"); err != nil {
		return res, err
	}
	if res.endOfData, err = reply(); err != nil {
		return res, err
	}
	if _, err := step("QUIT"); err != nil {
		return res, err
	}
	fmt.Fprintf(w, "Client and proxy:\n\n%s", transcript.String())

	res.upstream, err = up.session(ctx, n-1)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(w, "\nWhat the upstream received:\n\n")
	for _, line := range strings.SplitAfter(string(res.upstream), "\n") {
		if line != "" {
			fmt.Fprintf(w, "  %s\n", strings.TrimRight(line, "\r\n"))
		}
	}
	return res, nil
}

// readLine reads one CRLF- or LF-ended line, without its end.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("a line longer than %d bytes", demoMaxLine)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// lockedWriter serialises writes of the proxy's sessions to one buffer.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// recordingUpstream is a small SMTP server in the after-filter smtpd's
// place: it accepts everything, queues nothing, and records every byte
// each connection sent it.
type recordingUpstream struct {
	ln       net.Listener
	mu       sync.Mutex
	sessions []*upstreamSession // in accept order
	queued   int                // messages accepted, for the queue ids
	wg       sync.WaitGroup
}

type upstreamSession struct {
	received bytes.Buffer  // guarded by recordingUpstream.mu
	done     chan struct{} // closed when the connection has ended
}

func startRecordingUpstream() (*recordingUpstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the recording upstream: %w", err)
	}
	u := &recordingUpstream{ln: ln}
	u.wg.Add(1)
	go u.accept()
	return u, nil
}

func (u *recordingUpstream) addr() string { return u.ln.Addr().String() }

func (u *recordingUpstream) close() {
	u.ln.Close()
	u.wg.Wait()
}

func (u *recordingUpstream) accept() {
	defer u.wg.Done()
	for {
		conn, err := u.ln.Accept()
		if err != nil {
			return
		}
		s := &upstreamSession{done: make(chan struct{})}
		u.mu.Lock()
		u.sessions = append(u.sessions, s)
		u.mu.Unlock()
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer close(s.done)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(demoLimit))
			u.serve(conn, s)
		}()
	}
}

// recorder copies what it reads into a session's record.
type recorder struct {
	u *recordingUpstream
	s *upstreamSession
	r io.Reader
}

func (rec recorder) Read(p []byte) (int, error) {
	n, err := rec.r.Read(p)
	rec.u.mu.Lock()
	rec.s.received.Write(p[:n])
	rec.u.mu.Unlock()
	return n, err
}

// serve speaks just enough SMTP to take a message: every command is
// accepted, DATA is read to its end, QUIT ends the session.
func (u *recordingUpstream) serve(conn net.Conn, s *upstreamSession) {
	r := bufio.NewReaderSize(recorder{u, s, conn}, demoMaxLine)
	say := func(lines ...string) bool {
		_, err := io.WriteString(conn, strings.Join(lines, "\r\n")+"\r\n")
		return err == nil
	}
	if !say("220 upstream.example ESMTP (the demo's recording server)") {
		return
	}
	for {
		line, err := readLine(r)
		if err != nil {
			return
		}
		verb, _, _ := strings.Cut(strings.ToUpper(line), " ")
		var ok bool
		switch verb {
		case "EHLO":
			ok = say("250-upstream.example", "250-PIPELINING", "250 8BITMIME")
		case "HELO":
			ok = say("250 upstream.example")
		case "MAIL":
			ok = say("250 2.1.0 Ok")
		case "RCPT":
			ok = say("250 2.1.5 Ok")
		case "DATA":
			if !say("354 End data with <CR><LF>.<CR><LF>") {
				return
			}
			for {
				l, err := readLine(r)
				if err != nil {
					return
				}
				if l == "." {
					break
				}
			}
			u.mu.Lock()
			u.queued++
			id := "DEMO" + strconv.Itoa(u.queued)
			u.mu.Unlock()
			ok = say("250 2.0.0 Ok: queued as " + id)
		case "RSET", "NOOP":
			ok = say("250 2.0.0 Ok")
		case "QUIT":
			say("221 2.0.0 Bye")
			return
		default:
			ok = say("502 5.5.2 Error: command not recognized")
		}
		if !ok {
			return
		}
	}
}

// session waits until the i-th upstream connection (0-based, in accept
// order) has ended and returns every byte it received.
func (u *recordingUpstream) session(ctx context.Context, i int) ([]byte, error) {
	u.mu.Lock()
	var s *upstreamSession
	if i < len(u.sessions) {
		s = u.sessions[i]
	}
	u.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("the proxy opened no upstream connection for message %d", i+1)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("the upstream connection of message %d did not end: %w", i+1, ctx.Err())
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return bytes.Clone(s.received.Bytes()), nil
}
