package core

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type readLine struct {
	Line  string
	Fault lineFault
}

// readLines runs input through a lineReader in pieces of size step.
func readLines(input string, step, limit int) (lines []readLine, rest int) {
	var r lineReader
	p := []byte(input)
	for len(p) > 0 {
		piece := p[:min(step, len(p))]
		n, done := r.feed(piece, limit)
		p = p[n:]
		if done {
			lines = append(lines, readLine{string(r.line()), r.fault})
			r.reset()
		}
	}
	return lines, len(p)
}

func TestLineReader(t *testing.T) {
	long := strings.Repeat("N", MaxCommandLine)
	cases := []struct {
		name, in string
		want     []readLine
	}{
		{"crlf", "EHLO a\r\nMAIL FROM:<>\r\n", []readLine{{"EHLO a", lineOK}, {"MAIL FROM:<>", lineOK}}},
		{"bare LF ends a line", "RCPT TO:<a>\nRCPT TO:<b>\r\n", []readLine{{"RCPT TO:<a>", lineOK}, {"RCPT TO:<b>", lineOK}}},
		{"empty lines", "\r\n\n", []readLine{{"", lineOK}, {"", lineOK}}},
		{"NUL", "NO\x00OP\r\nNOOP\r\n", []readLine{{"NO\x00OP", lineNUL}, {"NOOP", lineOK}}},
		{"bare CR inside", "RCPT TO:<a>\rRCPT TO:<b>\r\n", []readLine{{"RCPT TO:<a>\rRCPT TO:<b>", lineBareCR}}},
		{"CR CR LF", "NOOP\r\r\n", []readLine{{"NOOP\r", lineBareCR}}},
		{"at the limit", long + "\r\n", []readLine{{long, lineOK}}},
		{"over the limit", long + "X\r\nNOOP\r\n", []readLine{{"", lineTooLong}, {"NOOP", lineOK}}},
		{"far over the limit", strings.Repeat("x", 100000) + "\nQUIT\n", []readLine{{"", lineTooLong}, {"QUIT", lineOK}}},
		{"CR at the limit", long + "\r\r\n", []readLine{{"", lineTooLong}}},
	}
	for _, c := range cases {
		for _, step := range []int{1, 2, 3, 7, 1 << 20} {
			got, rest := readLines(c.in, step, MaxCommandLine)
			if rest != 0 {
				t.Fatalf("%s step %d: %d bytes not consumed", c.name, step, rest)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Fatalf("%s step %d (-want +got):\n%s", c.name, step, diff)
			}
		}
	}
}

func TestLineReaderStopsAtLineEnd(t *testing.T) {
	var r lineReader
	n, done := r.feed([]byte("NOOP\r\nQUIT\r\n"), MaxCommandLine)
	if !done || n != 6 || string(r.line()) != "NOOP" {
		t.Fatalf("n=%d done=%v line=%q", n, done, r.line())
	}
}
