package core

import (
	"bytes"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// HeaderSection reads a saved message as a session captures it: the same
// section goes to the loop check, the same messages are too large, and
// the answer is decided within HeaderReadLimit bytes.
func TestHeaderSectionAgreesWithCapture(t *testing.T) {
	const limit = 256
	field := "Delivered-To: a@x\r\n"
	var msgs []string
	for _, sect := range []int{limit - 2, limit - 1, limit, limit + 1} {
		pad := field + "X: " + strings.Repeat("x", sect-len(field)-5) + "\r\n"
		for _, next := range []int{0, 1, HeaderLookahead - 1, HeaderLookahead, HeaderLookahead + 1, HeaderLookahead + 2} {
			name := strings.Repeat("n", next)
			for _, m := range []string{
				pad + name + "\r\n\r\nbody\r\n",
				pad + name + " x\r\nbody\r\n",
				pad + name + ":\r\n\r\nbody\r\n",
				pad + name + "\rX\r\n\r\nbody\r\n",
				pad + "\r\n" + name,
			} {
				msgs = append(msgs, m, strings.ReplaceAll(m, "\r\n", "\n"))
			}
		}
	}
	refused := 0
	for i, msg := range msgs {
		var judged []byte
		h := newHarness(t, Config{MaxHeaderBytes: limit, Check: func(rcpts []string, section []byte) (v loopcheck.Verdict) {
			judged = append([]byte(nil), section...)
			return v
		}}).connect()
		sendMessage(h, strings.ReplaceAll(msg, "\n.", "\n..")+"\r\n.\r\n")
		proxyRefuses := strings.Contains(h.got(), "552 5.3.4")

		section, ok := HeaderSection([]byte(msg), limit)
		if ok == proxyRefuses {
			t.Errorf("message %d: a session refuses it %v, HeaderSection %v", i, proxyRefuses, !ok)
			continue
		}
		if !ok {
			refused++
		} else if !bytes.Equal(section, judged) {
			t.Errorf("message %d: HeaderSection gives %q, the session judged %q", i, section, judged)
		}
		cut := msg[:min(len(msg), HeaderReadLimit(limit))]
		if s2, ok2 := HeaderSection([]byte(cut), limit); ok2 != ok || !bytes.Equal(s2, section) {
			t.Errorf("message %d cut after %d bytes: %v %q, whole: %v %q", i, len(cut), ok2, s2, ok, section)
		}
	}
	if refused == 0 || refused == len(msgs) {
		t.Errorf("%d of %d messages refused; want some of each", refused, len(msgs))
	}
}
