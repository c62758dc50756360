package core

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// The reference model of one proxied session, the oracle of
// TestSessionStateMachine and FuzzSession.
//
// It is SPEC sections 2-4 written the simple way: it reads the client's
// bytes whole (a command line at a time, a message as all its data so far),
// with none of the core's code: no lineReader, decoder, encoder,
// replyReader, header.Classifier or filterEHLO. For every command line,
// message and upstream behaviour it says what the client must receive
// (reply by reply), what the upstream must receive (command by command,
// message by message, in canonical form), which recipients are accepted,
// and which loop checks the session must make. The loop verdict itself is
// loopcheck.Check applied to the header section the model finds: the
// verdict has its own oracles (FuzzVerdict, loopcheck's tests); here the
// question is whether the session hands it the right section and
// recipients and obeys it.
//
// Where SPEC leaves a choice to the implementation, the model encodes the
// choice package smtpproxy documents, and says so.

// actKind is how the scripted upstream answers one thing it read.
type actKind uint8

const (
	actReply actKind = iota // writes reply (and extra)
	actClose                // writes reply (a reply cut short, or nothing), then closes
	actStall                // never answers; the driver lets the reply timer run out
)

// upAct is the scripted upstream's answer to one thing it read (a command
// line, an end of data) or to its connection being opened (the greeting).
type upAct struct {
	kind  actKind
	reply []byte // the reply as written: one reply, maybe malformed on purpose
	// extra are unsolicited bytes written in the same read as the reply.
	extra []byte
	// closeAfterReply: the upstream closes right after the reply.
	closeAfterReply bool
	// closeAfter: after a 354 the upstream closes once it has read this
	// many bytes of message data (0: it reads on).
	closeAfter int
	// split cuts reply+extra into two reads at this offset (0: one read).
	split int
}

func (a upAct) String() string {
	switch a.kind {
	case actClose:
		return fmt.Sprintf("close after %q", a.reply)
	case actStall:
		return "stall"
	}
	s := fmt.Sprintf("%q", a.reply)
	if len(a.extra) > 0 {
		s += fmt.Sprintf(" + unsolicited %q", a.extra)
	}
	if a.closeAfterReply {
		s += " then close"
	}
	if a.closeAfter > 0 {
		s += fmt.Sprintf(" (close after %d data bytes)", a.closeAfter)
	}
	return s
}

// unitKind is what the upstream reads.
type unitKind uint8

const (
	uGreeting  unitKind = iota // nothing read: the connection opened
	uCommand                   // a client command line relayed (or "*" for a refused SASL line)
	uProxyDATA                 // the proxy's own DATA after a passing verdict
	uRSET                      // the proxy's RSET after a local end-of-data reply
	uQUIT                      // the proxy's QUIT when it ends the session
	uMessage                   // message data after a 354, up to its end of data
)

func (k unitKind) String() string {
	return [...]string{"greeting", "command", "proxy DATA", "proxy RSET", "proxy QUIT", "message"}[k]
}

// actSource decides how the upstream answers the k-th unit it reads;
// line is the command line for commands.
type actSource interface {
	act(k int, what unitKind, line string) upAct
}

// wantUnit is one thing the upstream must read, with how it answers.
type wantUnit struct {
	what unitKind
	line string // a command line without CRLF
	act  upAct
	// A message, as the proxy wrote it: the canonical bytes (stuffed
	// lines, CRLF, the end of data); wireLines reads its content lines.
	wire  []byte
	ended bool
	// inexact: the message was cut short where how much of it left the
	// proxy depends on I/O (a bare LF refused mid-stream, the upstream
	// closing mid-stream): the upstream may have read any prefix of wire.
	inexact bool
	// limit: the upstream closed after reading this many bytes (0: none).
	limit int
}

// wantReply is one reply the client must receive.
type wantReply struct {
	exact  []byte   // the reply byte for byte, or
	prefix []string // a one-line reply starting with one of these
	what   string   // what it answers, for failure messages
}

func (w wantReply) String() string {
	if w.exact != nil {
		return fmt.Sprintf("%q (%s)", w.exact, w.what)
	}
	return fmt.Sprintf("one line starting %q (%s)", w.prefix, w.what)
}

