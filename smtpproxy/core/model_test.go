package core

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
	"pgregory.net/rapid"
)

// modelUpstream is a fake upstream whose every reply is drawn by rapid,
// and which keeps the transaction state a real server keeps, so the test
// knows which recipients were accepted for each message.
type modelUpstream struct {
	t         *rapid.T
	raw       bytes.Buffer
	partial   []byte
	inData    bool
	cur       bytes.Buffer
	rcpts     []string
	messages  []string
	issued    []string // end-of-data replies given, in order
	lastData  string   // the last end-of-data reply given
	stallData bool     // do not answer the end of data
	// loopsIn counts messages received that were loops for the
	// recipients this upstream accepted.
	loopsIn int
}

func (u *modelUpstream) receive(p []byte) string {
	u.raw.Write(p)
	u.partial = append(u.partial, p...)
	var out strings.Builder
	for {
		i := bytes.IndexByte(u.partial, '\n')
		if i < 0 {
			return out.String()
		}
		line := string(u.partial[:i+1])
		u.partial = u.partial[i+1:]
		if u.inData {
			if line == ".\r\n" {
				u.inData = false
				msg := unstuff(u.cur.String())
				u.cur.Reset()
				u.messages = append(u.messages, msg)
				sec := []byte(msg[:header.SectionEnd([]byte(msg))])
				if checkDeliveredTo(u.rcpts, sec).Loop {
					u.loopsIn++
				}
				r := rapid.SampledFrom([]string{"250", "250", "451", "554"}).Draw(u.t, "eod")
				reply := fmt.Sprintf("%s 2.0.0 reply %d\r\n", r, len(u.messages))
				u.issued = append(u.issued, reply)
				u.lastData = reply
				u.rcpts = nil
				if u.stallData {
					continue
				}
				out.WriteString(reply)
				continue
			}
			u.cur.WriteString(line)
			continue
		}
		cmd := strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(cmd, " ")
		code := rapid.SampledFrom([]string{"250", "250", "250", "450", "550"}).Draw(u.t, "reply to "+verb)
		switch strings.ToUpper(verb) {
		case "DATA":
			code = rapid.SampledFrom([]string{"354", "354", "503", "451"}).Draw(u.t, "reply to DATA")
		case "RSET", "QUIT":
			code = "250"
		}
		ok := code[0] == '2'
		switch strings.ToUpper(verb) {
		case "MAIL":
			if ok {
				u.rcpts = nil
			}
		case "RCPT":
			if ok {
				_, a, _ := strings.Cut(arg, ":")
				u.rcpts = append(u.rcpts, a)
			}
		case "RSET", "EHLO", "HELO":
			if ok {
				u.rcpts = nil
			}
		case "DATA":
			u.inData = code == "354"
		}
		out.WriteString(code + " x\r\n")
	}
}

func unstuff(s string) string {
	lines := strings.SplitAfter(s, "\r\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, ".")
	}
	return strings.Join(lines, "")
}

func countReplies(t *rapid.T, p []byte) []string {
	var r replyReader
	var out []string
	for len(p) > 0 {
		n, rep, err := r.feed(p)
		if err != nil {
			t.Fatalf("the client got a malformed reply stream: %v in %q", err, p)
		}
		p = p[n:]
		if rep != nil {
			out = append(out, string(rep.Raw))
		}
	}
	if r.pending() {
		t.Fatalf("the client got an unfinished reply")
	}
	return out
}

