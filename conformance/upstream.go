package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/textform"
)

// The scripted upstream: an SMTP server that answers from a case's
// upstream file and records every byte it reads.

// actKind is what the scripted upstream does at a step.
type actKind uint8

const (
	actReply      actKind = iota // send the reply
	actClose                     // send the reply, if any, then close
	actStall                     // never answer again; read until the peer closes
	actCloseAfter                // content only: close after k content bytes
)

type action struct {
	kind  actKind
	reply []byte // the reply bytes (CRLF included), possibly empty
	k     int    // actCloseAfter
}

// matcherKind says what an "on" rule matches.
type ruleKind uint8

const (
	ruleVerb    ruleKind = iota // a command with this verb
	ruleAny                     // "*": any command line
	ruleContent                 // the end of message data
)

type rule struct {
	kind ruleKind
	verb string // ruleVerb: upper case
	nth  int    // 0: every occurrence; else only the nth (1-based)
	act  action
	line int // in the upstream file, for messages
}

// upstreamScript is a parsed upstream file.
type upstreamScript struct {
	down        bool
	greeting    action
	hasGreeting bool
	rules       []rule
}

// Default replies of the scripted upstream, used when no rule matches.
// They are Postfix-like and short, so that want-client files stay short.
const (
	defaultGreeting = "220 up.test ESMTP\r\n"
	defaultEHLO     = "250-up.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
)

const defaultUnknownReply = "502 5.5.2 Error: command not recognized\r\n"

// defaultReply is the scripted upstream's answer to a verb no rule matches.
func defaultReply(verb string) string {
	switch verb {
	case "HELO":
		return "250 up.test\r\n"
	case "EHLO":
		return defaultEHLO
	case "MAIL":
		return "250 2.1.0 Ok\r\n"
	case "RCPT":
		return "250 2.1.5 Ok\r\n"
	case "DATA":
		return "354 End data with <CR><LF>.<CR><LF>\r\n"
	case "RSET", "NOOP", "XFORWARD":
		return "250 2.0.0 Ok\r\n"
	case "VRFY":
		return "252 2.0.0 maybe\r\n"
	case "QUIT":
		return "221 2.0.0 Bye\r\n"
	}
	return defaultUnknownReply
}

// defaultContentReply is the reply to the end of data; %d is the number
// of the message on this upstream connection (1, 2, ...), so that replies
// of different messages differ.
const defaultContentReply = "250 2.0.0 Ok: queued as %d\r\n"

func parseUpstream(text string) (upstreamScript, error) {
	var s upstreamScript
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		lineNo := i + 1
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
			return s, fmt.Errorf("line %d: an indented reply line without a greeting or on line before it", lineNo)
		}
		// The indented block after the directive is its reply.
		var block strings.Builder
		hasBlock := false
		for i+1 < len(lines) && strings.HasPrefix(lines[i+1], "  ") {
			i++
			block.WriteString(lines[i][2:])
			block.WriteByte('\n')
			hasBlock = true
		}
		reply, err := textform.Decode(block.String())
		if err != nil {
			return s, fmt.Errorf("reply after line %d: %w", lineNo, err)
		}
		fields := strings.Fields(line)
		switch fields[0] {
		case "down":
			if len(fields) != 1 || hasBlock {
				return s, fmt.Errorf("line %d: down takes nothing", lineNo)
			}
			s.down = true
		case "greeting":
			if s.hasGreeting {
				return s, fmt.Errorf("line %d: a second greeting", lineNo)
			}
			act, err := parseAction(fields[1:], hasBlock, reply, false)
			if err != nil {
				return s, fmt.Errorf("line %d: %w", lineNo, err)
			}
			s.greeting, s.hasGreeting = act, true
		case "on":
			if len(fields) < 2 {
				return s, fmt.Errorf("line %d: on wants what it matches", lineNo)
			}
			r, err := parseMatch(fields[1])
			if err != nil {
				return s, fmt.Errorf("line %d: %w", lineNo, err)
			}
			r.line = lineNo
			r.act, err = parseAction(fields[2:], hasBlock, reply, r.kind == ruleContent)
			if err != nil {
				return s, fmt.Errorf("line %d: %w", lineNo, err)
			}
			s.rules = append(s.rules, r)
		default:
			return s, fmt.Errorf("line %d: unknown directive %q (want down, greeting or on)", lineNo, fields[0])
		}
	}
	if s.down && (s.hasGreeting || len(s.rules) > 0) {
		return s, fmt.Errorf("a down upstream takes no greeting or on rules")
	}
	return s, nil
}

func parseMatch(m string) (rule, error) {
	var r rule
	name, nth, hasNth := strings.Cut(m, "#")
	if hasNth {
		n, err := strconv.Atoi(nth)
		if err != nil || n < 1 {
			return r, fmt.Errorf("bad occurrence %q in %q: want a number from 1", nth, m)
		}
		r.nth = n
	}
	switch {
	case name == "content":
		r.kind = ruleContent
	case name == "*":
		if !hasNth {
			return r, fmt.Errorf("* needs an occurrence: *#3 is the third command line")
		}
		r.kind = ruleAny
	case isKeyword(name):
		r.kind, r.verb = ruleVerb, strings.ToUpper(name)
	default:
		return r, fmt.Errorf("bad match %q: want VERB, VERB#N, *#N, content or content#N", m)
	}
	return r, nil
}