func (w wantReply) matches(got []byte) bool {
	if w.exact != nil {
		return bytes.Equal(got, w.exact)
	}
	if bytes.Count(got, []byte("\r\n")) != 1 {
		return false
	}
	for _, p := range w.prefix {
		if bytes.HasPrefix(got, []byte(p)) {
			return true
		}
	}
	return false
}

func exactReply(b []byte, what string) wantReply {
	return wantReply{exact: append([]byte(nil), b...), what: what}
}

func prefixReply(what string, prefixes ...string) wantReply {
	return wantReply{prefix: prefixes, what: what}
}

// checkCall is one call of the loop check: the recipients and the header
// section it was given.
type checkCall struct {
	Rcpts   []string
	Section string
}

// refConfig is the part of Config the model knows.
type refConfig struct {
	maxHeader int
	reject    bool // BareLFReject
	dryRun    bool
	drop      []string
	lend      bool // Config.LendInput: the model reads the same either way
}

func (c refConfig) config(check CheckFunc) Config {
	return Config{
		UpstreamName:     "up.test",
		MaxHeaderBytes:   c.maxHeader,
		DryRun:           c.dryRun,
		BareLF:           map[bool]BareLFPolicy{false: BareLFNormalize, true: BareLFReject}[c.reject],
		DropEHLOKeywords: c.drop,
		Check:            check,
		LendInput:        c.lend,
	}
}

type refState uint8

const (
	refGreeting refState = iota
	refCommand
	refData
)

type msgPhase uint8

const (
	phCapture msgPhase = iota // reading the header section; nothing goes upstream
	phStream                  // the upstream reads the message
	phDrain                   // the message is refused; the rest is read and thrown away
)

// refMsg is the message being read.
type refMsg struct {
	upReady   bool     // the 354 was the upstream's: it reads data from the start
	rcpts     []string // the accepted recipients, for the verdict
	data      []byte   // the client's data so far, as sent
	done      int      // complete data lines acted on
	phase     msgPhase
	section   []string // header section lines (content, without line end)
	sectLen   int      // bytes of the section, each line counted with CRLF
	inSection bool
	unit      *wantUnit // the message as the upstream reads it (nil before a 354)
	cur       int       // content bytes of the current line already written upstream
	held      wantReply // the end-of-data reply the proxy gives itself
	rsetAfter bool      // RSET follows the held reply
	// raceBareLF: the upstream closed mid-stream; the proxy may meet a
	// refused bare LF later in the data before it learns of the close.
	raceBareLF bool
}

// refModel is the reference model; see the comment at the top of the file.
type refModel struct {
	cfg refConfig
	src actSource

	replies []wantReply
	units   []*wantUnit
	checks  []checkCall
	txRcpts [][]string // the recipients of each message begun, in order

	in       []byte // client bytes not read yet
	st       refState
	msg      *refMsg
	done     bool // the session is over
	gone     bool // the proxy has given up the upstream connection
	upDead   bool // the upstream reads nothing more (it closed)
	sasl     bool // the last reply was 334: the next line is relayed raw
	inTx     bool
	rcpts    []string // accepted recipients (RCPT arguments as written)
	shutdown bool
	// retiring: a reply came with unsolicited bytes in the same read. The
	// reply takes effect, then the proxy gives up the upstream; what it
	// wrote meanwhile never leaves (from retireUnits/retireWire on).
	retiring    bool
	retireUnits int
	retireWire  int
}

func newRefModel(cfg refConfig, src actSource) *refModel {
	if cfg.maxHeader <= 0 {
		cfg.maxHeader = DefaultMaxHeaderBytes
	}
	m := &refModel{cfg: cfg, src: src}
	u := &wantUnit{what: uGreeting}
	u.act = src.act(0, uGreeting, "")
	m.units = append(m.units, u)
	m.answer(u, func(r refReply) {
		m.reply(exactReply(r.client, "greeting"))
		if r.code == 421 {
			m.close()
			return
		}
		m.st = refCommand
		m.boundary()
	}, func(string) {
		m.reply(prefixReply("greeting failed", "421 4.4.1 "))
		m.close()
	})
	return m
}

func (m *refModel) reply(w wantReply) { m.replies = append(m.replies, w) }

// sendable: bytes the proxy writes now reach the upstream.
func (m *refModel) sendable() bool { return !m.done && !m.gone && !m.upDead }

