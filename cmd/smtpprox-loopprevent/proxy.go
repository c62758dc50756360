package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/metrics"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// Exit codes of the proxy.
const (
	exitOK    = 0 // clean shutdown
	exitError = 1 // the proxy failed while running (listen, accept)
	exitUsage = 2 // bad arguments
)

// Limits of the metrics listener: it serves a scraper and a health
// check, a few small requests a minute, so anything slow or large is a
// misbehaving peer and must not hold a goroutine or memory.
const (
	metricsReadHeaderTimeout = 10 * time.Second
	metricsWriteTimeout      = 30 * time.Second // a scrape of a few hundred series
	metricsIdleTimeout       = 2 * time.Minute  // keep-alive between scrapes
	metricsMaxHeaderBytes    = 16 << 10
)

// minHeaderBytes is the smallest -max-header-bytes accepted: below a few
// KiB ordinary mail (a Received: chain, DKIM signatures) would be refused.
const minHeaderBytes = 4 << 10

// keywordList collects -drop-ehlo-keyword values, repeated or comma
// separated.
type keywordList []string

func (k *keywordList) String() string { return strings.Join(*k, ",") }

func (k *keywordList) Set(v string) error {
	for _, w := range strings.Split(v, ",") {
		w = strings.TrimSpace(w)
		if w == "" {
			continue
		}
		if strings.ContainsAny(w, " \t\r\n") {
			return fmt.Errorf("EHLO keyword %q holds white space", w)
		}
		*k = append(*k, strings.ToUpper(w))
	}
	return nil
}

// options is what the command line says.
type options struct {
	cfg           smtpproxy.Config
	listen        string
	metricsListen string
	logFormat     string
	logLevel      slog.Level
	warnings      []string
}

// parseArgs reads the proxy's command line. Flags may come before, between
// or after the two positional arguments.
func parseArgs(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("smtpprox-loopprevent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &o.cfg
	fs.DurationVar(&cfg.ConnectTimeout, "upstream-connect-timeout", smtpproxy.DefaultConnectTimeout, "how long to wait for the upstream connection")
	fs.DurationVar(&cfg.ReplyTimeout, "upstream-reply-timeout", smtpproxy.DefaultReplyTimeout, "how long to wait for an upstream reply or write (keep it below Postfix's smtpd_proxy_timeout)")
	fs.DurationVar(&cfg.CommandTimeout, "client-command-timeout", smtpproxy.DefaultCommandTimeout, "how long to wait for a whole client command line")
	fs.DurationVar(&cfg.DataIdleTimeout, "client-data-timeout", smtpproxy.DefaultDataIdleTimeout, "how long message data may pause")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", smtpproxy.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long sessions may finish their transaction")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", smtpproxy.DefaultMaxSessions, "concurrent sessions; more get 421 4.3.2 too many connections")
	fs.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", smtpproxy.DefaultMaxHeaderBytes, "largest header section; a larger one gets 552 5.3.4")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "log loops but let the messages pass")
	bareLF := fs.String("bare-lf", "normalize", "what a bare LF in message data does: `MODE` normalize (ends a line, sent on as CRLF) or reject (550 5.5.2)")
	var drop keywordList
	fs.Var(&drop, "drop-ehlo-keyword", "an EHLO `KEYWORD` to remove besides STARTTLS, CHUNKING, BINARYMIME (repeatable, or a comma list)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json (logs go to standard error)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics) and a liveness check (/healthz) over HTTP on `ADDR` (host:port or unix:/path; off when empty; keep it on loopback or a private network)")
	fs.StringVar(&cfg.DebugTrace, "debugtrace", "", "write a transcript of each session (both directions, every byte) to `PREFIX`.<pid>.<n> (the Perl original wrote one file per worker process, PREFIX.<pid>)")
	// The Perl original's process-pool flags: accepted, ignored.
	var children, minPer, maxPer int
	fs.IntVar(&children, "children", 0, "ignored: accepted for compatibility with the Perl original (see -max-sessions)")
	fs.IntVar(&minPer, "minperchild", 0, "ignored: accepted for compatibility with the Perl original")
	fs.IntVar(&maxPer, "maxperchild", 0, "ignored: accepted for compatibility with the Perl original")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: smtpprox-loopprevent [flags] LISTEN UPSTREAM\n"+
			"       smtpprox-loopprevent check -rcpt ADDR [-rcpt ADDR ...] [FILE]\n\n"+
			"A transparent SMTP proxy for Postfix's smtpd_proxy_filter that refuses a message\n"+
			"with 554 5.4.6 when a Delivered-To: header names one of its accepted recipients.\n"+
			"LISTEN and UPSTREAM: host:port, [v6addr]:port or unix:/path.\n"+
			"Example: smtpprox-loopprevent 127.0.0.1:10025 127.0.0.1:10026\n\nFlags:\n")
		fs.PrintDefaults()
	}

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
	if len(positional) != 2 {
		return nil, fmt.Errorf("want LISTEN and UPSTREAM addresses, got %d arguments", len(positional))
	}
	o.listen, cfg.Upstream = positional[0], positional[1]
	for _, a := range positional {
		if _, _, err := smtpproxy.SplitAddr(a); err != nil {
			return nil, err
		}
	}
	if o.metricsListen != "" {
		if _, _, err := smtpproxy.SplitAddr(o.metricsListen); err != nil {
			return nil, fmt.Errorf("-metrics-listen: %w", err)
		}
	}
	for name, d := range map[string]time.Duration{
		"upstream-connect-timeout": cfg.ConnectTimeout, "upstream-reply-timeout": cfg.ReplyTimeout,
		"client-command-timeout": cfg.CommandTimeout, "client-data-timeout": cfg.DataIdleTimeout,
		"drain-timeout": cfg.DrainTimeout,
	} {
		if d <= 0 {
			return nil, fmt.Errorf("-%s must be positive, got %v", name, d)
		}
	}
	if cfg.MaxSessions <= 0 {
		return nil, fmt.Errorf("-max-sessions must be positive, got %d", cfg.MaxSessions)
	}
	if cfg.MaxHeaderBytes < minHeaderBytes {
		return nil, fmt.Errorf("-max-header-bytes must be at least %d, got %d", minHeaderBytes, cfg.MaxHeaderBytes)
	}
	switch *bareLF {
	case "normalize":
		cfg.BareLF = smtpproxy.BareLFNormalize
	case "reject":
		cfg.BareLF = smtpproxy.BareLFReject
	default:
		return nil, fmt.Errorf("-bare-lf must be normalize or reject, got %q", *bareLF)
	}
	cfg.DropEHLOKeywords = drop
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format must be text or json, got %q", o.logFormat)
	}
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, fmt.Errorf("-log-level must be debug, info, warn or error, got %q", *logLevel)
	}
	var ignored []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "children", "minperchild", "maxperchild":
			ignored = append(ignored, "--"+f.Name)
		}
	})
	if len(ignored) > 0 {
		o.warnings = append(o.warnings, fmt.Sprintf("ignoring %s: this proxy runs one lightweight session per connection, bounded by -max-sessions",
			strings.Join(ignored, ", ")))
	}
	return o, nil
}

