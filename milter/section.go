package milter

import (
	"slices"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/header"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// placeholder stands in the rebuilt section for a run of header fields the
// verdict does not read (see section.add). It is itself such a field, so
// a continuation line after it still continues a field that is not
// Delivered-To:, as it did after the fields it replaces.
const placeholder = "X:\r\n"

// section rebuilds a message's header section from the MTA's header
// events, for loopcheck: the raw section equivalent to the events is, per
// event, the name, a colon, the value and CRLF, with every LF not preceded
// by CR turned into CRLF (Postfix sends a folded value with LF line ends
// and no CR), and at the end the empty line. With the leading-space
// option negotiated the value is the stored bytes after the colon, so that
// raw section is the one the message holds, normalised as cleanup(8)
// stores it.
//
// section keeps only what the verdict reads: an event that is one whole,
// well-formed header field whose name is not Delivered-To: is replaced by
// placeholder (a run of them by one), everything else is kept as written.
// loopcheck gives on the kept bytes exactly what it gives on the raw
// section: it reads only Delivered-To: fields up to the section's end,
// a replaced field is neither, and a placeholder keeps the one property
// of the field that can matter to what follows it (being a field that is
// not Delivered-To:). So memory follows the size of the Delivered-To:
// fields, not the message's header.
//
// The kept bytes are bounded by limit. An event that would take them past
// it ends the rebuild: it and every later event are not kept (truncated
// reports this), and the verdict is made on the fields before it, and on
// the later events judged one batch at a time against the recipients as
// spelled (see addLate): a Delivered-To: field that comes after a
// megabyte of others still counts, as it does for local(8), while memory
// stays bounded. What the later events match is remembered per recipient
// (lateHit), never as a list of fields.
type section struct {
	buf       []byte
	limit     int
	total     int  // bytes of the raw section so far, the empty line excluded
	truncated bool // an event did not fit within limit; later ones were not kept
	lastPlain bool // buf ends with placeholder
	chunk     []byte

	// Past the limit: the events gathered for the next batch, each after
	// a placeholder (late); the recipients as spelled, made at the first
	// batch (spelled); which of them a batch matched (lateHit); and
	// whether the section has ended, so that no later event counts
	// (lateEnded).
	late      []byte
	spelled   []loopcheck.Recipient
	lateHit   []bool
	lateEnded bool
}

// lateBatchBytes bounds the events past the limit gathered before they
// are judged together. Judging a batch costs a pass over the recipients,
// so events are not judged one by one (a header of a million short
// fields, a thousand recipients); a batch this size costs little memory
// beside MaxHeaderBytes.
const lateBatchBytes = 64 << 10

// keepSectionBuffer is the largest buffer a section keeps once its
// message has ended (release). The kept bytes of an ordinary message (a
// few Delivered-To: fields and placeholders) and its longest field fit,
// so such messages reuse their buffers; the buffers of a large header,
// up to MaxHeaderBytes, are dropped, so that an idle session holds a few
// KiB, not what its largest message needed.
const keepSectionBuffer = 4 << 10

// reset empties s for the next message, keeping its buffers.
func (s *section) reset(limit int) {
	s.buf, s.chunk, s.late = s.buf[:0], s.chunk[:0], s.late[:0]
	s.limit, s.total, s.truncated, s.lastPlain = limit, 0, false, false
	clear(s.spelled)
	s.spelled, s.lateHit, s.lateEnded = s.spelled[:0], s.lateHit[:0], false
}

// release drops the buffers larger than keepSectionBuffer; called when a
// message has ended. The section is empty afterwards, as after reset.
func (s *section) release() {
	if cap(s.buf) > keepSectionBuffer {
		s.buf = nil
	}
	if cap(s.chunk) > keepSectionBuffer {
		s.chunk = nil
	}
	if cap(s.late) > keepSectionBuffer {
		s.late = nil
	}
	s.spelled, s.lateHit = nil, nil // made only past the limit
	s.reset(s.limit)
}

// add takes one header event; rcpts are the message's recipients so far
// (the MTA reports every RCPT before the header).
func (s *section) add(name, value string, rcpts []recipient) {
	s.chunk = appendCRLF(s.chunk[:0], name)
	s.chunk = append(s.chunk, ':')
	s.chunk = appendCRLF(s.chunk, value)
	s.chunk = append(s.chunk, '\r', '\n')
	s.total += len(s.chunk)
	if s.truncated {
		s.addLate(rcpts)
		return
	}
	plain := plainField(s.chunk)
	if plain && s.lastPlain {
		return // the placeholder already there stands for this one too
	}
	n := len(s.chunk)
	if plain {
		n = len(placeholder)
	}
	if len(s.buf)+n+len("\r\n") > s.limit {
		s.truncated = true
		// The kept bytes may hold the section's end already.
		s.lateEnded = header.SectionEnd(s.buf) < len(s.buf)
		s.addLate(rcpts)
		return
	}
	if plain {
		s.buf = append(s.buf, placeholder...)
	} else {
		s.buf = append(s.buf, s.chunk...)
	}
	s.lastPlain = plain
}

// addLate takes an event past the limit (s.chunk). It is judged as if it
// came right after a field that is not Delivered-To: behind a
// placeholder, so it is judged alone, whatever the events between it and
// the kept bytes: a field of its own (every event Postfix sends) gets
// exactly the verdict it gets in the whole section; only continuation
// lines at its start, which no Postfix event has, would in the whole
// section continue the field before them instead. An event that is one
// field other than Delivered-To: is a placeholder already, and skipped.
// Once an event ends the section, no later one counts.
func (s *section) addLate(rcpts []recipient) {
	if s.lateEnded || plainField(s.chunk) {
		return
	}
	start := len(s.late)
	s.late = append(s.late, placeholder...)
	s.late = append(s.late, s.chunk...)
	// After a placeholder a line ends the section for what it is, not for
	// what comes before it, so the end is found in the event alone.
	if header.SectionEnd(s.late[start:]) < len(s.late)-start {
		s.lateEnded = true
		s.judgeLate(rcpts)
		return
	}
	if len(s.late) >= lateBatchBytes {
		s.judgeLate(rcpts)
	}
}

// judgeLate judges the gathered events against the recipients as spelled
// and empties the batch.
func (s *section) judgeLate(rcpts []recipient) {
	if len(s.late) == 0 {
		return
	}
	for i := len(s.spelled); i < len(rcpts); i++ {
		s.spelled = append(s.spelled, loopcheck.NewRecipient(rcpts[i].arg))
		s.lateHit = append(s.lateHit, false)
	}
	s.late = append(s.late, '\r', '\n')
	for _, m := range loopcheck.Loops(s.spelled, s.late) {
		s.lateHit[m.Index] = true
	}
	s.late = s.late[:0]
}

// lateHits judges what is still gathered and reports, per recipient, whether
// an event past the limit matched it as spelled (nil when none came).
func (s *section) lateHits(rcpts []recipient) []bool {
	s.judgeLate(rcpts)
	return s.lateHit
}

// mergeLate adds to the matches found in the kept bytes (kept, from
// loopcheck: every looping recipient when all is set, else the first)
// the recipients the events past the limit matched as spelled (hit), as
// loopcheck would have matched them in the whole section: a match as
// spelled names no detour (Via), and the first looping recipient is the
// first in RCPT order. late[i] reports a recipient matched past the
// limit only.
func mergeLate(kept []loopcheck.Match, hit []bool, all bool) (merged []loopcheck.Match, late []bool) {
	if !slices.Contains(hit, true) {
		return kept, nil
	}
	late = make([]bool, len(hit))
	k := 0
	for i, h := range hit {
		for k < len(kept) && kept[k].Index < i {
			merged = append(merged, kept[k])
			k++
		}
		switch {
		case k < len(kept) && kept[k].Index == i:
			m := kept[k]
			if h {
				m.Via = ""
			}
			merged = append(merged, m)
			k++
		case h:
			merged = append(merged, loopcheck.Match{Index: i})
			late[i] = true
		}
	}
	merged = append(merged, kept[k:]...)
	if !all {
		merged = merged[:1]
	}
	return merged, late
}

// bytes returns the kept section, ended by the empty line. It is valid
// until the next add or reset.
func (s *section) bytes() []byte {
	return append(s.buf, '\r', '\n')
}

// rawBytes is the size of the raw section the events amount to, without
// the empty line that ends it: the proxy's header_bytes for the same
// section.
func (s *section) rawBytes() int { return s.total }

// plainField reports whether chunk (one event, with its final CRLF) is a
// field the verdict never reads: exactly one field line and its
// continuation lines, wherever it stands in a section, with a name other
// than Delivered-To:. A chunk that holds a second field, ends the section
// or does not start with a field line is not plain.
func plainField(chunk []byte) bool {
	if header.SectionEnd(chunk) != len(chunk) {
		return false // an empty or non-header line inside it ends the section
	}
	n := 0
	plain := false
	for f := range header.Fields(chunk) {
		n++
		plain = len(f.Name) > 0 && len(f.Raw) == len(chunk) && !f.NameIs(loopcheck.FieldName)
		if n > 1 {
			return false
		}
	}
	return plain
}

// appendCRLF appends s with every LF not preceded by CR written as CRLF.
func appendCRLF(dst []byte, s string) []byte {
	for {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			return append(dst, s...)
		}
		dst = append(dst, s[:i]...)
		if i == 0 && (len(dst) == 0 || dst[len(dst)-1] != '\r') || i > 0 && s[i-1] != '\r' {
			dst = append(dst, '\r')
		}
		dst = append(dst, '\n')
		s = s[i+1:]
	}
}

