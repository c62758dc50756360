package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/metrics"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
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

// relayRisk says why a proxy reachable from other hosts needs an explicit
// -allow-client: the after-filter smtpd trusts its peer, the proxy.
const relayRisk = "any host that reaches this port could relay mail through the after-filter smtpd, which trusts the proxy, and forge the client's name and address with XFORWARD"

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
	allowClient   *allowlist.List // nil: loopback only (the default)
	exp           expansionFlags
	loops         expand.Mode
	socketMode    iofs.FileMode // of a unix:/path LISTEN socket
	warnings      []string
}

// proxyFlags is the proxy's flag set with the variables it fills; the
// flags' definitions live here alone, so parsing, -h and the man page
// (manpage_test.go) all come from them.
type proxyFlags struct {
	fs                       *flag.FlagSet
	o                        *options
	bareLF, logLevel         *string
	socketMode               *string
	drop                     keywordList
	allow, exempt            allowlist.List
	exemptSASL               bool
	children, minPer, maxPer int
}

// proxyUsage is the synopsis -h and the man page print.
const proxyUsage = "usage: smtpprox-loopprevent [flags] LISTEN UPSTREAM\n" +
	"       smtpprox-loopprevent check -rcpt ADDR [-rcpt ADDR ...] [flags] [FILE]\n" +
	"       smtpprox-loopprevent milter [flags] LISTEN\n" +
	"       smtpprox-loopprevent demo\n"

// newProxyFlags defines the proxy's flags. The flag set prints nothing
// itself: parseArgs reports errors in one line, and -h prints usage.
func newProxyFlags() *proxyFlags {
	o := &options{}
	pf := &proxyFlags{o: o, fs: flag.NewFlagSet("smtpprox-loopprevent", flag.ContinueOnError)}
	fs, cfg := pf.fs, &o.cfg
	fs.SetOutput(io.Discard)
	fs.DurationVar(&cfg.ConnectTimeout, "upstream-connect-timeout", smtpproxy.DefaultConnectTimeout, "how long to wait for the upstream connection")
	fs.DurationVar(&cfg.ReplyTimeout, "upstream-reply-timeout", smtpproxy.DefaultReplyTimeout, "how long to wait for an upstream reply or write (keep it below Postfix's smtpd_proxy_timeout)")
	fs.DurationVar(&cfg.CommandTimeout, "client-command-timeout", smtpproxy.DefaultCommandTimeout, "how long to wait for a whole client command line")
	fs.DurationVar(&cfg.DataIdleTimeout, "client-data-timeout", smtpproxy.DefaultDataIdleTimeout, "how long message data may pause")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", smtpproxy.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long sessions may finish their transaction")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", smtpproxy.DefaultMaxSessions, "concurrent sessions; more get 421 4.3.2 too many connections")
	fs.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", smtpproxy.DefaultMaxHeaderBytes, "largest header section; a larger one gets 552 5.3.4")
	fs.Int64Var(&cfg.MaxHeaderMemory, "max-header-memory", smtpproxy.DefaultMaxHeaderMemory, "bytes all sessions' header sections may hold at once; a message that cannot get its share within 10 s gets 451 4.3.1 (at least what one maximal section needs)")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "log loops but let the messages pass")
	o.exp.define(fs)
	fs.Var(&pf.allow, "allow-client", "a `CIDR` of the peers that may connect (repeatable, or a comma list; default: 127.0.0.0/8 and ::1); others get 554 5.7.1 and are closed before anything reaches the upstream")
	fs.Var(&pf.exempt, "exempt-client", "a `CIDR` of SMTP clients whose messages are never judged, by the address Postfix's front smtpd gives with XFORWARD (repeatable, or a comma list): re-injection such as fetchmail or an archive restore")
	fs.BoolVar(&pf.exemptSASL, "exempt-sasl", false, "milter only: Postfix tells a before-queue filter nothing of SASL authentication, so the proxy refuses this flag (use -exempt-client, or leave the submission service unfiltered)")
	pf.socketMode = fs.String("socket-mode", "0660", "file `MODE` (octal) of a unix:/path LISTEN socket: who may connect to it (the socket's owner and group are the process's)")
	pf.bareLF = fs.String("bare-lf", "normalize", "what a bare LF in message data does: `MODE` normalize (ends a line, sent on as CRLF) or reject (550 5.5.2)")
	fs.Var(&pf.drop, "drop-ehlo-keyword", "an EHLO `KEYWORD` to remove besides STARTTLS, CHUNKING, BINARYMIME (repeatable, or a comma list)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json (logs go to standard error)")
	pf.logLevel = fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics) and a liveness check (/healthz) over HTTP on `ADDR` (host:port or unix:/path; off when empty; keep it on loopback or a private network)")
	fs.StringVar(&cfg.DebugTrace, "debugtrace", "", "write a transcript of each session (both directions, every byte) to `PREFIX`.<pid>.<n> (the Perl original wrote one file per worker process, PREFIX.<pid>)")
	// The Perl original's process-pool flags: accepted, ignored.
	fs.IntVar(&pf.children, "children", 0, "ignored: accepted for compatibility with the Perl original (see -max-sessions)")
	fs.IntVar(&pf.minPer, "minperchild", 0, "ignored: accepted for compatibility with the Perl original")
	fs.IntVar(&pf.maxPer, "maxperchild", 0, "ignored: accepted for compatibility with the Perl original")
	return pf
}