// send records a unit the upstream reads and draws its answer. It returns
// nil when the upstream reads nothing more.
func (m *refModel) send(what unitKind, line string) *wantUnit {
	if !m.sendable() {
		return nil
	}
	u := &wantUnit{what: what, line: line}
	u.act = m.src.act(len(m.units), what, line)
	m.units = append(m.units, u)
	return u
}

// close ends the session: both connections are closed.
func (m *refModel) close() {
	m.done, m.gone = true, true
}

// markGone retires the upstream connection; the next command gets 421.
// Output the proxy wrote while handling a reply that came with unsolicited
// bytes is dropped with it.
func (m *refModel) markGone() {
	if m.gone {
		return
	}
	m.gone = true
	if m.retiring {
		m.units = m.units[:m.retireUnits]
		if last := m.units[len(m.units)-1]; last.what == uMessage && len(last.wire) > m.retireWire {
			last.wire = last.wire[:m.retireWire]
			last.ended = false
		}
	}
}

// answer applies the upstream's answer to what the model just sent (or to
// the connection, for the greeting): on with the reply, or fail with why
// the upstream failed.
func (m *refModel) answer(u *wantUnit, on func(refReply), fail func(why string)) {
	a := u.act
	if m.retiring {
		// The unsolicited bytes are what the proxy reads next: they fail
		// this wait.
		fail("sent unexpected data")
		return
	}
	switch a.kind {
	case actStall:
		fail("timed out")
		return
	case actClose:
		m.upDead = true
		fail("closed the connection")
		return
	}
	r, rest, status := parseRefReply(a.reply)
	switch status {
	case replyIncomplete:
		fail("timed out") // nothing more comes: the reply timer runs out
		return
	case replyBad:
		fail("sent a malformed reply")
		return
	}
	if r.code == 354 && opensData(u.what) {
		// The upstream now reads message data.
		m.units = append(m.units, &wantUnit{what: uMessage, limit: a.closeAfter})
	}
	if a.closeAfterReply {
		m.upDead = true
	}
	unsolicited := len(rest) > 0 || len(a.extra) > 0
	if unsolicited {
		m.retiring = true
		m.retireUnits = len(m.units)
		if last := m.units[len(m.units)-1]; last.what == uMessage {
			m.retireWire = len(last.wire)
		}
	}
	on(r)
	if !m.done && !m.gone && (unsolicited || a.closeAfterReply) {
		m.failNow()
	}
	m.retiring = false
}

// failNow: the upstream failed while the proxy waited for nothing from it.
func (m *refModel) failNow() {
	if m.st != refData {
		m.markGone() // between commands: the next command learns of it
		return
	}
	msg := m.msg
	switch msg.phase {
	case phCapture, phStream:
		m.markGone()
		msg.held = prefixReply("end of data after the upstream failed", "451 4.4.2 ")
		msg.rsetAfter = false
		msg.phase = phDrain
	case phDrain:
		m.markGone() // the held reply stands; no RSET can follow
		msg.rsetAfter = false
	}
}

// boundary ends a session asked to shut down once it waits for a command
// outside a transaction.
func (m *refModel) boundary() {
	if m.shutdown && !m.done && m.st == refCommand && !m.inTx {
		m.send(uQUIT, "QUIT")
		m.reply(exactReply([]byte("421 4.3.2 shutting down\r\n"), "shutdown"))
		m.close()
	}
}

// ---- client input ----

// feed reads client bytes.
func (m *refModel) feed(p []byte) {
	m.in = append(m.in, p...)
	for !m.done {
		switch m.st {
		case refCommand:
			i := bytes.IndexByte(m.in, '\n')
			if i < 0 {
				return
			}
			raw := m.in[:i]
			m.in = m.in[i+1:]
			m.command(raw)
		case refData:
			if !m.dataStep() {
				return
			}
		default:
			return
		}
	}
}

// clientClosed: the client went away.
func (m *refModel) clientClosed() {
	if m.done {
		return
	}
	if m.st == refCommand {
		m.send(uQUIT, "QUIT")
	}
	m.close()
}

// clientTimeout: the client's command or data timer ran out.
func (m *refModel) clientTimeout() {
	if m.done {
		return
	}
	if m.st == refCommand {
		m.send(uQUIT, "QUIT")
	}
	m.reply(exactReply([]byte("421 4.4.2 timeout\r\n"), "client timeout"))
	m.close()
}

