package conformance

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/syncbuf"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// inProcessProxy is the proxy of package smtpproxy, run inside the test
// binary with the case's configuration.
func inProcessProxy() Implementation {
	return InProcess{Label: "in-process smtpproxy", Serve: serveSMTPProxy}
}

// proxyConfig turns a case's configuration into an smtpproxy.Config. The
// keys and values were checked when the case was read.
func proxyConfig(c *Case, upstream string, log *slog.Logger) (smtpproxy.Config, error) {
	cfg := smtpproxy.Config{Upstream: upstream, Logger: log}
	for _, o := range c.Config {
		var err error
		switch o.Key {
		case OptDryRun:
			cfg.DryRun = o.Value == "true"
		case OptBareLF:
			cfg.BareLF = smtpproxy.BareLFNormalize
			if o.Value == "reject" {
				cfg.BareLF = smtpproxy.BareLFReject
			}
		case OptMaxHeaderBytes:
			cfg.MaxHeaderBytes, err = strconv.Atoi(o.Value)
		case OptMaxSessions:
			cfg.MaxSessions, err = strconv.Atoi(o.Value)
		case OptConnectTimeout:
			cfg.ConnectTimeout, err = time.ParseDuration(o.Value)
		case OptReplyTimeout:
			cfg.ReplyTimeout, err = time.ParseDuration(o.Value)
		case OptCommandTimeout:
			cfg.CommandTimeout, err = time.ParseDuration(o.Value)
		case OptDataTimeout:
			cfg.DataIdleTimeout, err = time.ParseDuration(o.Value)
		case OptDropEHLOKeywords:
			cfg.DropEHLOKeywords = strings.Split(o.Value, ",")
		case OptAllowClient:
			cfg.AllowClient, err = allowlist.Parse(o.Value)
		case OptExemptClient:
			cfg.ExemptClients, err = allowlist.Parse(o.Value)
		default:
			return cfg, &NeedsError{Needs: []string{o.Key}}
		}
		if err != nil {
			return cfg, fmt.Errorf("%s=%s: %w", o.Key, o.Value, err)
		}
	}
	return cfg, nil
}

func serveSMTPProxy(ln net.Listener, c *Case, upstream string) (func() string, error) {
	logs := &syncbuf.Buffer{}
	cfg, err := proxyConfig(c, upstream, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		return nil, err
	}
	srv, err := smtpproxy.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("smtpproxy.New: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() string {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				fmt.Fprintf(logs, "Serve returned: %v\n", err)
			}
		})
		return logs.String()
	}
	return stop, nil
}