// TestModelSessionInvariants drives whole sessions of random commands,
// messages, upstream replies and faults, and checks the invariants of
// SPEC section 2 after every step: one reply per command; a 2xx
// end-of-data reply only when the upstream gave it, byte for byte; no loop
// message reaches the upstream; canonical framing upstream.
func TestModelSessionInvariants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		up := &modelUpstream{t: t}
		s := NewSession(Config{UpstreamName: "up", Check: checkDeliveredTo})
		var client []byte
		upClosed := false
		flush := func() {
			for {
				client = append(client, s.TakeClientOutput()...)
				out := s.TakeUpstreamOutput()
				if upClosed && len(out) > 0 {
					t.Fatalf("wrote %q upstream after closing it", out)
				}
				if s.UpstreamGone() {
					upClosed = true
				}
				if len(out) == 0 {
					return
				}
				if r := up.receive(out); r != "" && !upClosed {
					s.UpstreamData([]byte(r))
				}
			}
		}
		var pending []byte
		send := func(p string) {
			pending = append(pending, p...)
			for len(pending) > 0 && s.WantsClientInput() {
				n := s.ClientData(pending)
				pending = pending[n:]
				flush()
			}
		}
		takeReplies := func() []string {
			r := countReplies(t, client)
			client = client[:0]
			return r
		}
		s.UpstreamConnected()
		s.UpstreamData([]byte("220 up\r\n"))
		flush()
		if r := takeReplies(); len(r) != 1 {
			t.Fatalf("greeting: %q", r)
		}
		commands := []string{
			"EHLO c", "HELO c", "MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RCPT TO:<b@x>", "RSET", "NOOP",
			"STARTTLS", "BDAT 10", "NOOP " + strings.Repeat("z", MaxCommandLine), "NO\x00OP", "RCPT TO:<a@x>\rX", "VRFY a",
		}
		headers := []string{"Subject: x", "Delivered-To: a@x", "Delivered-To: b@x", "X: y", " folded", "bad line"}
		bodies := []string{"a", "..", ".x", "x\n.", "X\r", ".\rX", "", "MAIL FROM:<e@x>", "\n.\n"}
		steps := rapid.IntRange(1, 25).Draw(t, "steps")
		for i := 0; i < steps && !s.Done(); i++ {
			switch rapid.IntRange(0, 9).Draw(t, "action") {
			case 0, 1, 2, 3, 4: // one command, then its reply
				cmd := rapid.SampledFrom(commands).Draw(t, "cmd")
				eol := rapid.SampledFrom([]string{"\r\n", "\n"}).Draw(t, "eol")
				send(cmd + eol)
				if r := takeReplies(); len(r) != 1 {
					t.Fatalf("%q got %d replies: %q", cmd, len(r), r)
				}
			case 5, 6: // pipelined batch
				n := rapid.IntRange(2, 4).Draw(t, "batch")
				var b strings.Builder
				for j := 0; j < n; j++ {
					b.WriteString(rapid.SampledFrom(commands).Draw(t, "cmd") + "\r\n")
				}
				send(b.String())
				if r := takeReplies(); len(r) != n && !s.Done() {
					t.Fatalf("batch of %d got %d replies: %q", n, len(r), r)
				} else if len(r) > n {
					t.Fatalf("batch of %d got %d replies", n, len(r))
				}
			case 7: // DATA and, on 354, a message
				send("DATA\r\n")
				r := takeReplies()
				if len(r) != 1 {
					t.Fatalf("DATA got %d replies: %q", len(r), r)
				}
				if !strings.HasPrefix(r[0], "354") {
					break
				}
				var msg strings.Builder
				for _, h := range rapid.SliceOfN(rapid.SampledFrom(headers), 0, 4).Draw(t, "headers") {
					msg.WriteString(h + "\r\n")
				}
				msg.WriteString("\r\n")
				for _, b := range rapid.SliceOfN(rapid.SampledFrom(bodies), 0, 4).Draw(t, "body") {
					msg.WriteString(b + "\r\n")
				}
				before, loopsBefore := len(up.messages), up.loopsIn
				whole := msg.String() + ".\r\n"
				switch rapid.IntRange(0, 5).Draw(t, "fault") {
				case 0: // the upstream fails partway through
					cut := rapid.IntRange(0, len(whole)-1).Draw(t, "cut")
					send(whole[:cut])
					s.UpstreamClosed("reset the connection")
					flush()
					send(whole[cut:])
				case 1: // the upstream never answers the end of data
					up.stallData = true
					send(whole)
					if s.Timers().Upstream {
						s.TimerExpired(TimerUpstreamReply)
						flush()
					}
					up.stallData = false
				default:
					send(whole)
				}
				r = takeReplies()
				if len(r) != 1 {
					t.Fatalf("end of data got %d replies: %q", len(r), r)
				}
				if r[0][0] == '2' {
					if len(up.messages) != before+1 || r[0] != up.lastData {
						t.Fatalf("2xx end-of-data reply %q the upstream did not give (it gave %q)", r[0], up.issued)
					}
				}
				if up.loopsIn != loopsBefore {
					t.Fatalf("a loop message reached the upstream: %q", up.messages[len(up.messages)-1])
				}
			case 8: // the upstream fails
				s.UpstreamClosed("closed the connection")
				flush()
				send("NOOP\r\n")
				if r := takeReplies(); len(r) != 1 || !strings.HasPrefix(r[0], "421 ") {
					t.Fatalf("after the upstream failed: %q", r)
				}
			case 9: // the client idles out
				s.TimerExpired(s.Timers().Client)
				flush()
				if r := takeReplies(); len(r) != 1 || r[0] != replyTimeout || !s.Done() {
					t.Fatalf("idle client: %q", r)
				}
			}
			raw := up.raw.Bytes()
			if bytes.Count(raw, []byte("\n")) != bytes.Count(raw, []byte("\r\n")) {
				t.Fatalf("bare LF upstream: %q", raw)
			}
		}
	})
}