// upstreamLost: the upstream connection ends while the proxy waits for
// nothing from it (between commands, or while it reads message data).
func (m *refModel) upstreamLost() {
	if m.done || m.gone {
		return
	}
	m.upDead = true
	m.failNow()
}

// shutdownNow: the server shuts down.
func (m *refModel) shutdownNow() {
	m.shutdown = true
	m.boundary()
}

// command handles one command line (raw: without its LF).
func (m *refModel) command(raw []byte) {
	line := raw
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1] // CRLF; any other CR is a bare CR
	}
	limit := MaxCommandLine
	if m.sasl {
		limit = MaxSASLLine
	}
	fault := ""
	switch {
	case len(line) > limit:
		fault = "500 5.5.2 line too long\r\n"
	case bytes.IndexByte(line, 0) >= 0 || bytes.IndexByte(line, '\r') >= 0:
		fault = "500 5.5.2 "
	}
	if m.gone {
		m.reply(prefixReply("command after the upstream failed", "421 4.4.2 "))
		m.close()
		return
	}
	if m.sasl {
		// The upstream waits for a continuation line; a line the proxy
		// will not carry becomes the SASL cancel.
		m.sasl = false
		if fault != "" {
			line = []byte("*")
		}
		m.forward(string(line), "SASL", "")
		return
	}
	if fault != "" {
		if strings.HasSuffix(fault, "\r\n") {
			m.reply(exactReply([]byte(fault), "over-long command"))
		} else {
			m.reply(prefixReply("command with NUL or bare CR", fault))
		}
		m.boundary()
		return
	}
	verb, rest, _ := cutAny(string(line), " \t")
	verb = asciiUpper(verb)
	switch verb {
	case "STARTTLS":
		m.reply(exactReply([]byte("454 4.7.0 TLS not available\r\n"), "STARTTLS"))
		m.boundary()
		return
	case "BDAT":
		m.reply(prefixReply("BDAT", "502 5.5.1"))
		m.boundary()
		return
	case "DATA":
		if strings.Trim(rest, " \t") == "" && len(m.rcpts) > 0 {
			m.reply(prefixReply("DATA", "354 "))
			m.startMsg(false)
			return
		}
	}
	arg := rest
	if _, after, ok := strings.Cut(rest, ":"); ok {
		arg = after
	}
	m.forward(string(line), verb, arg)
}

// forward relays a command line and its reply.
func (m *refModel) forward(line, verb, arg string) {
	u := m.send(uCommand, line)
	if u == nil {
		panic("model: a command for an upstream that closed unnoticed")
	}
	m.answer(u, func(r refReply) {
		if verb == "EHLO" && r.code/100 == 2 {
			m.reply(exactReply(refFilterEHLO(r.lines, m.cfg.drop), line))
		} else {
			m.reply(exactReply(r.client, line))
		}
		if r.code == 421 || verb == "QUIT" {
			m.close()
			return
		}
		switch {
		case r.code == 334:
			m.sasl = true
		case r.code == 354:
			// The upstream reads message data now, whatever the command
			// was: follow it, so both agree where the data ends.
			m.startMsg(true)
			return
		case r.code/100 != 2:
		case verb == "MAIL":
			m.inTx, m.rcpts = true, nil
		case verb == "RCPT":
			m.rcpts = append(m.rcpts, arg)
		case verb == "RSET", verb == "EHLO", verb == "HELO", verb == "XCLIENT":
			m.inTx, m.rcpts = false, nil
		}
		m.boundary()
	}, func(string) {
		m.reply(prefixReply("upstream failed: "+line, "421 4.4.2 "))
		m.close()
	})
}

// ---- message data ----

func (m *refModel) startMsg(upReady bool) {
	msg := &refMsg{upReady: upReady, rcpts: append([]string{}, m.rcpts...)}
	if upReady {
		msg.unit = m.units[len(m.units)-1] // opened by the upstream's 354
		if msg.unit.what != uMessage {
			panic("model: 354 without a message unit")
		}
	}
	m.txRcpts = append(m.txRcpts, msg.rcpts)
	m.msg, m.st, m.inTx = msg, refData, true
}

