package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

func runCheckString(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runCheck(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

const loopMsg = "Received: from a by b\r\nDelivered-To: user@local.test\r\nSubject: s\r\n\r\nbody\r\n"

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "msg.eml")
	if err := os.WriteFile(file, []byte(loopMsg), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		stdin      string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string // substring
	}{
		{"loop from stdin", loopMsg, []string{"-rcpt", "user@local.test"}, 1,
			"loop: 554 5.4.6 mail forwarding loop for user@local.test\n", ""},
		{"loop from file, bracketed rcpt", "", []string{"-rcpt", "<User@Local.Test>", file}, 1,
			"loop: 554 5.4.6 mail forwarding loop for User@Local.Test\n", ""},
		{"pass", loopMsg, []string{"-rcpt", "other@local.test"}, 0, "pass\n", ""},
		{"second rcpt matches", loopMsg, []string{"-rcpt", "a@local.test", "-rcpt", "user@local.test"}, 1,
			"loop: 554 5.4.6 mail forwarding loop for user@local.test\n", ""},
		{"double-dash flags", loopMsg, []string{"--rcpt=user@local.test"}, 1,
			"loop: 554 5.4.6 mail forwarding loop for user@local.test\n", ""},
		{"mbox From_ line skipped", "From nobody Wed Nov 25 10:00:00 2026\n" + loopMsg, []string{"-rcpt", "user@local.test"}, 1,
			"loop: 554 5.4.6 mail forwarding loop for user@local.test\n", ""},
		{"no rcpt", loopMsg, nil, 2, "", "at least one -rcpt"},
		{"bad rcpt says which and why", loopMsg, []string{"-rcpt", "<user@local.test"}, 2, "", `bad -rcpt "<user@local.test"`},
		{"null rcpt", loopMsg, []string{"-rcpt", "<>"}, 2, "", "null path"},
		{"missing file", "", []string{"-rcpt", "user@local.test", filepath.Join(dir, "nope")}, 2, "", "cannot read message"},
		{"two files", "", []string{"-rcpt", "user@local.test", file, file}, 2, "", "one message file at most"},
		{"unknown flag", "", []string{"-bogus"}, 2, "", "check: flag provided but not defined: -bogus\nRun with -h for usage.\n"},
		{"bad limit", loopMsg, []string{"-rcpt", "u@x", "-max-header-bytes", "0"}, 2, "", "must be at least 4096 (as for the proxy), got 0"},
		{"limit below the proxy's minimum", loopMsg, []string{"-rcpt", "u@x", "-max-header-bytes", "10"}, 2, "", "must be at least 4096"},
		{"header too large", "Subject: " + strings.Repeat("x", 5000) + "\r\n\r\n", []string{"-rcpt", "u@x", "-max-header-bytes", "4096"}, 2, "", "header section too large"},
		{"flags after the file", "", []string{file, "-rcpt", "user@local.test"}, 1,
			"loop: 554 5.4.6 mail forwarding loop for user@local.test\n", ""},
		{"flags around the file", "", []string{"-rcpt", "a@local.test", file, "--rcpt=user@local.test"}, 1,
			"loop: 554 5.4.6 mail forwarding loop for user@local.test\n", ""},
		{"empty input", "", []string{"-rcpt", "u@x"}, 0, "pass\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCheckString(t, tc.stdin, tc.args...)
			if code != tc.wantCode || stdout != tc.wantStdout || !strings.Contains(stderr, tc.wantStderr) {
				t.Errorf("runCheck(%q) = %d, stdout %q, stderr %q; want %d, %q, stderr containing %q",
					tc.args, code, stdout, stderr, tc.wantCode, tc.wantStdout, tc.wantStderr)
			}
		})
	}
}

