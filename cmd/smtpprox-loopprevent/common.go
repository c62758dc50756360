package main

// What the proxy's and the milter's command lines and start-ups share:
// flags anywhere among the arguments, the listener with its socket mode
// and its refusal to be reachable without -allow-client, the metrics
// listener.

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

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// parseAnywhere parses fs's flags wherever they stand among args and
// returns the other arguments in order. -h prints usage to stderr and
// returns flag.ErrHelp.
func parseAnywhere(fs *flag.FlagSet, args []string, stderr io.Writer, usage func(io.Writer, *flag.FlagSet)) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				usage(stderr, fs)
			}
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// listenFront opens a front-end's LISTEN: a unix:/path socket gets mode;
// without an explicit -allow-client a listener other hosts can reach is
// refused, risk saying why. On failure it has said what failed (on log,
// or on stderr for a refusal, prefixed with prog) and returns the exit
// status to end with.
func listenFront(addr string, mode iofs.FileMode, explicitAllow bool, risk, prog string, log *slog.Logger, stderr io.Writer) (net.Listener, int) {
	ln, err := smtpproxy.Listen(addr)
	if err != nil {
		log.Error("cannot listen", "err", err)
		return nil, exitError
	}
	if err := setSocketMode(ln, mode); err != nil {
		ln.Close()
		log.Error("cannot set the socket's mode", "err", err)
		return nil, exitError
	}
	if !explicitAllow {
		if err := allowlist.RequireLoopback(ln.Addr(), "-allow-client", risk); err != nil {
			ln.Close()
			fmt.Fprintf(stderr, "%s: %v\n", prog, err)
			return nil, exitUsage
		}
	}
	return ln, exitOK
}

// metricsHandler is what the metrics listener serves: metrics.Metrics
// or metrics.Milter.
type metricsHandler interface {
	Handler(live func() error) http.Handler
}

// serveFront runs a front-end's serve on ln until ctx is done (a signal),
// with its metrics served beside it on metricsListen and reload run on
// every SIGHUP; name says which front-end stopped in the log. It returns
// the exit status.
func serveFront(ctx context.Context, ln net.Listener, serve func(context.Context, net.Listener) error, name string,
	m metricsHandler, metricsListen string, log *slog.Logger, reload func()) int {
	stopMetrics, ok := startMetrics(ctx, m, metricsListen, log)
	if !ok {
		ln.Close()
		return exitError
	}
	defer stopMetrics()
	defer onReload(reload)()
	if err := serve(ctx, ln); err != nil {
		log.Error(name+" stopped", "err", err)
		return exitError
	}
	return exitOK
}

// startMetrics serves m on addr when addr is set (m is then too); stop
// ends it (a no-op without). Scrapes go on while the sessions drain: the
// caller stops it only once the front-end has stopped.
func startMetrics(ctx context.Context, m metricsHandler, addr string, log *slog.Logger) (stop func(), ok bool) {
	if addr == "" {
		return func() {}, true
	}
	stop, err := serveMetrics(ctx, m, addr, log)
	if err != nil {
		log.Error("cannot listen for metrics", "err", err)
		return nil, false
	}
	return stop, true
}
