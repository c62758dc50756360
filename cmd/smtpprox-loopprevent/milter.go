package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/metrics"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// unixSocketMode is the mode of a milter socket the command creates
// (LISTEN unix:/path): its owner and group may connect. Postfix's smtpd
// connects as the postfix user, so the milter runs with the postfix group
// (systemd: SupplementaryGroups=postfix) or as a user Postfix can reach.
// It is set right after the socket is bound; until then the umask applies.
const unixSocketMode = 0o660

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
}

// milterFlags builds the milter command's flags into o; the usage text
// and every default live here, so a manual page can be generated from
// the returned set.
func milterFlags(o *milterOptions, stderr io.Writer) (fs *flag.FlagSet, finish func() error) {
	fs = flag.NewFlagSet("smtpprox-loopprevent milter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &o.cfg
	allow := &allowlist.List{}
	exempt := &allowlist.List{}
	fs.Var(allow, "allow-client", "a `CIDR` (or address) of the MTA hosts allowed to connect (repeatable, or a comma list; default 127.0.0.0/8 and ::1; required when LISTEN is not a loopback address)")
	fs.Var(exempt, "exempt-client", "a `CIDR` of SMTP clients whose messages are never judged, from Postfix's connect event (repeatable, or a comma list): re-injection such as fetchmail or an archive restore")
	fs.BoolVar(&cfg.Policy.ExemptSASL, "exempt-sasl", false, "never judge messages of SASL-authenticated clients (submission)")
	loopAction := fs.String("loop-action", "reject", "what a looping message gets: `ACTION` reject (554 5.4.6 for the whole message) or drop-recipient (remove only the looping recipients, silently; reject when every recipient loops)")
	fs.BoolVar(&cfg.Policy.DryRun, "dry-run", false, "log loops but let the messages pass unchanged")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", milter.DefaultMaxSessions, "concurrent milter sessions (one per SMTP session Postfix checks); more are closed at once and Postfix applies milter_default_action")
	fs.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", milter.DefaultMaxHeaderBytes, "header bytes kept per message (its Delivered-To: fields); past it the message is judged on the fields kept")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", milter.DefaultIdleTimeout, "how long a session may wait for Postfix's next event")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", milter.DefaultWriteTimeout, "how long writing a reply to Postfix may take")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", milter.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long sessions may finish the message they are in")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json (logs go to standard error)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics) and a liveness check (/healthz) over HTTP on `ADDR` (host:port or unix:/path; off when empty)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: smtpprox-loopprevent milter [flags] LISTEN\n\n"+
			"A milter for Postfix (smtpd_milters) that refuses a message with 554 5.4.6\n"+
			"when a Delivered-To: header names one of its recipients.\n"+
			"LISTEN: host:port, [v6addr]:port or unix:/path.\n"+
			"Example: smtpprox-loopprevent milter 127.0.0.1:10027\n"+
			"  main.cf: smtpd_milters = inet:127.0.0.1:10027, milter_default_action = accept\n\nFlags:\n")
		fs.PrintDefaults()
	}
	finish = func() error {
		var err error
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
	fs, finish := milterFlags(o, stderr)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if err := finish(); err != nil {
		return nil, err
	}
	if len(positional) != 1 {
		return nil, fmt.Errorf("want one LISTEN address, got %d arguments", len(positional))
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
// shuts down gracefully. SIGHUP re-applies the settings (Server.Reload)
// and never stops the process.
func runMilter(ctx context.Context, args []string, stderr io.Writer) int {
	// Caught from the start: SIGHUP's default action would end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

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
	srv, err := milter.New(o.cfg)
	if err != nil {
		fmt.Fprintf(stderr, "smtpprox-loopprevent milter: %v\n", err)
		return exitUsage
	}
	ln, err := listenMilter(o.listen)
	if err != nil {
		log.Error("cannot listen", "err", err)
		return exitError
	}
	if !o.allowGiven {
		if err := allowlist.RequireLoopback(ln.Addr(), "-allow-client", milterListenRisk); err != nil {
			ln.Close()
			fmt.Fprintf(stderr, "smtpprox-loopprevent milter: %v\n", err)
			return exitUsage
		}
	}
	if o.metricsListen != "" {
		stop, err := serveMetrics(ctx, metrics.New(), o.metricsListen, log)
		if err != nil {
			ln.Close()
			log.Error("cannot listen for metrics", "err", err)
			return exitError
		}
		defer stop()
	}

	go func() {
		for {
			select {
			case <-hup:
				// The settings come from the command line alone, so this
				// re-applies them; what is read from files (Postfix's
				// configuration for recipient expansion) is re-read here.
				if err := srv.Reload(o.cfg.Policy); err != nil {
					log.Error("SIGHUP: reload failed; the settings in force stay", "err", err)
					continue
				}
				log.Info("SIGHUP: settings re-applied; they take effect from the next message")
			case <-ctx.Done():
				return
			}
		}
	}()

	if err := srv.Serve(ctx, ln); err != nil {
		log.Error("milter stopped", "err", err)
		return exitError
	}
	return exitOK
}

// listenMilter opens LISTEN as the proxy does (smtpproxy.Listen) and gives
// a Unix socket unixSocketMode.
func listenMilter(addr string) (net.Listener, error) {
	ln, err := smtpproxy.Listen(addr)
	if err != nil {
		return nil, err
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		path := ul.Addr().String()
		if err := os.Chmod(path, unixSocketMode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen on %s: set the socket's mode: %w", addr, err)
		}
	}
	return ln, nil
}
