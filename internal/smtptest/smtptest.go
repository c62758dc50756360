// Package smtptest is the scaffold of the tests that run the proxy over
// connections: a scripted SMTP server standing in for the after-filter
// smtpd (Upstream), a raw SMTP client that reads whole replies and opens
// a message (Client), a runner for the server under test (Serve), and a
// stand-in loop check (CheckDeliveredTo). It imports nothing of the
// proxy, so every package's tests can use it, the core's included.
//
// Everything it starts ends with the test: listeners and connections are
// closed, and the goroutines that served them have returned, when the
// test's cleanups have run.
package smtptest

import (
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// Replies of the default script, as Postfix's smtpd gives them, and the
// 354 the proxy gives itself (the Upstream's answer to DATA is the same).
const (
	Greeting = "220 after.example ESMTP Postfix\r\n"
	OK       = "250 2.0.0 Ok\r\n"
	Data354  = "354 End data with <CR><LF>.<CR><LF>\r\n"
	Queued   = "250 2.0.0 Ok: queued as 4XyZ1\r\n"
	Bye      = "221 2.0.0 Bye\r\n"
)

// EHLOReply is the default script's EHLO reply: Postfix's, with STARTTLS
// and CHUNKING, which the proxy removes.
const EHLOReply = "250-after.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"

// CheckDeliveredTo is a stand-in verdict, simpler than loopcheck.Check so
// that a test's outcome does not hang on address parsing: a loop when a
// Delivered-To line of the section (CRLF lines) names an accepted
// recipient's argument, brackets and parameters removed, ignoring case.
func CheckDeliveredTo(rcpts []string, section []byte) loopcheck.Verdict {
	for _, line := range strings.Split(string(section), "\r\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "Delivered-To") {
			continue
		}
		for _, r := range rcpts {
			mbox := strings.Trim(strings.Fields(r + " x")[0], "<>")
			if strings.EqualFold(strings.TrimSpace(value), mbox) {
				return loopcheck.Verdict{Loop: true, Recipient: mbox}
			}
		}
	}
	return loopcheck.Verdict{}
}