// dataStep reads the data so far; it reports whether the message ended.
func (m *refModel) dataStep() bool {
	msg := m.msg
	msg.data = append(msg.data, m.in...)
	m.in = nil
	r := readData(msg.data)
	for msg.done < len(r.lines) {
		l := r.lines[msg.done]
		msg.done++
		m.dataLine(l.content, l.bareLF)
	}
	if r.end {
		m.in = append(m.in, msg.data[len(msg.data)-r.rest:]...)
		msg.data = msg.data[:len(msg.data)-r.rest]
		m.dataEnd()
		return true
	}
	m.dataPartial(r.partial)
	return false
}

// dataLine acts on one complete content line.
func (m *refModel) dataLine(content string, bareLF bool) {
	msg := m.msg
	if msg.phase == phCapture {
		kind, idx, inContent := refClassify(content, msg.inSection, true)
		switch kind {
		case 'F', 'C':
			if msg.sectLen+len(content) > m.cfg.maxHeader {
				m.localReject(exactReply([]byte("552 5.3.4 header section too large\r\n"), "end of data"))
				return
			}
			if bareLF && m.cfg.reject {
				m.localReject(prefixReply("end of data with a bare LF", "550 5.5.2 "))
				return
			}
			if msg.sectLen+len(content)+2 > m.cfg.maxHeader {
				m.localReject(exactReply([]byte("552 5.3.4 header section too large\r\n"), "end of data"))
				return
			}
			msg.section = append(msg.section, content)
			msg.sectLen += len(content) + 2
			msg.inSection = true
			return
		}
		// The line ends the section. Bytes of it that leave it undecided
		// count against the limit and the lookahead.
		if msg.sectLen+idx > m.cfg.maxHeader+HeaderLookahead {
			m.localReject(exactReply([]byte("552 5.3.4 header section too large\r\n"), "end of data"))
			return
		}
		if !inContent {
			// Decided only at its line end (empty, or a name without
			// colon): the line end is read before the verdict.
			if bareLF && m.cfg.reject {
				m.localReject(prefixReply("end of data with a bare LF", "550 5.5.2 "))
				return
			}
			m.verdict()
			m.writeLine(content, true)
			return
		}
		m.verdict()
		// Decided within its content: the rest of the line streams.
	}
	switch msg.phase {
	case phStream:
		m.writeLine(content, false)
		if msg.phase != phStream {
			m.drainLine(bareLF)
			return
		}
		if bareLF && m.cfg.reject {
			// Streaming has begun: the upstream is closed without the
			// final dot, so nothing is delivered.
			if msg.unit != nil {
				msg.unit.inexact = true
			}
			m.markGone()
			msg.held = prefixReply("end of data with a bare LF", "550 5.5.2 ")
			msg.rsetAfter = false
			msg.phase = phDrain
			return
		}
		m.writeLineEnd()
	case phDrain:
		m.drainLine(bareLF)
	}
}

func (m *refModel) drainLine(bareLF bool) {
	msg := m.msg
	if msg.raceBareLF && bareLF && msg.held.exact == nil {
		msg.held.prefix = append(msg.held.prefix, "550 5.5.2 ")
		msg.raceBareLF = false
	}
}

// dataPartial acts on the unfinished last line (its content so far).
func (m *refModel) dataPartial(content string) {
	msg := m.msg
	if msg.phase == phCapture {
		kind, idx, inContent := refClassify(content, msg.inSection, false)
		switch {
		case kind == 'F' || kind == 'C':
			if msg.sectLen+len(content) > m.cfg.maxHeader {
				m.localReject(exactReply([]byte("552 5.3.4 header section too large\r\n"), "end of data"))
			}
			return
		case kind == 'U':
			if msg.sectLen+len(content) > m.cfg.maxHeader+HeaderLookahead {
				m.localReject(exactReply([]byte("552 5.3.4 header section too large\r\n"), "end of data"))
			}
			return
		}
		if !inContent {
			panic("model: a partial line decided without content")
		}
		if msg.sectLen+idx > m.cfg.maxHeader+HeaderLookahead {
			m.localReject(exactReply([]byte("552 5.3.4 header section too large\r\n"), "end of data"))
			return
		}
		m.verdict()
	}
	if msg.phase == phStream {
		m.writeLine(content, false)
	}
}