// TestPropertyChunkingDoesNotMatter: however the client's bytes are cut
// into reads, the client receives exactly the same bytes, and the upstream
// the same commands and delivered messages, as when everything arrives in
// one piece. (The raw bytes of a message that is aborted may differ in
// how much of it was written before the connection was closed.) Messages are built near the
// header limit, where a chunk boundary could otherwise change the verdict.
func TestPropertyChunkingDoesNotMatter(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		limit := rapid.IntRange(8, 120).Draw(t, "limit")
		var msg strings.Builder
		for _, h := range rapid.SliceOfN(rapid.SampledFrom([]string{
			"Subject: x", "Delivered-To: a@x", "X-Pad: " + strings.Repeat("p", 20), " folded", "Hello world", "Subj",
		}), 0, 5).Draw(t, "headers") {
			msg.WriteString(h + "\r\n")
		}
		msg.WriteString(rapid.SampledFrom([]string{"", "\r\n", "\n"}).Draw(t, "sep"))
		msg.WriteString(rapid.SampledFrom([]string{"body\r\n", strings.Repeat("b", 100) + "\r\n", ".\n\r\n", "x\n.\nNOOP\r\n"}).Draw(t, "body"))
		input := "MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n" + msg.String() + ".\r\nNOOP\r\n"
		cfg := Config{Check: checkDeliveredTo, MaxHeaderBytes: limit, BareLF: rapid.SampledFrom([]BareLFPolicy{BareLFNormalize, BareLFReject}).Draw(t, "barelf")}
		run := func(cuts []int) (string, string) {
			h := newHarness(t, cfg)
			h.connect()
			prev := 0
			for _, c := range append(cuts, len(input)) {
				if c < prev {
					continue
				}
				h.fromClient(input[prev:c])
				prev = c
			}
			return h.client.String(), fmt.Sprintf("%q %q", h.up.commands, h.up.messages)
		}
		wantClient, wantUp := run(nil)
		gotClient, gotUp := run(cutsFor(t, len(input)))
		if gotClient != wantClient || gotUp != wantUp {
			t.Fatalf("chunking changed the outcome for %q:\nclient %q\nwant   %q\nupstream %q\nwant     %q", input, gotClient, wantClient, gotUp, wantUp)
		}
	})
}
