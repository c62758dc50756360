package core

import (
	"fmt"
	"strings"
)

// The upstream's repertoire, shared by the rapid state machine (which
// draws an op per unit) and FuzzSession (which reads one op byte per unit
// from its script): accepts, refusals, 421, closes, stalls, and the
// malformed and unsolicited replies of a broken or hostile upstream.

// upOp is one way the upstream answers.
type upOp uint8

const (
	opDefault     upOp = iota // the usual positive answer for the verb
	opTempFail                // 4xx
	opPermFail                // 5xx
	op421                     // 421, then it closes
	opClose                   // closes without a reply
	opStall                   // never answers
	opMultiline               // a multi-line positive reply
	op354                     // 354 (to a command or the proxy's DATA; else the default)
	op334                     // 334 (to a command; else the default)
	opMalformed               // a reply no server may send
	opBareLF                  // the default reply with bare LF line ends
	opUnsolicited             // the default reply and one more, in one read
	opCloseAfter              // 354 then close after some data bytes; else a reply cut short, then close
	opSplit                   // the default reply in two reads
	opHuge                    // a reply over MaxReplyBytes
	opReplyClose              // the default reply, then it closes
	numOps
)

// makeAct builds the act for op, with p varying codes and sizes; k is the
// unit's number (it makes end-of-data replies unique).
func makeAct(op upOp, p int, k int, what unitKind, line string) upAct {
	def := defaultReply(k, what, line)
	switch op {
	case opTempFail, opPermFail:
		// With p >= 8 a broken upstream sends one more line along.
		a := upAct{reply: fmt.Appendf(nil, "%d 4.%d.0 try again later\r\n", []int{450, 451, 452}[p%3], p%8)}
		if op == opPermFail {
			a.reply = fmt.Appendf(nil, "%d 5.%d.1 refused\r\n", []int{550, 554, 503, 501, 500}[p%5], p%8)
		}
		if p >= 8 {
			a.extra = []byte("250 2.0.0 unasked\r\n")
		}
		return a
	case op421:
		return upAct{reply: []byte("421 4.3.2 up.test closing connection\r\n"), closeAfterReply: true}
	case opClose:
		return upAct{kind: actClose}
	case opStall:
		return upAct{kind: actStall}
	case opMultiline:
		if what == uGreeting {
			return upAct{reply: []byte("220-up.test ESMTP\r\n220-second line\r\n220 ready\r\n")}
		}
		r := strings.TrimSuffix(string(def), "\r\n")
		code := r[:3]
		return upAct{reply: []byte(code + "-first line\r\n" + code + "-second line\r\n" + code + r[3:] + "\r\n")}
	case op354:
		if opensData(what) {
			return upAct{reply: []byte("354 go ahead\r\n")}
		}
	case op334:
		if what == uCommand {
			return upAct{reply: []byte("334 VXNlcm5hbWU6\r\n")}
		}
		// Elsewhere a 2xx nothing asked for (to the proxy's DATA it is
		// a protocol error; to an end of data, an acceptance).
		return upAct{reply: []byte("250 2.0.0 unexpected\r\n")}
	case opMalformed:
		return upAct{reply: []byte([]string{"hello\r\n", "2x0 what\r\n", "250x\r\n", "25\r\n", "650 six\r\n", "\r\n", "250-go on\r\nno\r\n"}[p%7])}
	case opBareLF:
		return upAct{reply: []byte(strings.ReplaceAll(string(def), "\r\n", "\n"))}
	case opUnsolicited:
		return upAct{reply: def, extra: []byte("250 2.0.0 unasked\r\n")}
	case opCloseAfter:
		if opensData(what) {
			return upAct{reply: []byte("354 go ahead\r\n"), closeAfter: 1 + p*13}
		}
		return upAct{kind: actClose, reply: def[:p%(len(def)-1)]}
	case opSplit:
		return upAct{reply: def, split: 1 + p%(len(def)-1)}
	case opHuge:
		return upAct{reply: []byte("250-" + strings.Repeat("x", MaxReplyBytes) + "\r\n250 end\r\n")}
	case opReplyClose:
		return upAct{reply: def, closeAfterReply: true}
	}
	return upAct{reply: def}
}

// defaultReply is what a Postfix after-filter smtpd says.
func defaultReply(k int, what unitKind, line string) []byte {
	switch what {
	case uGreeting:
		return []byte("220 up.test ESMTP\r\n")
	case uProxyDATA:
		return []byte("354 End data with <CR><LF>.<CR><LF>\r\n")
	case uMessage:
		return fmt.Appendf(nil, "250 2.0.0 Ok: queued as Q%d\r\n", k)
	case uRSET:
		return []byte("250 2.0.0 Ok\r\n")
	case uQUIT:
		return []byte("221 2.0.0 Bye\r\n")
	}
	verb, _, _ := cutAny(line, " \t")
	switch asciiUpper(verb) {
	case "EHLO":
		return []byte("250-up.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-starttls\r\n250-XFORWARD NAME ADDR PROTO HELO\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 8BITMIME\r\n")
	case "HELO":
		return []byte("250 up.test\r\n")
	case "MAIL":
		return []byte("250 2.1.0 Ok\r\n")
	case "RCPT":
		return []byte("250 2.1.5 Ok\r\n")
	case "DATA":
		return []byte("354 End data with <CR><LF>.<CR><LF>\r\n")
	case "QUIT":
		return []byte("221 2.0.0 Bye\r\n")
	case "AUTH":
		return []byte("334 VXNlcm5hbWU6\r\n")
	case "RSET", "NOOP", "XFORWARD", "XCLIENT":
		return []byte("250 2.0.0 Ok\r\n")
	case "VRFY":
		return []byte("252 2.0.0 maybe\r\n")
	}
	return []byte("502 5.5.2 Error: command not recognized\r\n")
}

// scriptSource answers unit k with the op in byte k of a fuzz script (the
// low four bits the op, the high four its parameter); past the end of the
// script every answer is the default.
type scriptSource []byte

func (s scriptSource) act(k int, what unitKind, line string) upAct {
	if k >= len(s) {
		return makeAct(opDefault, 0, k, what, line)
	}
	return makeAct(upOp(s[k]&0x0f), int(s[k]>>4), k, what, line)
}