// TestCheckHeaderLimitBoundary pins the limit at the edge: a section of
// exactly max bytes is judged, one byte more is refused, and the line after
// the section must show within the lookahead that it is no header line.
func TestCheckHeaderLimitBoundary(t *testing.T) {
	const field = "Delivered-To: user@local.test\r\n"
	section := field + "X: " + strings.Repeat("x", minHeaderBytes-len(field)-5) + "\r\n" // exactly the smallest limit
	limit := strconv.Itoa(len(section))
	for _, tc := range []struct {
		name, msg string
		want      int
	}{
		{"exactly the limit, end of input", section, 1},
		{"exactly the limit, then a blank line", section + "\r\nbody\r\n", 1},
		{"limit, then a long body line that is no header", section + "\r\n" + strings.Repeat("b ", 100), 1},
		{"limit, then a line whose first byte rules out a header", section + ":no header\r\n", 1},
		{"limit, then a non-header line", section + "no header line here\r\n", 1},
		{"limit, then a name longer than the lookahead", section + strings.Repeat("n", 2*core.HeaderLookahead), 2},
		{"limit, then a name-like line as long as the lookahead", section + strings.Repeat("n", core.HeaderLookahead) + "\r\n\r\nbody\r\n", 1},
		{"limit, then a name-like line one byte longer", section + strings.Repeat("n", core.HeaderLookahead+1) + "\r\n\r\nbody\r\n", 2},
		{"limit, then a name-like line as long as the lookahead, at the end", section + strings.Repeat("n", core.HeaderLookahead), 1},
		{"one byte over", section + "X: y\r\n\r\n", 2},
		{"limit, then a line that could still be a header", section + "Subject: y\r\n", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCheckString(t, tc.msg, "-rcpt", "user@local.test", "-max-header-bytes", limit)
			if code != tc.want {
				t.Errorf("exit %d, want %d (stdout %q, stderr %q)", code, tc.want, stdout, stderr)
			}
		})
	}
}

// proxyRefusesHeader runs msg through the proxy's own session core with the
// given header limit and reports whether it answered 552 5.3.4.
func proxyRefusesHeader(t *testing.T, msg string, limit int) bool {
	t.Helper()
	s := core.NewSession(core.Config{MaxHeaderBytes: limit, UpstreamName: "test"})
	s.HandleUpstreamConnected()
	var client []byte
	step := func(up string) {
		s.TakeUpstreamOutput()
		if up != "" {
			s.HandleUpstreamData([]byte(up))
		}
		client = append(client, s.TakeClientOutput()...)
	}
	step("220 up ESMTP\r\n")
	send := func(p string) {
		for len(p) > 0 && s.WantsClientInput() {
			p = p[s.HandleClientData([]byte(p)):]
		}
	}
	send("MAIL FROM:<a@b>\r\n")
	step("250 ok\r\n")
	send("RCPT TO:<user@local.test>\r\n")
	step("250 ok\r\n")
	send("DATA\r\n" + strings.ReplaceAll(msg, "\r\n.", "\r\n..") + "\r\n.\r\n")
	step("")
	return strings.Contains(string(client), "552 5.3.4")
}

// TestCheckAgreesWithProxyAtTheLimit holds check and proxy to one reading
// of the header limit: the same messages around the boundary are refused by
// both or by neither.
func TestCheckAgreesWithProxyAtTheLimit(t *testing.T) {
	const limit = 4096
	field := "Delivered-To: user@local.test\r\n"
	pad := func(n int) string { // a header section of exactly n bytes
		return field + "X: " + strings.Repeat("x", n-len(field)-5) + "\r\n"
	}
	var msgs []string
	for _, sect := range []int{limit - 1, limit, limit + 1} {
		for _, next := range []int{0, 1, core.HeaderLookahead - 1, core.HeaderLookahead, core.HeaderLookahead + 1, core.HeaderLookahead + 2} {
			name := strings.Repeat("n", max(0, next-(sect-limit)))
			for _, m := range []string{
				pad(sect) + name + "\r\n\r\nbody\r\n",
				pad(sect) + name + " x\r\nbody\r\n",
				pad(sect) + name + ":\r\n\r\nbody\r\n",
				pad(sect) + name + "\rX\r\n\r\nbody\r\n",
			} {
				// The same with LF line ends, which the proxy counts
				// as CRLF.
				msgs = append(msgs, m, strings.ReplaceAll(m, "\r\n", "\n"))
			}
		}
	}
	refused := 0
	for i, msg := range msgs {
		_, stdout, _ := runCheckString(t, msg, "-rcpt", "user@local.test", "-max-header-bytes", strconv.Itoa(limit))
		checkRefuses := stdout == ""
		if checkRefuses {
			refused++
		}
		if proxy := proxyRefusesHeader(t, msg, limit); proxy != checkRefuses {
			t.Errorf("message %d (%d bytes): proxy refuses %v, check refuses %v", i, len(msg), proxy, checkRefuses)
		}
	}
	// Both outcomes occur, or the comparison proves nothing.
	if refused == 0 || refused == len(msgs) {
		t.Errorf("%d of %d boundary messages refused; want some of each", refused, len(msgs))
	}
	t.Logf("%d of %d boundary messages refused by both", refused, len(msgs))
}
