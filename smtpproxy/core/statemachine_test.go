package core

import (
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// rapidSource draws how the upstream answers each unit: mostly the usual
// answer, often a refusal or an odd but valid reply, now and then one
// that ends the upstream connection (so that sessions live long enough to
// carry messages).
type rapidSource struct{ t *rapid.T }

func (s rapidSource) act(k int, what unitKind, line string) upAct {
	op := opDefault
	// rapid draws small numbers most often: the usual answer is there.
	switch n := rapid.IntRange(0, 999).Draw(s.t, "upstream-odds"); {
	case n < 800 || what == uGreeting && n < 980:
	case n < 930:
		op = rapid.SampledFrom([]upOp{opTempFail, opPermFail, opMultiline, opBareLF, opSplit, op354, op334}).Draw(s.t, "upstream-odd")
	case n < 960:
		op = opCloseAfter
	default:
		op = rapid.SampledFrom([]upOp{op421, opClose, opStall, opMalformed, opUnsolicited, opHuge, opReplyClose}).Draw(s.t, "upstream-fails")
	}
	return makeAct(op, rapid.IntRange(0, 15).Draw(s.t, "upstream-param"), k, what, line)
}

// Generated client behaviour.

// smRecipients are RCPT TO: arguments: plain, postmaster, an address
// literal, a quoted local part with a parameter, a source route, no
// brackets, and one no Delivered-To value below names.
func smRecipients() []string {
	return []string{
		"<a@loop.test>", "<b@loop.test>", "<Postmaster>", "<c@[192.0.2.1]>",
		"<\"d e\"@loop.test> NOTIFY=NEVER", "<@relay.test:f@loop.test>", "g@nobrackets.test",
		"<x@elsewhere.test>",
	}
}

// smDeliveredTo spells the recipients' mailboxes as Delivered-To values
// in other ways (case, brackets, quotes, display names, comments, a
// trailing dot, lists), and some values that match none of them.
func smDeliveredTo() []string {
	return []string{
		"a@loop.test", "A@LOOP.TEST", "<a@loop.test>", "\"a\"@loop.test", "Name <a@loop.test> (comment)",
		"a@loop.test.", "x@y.test, b@loop.test", "b@loop.test (fwd)", "postmaster", "c@[192.0.2.1]",
		"\"d e\"@loop.test", "f@LOOP.test", "g@nobrackets.test",
		"a+ext@loop.test", "z@loop.test", "a@loop.test.example", "", "<>",
	}
}

// smCommands are command lines other than RCPT: valid, lower case,
// answered by the proxy, unknown, a SASL answer, a Unicode look-alike.
func smCommands() []string {
	return []string{
		"EHLO client.test", "HELO client.test", "ehlo client.test",
		"MAIL FROM:<s@remote.test>", "MAIL FROM:<> SIZE=100", "mail from:<s@remote.test> BODY=8BITMIME",
		"RSET", "NOOP", "noop x", "VRFY a", "HELP", "XFORWARD NAME=x.test ADDR=192.0.2.1",
		"XCLIENT ADDR=192.0.2.2", "XYZZY", "STARTTLS", "starttls", "BDAT 10 LAST", "AUTH PLAIN",
		"DATA x", "DATA", "DATA \t", "", "dGVzdA==", "*", "quıt",
	}
}

// smCommand draws one command line without its line end.
func smCommand(t *rapid.T) string {
	switch rapid.IntRange(0, 19).Draw(t, "command-kind") {
	case 0, 1, 2, 3, 4:
		verb := rapid.SampledFrom([]string{"RCPT TO:", "rcpt to:", "RCPT TO: ", "RCPT "}).Draw(t, "rcpt-verb")
		return verb + rapid.SampledFrom(smRecipients()).Draw(t, "rcpt")
	case 5:
		return "NOOP " + strings.Repeat("n", rapid.SampledFrom([]int{MaxCommandLine - 5, MaxCommandLine - 4, MaxCommandLine + 10, 3 * MaxCommandLine}).Draw(t, "long"))
	case 6:
		return rapid.SampledFrom([]string{"NO\x00OP", "NOOP\rX", "RCPT TO:<a@loop.test>\rRCPT TO:<b@loop.test>", "\x00"}).Draw(t, "faulty")
	case 7:
		if rapid.IntRange(0, 9).Draw(t, "quit?") == 9 {
			return "QUIT"
		}
	}
	return rapid.SampledFrom(smCommands()).Draw(t, "command")
}

func smEOL(t *rapid.T) string {
	switch rapid.IntRange(0, 19).Draw(t, "eol") {
	case 16, 17, 18:
		return "\n"
	case 19:
		return "\r\r\n"
	}
	return "\r\n"
}

// smMessage draws message data, its end of data included: header fields
// (Delivered-To fields that match an accepted recipient or not, folded,
// long, odd), a separator or none, body lines with dots, bare CRs, bare LF
// line ends, long lines and smuggling attempts; stuffed or not.
func smMessage(t *rapid.T) string {
	var b strings.Builder
	line := func(s string) {
		if strings.HasPrefix(s, ".") && rapid.IntRange(0, 4).Draw(t, "stuff") < 4 {
			s = "." + s
		}
		b.WriteString(s + smEOL(t))
	}
	for range rapid.IntRange(0, 6).Draw(t, "fields") {
		switch rapid.IntRange(0, 11).Draw(t, "field") {
		case 0, 1, 2:
			line("Delivered-To: " + rapid.SampledFrom(smDeliveredTo()).Draw(t, "delivered-to"))
		case 3:
			line(rapid.SampledFrom([]string{"Delivered-To : ", "DELIVERED-TO:", "delivered-to:\t"}).Draw(t, "dt-name") + rapid.SampledFrom(smDeliveredTo()).Draw(t, "delivered-to"))
		case 4:
			line("Delivered-To: \"Some Name\"")
			line("\t<" + rapid.SampledFrom([]string{"a@loop.test", "b@loop.test", "q@loop.test"}).Draw(t, "folded") + ">")
		case 5:
			line("Received: from client.test by front.test; Tue, 25 Nov 2025 15:00:00 +0000")
		case 6:
			line("Subject: " + rapid.SampledFrom([]string{"hello", "a\rb", "x\x00y", "ünïcode", "..dots"}).Draw(t, "subject"))
		case 7:
			line(" continued text")
		case 8:
			line("X-Long: " + strings.Repeat("l", rapid.SampledFrom([]int{100, 600, 3000}).Draw(t, "long-field")))
		case 9:
			line(rapid.SampledFrom([]string{"\vodd", "\fodd", "Name With Space: x", "From sender@remote.test Tue Nov 25", ":colon", "X\r: cr"}).Draw(t, "odd-line"))
		default:
			line("From: s@remote.test")
		}
	}
	switch rapid.IntRange(0, 5).Draw(t, "separator") {
	case 0:
	case 1:
		b.WriteString("\n")
	default:
		b.WriteString("\r\n")
	}
	for range rapid.IntRange(0, 6).Draw(t, "body-lines") {
		switch rapid.IntRange(0, 9).Draw(t, "body") {
		case 0:
			b.WriteString(rapid.SampledFrom([]string{"\n.\n", "\r\n.\r", "\n.\r\n", "\r.\r\n", "x\r\n.\rX\r\n", ".\r\r\n"}).Draw(t, "smuggle"))
		case 1:
			line(strings.Repeat("w", rapid.SampledFrom([]int{1000, 5000, 70000}).Draw(t, "long-line")))
		case 2:
			line("Delivered-To: a@loop.test")
		default:
			line(rapid.SampledFrom([]string{"body", ".", "..", ".x", "", "x\r", "\r", "MAIL FROM:<evil@x.test>", "-- sig"}).Draw(t, "body-line"))
		}
	}
	if rapid.IntRange(0, 19).Draw(t, "no-end") < 19 {
		b.WriteString(".\r\n")
	}
	return b.String()
}

// TestSessionStateMachine runs whole sessions as rapid state machines:
// generated client behaviour (valid and malformed commands, pipelined
// bursts, messages with generated content, disconnects, timeouts,
// shutdown) against generated upstream behaviour (accepts, refusals, 421,
// closes, stalls, malformed, unsolicited and huge replies, a close in the
// middle of the data), through the sans-I/O core with random read sizes.
// After every step the session is checked against the reference model
// and the invariants of SPEC section 2 (driver.verify): each reply the
// client got, in order; each command and content line the strict upstream
// read; the accepted recipients; the loop checks made; 2xx end-of-data
// replies only as the upstream gave them for messages it read; no loop
// delivered; bounded buffers. It logs how many steps and checks it ran.
func TestSessionStateMachine(t *testing.T) {
	var runs, sessions, steps, checks, messages, loops int
	rapid.Check(t, func(t *rapid.T) {
		cfg := refConfig{
			reject:    rapid.IntRange(0, 3).Draw(t, "bare-lf-reject") == 3,
			dryRun:    rapid.IntRange(0, 9).Draw(t, "dry-run") == 9,
			maxHeader: rapid.SampledFrom([]int{DefaultMaxHeaderBytes, 512, 2048}).Draw(t, "max-header"),
			lend:      rapid.Bool().Draw(t, "lend-input"),
		}
		if rapid.Bool().Draw(t, "drop-keywords") {
			cfg.drop = []string{"Size", "XFORWARD"}
		}
		// A run is a series of sessions under one configuration: when
		// one ends, the next step opens another.
		var m *refModel
		var d *driver
		finish := func() {
			d.verify(true)
			sessions++
			steps += d.steps
			checks += d.checks
			messages += len(m.txRcpts)
			loops += countLoops(m)
		}
		open := func() {
			m = newRefModel(cfg, rapidSource{t})
			d = newDriver(t, m, func(n int) int {
				if rapid.IntRange(0, 3).Draw(t, "whole-read") == 3 {
					return n
				}
				return rapid.IntRange(1, max(1, min(n, 64))).Draw(t, "read")
			})
			d.verify(false)
		}
		open()
		act := func(f func()) func(*rapid.T) {
			return func(*rapid.T) {
				if m.done {
					finish()
					open()
				}
				f()
			}
		}
		send := func(p string) {
			m.feed([]byte(p))
			d.feed([]byte(p))
		}
		t.Repeat(map[string]func(*rapid.T){
			"command": act(func() {
				send(smCommand(t) + smEOL(t))
			}),
			"pipelined burst": act(func() {
				var b strings.Builder
				for range rapid.IntRange(2, 6).Draw(t, "burst") {
					b.WriteString(smCommand(t) + smEOL(t))
				}
				send(b.String())
			}),
			"transaction": act(func() {
				// MAIL, RCPTs and DATA, pipelined or not, and a message.
				cmds := "MAIL FROM:<s@remote.test>\r\n"
				for range rapid.IntRange(1, 3).Draw(t, "rcpts") {
					cmds += "RCPT TO:" + rapid.SampledFrom(smRecipients()).Draw(t, "rcpt") + "\r\n"
				}
				if rapid.Bool().Draw(t, "pipelined") {
					send(cmds + "DATA\r\n" + smMessage(t))
					return
				}
				send(cmds)
				send("DATA\r\n")
				send(smMessage(t))
			}),
			"message": act(func() {
				send("DATA" + smEOL(t) + smMessage(t))
			}),
			"message then disconnect": act(func() {
				msg := "DATA\r\n" + smMessage(t)
				send(msg[:rapid.IntRange(0, len(msg)).Draw(t, "cut")])
				m.clientClosed()
				d.clientClosed()
			}),
			"message, the upstream lost midway": act(func() {
				msg := "DATA\r\n" + smMessage(t)
				cut := rapid.IntRange(0, len(msg)).Draw(t, "cut")
				send(msg[:cut])
				m.upstreamLost()
				d.upstreamLost()
				send(msg[cut:])
			}),
			"message then timeout": act(func() {
				msg := "DATA\r\n" + smMessage(t)
				send(msg[:rapid.IntRange(0, len(msg)).Draw(t, "cut")])
				m.clientTimeout()
				d.clientTimeout()
			}),
			"session ends": act(func() {
				switch rapid.IntRange(0, 2).Draw(t, "how") {
				case 0:
					m.clientClosed()
					d.clientClosed()
				case 1:
					m.clientTimeout()
					d.clientTimeout()
				case 2:
					// Shutdown ends the session at once between
					// transactions, else after the current one.
					m.shutdownNow()
					d.shutdown()
				}
			}),
			"": func(*rapid.T) {
				d.verify(false)
			},
		})
		m.clientClosed()
		d.clientClosed()
		finish()
		runs++
	})
	t.Logf("%d runs, %d sessions, %d steps checked, %d oracle checks, %d messages begun, %d judged loops", runs, sessions, steps, checks, messages, loops)
}

// countLoops counts the messages the model judged a loop.
func countLoops(m *refModel) int {
	n := 0
	for _, r := range m.replies {
		if r.exact != nil && strings.HasPrefix(string(r.exact), "554 5.4.6") || len(r.prefix) > 0 && strings.HasPrefix(r.prefix[0], "554 5.4.6") {
			n++
		}
	}
	return n
}
