package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// Exit codes of the check subcommand.
const (
	checkPass  = 0
	checkLoop  = 1
	checkError = 2
)

// rcptFlags collects repeated -rcpt values.
type rcptFlags []string

func (r *rcptFlags) String() string     { return strings.Join(*r, ",") }
func (r *rcptFlags) Set(v string) error { *r = append(*r, v); return nil }

// runCheck is the `check` subcommand: the verdict on a saved message, with
// the very code the proxy runs at end-of-DATA. It prints one line and
// returns 0 (pass), 1 (loop) or 2 (error).
func runCheck(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var rcpts rcptFlags
	fs.Var(&rcpts, "rcpt", "an accepted envelope recipient, as in RCPT TO: (user@example.com or <user@example.com>); repeat for several")
	maxHeader := fs.Int("max-header-bytes", core.DefaultMaxHeaderBytes, "largest header section judged; the proxy refuses a larger one with 552 5.3.4")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: smtpprox-loopprevent check -rcpt ADDR [-rcpt ADDR ...] [FILE]\n\n"+
			"Reads a saved message (standard input without FILE) and prints the proxy's verdict:\n"+
			"exit 0 pass, 1 loop, 2 error. A leading mbox \"From \" line is skipped.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return checkPass
		}
		return checkError
	}
	if len(rcpts) == 0 {
		fmt.Fprintln(stderr, "check: at least one -rcpt is required")
		return checkError
	}
	if fs.NArg() > 1 {
		fmt.Fprintf(stderr, "check: one message file at most, got %d arguments\n", fs.NArg())
		return checkError
	}
	if *maxHeader <= 0 {
		fmt.Fprintf(stderr, "check: -max-header-bytes must be positive, got %d\n", *maxHeader)
		return checkError
	}
	for _, r := range rcpts {
		p, err := address.ParsePath(r)
		if err != nil {
			fmt.Fprintf(stderr, "check: bad -rcpt %q: %v\n", r, err)
			return checkError
		}
		if p.Null {
			fmt.Fprintf(stderr, "check: bad -rcpt %q: the null path <> is not a recipient\n", r)
			return checkError
		}
	}

	in, name := stdin, "standard input"
	if fs.NArg() == 1 {
		name = fs.Arg(0)
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintf(stderr, "check: cannot read message: %v\n", err)
			return checkError
		}
		defer f.Close()
		in = f
	}
	section, err := readHeaderSection(in, *maxHeader)
	if err != nil {
		fmt.Fprintf(stderr, "check: %s: %v\n", name, err)
		return checkError
	}
	v := loopcheck.Check(rcpts, section)
	if v.Loop {
		fmt.Fprintf(stdout, "loop: 554 5.4.6 mail forwarding loop for %s\n", v.Recipient)
		return checkLoop
	}
	fmt.Fprintln(stdout, "pass")
	return checkPass
}

// errHeaderTooLarge reports a header section the proxy would refuse.
var errHeaderTooLarge = errors.New("header section too large")

// readHeaderSection reads the message's header section as the proxy
// captures it (core.HeaderSection), holding no more of the message than
// that needs, and skipping a leading mbox "From " line the way Postfix
// turns it into X-Mailbox-Line.
func readHeaderSection(r io.Reader, max int) ([]byte, error) {
	br := bufio.NewReader(r)
	if first, err := br.Peek(5); err == nil && string(first) == "From " {
		for {
			_, err := br.ReadSlice('\n')
			if errors.Is(err, bufio.ErrBufferFull) {
				continue // a From_ line longer than the buffer: skip the rest
			}
			if err != nil && err != io.EOF {
				return nil, fmt.Errorf("read error: %w", err)
			}
			break
		}
	}
	buf, err := io.ReadAll(io.LimitReader(br, int64(core.HeaderReadLimit(max))))
	if err != nil {
		return nil, fmt.Errorf("read error: %w", err)
	}
	section, ok := core.HeaderSection(buf, max)
	if !ok {
		return nil, fmt.Errorf("%w: more than %d bytes (the proxy would reply 552 5.3.4)", errHeaderTooLarge, max)
	}
	return section, nil
}
