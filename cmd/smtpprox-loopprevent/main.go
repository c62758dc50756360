// Command smtpprox-loopprevent is a transparent SMTP proxy for Postfix's
// smtpd_proxy_filter that refuses, at end of DATA, a message whose
// Delivered-To: header names one of its accepted envelope recipients:
// "554 5.4.6 mail forwarding loop for <recipient>". That turns the
// after-queue "mail forwarding loop" bounces of forged Delivered-To: spam
// into SMTP-time rejections: no bounce, no backscatter.
//
//	smtpprox-loopprevent [flags] LISTEN UPSTREAM
//	smtpprox-loopprevent 127.0.0.1:10025 127.0.0.1:10026
//	smtpprox-loopprevent check -rcpt ADDR [-rcpt ADDR ...] [FILE]
//
// LISTEN and UPSTREAM are host:port, [v6addr]:port or unix:/path. It is a
// drop-in for the Perl original of the same name: same arguments, its
// --children, --minperchild and --maxperchild accepted (and ignored, with
// one warning), --debugtrace=PREFIX writing one transcript per session.
// SIGTERM or SIGINT shuts down gracefully and exits 0: the listener
// closes, idle sessions get "421 4.3.2 shutting down", open transactions
// finish within -drain-timeout. -metrics-listen ADDR serves Prometheus
// metrics on /metrics and a liveness check on /healthz (package metrics).
// The check subcommand judges a saved message with the very code the
// proxy runs.
//
// The behaviour is in package smtpproxy; this command is flags, wiring,
// signals, logging and the metrics listener.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// SIGHUP's default action ends the process. Until a front-end handles
	// it (onReload), it is caught here and dropped: a channel nobody reads.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches: "check" as the first argument is the offline verdict,
// anything else runs the proxy until ctx is done.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "check" {
		return runCheck(args[1:], stdin, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "milter" {
		return runMilter(ctx, args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "demo" {
		return runDemo(ctx, args[1:], stdout, stderr)
	}
	return runProxy(ctx, args, stderr)
}