// printProxyUsage writes -h's text.
func printProxyUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, proxyUsage+"\n"+
		"A transparent SMTP proxy for Postfix's smtpd_proxy_filter that refuses a message\n"+
		"with 554 5.4.6 when a Delivered-To: header names one of its accepted recipients.\n"+
		"LISTEN and UPSTREAM: host:port, [v6addr]:port or unix:/path.\n"+
		"Example: smtpprox-loopprevent 127.0.0.1:10025 127.0.0.1:10026\n\nFlags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// parseArgs reads the proxy's command line. Flags may come before, between
// or after the two positional arguments. -h prints the usage to stderr and
// returns flag.ErrHelp; any other error is returned for a one-line report.
func parseArgs(args []string, stderr io.Writer) (*options, error) {
	pf := newProxyFlags()
	fs, o := pf.fs, pf.o
	cfg := &o.cfg
	positional, err := parseAnywhere(fs, args, stderr, printProxyUsage)
	if err != nil {
		return nil, err
	}
	if len(positional) != 2 {
		return nil, fmt.Errorf("want two addresses, LISTEN and UPSTREAM; got %s", countArgs(positional))
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
	if need := int64(core.HeaderCaptureMax(cfg.MaxHeaderBytes)); cfg.MaxHeaderMemory < need {
		return nil, fmt.Errorf("-max-header-memory must hold one maximal header section: at least %d with -max-header-bytes %d, got %d", need, cfg.MaxHeaderBytes, cfg.MaxHeaderMemory)
	}
	mode, err := strconv.ParseUint(*pf.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return nil, fmt.Errorf("-socket-mode must be an octal file mode such as 0660, got %q", *pf.socketMode)
	}
	o.socketMode = iofs.FileMode(mode)
	if o.loops, err = o.exp.check(); err != nil {
		return nil, err
	}
	switch *pf.bareLF {
	case "normalize":
		cfg.BareLF = smtpproxy.BareLFNormalize
	case "reject":
		cfg.BareLF = smtpproxy.BareLFReject
	default:
		return nil, fmt.Errorf("-bare-lf must be normalize or reject, got %q", *pf.bareLF)
	}
	cfg.DropEHLOKeywords = pf.drop
	if pf.exemptSASL {
		return nil, errors.New("-exempt-sasl works only for the milter: Postfix's front smtpd tells a before-queue filter nothing of SASL authentication (XFORWARD carries NAME, ADDR, PORT, PROTO, HELO, IDENT and SOURCE only); exempt the clients with -exempt-client, or leave the submission service (587, 465) without smtpd_proxy_filter")
	}
	if !pf.exempt.Empty() {
		cfg.ExemptClients = &pf.exempt
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format must be text or json, got %q", o.logFormat)
	}
	if err := o.logLevel.UnmarshalText([]byte(*pf.logLevel)); err != nil {
		return nil, fmt.Errorf("-log-level must be debug, info, warn or error, got %q", *pf.logLevel)
	}
	var ignored []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "children", "minperchild", "maxperchild":
			ignored = append(ignored, "--"+f.Name)
		case "allow-client":
			o.allowClient = &pf.allow
		}
	})
	if len(ignored) > 0 {
		o.warnings = append(o.warnings, fmt.Sprintf("ignoring %s: this proxy runs one lightweight session per connection, bounded by -max-sessions",
			strings.Join(ignored, ", ")))
	}
	return o, nil
}