// rcptArg is the RCPT TO: argument a recipient event stands for: the
// address in angle brackets, then its ESMTP parameters. Postfix sends the
// client's address token and its parameters unchanged (smtpd.c), and
// go-milter hands them over with one pair of enclosing brackets removed
// and the parameters joined by spaces; the brackets are put back, so
// loopcheck reads the argument as the proxy reads "RCPT TO:" + it.
func rcptArg(rcpt, esmtpArgs string) string {
	arg := "<" + rcpt + ">"
	if esmtpArgs != "" {
		arg += " " + esmtpArgs
	}
	return arg
}

// removalAddr is the address a recipient removal (SMFIR_DELRCPT) names
// for the RCPT token tok, as go-milter hands it (one pair of enclosing
// brackets removed). Postfix's cleanup_del_rcpt removes the recipients
// whose original recipient, as smtpd stored it, equals the removal's
// address, compared exactly once both are in internal form (each parsed
// and internalised by tok822, so case and quoting must be the client's).
// smtpd stored it from the token without its brackets and without a
// source route: extract_addr drops everything up to the first colon of
// a text that starts with '@'. So the token goes back as the client
// spelled it, without the route; with the route it would match nothing,
// and the recipient would stay.
func removalAddr(tok string) string {
	if strings.HasPrefix(tok, "@") {
		if i := strings.IndexByte(tok, ':'); i >= 0 {
			return tok[i+1:]
		}
	}
	return tok
}
