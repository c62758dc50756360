package fuzz

import (
	"bytes"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// FuzzVerdict drives loopcheck.Check with a generated recipient and message.
// Oracles:
//   - superset of Postfix: whatever a straightforward model of local(8)'s
//     Delivered-To check (postfixBounces, written here independently of our
//     header and address packages) bounces as a loop, Check calls a loop;
//   - a matching Delivered-To field put first always makes a loop;
//   - the verdict names one of the recipients, as spelled;
//   - line ends do not matter: bare LF and CRLF give the same verdict;
//   - bytes after the header section do not matter;
//   - the recipient judged as Postfix judges it (its expansion given with
//     postfix, as -loops=postfix does) loops whenever the model bounces,
//     and only when the lenient verdict loops too (-loops=any catches
//     more).
func FuzzVerdict(f *testing.F) {
	seeds := []struct{ local, domain, msg string }{
		{"user", "local.test", "Delivered-To: user@local.test\r\n\r\nbody\r\n"},
		{"user", "local.test", "Received: from x\r\n\tby y\r\nDelivered-To: USER@Local.Test\r\nSubject: s\r\n\r\n"},
		{"loopuser", "local.test", "Delivered-To : loopuser@local.test\n\nx\n"},
		{"a.b+ext", "example.org", "Delivered-To: a.b+ext@example.org\r\n"},
		{"user", "local.test", "Subject: s\r\nnot a header\r\nDelivered-To: user@local.test\r\n\r\n"},
		{"user", "local.test", "Delivered-To: \"User\" <user@local.test> (c)\r\n\r\n"},
		{"user", "local.test", "Delivered-To: x@y,\r\n user@local.test\r\n\r\n"},
		{"user", "local.test", "X: \xff\xfe\r\nDelivered-To:\tuser@local.test \r\n\r\n"},
		{"user", "local.test", " leading\r\nDelivered-To: user@local.test\r\n"},
		{"postmaster", "", "Delivered-To: postmaster\r\n\r\n"},
	}
	for _, s := range seeds {
		f.Add(s.local, s.domain, []byte(s.msg))
	}
	f.Fuzz(func(t *testing.T, local, domain string, msg []byte) {
		local, domain = sanitizeAtom(local, "user"), sanitizeDomain(domain)
		mailbox := local
		if domain != "" {
			mailbox += "@" + domain
		}
		rcpts := []string{"<" + mailbox + ">"}
		got := loopcheck.Check(rcpts, msg)

		if got.Loop && got.Recipient != mailbox {
			t.Fatalf("verdict names %q, which is not the recipient %q", got.Recipient, mailbox)
		}
		if !got.Loop && got.Recipient != "" {
			t.Fatalf("a pass names a recipient: %+v", got)
		}
		if postfixBounces(mailbox, msg) && !got.Loop {
			t.Fatalf("Postfix's local(8) would bounce this as a loop for %s, Check passed it:\n%q", mailbox, msg)
		}
		first := append([]byte("Delivered-To: "+mailbox+"\r\n"), msg...)
		if v := loopcheck.Check(rcpts, first); !v.Loop {
			t.Fatalf("a matching first field did not make a loop:\n%q", first)
		}
		if v := loopcheck.Check(rcpts, bareLFToCRLF(msg)); v != got {
			t.Fatalf("CRLF form gives %+v, LF form %+v:\n%q", v, got, msg)
		}
		if v := loopcheck.Check(rcpts, msg[:header.SectionEnd(msg)]); v != got {
			t.Fatalf("header section alone gives %+v, whole message %+v:\n%q", v, got, msg)
		}
		p, err := address.ParsePath(rcpts[0])
		if err != nil {
			t.Fatalf("the generated recipient %q does not parse: %v", rcpts[0], err)
		}
		exact := loopcheck.NewRecipient(rcpts[0]).WithExpansion([]address.Addr{p.Addr}, true)
		pv := loopcheck.CheckRecipients([]loopcheck.Recipient{exact}, msg)
		if postfixBounces(mailbox, msg) && !pv.Loop {
			t.Fatalf("Postfix's local(8) would bounce this as a loop for %s, the postfix-mode check passed it:\n%q", mailbox, msg)
		}
		if pv.Loop && !got.Loop {
			t.Fatalf("the postfix-mode check finds a loop the lenient one does not:\n%q", msg)
		}
	})
}

// sanitizeAtom maps s to a non-empty ASCII dot-atom-ish local part so that
// Postfix's quote_822_local leaves it as it is (the model below relies on it).
func sanitizeAtom(s, fallback string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '+', c == '-', c == '_':
			b.WriteByte(c)
		case c == '.' && b.Len() > 0:
			b.WriteByte(c)
		}
	}
	out := strings.TrimRight(b.String(), ".")
	out = strings.ReplaceAll(out, "..", ".")
	if out == "" || strings.Contains(out, "..") {
		return fallback
	}
	return out
}

