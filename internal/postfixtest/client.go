package postfixtest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ReplyLimit bounds each wait for one SMTP reply. The front smtpd answers
// within its smtpd_proxy_timeout (default 100 s) even when the filter
// stalls, so a reply that takes longer means a hung peer.
const ReplyLimit = 150 * time.Second

// maxReplyLines bounds a multi-line reply; Postfix's EHLO reply has ~12.
const maxReplyLines = 100

// Reply is one SMTP reply.
type Reply struct {
	Code  int      // 0 when none was read
	Lines []string // each line as received, without CRLF
}

// Text is the reply's lines joined by "\n".
func (r Reply) Text() string { return strings.Join(r.Lines, "\n") }

func (r Reply) String() string {
	if r.Code == 0 {
		return "(no reply)"
	}
	return strings.Join(r.Lines, " | ")
}

// Class is the first digit of the code (2 for 250), 0 when there is none.
func (r Reply) Class() int { return r.Code / 100 }

// Result is everything one Send saw, in order. Commands not sent for lack of
// a positive reply before them have a zero Reply.
type Result struct {
	Greeting  Reply
	Ehlo      Reply
	Mail      Reply
	Rcpt      []Reply
	Data      Reply // the reply to DATA (354)
	EndOfData Reply // the reply to the final dot
	Quit      Reply
}

var queuedAsRE = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)

// QueueID is the queue id in the end-of-data reply ("queued as ID"), or "".
func (r Result) QueueID() string {
	if r.EndOfData.Class() != 2 {
		return ""
	}
	if m := queuedAsRE.FindStringSubmatch(r.EndOfData.Text()); m != nil {
		return m[1]
	}
	return ""
}

// Client sends one message per Send over a fresh connection.
type Client struct {
	// LocalAddr is the source IP to bind ("" for any), e.g. "127.0.0.2" so
	// that the client's address differs from the proxy's own 127.0.0.1.
	LocalAddr string
	// Helo is the EHLO argument; "" means "client.example".
	Helo string
	// SMTPUTF8 adds the SMTPUTF8 parameter to MAIL FROM.
	SMTPUTF8 bool
}

// Send is Client{}.Send.
func Send(addr, from string, rcpts []string, msg []byte) (Result, error) {
	return Client{}.Send(addr, from, rcpts, msg)
}

// Send delivers msg from one sender to rcpts at addr and returns every reply.
// from and each rcpt are mailboxes, written inside angle brackets; one that
// begins with "<" is sent as written (e.g. "<a@b> NOTIFY=NEVER"). msg may
// use CRLF or LF line ends; it is sent with CRLF and dot-stuffed. Send stops
// after a failed MAIL, when no RCPT was accepted, or after a DATA that did
// not get 354, and then says QUIT. The error is for I/O and protocol failures
// only; an SMTP rejection is a Result.
func (c Client) Send(addr, from string, rcpts []string, msg []byte) (Result, error) {
	var res Result
	d := net.Dialer{Timeout: ReplyLimit}
	if c.LocalAddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(c.LocalAddr)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return res, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	s := &session{conn: conn, r: bufio.NewReader(conn)}

	if res.Greeting, err = s.read(); err != nil {
		return res, fmt.Errorf("greeting: %w", err)
	}
	helo := c.Helo
	if helo == "" {
		helo = "client.example"
	}
	if res.Ehlo, err = s.cmd("EHLO " + helo); err != nil {
		return res, err
	}
	mail := "MAIL FROM:" + path(from)
	if c.SMTPUTF8 {
		mail += " SMTPUTF8"
	}
	if res.Mail, err = s.cmd(mail); err != nil {
		return res, err
	}
	accepted := 0
	if res.Mail.Class() == 2 {
		for _, rcpt := range rcpts {
			r, err := s.cmd("RCPT TO:" + path(rcpt))
			res.Rcpt = append(res.Rcpt, r)
			if err != nil {
				return res, err
			}
			if r.Class() == 2 {
				accepted++
			}
		}
	}
	if accepted > 0 {
		if res.Data, err = s.cmd("DATA"); err != nil {
			return res, err
		}
		if res.Data.Code == 354 {
			if _, err := conn.Write(frame(msg)); err != nil {
				return res, fmt.Errorf("write message: %w", err)
			}
			if res.EndOfData, err = s.read(); err != nil {
				return res, fmt.Errorf("end-of-data reply: %w", err)
			}
		}
	}
	if res.Quit, err = s.cmd("QUIT"); err != nil {
		// The message's fate is decided by now; a server that hangs up
		// without answering QUIT does not change it.
		return res, nil
	}
	return res, nil
}

func path(addr string) string {
	if strings.HasPrefix(addr, "<") {
		return addr
	}
	return "<" + addr + ">"
}

// frame returns msg as DATA content: CRLF line ends, dot-stuffed, ended by
// CRLF.CRLF.
func frame(msg []byte) []byte {
	var b bytes.Buffer
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, msg = msg[:i], msg[i+1:]
		} else {
			msg = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if bytes.HasPrefix(line, []byte(".")) {
			b.WriteByte('.')
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

type session struct {
	conn net.Conn
	r    *bufio.Reader
}

func (s *session) cmd(line string) (Reply, error) {
	s.conn.SetWriteDeadline(time.Now().Add(ReplyLimit))
	if _, err := s.conn.Write([]byte(line + "\r\n")); err != nil {
		return Reply{}, fmt.Errorf("send %q: %w", line, err)
	}
	r, err := s.read()
	if err != nil {
		return r, fmt.Errorf("reply to %q: %w", line, err)
	}
	return r, nil
}

// read reads one reply: lines "ddd-text" continue it, "ddd text" ends it.
func (s *session) read() (Reply, error) {
	var r Reply
	s.conn.SetReadDeadline(time.Now().Add(ReplyLimit))
	for len(r.Lines) < maxReplyLines {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return r, fmt.Errorf("read reply (after %d lines): %w", len(r.Lines), err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return r, fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return r, fmt.Errorf("malformed reply line %q", line)
		}
		r.Lines = append(r.Lines, line)
		r.Code = code
		if len(line) == 3 || line[3] != '-' {
			return r, nil
		}
	}
	return r, fmt.Errorf("reply longer than %d lines", maxReplyLines)
}