// dataEnd acts on the end of data.
func (m *refModel) dataEnd() {
	msg := m.msg
	if msg.phase == phCapture {
		m.verdict() // the whole message is header section
	}
	switch msg.phase {
	case phStream:
		m.writeWire([]byte(".\r\n"), true)
		m.awaitEndOfData()
	case phDrain:
		m.finishLocal()
	}
}

// verdict judges the message once its header section is complete.
func (m *refModel) verdict() {
	msg := m.msg
	section := strings.Join(msg.section, "\r\n")
	if len(msg.section) > 0 {
		section += "\r\n"
	}
	m.checks = append(m.checks, checkCall{Rcpts: msg.rcpts, Section: section})
	v := loopcheck.Check(msg.rcpts, []byte(section))
	if v.Loop && !m.cfg.dryRun {
		if printable(v.Recipient) {
			m.localReject(exactReply([]byte("554 5.4.6 mail forwarding loop for "+v.Recipient+"\r\n"), "end of data of a loop"))
		} else {
			m.localReject(prefixReply("end of data of a loop", "554 5.4.6 mail forwarding loop"))
		}
		return
	}
	if msg.upReady {
		msg.phase = phStream
		m.flushSection()
		return
	}
	u := m.send(uProxyDATA, "DATA")
	if u == nil {
		m.waitFailed()
		return
	}
	m.answer(u, func(r refReply) {
		switch {
		case r.code == 354:
			msg.unit = m.units[len(m.units)-1]
			msg.phase = phStream
			m.flushSection()
		case r.code/100 == 4 || r.code/100 == 5:
			// The upstream's refusal is the end-of-data reply.
			msg.held = exactReply(r.client, "end of data refused by the upstream's reply to DATA")
			msg.rsetAfter = true
			if r.code == 421 {
				m.markGone()
				msg.rsetAfter = false
			}
			msg.phase = phDrain
		default:
			m.waitFailed()
		}
	}, func(string) { m.waitFailed() })
}

// waitFailed: the upstream failed while the proxy waited for its reply to
// DATA.
func (m *refModel) waitFailed() {
	msg := m.msg
	m.markGone()
	msg.held = prefixReply("end of data after the upstream failed", "451 4.4.2 ")
	msg.rsetAfter = false
	msg.phase = phDrain
	msg.raceBareLF = false
}

// flushSection writes the captured header section once the upstream reads.
func (m *refModel) flushSection() {
	for _, l := range m.msg.section {
		m.writeLine(l, true)
		if m.msg.phase != phStream {
			return
		}
	}
}

// localReject refuses the message with the proxy's own end-of-data reply.
// An upstream that already reads message data cannot be stopped cleanly:
// it is closed without the final dot. Otherwise RSET follows.
func (m *refModel) localReject(w wantReply) {
	msg := m.msg
	if msg.upReady || msg.phase == phStream {
		m.markGone()
	}
	msg.held = w
	msg.rsetAfter = !m.gone
	msg.phase = phDrain
}

// finishLocal gives the held end-of-data reply once the data is read.
func (m *refModel) finishLocal() {
	msg := m.msg
	m.reply(msg.held)
	m.endTx()
	if msg.held.exact != nil && bytes.HasPrefix(msg.held.exact, []byte("421")) {
		m.close()
		return
	}
	if msg.rsetAfter && !m.gone {
		if u := m.send(uRSET, "RSET"); u == nil {
			m.markGone()
		} else {
			m.answer(u, func(r refReply) {
				if r.code/100 != 2 {
					// The upstream's transaction may still hold the
					// refused message's recipients: it is retired.
					m.markGone()
				}
			}, func(string) { m.markGone() })
		}
	}
	if !m.done {
		m.boundary()
	}
}

// awaitEndOfData waits for the upstream's end-of-data reply.
func (m *refModel) awaitEndOfData() {
	msg := m.msg
	fail := func(string) {
		m.markGone()
		m.reply(prefixReply("end of data after the upstream failed", "451 4.4.2 "))
		m.endTx()
		m.boundary()
	}
	if !m.sendable() || m.retiring {
		fail("closed")
		return
	}
	u := msg.unit
	u.act = m.src.act(m.unitIndex(u), uMessage, "")
	m.answer(u, func(r refReply) {
		m.reply(exactReply(r.client, "end of data"))
		m.endTx()
		if r.code == 421 {
			m.close()
			return
		}
		m.boundary()
	}, fail)
}