// sanitizeDomain maps s to an LDH domain, or "" (a recipient without domain).
func sanitizeDomain(s string) string {
	var labels []string
	for _, l := range strings.Split(strings.ToLower(s), ".") {
		var b strings.Builder
		for _, c := range []byte(l) {
			if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
				b.WriteByte(c)
			}
		}
		if b.Len() > 0 {
			labels = append(labels, b.String())
		}
	}
	return strings.Join(labels, ".")
}

// bareLFToCRLF writes every LF not preceded by CR as CRLF; the lines stay
// the same lines ("a\r\r\n" stays the line "a\r").
func bareLFToCRLF(msg []byte) []byte {
	out := make([]byte, 0, len(msg)+len(msg)/8)
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// postfixBounces is a model of Postfix local(8)'s loop check
// (reference/postfix.md), independent of our packages: it reads the primary
// header block up to the first empty or non-header line; a header line has
// a name of printable ASCII other than ':' then optional SP/HTAB then ':'; a
// line starting with SP/HTAB continues a header only after one; for each
// Delivered-To field the value is the first physical line after leading
// whitespace, not trimmed at the end, and it is compared with the recipient
// case-folded and exactly. The recipient is a dot-atom, so quote_822_local
// leaves it as it is. Only the first 1000 Delivered-To fields are compared
// (DELIVERED_HDR_LIMIT), and a field by the first 2048 bytes of its line
// as cleanup stores it, name and colon included (a queue file record).
func postfixBounces(rcpt string, msg []byte) bool {
	want := asciiLower([]byte(rcpt))
	inHeader := false
	fields := 0
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			// A CR before the LF belongs to the line end; any other CR
			// is content.
			line, msg = bytes.TrimSuffix(msg[:i], []byte("\r")), msg[i+1:]
		} else {
			msg = nil
		}
		if len(line) == 0 {
			return false
		}
		if line[0] == ' ' || line[0] == '\t' {
			if !inHeader {
				return false
			}
			continue
		}
		n := postfixNameLen(line)
		if n == 0 {
			return false
		}
		inHeader = true
		colon := bytes.IndexByte(line, ':')
		if !bytes.EqualFold(line[:n], []byte("delivered-to")) {
			continue
		}
		if fields++; fields > 1000 {
			return false
		}
		value := line[colon+1:]
		if n := 2048 - len("Delivered-To:"); len(value) > n {
			value = value[:n]
		}
		value = bytes.TrimLeft(value, " \t")
		if bytes.Equal(asciiLower(value), want) {
			return true
		}
	}
	return false
}

// postfixNameLen is the length of a header name at the start of line when
// the line is a header line (name, optional SP/HTAB, colon), else 0.
func postfixNameLen(line []byte) int {
	n := 0
	for n < len(line) && line[n] > ' ' && line[n] < 0x7f && line[n] != ':' {
		n++
	}
	if n == 0 {
		return 0
	}
	i := n
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	if i < len(line) && line[i] == ':' {
		return n
	}
	return 0
}

func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}
