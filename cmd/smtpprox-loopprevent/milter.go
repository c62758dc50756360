package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"strconv"
	"sync"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/metrics"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// milterListenRisk says, for allowlist.RequireLoopback, what a peer on the
// network could do with a reachable milter.
const milterListenRisk = "any host that can reach it could use up its sessions, so that Postfix's own connections are refused and mail passes unchecked (milter_default_action)"

// milterOptions is what the milter's command line says.
type milterOptions struct {
	cfg           milter.Config
	listen        string
	allowGiven    bool // -allow-client was given
	metricsListen string
	logFormat     string
	logLevel      slog.Level
	socketMode    iofs.FileMode // of a unix:/path LISTEN socket
	exp           expansionFlags
	loops         expand.Mode
}

// milterUsage is the synopsis of the milter's -h and the man page.
const milterUsage = "usage: smtpprox-loopprevent milter [flags] LISTEN\n"

// printMilterUsage writes the milter's -h text.
func printMilterUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, milterUsage+"\n"+
		"A milter for Postfix (smtpd_milters) that refuses a message with 554 5.4.6\n"+
		"when a Delivered-To: header names one of its recipients.\n"+
		"LISTEN: host:port, [v6addr]:port or unix:/path.\n"+
		"Example: smtpprox-loopprevent milter 127.0.0.1:10027\n"+
		"  main.cf: smtpd_milters = { inet:127.0.0.1:10027, default_action=accept, protocol=6 }\n\nFlags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// milterFlags builds the milter command's flags into o; the usage text
// and every default live here, so a manual page can be generated from
// the returned set.
func milterFlags(o *milterOptions) (fs *flag.FlagSet, finish func() error) {
	fs = flag.NewFlagSet("smtpprox-loopprevent milter", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg := &o.cfg
	allow := &allowlist.List{}
	exempt := &allowlist.List{}
	fs.Var(allow, "allow-client", "a `CIDR` (or address) of the MTA hosts allowed to connect (repeatable, or a comma list; default 127.0.0.0/8 and ::1; required when LISTEN is not a loopback address)")
	fs.Var(exempt, "exempt-client", "a `CIDR` of SMTP clients whose messages are never judged, from Postfix's connect event (repeatable, or a comma list): re-injection such as fetchmail or an archive restore")
	fs.BoolVar(&cfg.Policy.ExemptSASL, "exempt-sasl", false, "never judge messages of SASL-authenticated clients (submission)")
	loopAction := fs.String("loop-action", "reject", "what a looping message gets: `ACTION` reject (554 5.4.6 for the whole message) or drop-recipient (remove only the looping recipients, silently, each only when all its -postfix-config expansion loops; else reject)")
	fs.BoolVar(&cfg.Policy.DryRun, "dry-run", false, "log loops but let the messages pass unchanged")
	o.exp.define(fs)
	socketMode := fs.String("socket-mode", "0660", "file `MODE` (octal) of a unix:/path LISTEN socket: who may connect to it (Postfix's smtpd connects as the postfix user: run the milter with the postfix group, or as a user Postfix can reach)")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", milter.DefaultMaxSessions, "concurrent milter sessions (one per SMTP session Postfix checks); more are closed at once and Postfix applies milter_default_action")
	fs.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", milter.DefaultMaxHeaderBytes, "header bytes kept per message (its Delivered-To: fields); past it the message is judged on the fields kept")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", milter.DefaultIdleTimeout, "how long a session may wait for Postfix's next event")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", milter.DefaultWriteTimeout, "how long writing a reply to Postfix may take")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", milter.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long sessions may finish the message they are in")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json (logs go to standard error)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics) and a liveness check (/healthz) over HTTP on `ADDR` (host:port or unix:/path; off when empty)")
	finish = func() error {
		var err error
		mode, perr := strconv.ParseUint(*socketMode, 8, 32)
		if perr != nil || mode > 0o777 {
			return fmt.Errorf("-socket-mode must be an octal file mode such as 0660, got %q", *socketMode)
		}
		o.socketMode = iofs.FileMode(mode)
		if o.loops, err = o.exp.check(); err != nil {
			return err
		}
		cfg.ExpandWait = o.exp.wait
		if cfg.Policy.LoopAction, err = milter.ParseLoopAction(*loopAction); err != nil {
			return fmt.Errorf("-loop-action: %w", err)
		}
		if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
			return fmt.Errorf("-log-level must be debug, info, warn or error, got %q", *logLevel)
		}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "allow-client" {
				o.allowGiven = true
			}
		})
		if o.allowGiven {
			cfg.AllowClients = allow
		}
		if !exempt.Empty() {
			cfg.Policy.ExemptClients = exempt
		}
		return nil
	}
	return fs, finish
}