func (m *refModel) unitIndex(u *wantUnit) int {
	for i, v := range m.units {
		if v == u {
			return i
		}
	}
	panic("model: unknown unit")
}

func (m *refModel) endTx() {
	m.inTx, m.rcpts = false, nil
	m.msg = nil
	m.st = refCommand
}

// writeLine writes the rest of a content line (what was not written yet),
// dot-stuffed, and its CRLF when withEnd.
func (m *refModel) writeLine(content string, withEnd bool) {
	msg := m.msg
	if msg.phase != phStream {
		return
	}
	if msg.cur > len(content) {
		panic("model: a content line shrank")
	}
	if msg.cur < len(content) {
		piece := content[msg.cur:]
		if msg.cur == 0 && piece[0] == '.' {
			piece = "." + piece
		}
		msg.cur = len(content)
		m.writeWire([]byte(piece), false)
	}
	if withEnd && msg.phase == phStream {
		m.writeLineEnd()
	}
}

func (m *refModel) writeLineEnd() {
	m.msg.cur = 0
	m.writeWire([]byte("\r\n"), false)
}

// writeWire records message bytes the proxy writes (end: the end of
// data), and notices the upstream closing after a set amount of them.
func (m *refModel) writeWire(p []byte, end bool) {
	u := m.msg.unit
	if u == nil || !m.sendable() {
		return
	}
	u.wire = append(u.wire, p...)
	u.ended = end
	if u.limit > 0 && len(u.wire) >= u.limit {
		// The upstream closes once it has read limit bytes. The proxy
		// learns of it after the read that crossed the limit, so it may
		// meet a bare LF it refuses first.
		u.inexact = true
		m.upDead = true
		if !end {
			m.failNow()
			m.msg.raceBareLF = m.cfg.reject
		}
	}
}

// ---- readers written from SPEC and RFC 5321, for the model ----

// refLine is one content line of message data.
type refLine struct {
	content string
	bareLF  bool
}

// dataReading is message data as RFC 5321 4.5.2 reads it, with SPEC 4's bare
// LF rule.
type dataReading struct {
	lines   []refLine
	partial string // content so far of an unfinished last line
	end     bool
	rest    int // bytes after the end of data
}

// readData reads message data whole: a line ends at LF (CRLF or bare LF);
// after a CRLF (or at the start) a line is dot-sensitive: "." CRLF ends
// the data and a leading dot is removed, except that "." ended by a bare
// LF is the content line "."; after a bare LF a line is content as
// written. Of an unfinished last line, a final CR and a lone leading dot
// are not content yet: the next byte decides what they are.
func readData(in []byte) dataReading {
	var out dataReading
	sensitive := true
	for {
		i := bytes.IndexByte(in, '\n')
		if i < 0 {
			c := string(in)
			if sensitive && strings.HasPrefix(c, ".") {
				c = c[1:]
			}
			out.partial = strings.TrimSuffix(c, "\r")
			return out
		}
		raw := string(in[:i])
		in = in[i+1:]
		crlf := strings.HasSuffix(raw, "\r")
		c := strings.TrimSuffix(raw, "\r")
		if sensitive && crlf && c == "." {
			out.end, out.rest = true, len(in)
			return out
		}
		if sensitive && strings.HasPrefix(c, ".") && c != "." {
			c = c[1:]
		}
		out.lines = append(out.lines, refLine{content: c, bareLF: !crlf})
		sensitive = crlf
	}
}