func parseAction(words []string, hasBlock bool, reply []byte, content bool) (action, error) {
	if len(words) == 0 {
		if !hasBlock {
			return action{}, fmt.Errorf("no reply: indent the reply lines below by two spaces, or give close or stall")
		}
		return action{kind: actReply, reply: reply}, nil
	}
	switch words[0] {
	case "close":
		if len(words) != 1 {
			return action{}, fmt.Errorf("close takes no argument")
		}
		return action{kind: actClose, reply: reply}, nil
	case "stall":
		if len(words) != 1 || hasBlock {
			return action{}, fmt.Errorf("stall takes no argument and no reply")
		}
		return action{kind: actStall}, nil
	case "close-after":
		if !content {
			return action{}, fmt.Errorf("close-after is for content rules only")
		}
		if len(words) != 2 || hasBlock {
			return action{}, fmt.Errorf("close-after wants one byte count and no reply")
		}
		k, err := strconv.Atoi(words[1])
		if err != nil || k < 0 {
			return action{}, fmt.Errorf("close-after: bad byte count %q", words[1])
		}
		return action{kind: actCloseAfter, k: k}, nil
	}
	return action{}, fmt.Errorf("unknown action %q (want close, stall or close-after K)", words[0])
}

// upstreamServer runs the script for every connection it accepts.
type upstreamServer struct {
	ln     net.Listener
	script upstreamScript
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*stream // in accept order
	live  []net.Conn
	added chan struct{} // closed and replaced when a connection is accepted
}

func startUpstream(script upstreamScript) (*upstreamServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("scripted upstream: listen: %w", err)
	}
	u := &upstreamServer{ln: ln, script: script, added: make(chan struct{})}
	u.wg.Add(1)
	go u.acceptLoop()
	return u, nil
}

func (u *upstreamServer) addr() string { return u.ln.Addr().String() }

func (u *upstreamServer) acceptLoop() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		rec := newStream()
		u.mu.Lock()
		u.conns = append(u.conns, rec)
		u.live = append(u.live, c)
		close(u.added)
		u.added = make(chan struct{})
		u.mu.Unlock()
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			s := &upstreamSession{conn: c, rec: rec, script: &u.script, verbs: map[string]int{}}
			s.run()
		}()
	}
}

// records returns the connections accepted so far.
func (u *upstreamServer) records() []*stream {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*stream(nil), u.conns...)
}

