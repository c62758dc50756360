package core

// Upstream replies (RFC 5321 4.2): assembled line by line, checked for
// shape (three digits, the first 2 to 5, then SP, '-' or the line end) and
// kept byte for byte, so a canonical reply is relayed as it came;
// the EHLO reply loses the keywords the proxy cannot carry. A reply of
// the wrong shape or over MaxReplyBytes is an upstream failure.

import "bytes"

// MaxReplyBytes bounds one upstream reply, all its lines together. Real
// replies are a few hundred bytes (a long EHLO reply is about 300); a reply
// larger than this is a protocol error and ends the upstream connection, so
// a broken or hostile upstream cannot make the session buffer without limit.
const MaxReplyBytes = 64 << 10

// Reply is one complete SMTP reply as the upstream sent it: every line,
// each re-terminated with CRLF (a canonical reply is kept byte for byte).
type Reply struct {
	Raw  []byte // all lines, CRLF-terminated
	Code int    // the three-digit code of the last line
}

// Class returns the first digit of the reply code (2 for 2xx, ...).
func (r Reply) Class() int { return r.Code / 100 }

// FirstLine returns the first line of the reply without its line end, for
// logs.
func (r Reply) FirstLine() string {
	line, _, _ := bytes.Cut(r.Raw, []byte("\r\n"))
	return string(line)
}

// replyReader assembles upstream bytes into complete replies. It holds at
// most MaxReplyBytes of one reply, plus nothing else: bytes after a
// complete reply stay with the caller.
type replyReader struct {
	buf  []byte // lines of the reply being read, CRLF-terminated
	line []byte // the current, incomplete line
	rep  Reply  // the reply last completed; its Raw is buf until the next call
}

// replyError says what was wrong with an upstream reply; its text is a
// verb phrase that follows "upstream HOST" in a reply to the client.
type replyError string

func (e replyError) Error() string { return string(e) }

const (
	errReplyTooLong   replyError = "sent a reply over 65536 bytes"
	errReplyMalformed replyError = "sent a malformed reply"
)

// feed consumes bytes of p until one reply is complete. It returns the
// number of bytes consumed, the reply when one was completed (valid until
// the next call), and an error when the bytes cannot be a reply.
// A line ends in LF; a CR directly before it is part of the line end.
func (r *replyReader) feed(p []byte) (n int, reply *Reply, err error) {
	for n < len(p) {
		i := bytes.IndexByte(p[n:], '\n')
		if i < 0 {
			if err := r.appendLine(p[n:]); err != nil {
				return len(p), nil, err
			}
			return len(p), nil, nil
		}
		if err := r.appendLine(p[n : n+i]); err != nil {
			return n + i + 1, nil, err
		}
		n += i + 1
		line := r.line
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		last, err := checkReplyLine(line)
		if err != nil {
			return n, nil, err
		}
		if len(r.buf)+len(line)+2 > MaxReplyBytes {
			return n, nil, errReplyTooLong
		}
		r.buf = append(r.buf, line...)
		r.buf = append(r.buf, '\r', '\n')
		r.line = r.line[:0]
		if last {
			code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
			// The reply lends buf until the next call, which starts a new
			// reply in the same array: no allocation per reply.
			r.rep = Reply{Raw: r.buf, Code: code}
			r.buf = r.buf[:0]
			return n, &r.rep, nil
		}
	}
	return n, nil, nil
}

func (r *replyReader) appendLine(p []byte) error {
	if len(r.buf)+len(r.line)+len(p) > MaxReplyBytes {
		return errReplyTooLong
	}
	r.line = append(r.line, p...)
	return nil
}

// checkReplyLine checks one reply line (without line end): three digits,
// the first 2-5, then end of line, SP or '-'. It reports whether the line
// is the last of its reply.
func checkReplyLine(line []byte) (last bool, err error) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' ||
		!isDigit(line[1]) || !isDigit(line[2]) {
		return false, errReplyMalformed
	}
	if len(line) == 3 {
		return true, nil
	}
	switch line[3] {
	case ' ':
		return true, nil
	case '-':
		return false, nil
	}
	return false, errReplyMalformed
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// alwaysDroppedEHLOKeywords are the EHLO extensions the proxy cannot carry:
// it never speaks TLS and stays in command mode for BDAT, so advertising
// them would invite a client to use what then fails.
var alwaysDroppedEHLOKeywords = []string{"STARTTLS", "CHUNKING", "BINARYMIME"}

// filterEHLO returns the EHLO reply raw (CRLF lines, as from replyReader)
// without the lines whose keyword (the first word of the text, compared
// case-insensitively) is in drop. The first line (the server's name) is
// never dropped. The result stays a well-formed reply: every line but the
// last has '-' after the code, the last has SP. The result is appended to
// dst.
func filterEHLO(dst, raw []byte, drop []string) []byte {
	start := len(dst)
	first := true
	for len(raw) > 0 {
		line, rest, _ := bytes.Cut(raw, []byte("\r\n"))
		raw = rest
		if !first && dropKeyword(line, drop) {
			continue
		}
		first = false
		dst = append(dst, line...)
		dst = append(dst, '\r', '\n')
	}
	// Re-mark continuation: all lines '-' but the last.
	for i := start; i < len(dst); {
		j := bytes.Index(dst[i:], []byte("\r\n")) + i
		if j-i >= 4 {
			if j+2 == len(dst) {
				dst[i+3] = ' '
			} else {
				dst[i+3] = '-'
			}
		} else if j+2 != len(dst) {
			// A bare "250" line in the middle: give it the '-' it needs.
			dst = append(dst[:j], append([]byte("-"), dst[j:]...)...)
			j++
		}
		i = j + 2
	}
	return dst
}

func dropKeyword(line []byte, drop []string) bool {
	if len(line) <= 4 {
		return false
	}
	text := line[4:]
	kw := text
	if i := bytes.IndexAny(text, " \t"); i >= 0 {
		kw = text[:i]
	}
	for _, d := range alwaysDroppedEHLOKeywords {
		if equalFoldASCII(string(kw), d) {
			return true
		}
	}
	for _, d := range drop {
		if equalFoldASCII(string(kw), d) {
			return true
		}
	}
	return false
}