func newLogger(o *options, w io.Writer) *slog.Logger {
	hopts := &slog.HandlerOptions{Level: o.logLevel}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, hopts))
	}
	return slog.New(slog.NewTextHandler(w, hopts))
}

// runProxy runs the proxy until ctx is done (a signal), then shuts down
// gracefully.
func runProxy(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "smtpprox-loopprevent: %v\nRun with -h for usage.\n", err)
		return exitUsage
	}
	log := newLogger(o, stderr)
	for _, w := range o.warnings {
		log.Warn(w)
	}
	o.cfg.Logger = log
	var m *metrics.Metrics
	if o.metricsListen != "" {
		m = metrics.New()
		o.cfg.Observer = m
	}
	srv, err := smtpproxy.New(o.cfg)
	if err != nil {
		fmt.Fprintf(stderr, "smtpprox-loopprevent: %v\n", err)
		return exitUsage
	}
	ln, err := smtpproxy.Listen(o.listen)
	if err != nil {
		log.Error("cannot listen", "err", err)
		return exitError
	}
	if m != nil {
		stop, err := serveMetrics(ctx, m, o.metricsListen, log)
		if err != nil {
			ln.Close()
			log.Error("cannot listen for metrics", "err", err)
			return exitError
		}
		// Scrapes go on while the sessions drain; the endpoint closes
		// only when the proxy has stopped.
		defer stop()
	}
	if err := srv.Serve(ctx, ln); err != nil {
		log.Error("proxy stopped", "err", err)
		return exitError
	}
	return exitOK
}

// serveMetrics serves m on addr until stop is called. /healthz is live
// until ctx is done (the shutdown signal): during the drain it answers 503
// "shutting down", so a monitor sees the stop before the port goes away.
func serveMetrics(ctx context.Context, m *metrics.Metrics, addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := smtpproxy.Listen(addr)
	if err != nil {
		return nil, err
	}
	live := func() error {
		if ctx.Err() != nil {
			return errors.New("shutting down")
		}
		return nil
	}
	hs := &http.Server{
		Handler:           m.Handler(live),
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		MaxHeaderBytes:    metricsMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("metrics listening", "listen", ln.Addr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			log.Error("metrics listener failed", "err", err)
		}
	}()
	return func() {
		hs.Close()
		<-done
	}, nil
}