// refClassify says what a content line is to the header section, as
// Postfix reads it (SPEC 4, reference/postfix.md): 'F' a field line (a
// name of printable ASCII other than ':', optional SP/HTAB, and a stray CR
// that cleanup turns into a space, then ':'); 'C' a continuation line
// (SP or HTAB after a section line; VT, FF or CR anywhere, which local(8)
// reads past); 'E' a line that ends the section; 'U' a prefix not yet
// decided (complete is false). idx is the number of bytes before the one
// that decided it (all of them when only the line end did), inContent
// whether a byte of the content decided it.
func refClassify(line string, inSection, complete bool) (kind byte, idx int, inContent bool) {
	if line == "" {
		if complete {
			return 'E', 0, false
		}
		return 'U', 0, false
	}
	switch c := line[0]; {
	case c == '\v' || c == '\f' || c == '\r':
		return 'C', 0, true
	case c == ' ' || c == '\t':
		if inSection {
			return 'C', 0, true
		}
		return 'E', 0, true
	case c <= ' ' || c >= 0x7f || c == ':':
		return 'E', 0, true
	}
	i := 0
	for i < len(line) && line[i] > ' ' && line[i] < 0x7f && line[i] != ':' {
		i++
	}
	for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r') {
		i++
	}
	switch {
	case i == len(line) && complete:
		return 'E', i, false
	case i == len(line):
		return 'U', i, false
	case line[i] == ':':
		return 'F', i, true
	}
	return 'E', i, true
}

// replyStatus says whether bytes hold a well-formed reply.
type replyStatus uint8

const (
	replyOK replyStatus = iota
	replyIncomplete
	replyBad
)

// refReply is an upstream reply as the model reads it.
type refReply struct {
	lines  []string // without line ends
	code   int      // the code of the last line
	client []byte   // the reply as the client gets it: each line ended in CRLF
}

// parseRefReply reads one reply (RFC 5321 4.2): lines end in LF (a CR
// before it belongs to the line end); each is three digits, the first
// 2-5, then SP, '-' or nothing; '-' continues the reply. rest is what
// follows the reply. The whole reply, lines ended in CRLF, may be at most
// MaxReplyBytes.
func parseRefReply(b []byte) (r refReply, rest []byte, st replyStatus) {
	size := 0
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if size+len(b) > MaxReplyBytes {
				return r, nil, replyBad
			}
			return r, nil, replyIncomplete
		}
		line := strings.TrimSuffix(string(b[:i]), "\r")
		b = b[i+1:]
		if len(line) < 3 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) ||
			len(line) > 3 && line[3] != ' ' && line[3] != '-' {
			return r, nil, replyBad
		}
		size += len(line) + 2
		if size > MaxReplyBytes {
			return r, nil, replyBad
		}
		r.lines = append(r.lines, line)
		r.client = append(append(r.client, line...), '\r', '\n')
		if len(line) == 3 || line[3] == ' ' {
			r.code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
			return r, b, replyOK
		}
	}
}

// refFilterEHLO is SPEC 3's EHLO reply filter: the lines after the first
// whose keyword (the first word after the code, ASCII case-insensitive) the
// proxy cannot carry are removed, and the rest is re-marked so the reply
// stays well formed ('-' on every line but the last).
func refFilterEHLO(lines []string, drop []string) []byte {
	never := append([]string{"STARTTLS", "CHUNKING", "BINARYMIME"}, drop...)
	kept := lines[:1:1]
	for _, l := range lines[1:] {
		if len(l) > 4 {
			kw, _, _ := cutAny(l[4:], " \t")
			if containsFold(never, kw) {
				continue
			}
		}
		kept = append(kept, l)
	}
	var out []byte
	for i, l := range kept {
		b := []byte(l)
		last := i == len(kept)-1
		switch {
		case len(b) > 3 && last:
			b[3] = ' '
		case len(b) > 3:
			b[3] = '-'
		case !last:
			b = append(b, '-')
		}
		out = append(append(out, b...), '\r', '\n')
	}
	return out
}

// wireLines reads canonical message bytes back as content lines (complete
// lines only, the end of data excluded).
func wireLines(wire []byte) []string {
	var lines []string
	for {
		i := bytes.Index(wire, []byte("\r\n"))
		if i < 0 {
			return lines
		}
		l := string(wire[:i])
		wire = wire[i+2:]
		if l == "." {
			return lines
		}
		lines = append(lines, strings.TrimPrefix(l, "."))
	}
}

// opensData: a 354 to this unit makes the upstream read message data. The
// scripted upstream answers 354 only to these.
func opensData(k unitKind) bool { return k == uCommand || k == uProxyDATA }

func cutAny(s, seps string) (before, after string, found bool) {
	if i := strings.IndexAny(s, seps); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

func containsFold(list []string, s string) bool {
	for _, l := range list {
		if asciiUpper(l) == asciiUpper(s) {
			return true
		}
	}
	return false
}

// printable: s is valid UTF-8 without control characters, so a reply
// carries it as it is.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