// countArgs says how many positional arguments were given, in words.
func countArgs(args []string) string {
	switch len(args) {
	case 0:
		return "none"
	case 1:
		return fmt.Sprintf("one (%q)", args[0])
	}
	return fmt.Sprintf("%d (%q)", len(args), args)
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
	var expObs expand.Observer
	if o.metricsListen != "" {
		m = metrics.New()
		m.SetDryRun(o.cfg.DryRun)
		o.cfg.Observer = m
		expObs = m
	}
	exp := startExpansion(ctx, o.exp, o.loops, log, expObs)
	defer exp.close()
	if exp != nil {
		o.cfg.Expand = exp.hook
		o.cfg.ExpansionWait = o.exp.wait
	}
	o.cfg.AllowClient = o.allowClient
	srv, err := smtpproxy.New(o.cfg)
	if err != nil {
		fmt.Fprintf(stderr, "smtpprox-loopprevent: %v\n", err)
		return exitUsage
	}
	ln, code := listenFront(o.listen, o.socketMode, o.allowClient != nil, relayRisk, "smtpprox-loopprevent", log, stderr)
	if ln == nil {
		return code
	}
	return serveFront(ctx, ln, srv.Serve, "proxy", m, o.metricsListen, log, func() {
		if exp == nil {
			log.Info("SIGHUP received: nothing to re-read (the proxy's settings are its command line; restart to change them); sessions go on")
			return
		}
		log.Info("SIGHUP received: reading the Postfix configuration again; sessions go on")
		exp.reload(ctx)
	})
}

// onReload runs reload on every SIGHUP until stop is called. Without it
// SIGHUP would end the process (Go's default), cutting every session with
// no reply, and systemd would take that for a clean exit and not restart
// it. reload runs on one goroutine, one SIGHUP at a time.
func onReload(reload func()) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-hup:
				reload()
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
		<-finished
	}
}

// setSocketMode gives a Unix-domain listener's socket file its mode; a
// TCP listener is left alone. Until it is set the socket has the mode the
// umask gave it.
func setSocketMode(ln net.Listener, mode iofs.FileMode) error {
	a, ok := ln.Addr().(*net.UnixAddr)
	if !ok {
		return nil
	}
	return os.Chmod(a.Name, mode)
}

// serveMetrics serves m on addr until stop is called. /healthz is live
// until ctx is done (the shutdown signal): during the drain it answers 503
// "shutting down", so a monitor sees the stop before the port goes away.
func serveMetrics(ctx context.Context, m interface {
	Handler(live func() error) http.Handler
}, addr string, log *slog.Logger) (stop func(), err error) {
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
	if allowlist.RequireLoopback(ln.Addr(), "", "") != nil {
		log.Warn("the metrics listener can be reached from other hosts and has no authentication; keep it on loopback or a private network", "listen", ln.Addr().String())
	}
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
