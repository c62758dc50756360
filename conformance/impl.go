package conformance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// Implementation runs the proxy under test, one instance per case.
type Implementation interface {
	// Name identifies the implementation in reports.
	Name() string
	// Start runs an instance configured as the case says (c.Config) that
	// relays to upstream ("host:port") and returns once it accepts
	// connections. An error wrapping a *NeedsError means the
	// implementation cannot express the case's configuration: the case is
	// skipped, not failed.
	Start(ctx context.Context, c *Case, upstream string) (Instance, error)
}

// Instance is one running implementation.
type Instance interface {
	// Addr is where it listens ("host:port").
	Addr() string
	// Stop ends it and returns what it logged, for failure reports.
	Stop() string
}

// NeedsError says which configuration an implementation cannot express.
type NeedsError struct {
	Needs []string // "max-sessions", "bare-lf=reject", ...
}

func (e *NeedsError) Error() string { return "needs " + strings.Join(e.Needs, ", ") }

// FlagMap says how to express configuration keys as command-line
// arguments. An entry "key=value" applies to that value only and wins over
// an entry "key"; {value} in an argument is replaced by the case's value.
// An entry with no arguments means the implementation needs nothing to
// behave that way (for example a fixed behaviour it always has).
type FlagMap map[string][]string

// DefaultFlagMap is how this project's smtpprox-loopprevent command takes
// each configuration key (the flags are documented in its README).
func DefaultFlagMap() FlagMap {
	return FlagMap{
		OptDryRun:           {"-dry-run={value}"},
		OptBareLF:           {"-bare-lf={value}"},
		OptMaxHeaderBytes:   {"-max-header-bytes={value}"},
		OptMaxSessions:      {"-max-sessions={value}"},
		OptConnectTimeout:   {"-upstream-connect-timeout={value}"},
		OptReplyTimeout:     {"-upstream-reply-timeout={value}"},
		OptCommandTimeout:   {"-client-command-timeout={value}"},
		OptDataTimeout:      {"-client-data-timeout={value}"},
		OptDropEHLOKeywords: {"-drop-ehlo-keyword={value}"},
		OptAllowClient:      {"-allow-client={value}"},
		OptExemptClient:     {"-exempt-client={value}"},
	}
}

// ParseFlagMap reads a mapping file: one entry a line, "KEY ARG..." or
// "KEY=VALUE ARG...", blank lines and lines starting with # ignored.
// Keys not listed are options the implementation does not have.
func ParseFlagMap(data []byte) (FlagMap, error) {
	m := FlagMap{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		key, value, hasValue := strings.Cut(fields[0], "=")
		if !slices.Contains(OptionKeys(), key) {
			return nil, fmt.Errorf("flag map line %d: unknown configuration key %q", lineNo, key)
		}
		if hasValue {
			if err := checkOption(Option{key, value}); err != nil {
				return nil, fmt.Errorf("flag map line %d: %w", lineNo, err)
			}
		}
		if _, dup := m[fields[0]]; dup {
			return nil, fmt.Errorf("flag map line %d: %s listed twice", lineNo, fields[0])
		}
		m[fields[0]] = append([]string{}, fields[1:]...)
	}
	return m, sc.Err()
}

// Args expresses a case's configuration, or says what it cannot express.
func (m FlagMap) Args(c *Case) ([]string, error) {
	var args, needs []string
	for _, o := range c.Config {
		tmpl, ok := m[o.Key+"="+o.Value]
		if !ok {
			tmpl, ok = m[o.Key]
		}
		if !ok {
			needs = append(needs, o.Key+"="+o.Value)
			continue
		}
		for _, a := range tmpl {
			args = append(args, strings.ReplaceAll(a, "{value}", o.Value))
		}
	}
	if len(needs) > 0 {
		return nil, &NeedsError{Needs: needs}
	}
	return args, nil
}

// Command runs an implementation as a program, one process per case. The
// template is split at white space; {listen} and {upstream} are replaced
// by host:port addresses wherever they appear, and an argument that is
// exactly {flags} becomes the case's configuration as Flags maps it.
type Command struct {
	Template []string
	Flags    FlagMap
}

// ParseCommand checks a command template.
func ParseCommand(template string, flags FlagMap) (*Command, error) {
	words := strings.Fields(template)
	if len(words) == 0 {
		return nil, fmt.Errorf("empty implementation command")
	}
	joined := strings.Join(words, " ")
	if !strings.Contains(joined, "{listen}") || !strings.Contains(joined, "{upstream}") {
		return nil, fmt.Errorf("implementation command %q must contain {listen} and {upstream}", template)
	}
	return &Command{Template: words, Flags: flags}, nil
}

// Name implements Implementation.
func (c *Command) Name() string { return strings.Join(c.Template, " ") }

// startGrace bounds how long Start waits for the program to listen, and
// stopGrace how long Stop waits after SIGTERM before SIGKILL. Both only
// guard against a hung program; a correct one is far quicker.
const (
	startGrace = 20 * time.Second
	stopGrace  = 10 * time.Second
)

// maxLogBytes bounds the program output kept for reports.
const maxLogBytes = 64 << 10

// Start implements Implementation.
func (c *Command) Start(ctx context.Context, cs *Case, upstream string) (Instance, error) {
	flags, err := c.Flags.Args(cs)
	if err != nil {
		return nil, err
	}
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	var argv []string
	for _, w := range c.Template {
		if w == "{flags}" {
			argv = append(argv, flags...)
			continue
		}
		w = strings.ReplaceAll(w, "{listen}", listen)
		w = strings.ReplaceAll(w, "{upstream}", upstream)
		argv = append(argv, w)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	log := &limitedBuffer{max: maxLogBytes}
	cmd.Stdout, cmd.Stderr = log, log
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p := &process{cmd: cmd, addr: listen, log: log, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	startCtx, cancel := context.WithTimeout(ctx, startGrace)
	defer cancel()
	if err := waitListening(startCtx, listen, p.exited); err != nil {
		out := p.Stop()
		return nil, fmt.Errorf("%s did not start listening on %s: %w; its output: %s", argv[0], listen, err, out)
	}
	return p, nil
}

// process is a running Command.
type process struct {
	cmd     *exec.Cmd
	addr    string
	log     *limitedBuffer
	exited  chan struct{}
	waitErr error
	once    sync.Once
}

func (p *process) Addr() string { return p.addr }

func (p *process) Stop() string {
	p.once.Do(func() {
		signalGroup(p.cmd, false)
		select {
		case <-p.exited:
		case <-time.After(stopGrace):
			signalGroup(p.cmd, true)
			<-p.exited
		}
		// Children the program left behind in its group go too.
		signalGroup(p.cmd, true)
	})
	return p.log.String()
}

// freeAddr returns a loopback address that was free a moment ago. Another
// process could take it before the implementation binds it; then the
// implementation fails to start and the case reports that.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	max  int
	lost int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := min(len(p), b.max-b.buf.Len())
	b.buf.Write(p[:keep])
	b.lost += len(p) - keep
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lost > 0 {
		return fmt.Sprintf("%s[%d more bytes]", b.buf.String(), b.lost)
	}
	return b.buf.String()
}

// errExited says the program ended before it listened.
var errExited = errors.New("the program exited")

// ErrNotSupported is returned on systems where waiting for a program to
// listen is not implemented.
var ErrNotSupported = errors.New("running an implementation as a command is supported on Linux only")
