package conformance

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const minimalCase = `A minimal case.
rule: SPEC 3; RFC 5321 4.1.1
-- client --
reply
send QUIT
reply
-- want-client --
220 up.test ESMTP
221 2.0.0 Bye
-- want-upstream --
QUIT
`

func TestParseCaseFields(t *testing.T) {
	text := `Describes
the case.
rule: SPEC 2.2; SPEC 5
rule: RFC 5321 4.5.2
-- config --
# comment
max-sessions = 2
dry-run=true
-- upstream --
greeting
  220-a
  220 b
on RCPT#2
  550 no
on content close-after 7
-- client --
reply
send-file msg
connect second
reply
use main
wait-upstream MAIL
-- msg --
MAIL FROM:<>
-- want-client --
220 b
-- want-client.second --
{any-text}
-- want-upstream --
MAIL FROM:<>
-- want-upstream.2 --
`
	c, err := ParseCase("testdata/example.txt", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "example" {
		t.Errorf("Name = %q", c.Name)
	}
	if diff := cmp.Diff([]string{"SPEC 2.2", "SPEC 5", "RFC 5321 4.5.2"}, c.Rules); diff != "" {
		t.Errorf("Rules (-want +got):\n%s", diff)
	}
	if c.Description != "Describes\nthe case." {
		t.Errorf("Description = %q", c.Description)
	}
	if diff := cmp.Diff([]Option{{"max-sessions", "2"}, {"dry-run", "true"}}, c.Config); diff != "" {
		t.Errorf("Config (-want +got):\n%s", diff)
	}
	if v, ok := c.Get(OptDryRun); !ok || v != "true" {
		t.Errorf("Get(dry-run) = %q, %v", v, ok)
	}
	if string(c.Upstream.greeting.reply) != "220-a\r\n220 b\r\n" {
		t.Errorf("greeting = %q", c.Upstream.greeting.reply)
	}
	if len(c.Upstream.rules) != 2 || c.Upstream.rules[0].verb != "RCPT" || c.Upstream.rules[0].nth != 2 ||
		c.Upstream.rules[1].kind != ruleContent || c.Upstream.rules[1].act.kind != actCloseAfter || c.Upstream.rules[1].act.k != 7 {
		t.Errorf("rules = %+v", c.Upstream.rules)
	}
	ops := []stepOp{}
	for _, s := range c.Client {
		ops = append(ops, s.op)
	}
	if diff := cmp.Diff([]stepOp{opReply, opSend, opConnect, opReply, opUse, opWaitUpstream}, ops); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	if string(c.Client[1].data) != "MAIL FROM:<>\r\n" || c.Client[4].name != "" || string(c.Client[5].data) != "MAIL\r\n" {
		t.Errorf("step data: %+v", c.Client)
	}
	if len(c.WantClient) != 2 || len(c.WantUpstream) != 2 {
		t.Errorf("want files: %d client, %d upstream", len(c.WantClient), len(c.WantUpstream))
	}
}

func TestParseCaseErrors(t *testing.T) {
	cases := []struct {
		name, edit, with, want string
	}{
		{"no rule", "rule: SPEC 3; RFC 5321 4.1.1\n", "", `no "rule:" line`},
		{"no description", "A minimal case.\n", "", "does not describe"},
		{"no client", "-- client --\nreply\nsend QUIT\nreply\n", "", `no "client" file`},
		{"no want-client", "-- want-client --\n", "-- wnat-client --\n", `no "want-client" file`},
		{"unknown file", "-- want-upstream --", "-- want-upstream.x --", `file "want-upstream.x" is neither`},
		{"unused extra connection file", "-- want-upstream --", "-- want-client.b --\n-- want-upstream --", `"want-client.b" is neither`},
		{"duplicate file", "-- want-upstream --", "-- want-client --\n-- want-upstream --", "appears twice"},
		{"unknown config key", "-- client --", "-- config --\ncolour=blue\n-- client --", `unknown configuration key "colour"`},
		{"bad config value", "-- client --", "-- config --\ndry-run=yes\n-- client --", "true or false"},
		{"bad duration", "-- client --", "-- config --\ncommand-timeout=5\n-- client --", "Go duration"},
		{"bad keyword list", "-- client --", "-- config --\ndrop-ehlo-keywords=AUTH,,DSN\n-- client --", "comma-separated"},
		{"config key twice", "-- client --", "-- config --\nmax-sessions=1\nmax-sessions=2\n-- client --", "set twice"},
		{"config without =", "-- client --", "-- config --\ndry-run\n-- client --", "want key=value"},
		{"down with want-upstream", "-- client --", "-- upstream --\ndown\n-- client --", "upstream is down"},
		{"unknown step", "send QUIT\n", "sned QUIT\n", `unknown step "sned"`},
		{"reply count", "send QUIT\nreply\n", "send QUIT\nreply two\n", "count from 1"},
		{"lines needs a count", "send QUIT\nreply\n", "send QUIT\nlines\n", "count from 1"},
		{"send-file missing", "send QUIT\n", "send-file nothing\n", `no file "nothing"`},
		{"send-file of an expectation", "send QUIT\n", "send-file want-client\n", "cannot send an expectation"},
		{"use before connect", "send QUIT\n", "use other\n", `no connection "other"`},
		{"connect main", "send QUIT\n", "connect main\n", "first connection"},
		{"connect twice", "send QUIT\n", "connect b\nconnect b\n", "already exists"},
		{"step after close", "send QUIT\nreply\n", "close\nsend QUIT\n", "closed by an earlier close step"},
		{"bad send text", "send QUIT\n", "send QU\\qIT\n", `unknown escape \q`},
		{"bad want text", "221 2.0.0 Bye\n", "221 {nope}\n", "unknown directive"},
		{"bad allow-client", "-- client --", "-- config --\nallow-client=127.0.0.1\n-- client --", "IP prefixes"},
		{"connect from a name", "send QUIT\n", "connect b from localhost\n", "loopback IP address"},
		{"connect from a routable address", "send QUIT\n", "connect b from 192.0.2.1\n", "loopback IP address"},
		{"use from", "send QUIT\n", "connect b\nuse b from 127.0.0.2\n", "only connect takes"},
		{"bad connection count", "-- want-upstream --", "-- want-upstream-connections --\nmany\n-- want-upstream --", "count from 0"},
		{"connection count below the want files", "-- want-upstream --", "-- want-upstream-connections --\n0\n-- want-upstream --", "expects bytes on 1"},
		{"down with a connection count", "-- want-upstream --\nQUIT\n", "-- upstream --\ndown\n-- want-upstream-connections --\n0\n", "upstream is down"},
	}
	for _, c := range cases {
		text := strings.Replace(minimalCase, c.edit, c.with, 1)
		if text == minimalCase {
			t.Fatalf("%s: the edit %q changed nothing", c.name, c.edit)
		}
		_, err := ParseCase("x.txt", []byte(text))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if _, err := ParseCase("x.txt", []byte(minimalCase)); err != nil {
		t.Errorf("the minimal case itself: %v", err)
	}
}

func TestParseUpstreamErrors(t *testing.T) {
	cases := []struct{ text, want string }{
		{"  250 ok\n", "indented reply line without"},
		{"greeting\n", "no reply"},
		{"greeting\n  220 a\ngreeting\n  220 b\n", "second greeting"},
		{"on\n", "wants what it matches"},
		{"on *\n  250 x\n", "needs an occurrence"},
		{"on RCPT#0\n  250 x\n", "bad occurrence"},
		{"on R?PT\n  250 x\n", "bad match"},
		{"on MAIL\n", "no reply"},
		{"on MAIL stall\n  250 x\n", "stall takes no argument and no reply"},
		{"on MAIL close-after 3\n", "content rules only"},
		{"on content close-after\n", "one byte count"},
		{"on content close-after -1\n", "bad byte count"},
		{"on MAIL explode\n", "unknown action"},
		{"on MAIL close now\n", "close takes no argument"},
		{"down\non MAIL close\n", "down upstream takes no"},
		{"down now\n", "down takes nothing"},
		{"shout\n", "unknown directive"},
		{"on MAIL\n  250 \\q\n", `unknown escape \q`},
	}
	for _, c := range cases {
		_, err := parseUpstream(c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseUpstream(%q) = error %v, want one containing %q", c.text, err, c.want)
		}
	}
}

func TestReplyAndLineEnds(t *testing.T) {
	cases := []struct {
		in      string
		n, want int
		ok      bool
	}{
		{"250 ok\r\n", 1, 8, true},
		{"250-a\r\n250 b\r\nxx", 1, 14, true},
		{"250-a\r\n250-b\r\n", 1, 14, false},
		{"421\r\n", 1, 5, true},
		{"250 a\r\n250 b\r\n", 2, 14, true},
		{"250 a\r\n250 b", 2, 7, false},
		{"250 a\n", 1, 6, true},
		{"", 1, 0, false},
	}
	for _, c := range cases {
		got, ok := replyEnds([]byte(c.in), c.n)
		if got != c.want || ok != c.ok {
			t.Errorf("replyEnds(%q, %d) = %d, %v; want %d, %v", c.in, c.n, got, ok, c.want, c.ok)
		}
	}
	if got, ok := lineEnds([]byte("a\r\nb\nc"), 2); got != 5 || !ok {
		t.Errorf("lineEnds = %d, %v; want 5, true", got, ok)
	}
	if got, ok := lineEnds([]byte("a\r\nb"), 2); got != 3 || ok {
		t.Errorf("lineEnds = %d, %v; want 3, false", got, ok)
	}
}

func TestEODScanner(t *testing.T) {
	cases := []struct {
		in   string
		want int
	}{
		{".\r\n", 3},
		{"a\r\n.\r\n", 6},
		{"a\r\n.\r\nMORE", 6},
		{"a\n.\r\n", -1},      // the dot follows a bare LF
		{"a\r\n.\n", -1},      // a bare LF after the dot
		{"a\r\n..\r\n", -1},   // stuffed dot
		{"a\r\n.\rX\r\n", -1}, // ".\rX" is content
		{"a\r\r\n.\r\n", 7},   // CR CR LF: the last CRLF ends the line
		{"a\r.\r\n", -1},      // bare CR before the dot
		{"", -1},
	}
	for _, c := range cases {
		var d eodScanner
		if got := d.scan([]byte(c.in)); got != c.want {
			t.Errorf("scan(%q) = %d, want %d", c.in, got, c.want)
		}
		// Byte by byte, the state carries over.
		var e eodScanner
		got := -1
		for i := range len(c.in) {
			if e.scan([]byte{c.in[i]}) == 1 {
				got = i + 1
				break
			}
		}
		if got != c.want {
			t.Errorf("scan(%q) byte by byte = %d, want %d", c.in, got, c.want)
		}
	}
}

// TestCasesLoad checks every case in testdata against the format and the
// conventions of README.md.
func TestCasesLoad(t *testing.T) {
	for _, c := range loadAll(t) {
		if !strings.Contains(strings.Join(c.Rules, " "), "SPEC") && !strings.Contains(strings.Join(c.Rules, " "), "RFC") {
			t.Errorf("%s: rule %q names neither a SPEC rule nor an RFC", c.Name, c.Rules)
		}
		group, _, _ := strings.Cut(c.Name, "-")
		switch group {
		case "relay", "ehlo", "xforward", "esmtp", "pipelining", "data", "loop", "pass", "up", "client", "limit":
		default:
			t.Errorf("%s: unknown group %q", c.Name, group)
		}
	}
}

// TestRulesNameExistingSections checks that every case's rule points at
// something a reader can open: a "SPEC N" or "SPEC 2.M" rule at a section
// or invariant of docs/SPEC.md, a "reference/X.md" rule at a file of
// docs/reference.
func TestRulesNameExistingSections(t *testing.T) {
	spec, err := os.ReadFile("../docs/SPEC.md")
	if err != nil {
		t.Fatal(err)
	}
	specRule := regexp.MustCompile(`^SPEC ([0-9]+)(?:\.([0-9]+))?\b`)
	for _, c := range loadAll(t) {
		for _, r := range c.Rules {
			if m := specRule.FindStringSubmatch(r); m != nil {
				if !bytes.Contains(spec, []byte("\n## "+m[1]+". ")) {
					t.Errorf("%s: rule %q: docs/SPEC.md has no section %s", c.Name, r, m[1])
				}
				if m[2] != "" && (m[1] != "2" || !bytes.Contains(spec, []byte("\n"+m[2]+". **"))) {
					t.Errorf("%s: rule %q: docs/SPEC.md has no invariant %s.%s", c.Name, r, m[1], m[2])
				}
				continue
			}
			if strings.HasPrefix(r, "SPEC") {
				t.Errorf("%s: rule %q: not of the form SPEC N or SPEC 2.M", c.Name, r)
			}
			if f, ok := strings.CutPrefix(r, "reference/"); ok {
				if _, err := os.Stat(filepath.Join("../docs/reference", f)); err != nil {
					t.Errorf("%s: rule %q: %v", c.Name, r, err)
				}
			}
		}
	}
}