// parseMilterArgs reads the milter's command line. Flags may come before
// or after LISTEN.
func parseMilterArgs(args []string, stderr io.Writer) (*milterOptions, error) {
	o := &milterOptions{}
	fs, finish := milterFlags(o)
	positional, err := parseAnywhere(fs, args, stderr, printMilterUsage)
	if err != nil {
		return nil, err
	}
	if err := finish(); err != nil {
		return nil, err
	}
	if len(positional) != 1 {
		return nil, fmt.Errorf("want one LISTEN address; got %s", countArgs(positional))
	}
	o.listen = positional[0]
	if _, _, err := smtpproxy.SplitAddr(o.listen); err != nil {
		return nil, err
	}
	if o.metricsListen != "" {
		if _, _, err := smtpproxy.SplitAddr(o.metricsListen); err != nil {
			return nil, fmt.Errorf("-metrics-listen: %w", err)
		}
	}
	c := &o.cfg
	for name, d := range map[string]time.Duration{
		"idle-timeout": c.IdleTimeout, "write-timeout": c.WriteTimeout, "drain-timeout": c.DrainTimeout,
	} {
		if d <= 0 {
			return nil, fmt.Errorf("-%s must be positive, got %v", name, d)
		}
	}
	if c.MaxSessions <= 0 {
		return nil, fmt.Errorf("-max-sessions must be positive, got %d", c.MaxSessions)
	}
	if c.MaxHeaderBytes < milter.MinHeaderBytes {
		return nil, fmt.Errorf("-max-header-bytes must be at least %d, got %d", milter.MinHeaderBytes, c.MaxHeaderBytes)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format must be text or json, got %q", o.logFormat)
	}
	return o, nil
}

// milterLibraryLog routes go-milter's warnings (a process-wide hook of the
// library) to the first milter's log; set once per process.
var milterLibraryLog sync.Once

// runMilter runs the milter until ctx is done (SIGTERM, SIGINT), then
// shuts down gracefully. SIGHUP re-reads the Postfix configuration of
// recipient expansion and re-applies the settings (Server.Reload); it
// never stops the process.
func runMilter(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parseMilterArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "smtpprox-loopprevent milter: %v\nRun with -h for usage.\n", err)
		return exitUsage
	}
	log := newLogger(&options{logFormat: o.logFormat, logLevel: o.logLevel}, stderr)
	milterLibraryLog.Do(func() {
		gomilter.LogWarning = func(format string, v ...any) {
			log.Warn("milter library: " + fmt.Sprintf(format, v...))
		}
	})
	o.cfg.Logger = log
	var mm *metrics.Milter
	var expObs expand.Observer
	if o.metricsListen != "" {
		mm = metrics.NewMilter()
		mm.SetDryRun(o.cfg.Policy.DryRun)
		o.cfg.Observer = mm
		expObs = mm
	}
	exp := startExpansion(ctx, o.exp, o.loops, log, expObs)
	defer exp.close()
	if exp != nil {
		o.cfg.Policy.Expander = exp.hook
	}
	srv, err := milter.New(o.cfg)
	if err != nil {
		fmt.Fprintf(stderr, "smtpprox-loopprevent milter: %v\n", err)
		return exitUsage
	}
	ln, code := listenFront(o.listen, o.socketMode, o.allowGiven, milterListenRisk, "smtpprox-loopprevent milter", log, stderr)
	if ln == nil {
		return code
	}
	return serveFront(ctx, ln, srv.Serve, "milter", mm, o.metricsListen, log, func() {
		log.Info("SIGHUP received; sessions go on")
		if exp != nil {
			exp.reload(ctx)
		}
		if err := srv.Reload(o.cfg.Policy); err != nil {
			log.Error("SIGHUP: reload failed; the settings in force stay", "err", err)
			return
		}
		log.Info("SIGHUP: settings re-applied; they take effect from the next message")
	})
}