// first waits for the first upstream connection.
func (u *upstreamServer) first(ctx context.Context) (*stream, error) {
	for {
		u.mu.Lock()
		ch := u.added
		if len(u.conns) > 0 {
			rec := u.conns[0]
			u.mu.Unlock()
			return rec, nil
		}
		u.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// stop closes the listener and every connection and waits for the
// sessions to end.
func (u *upstreamServer) stop() {
	u.ln.Close()
	u.mu.Lock()
	for _, c := range u.live {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// upstreamSession is one scripted connection.
type upstreamSession struct {
	conn    net.Conn
	rec     *stream
	script  *upstreamScript
	pending []byte // read but not yet consumed
	eof     error  // the read error that ended input, once seen

	commands int            // command lines read
	verbs    map[string]int // command lines read, per verb
	messages int            // ends of data read
}

// readBufSize is the read size of the scripted upstream; any size works,
// since it consumes input line by line.
const readBufSize = 32 << 10

// fill reads more input; false when the connection ended.
func (s *upstreamSession) fill() bool {
	if s.eof != nil {
		return false
	}
	buf := make([]byte, readBufSize)
	n, err := s.conn.Read(buf)
	s.pending = append(s.pending, buf[:n]...)
	if err != nil {
		s.eof = err
	}
	return n > 0 || err == nil
}

// consume moves n pending bytes into the record.
func (s *upstreamSession) consume(n int) []byte {
	b := s.pending[:n]
	s.rec.append(b)
	s.pending = s.pending[n:]
	return b
}

func (s *upstreamSession) finish(note string) {
	// Whatever was read but not consumed (an unfinished line) was still
	// received, unless the upstream itself chose to close.
	s.conn.Close()
	s.rec.close(note)
}

func (s *upstreamSession) write(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	_, err := s.conn.Write(b)
	return err == nil
}

// drain records everything until the peer closes: a stalled upstream still
// reads, as a real one blocked on something else would buffer it.
func (s *upstreamSession) drain(note string) {
	s.consume(len(s.pending))
	for s.fill() {
		s.consume(len(s.pending))
	}
	s.finish(note)
}

func (s *upstreamSession) closeNow(note string) {
	s.conn.Close()
	s.rec.close(note)
}

func (s *upstreamSession) run() {
	greet := action{kind: actReply, reply: []byte(defaultGreeting)}
	if s.script.hasGreeting {
		greet = s.script.greeting
	}
	switch greet.kind {
	case actStall:
		s.drain("the upstream stalled before its greeting")
		return
	case actClose:
		s.write(greet.reply)
		s.closeNow("the upstream closed at its greeting")
		return
	}
	if !s.write(greet.reply) {
		s.finish("write error")
		return
	}
	for {
		i := bytes.IndexByte(s.pending, '\n')
		if i < 0 {
			if !s.fill() {
				s.consume(len(s.pending))
				s.finish(eofNote(s.eof))
				return
			}
			continue
		}
		line := s.consume(i + 1)
		s.commands++
		verb := commandVerb(line)
		s.verbs[verb]++
		act := s.commandAction(verb)
		switch act.kind {
		case actStall:
			s.drain(fmt.Sprintf("the upstream stalled at command %d (%s)", s.commands, verb))
			return
		case actClose:
			s.write(act.reply)
			s.closeNow(fmt.Sprintf("the upstream closed at command %d (%s)", s.commands, verb))
			return
		}
		if !s.write(act.reply) {
			s.finish("write error")
			return
		}
		if verb == "DATA" && bytes.HasPrefix(act.reply, []byte("354")) {
			if !s.content() {
				return
			}
		}
	}
}

// commandVerb is the first word of a command line, upper case.
func commandVerb(line []byte) string {
	line = bytes.TrimRight(line, "\r\n")
	if i := bytes.IndexAny(line, " \t"); i >= 0 {
		line = line[:i]
	}
	return strings.ToUpper(string(line))
}

func (s *upstreamSession) commandAction(verb string) action {
	for _, r := range s.script.rules {
		switch {
		case r.kind == ruleAny && r.nth == s.commands,
			r.kind == ruleVerb && r.verb == verb && (r.nth == 0 || r.nth == s.verbs[verb]):
			return r.act
		}
	}
	if verb == "QUIT" {
		return action{kind: actClose, reply: []byte(defaultReply(verb))}
	}
	return action{kind: actReply, reply: []byte(defaultReply(verb))}
}

func (s *upstreamSession) contentAction() action {
	for _, r := range s.script.rules {
		if r.kind == ruleContent && (r.nth == 0 || r.nth == s.messages) {
			return r.act
		}
	}
	return action{kind: actReply, reply: fmt.Appendf(nil, defaultContentReply, s.messages)}
}

// content reads message data the way RFC 5321 4.5.2 says, up to CRLF "."
// CRLF, and answers the end of data. It reports whether the session goes on.
func (s *upstreamSession) content() bool {
	msgNo := s.messages + 1
	s.messages = msgNo
	act := s.contentAction()
	s.messages = msgNo - 1
	limit := -1
	if act.kind == actCloseAfter {
		limit = act.k
	}
	var dec eodScanner
	read := 0
	for {
		if limit >= 0 && read == limit {
			s.closeNow(fmt.Sprintf("the upstream closed after %d bytes of message %d", read, msgNo))
			return false
		}
		if len(s.pending) == 0 && !s.fill() {
			s.consume(len(s.pending))
			s.finish(eofNote(s.eof) + " during message data")
			return false
		}
		n := len(s.pending)
		if limit >= 0 {
			n = min(n, limit-read)
		}
		end := dec.scan(s.pending[:n])
		if end >= 0 {
			n = end
		}
		s.consume(n)
		read += n
		if end >= 0 {
			break
		}
	}
	s.messages = msgNo
	switch act.kind {
	case actStall:
		s.drain(fmt.Sprintf("the upstream stalled at the end of message %d", msgNo))
		return false
	case actClose, actCloseAfter:
		s.write(act.reply)
		s.closeNow(fmt.Sprintf("the upstream closed at the end of message %d", msgNo))
		return false
	}
	return s.write(act.reply)
}

func eofNote(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return "the proxy closed the connection"
	}
	return "the connection ended: " + err.Error()
}

// eodScanner finds the end of message data (RFC 5321 4.5.2: a line "."
// that starts after CRLF or at the start of the data, ended by CRLF).
type eodScanner struct {
	st uint8
}

const (
	eodBOL   = iota // at the start of a line (after CRLF, or the data)
	eodDot          // "." at the start of a line
	eodDotCR        // ".\r" at the start of a line
	eodMid          // inside a line
	eodCR           // a CR inside a line
)

// scan reads b and returns the length up to and including the end of
// data, or -1 when b does not hold it.
func (d *eodScanner) scan(b []byte) int {
	for i, c := range b {
		switch d.st {
		case eodBOL:
			switch c {
			case '.':
				d.st = eodDot
			case '\r':
				d.st = eodCR
			default:
				d.st = eodMid
			}
		case eodDot:
			if c == '\r' {
				d.st = eodDotCR
			} else {
				d.st = eodMid
			}
		case eodDotCR:
			switch c {
			case '\n':
				d.st = eodBOL
				return i + 1
			case '\r':
				d.st = eodCR
			default:
				d.st = eodMid
			}
		case eodMid:
			if c == '\r' {
				d.st = eodCR
			}
		case eodCR:
			switch c {
			case '\n':
				d.st = eodBOL
			case '\r':
				d.st = eodCR
			default:
				d.st = eodMid
			}
		}
	}
	return -1
}
