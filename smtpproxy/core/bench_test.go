package core

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

// The core's share of the CPU a message costs, without sockets: one
// session of Postfix's front smtpd through the proxy (greeting, EHLO,
// XFORWARD, MAIL, RCPT, DATA, the message in reads of the runtime's size,
// QUIT), driven the way the runtime drives it (LendInput), against an
// upstream that answers every command. The perf package measures the
// whole path; this is what the core adds to it.

// benchUpstream answers what the session writes upstream: each command
// line, and the end of each message's data.
type benchUpstream struct {
	line    []byte // an unfinished command line
	inData  bool
	tail    []byte // the last bytes of message data, for its end
	replies []byte
}

const benchEHLOReply = "250-sink.example\r\n250-PIPELINING\r\n250-SIZE 0\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n"

func (u *benchUpstream) receive(p []byte) {
	for len(p) > 0 {
		if u.inData {
			// The proxy writes canonical data: its end is CRLF "." CRLF.
			u.tail = append(u.tail, p[max(0, len(p)-5):]...)
			if n := len(u.tail); n > 5 {
				u.tail = u.tail[:copy(u.tail, u.tail[n-5:])]
			}
			if bytes.HasSuffix(u.tail, []byte("\r\n.\r\n")) {
				u.inData = false
				u.tail = u.tail[:0]
				u.replies = append(u.replies, "250 2.0.0 Ok: queued as SINK\r\n"...)
			}
			return
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			u.line = append(u.line, p...)
			return
		}
		u.line = append(u.line, p[:i+1]...)
		p = p[i+1:]
		switch verb := strings.ToUpper(string(u.line[:min(4, len(u.line))])); verb {
		case "EHLO":
			u.replies = append(u.replies, benchEHLOReply...)
		case "DATA":
			u.inData = true
			u.tail = append(u.tail[:0], "\r\n"...) // data that is only "." ends too
			u.replies = append(u.replies, "354 go\r\n"...)
		case "QUIT":
			u.replies = append(u.replies, "221 bye\r\n"...)
		default:
			u.replies = append(u.replies, "250 2.0.0 Ok\r\n"...)
		}
		u.line = u.line[:0]
	}
}

// benchSession runs one session carrying msg (dot-stuffed, without its
// end) in reads of readSize, and returns the client's last reply before
// QUIT's.
func benchSession(tb testing.TB, u *benchUpstream, client []byte, readSize int) {
	s := NewSession(Config{UpstreamName: "127.0.0.1:10026", LendInput: true})
	settle := func() {
		for {
			u.receive(s.TakeUpstreamOutput())
			u.receive(s.TakeUpstreamLent())
			s.TakeClientOutput()
			s.TakeEvents()
			s.PollTimers()
			if len(u.replies) == 0 {
				return
			}
			r := u.replies
			u.replies = u.replies[len(u.replies):]
			s.HandleUpstreamData(r)
		}
	}
	s.HandleUpstreamConnected()
	s.HandleUpstreamData([]byte("220 sink.example ESMTP\r\n"))
	settle()
	for p := client; len(p) > 0 && !s.Done(); {
		read := p[:min(len(p), readSize)]
		p = p[len(read):]
		for len(read) > 0 && s.WantsClientInput() {
			read = read[s.HandleClientData(read):]
			settle()
		}
		if len(read) > 0 {
			tb.Fatalf("the session takes no more input with %d bytes left", len(read)+len(p))
		}
	}
	s.HandleClientClosed()
	settle()
	if !s.Done() {
		tb.Fatal("the session is not over")
	}
}

// benchMessage is a message like the perf harness's: a Postfix-like
// header section, then lines of text.
func benchMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("Received: from client.example (client.example [192.0.2.1])\r\n" +
		"\tby front.example (Postfix) with ESMTP id 4ZQ1x2Y3z4\r\n" +
		"\tfor <rcpt@example.net>; Mon, 1 Jun 2026 12:00:00 +0000 (UTC)\r\n" +
		"Delivered-To: someone-else@example.net\r\n" +
		"From: Sender <sender@example.org>\r\nTo: Recipient <rcpt@example.net>\r\n" +
		"Subject: load test message\r\nDate: Mon, 1 Jun 2026 12:00:00 +0000\r\n" +
		"Message-ID: <load.test@example.org>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
	const line = "The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqrst\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	return b.Bytes()
}

func BenchmarkSessionTransaction(b *testing.B) {
	for _, c := range []struct {
		name           string
		size, readSize int
	}{
		{"msg=10KiB/read=64KiB", 10 << 10, 64 << 10},
		{"msg=1MiB/read=64KiB", 1 << 20, 64 << 10},
		{"msg=1MiB/read=4KiB", 1 << 20, 4 << 10}, // Postfix's smtpd writes 4 KiB at a time
	} {
		b.Run(c.name, func(b *testing.B) {
			msg := benchMessage(c.size)
			client := []byte("EHLO front.example\r\n" +
				"XFORWARD NAME=client.example ADDR=192.0.2.1 PORT=54268 HELO=client.example IDENT=[UNAVAILABLE] PROTO=ESMTP SOURCE=REMOTE\r\n" +
				"MAIL FROM:<sender@example.org> SIZE=" + strconv.Itoa(len(msg)) + " BODY=8BITMIME\r\n" +
				"RCPT TO:<rcpt@example.net>\r\nDATA\r\n")
			client = append(append(client, msg...), ".\r\nQUIT\r\n"...)
			u := &benchUpstream{}
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				benchSession(b, u, client, c.readSize)
			}
		})
	}
}
