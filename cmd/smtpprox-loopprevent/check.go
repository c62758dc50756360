package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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

// checkFlags is the check subcommand's flag set with the variables it
// fills; like newProxyFlags, the one place its flags are defined.
type checkFlags struct {
	fs        *flag.FlagSet
	rcpts     rcptFlags
	maxHeader int
	exp       expansionFlags
}

// checkUsage is the synopsis of check's -h.
const checkUsage = "usage: smtpprox-loopprevent check -rcpt ADDR [-rcpt ADDR ...] [flags] [FILE]\n"

func newCheckFlags() *checkFlags {
	cf := &checkFlags{fs: flag.NewFlagSet("check", flag.ContinueOnError)}
	cf.fs.SetOutput(io.Discard)
	cf.fs.Var(&cf.rcpts, "rcpt", "an accepted envelope recipient, as in RCPT TO: (user@example.com or <user@example.com>); repeat for several")
	cf.fs.IntVar(&cf.maxHeader, "max-header-bytes", core.DefaultMaxHeaderBytes, "largest header section judged; the proxy refuses a larger one with 552 5.3.4")
	cf.exp.define(cf.fs)
	return cf
}

func printCheckUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, checkUsage+"\n"+
		"Reads a saved message (standard input without FILE) and prints the proxy's verdict:\n"+
		"exit 0 pass, 1 loop, 2 error. A leading mbox \"From \" line is skipped.\n"+
		"Flags may come before or after FILE.\n\nFlags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// runCheck is the `check` subcommand: the verdict on a saved message, with
// the very code the proxy runs at end-of-DATA. It prints one line and
// returns 0 (pass), 1 (loop) or 2 (error). Flags may come before or after
// the file name, as for the proxy.
func runCheck(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cf := newCheckFlags()
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "check: "+format+"\n", a...)
		return checkError
	}
	files, err := parseAnywhere(cf.fs, args, stderr, printCheckUsage)
	if errors.Is(err, flag.ErrHelp) {
		return checkPass
	}
	if err != nil {
		fmt.Fprintf(stderr, "check: %v\nRun with -h for usage.\n", err)
		return checkError
	}
	rcpts := cf.rcpts
	if len(rcpts) == 0 {
		return fail("at least one -rcpt is required")
	}
	if len(files) > 1 {
		return fail("one message file at most, got %d: %q", len(files), files)
	}
	if _, err := cf.exp.check(); err != nil {
		return fail("%v", err)
	}
	if cf.maxHeader < minHeaderBytes {
		return fail("-max-header-bytes must be at least %d (as for the proxy), got %d", minHeaderBytes, cf.maxHeader)
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
	if len(files) == 1 {
		name = files[0]
		f, err := os.Open(name)
		if err != nil {
			return fail("cannot read message: %v", err)
		}
		defer f.Close()
		in = f
	}
	section, err := readHeaderSection(in, cf.maxHeader)
	if err != nil {
		fmt.Fprintf(stderr, "check: %s: %v\n", name, err)
		return checkError
	}
	judged, err := cf.judgedRecipients(rcpts, stderr)
	if err != nil {
		return fail("%v", err)
	}
	v := loopcheck.CheckRecipients(judged, section)
	if v.Loop {
		via := ""
		if v.Via != "" {
			via = " (via " + v.Via + ")"
		}
		fmt.Fprintf(stdout, "loop: 554 5.4.6 mail forwarding loop for %s%s\n", v.Recipient, via)
		return checkLoop
	}
	fmt.Fprintln(stdout, "pass")
	return checkPass
}

// judgedRecipients prepares the recipients: as spelled, or with their
// expansion under -postfix-config. An expansion that cannot be completed
// is said on stderr, and that recipient judged as spelled, as the proxy
// would.
func (cf *checkFlags) judgedRecipients(rcpts []string, stderr io.Writer) ([]loopcheck.Recipient, error) {
	mode, _ := cf.exp.check()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := cf.exp.newExpander(ctx, log, nil)
	if err != nil {
		return nil, err
	}
	out := make([]loopcheck.Recipient, len(rcpts))
	if e == nil {
		for i, r := range rcpts {
			out[i] = loopcheck.NewRecipient(r)
		}
		return out, nil
	}
	defer e.Close()
	waits := make([]func(context.Context) loopcheck.Recipient, len(rcpts))
	start := e.Recipients(mode)
	for i, r := range rcpts {
		waits[i] = start(r)
	}
	ctx, cancel := context.WithTimeout(ctx, cf.exp.wait)
	defer cancel()
	for i, w := range waits {
		out[i] = w(ctx)
	}
	return out, nil
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
