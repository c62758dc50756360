package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// expansionFlags are the flags of recipient expansion (SPEC section 8),
// shared by the proxy, the milter and check.
type expansionFlags struct {
	configDir string
	loops     string
	wait      time.Duration
}

func (x *expansionFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&x.configDir, "postfix-config", "", "judge each recipient also by the addresses this Postfix instance rewrites it to (canonical and virtual alias maps, aliases): its config `DIR`, e.g. /etc/postfix (off when empty; docs/expansion.md)")
	fs.StringVar(&x.loops, "loops", "any", "with -postfix-config, which matches refuse a message: `MODE` any (the recipient as spelled or any address it expands to) or postfix (only what Postfix itself would bounce as a loop: addresses delivered by local(8) or pipe(8) with flag D)")
	fs.DurationVar(&x.wait, "expansion-wait", expand.DefaultWait, "with -postfix-config, how long to wait at end of message for expansions still running before judging those recipients as spelled (at most 1m0s)")
}

// maxExpansionWait bounds -expansion-wait. The front smtpd waits for the
// proxy's reply to the end of DATA at most smtpd_proxy_timeout (100 s by
// default), and the proxy's own wait for the after-filter comes after the
// expansion wait; a wait near that limit would turn a slow lookup into
// Postfix's "queue file write error" instead of a message judged as
// spelled.
const maxExpansionWait = 60 * time.Second

// check validates the flags' values; it returns the mode.
func (x *expansionFlags) check() (expand.Mode, error) {
	mode, err := expand.ParseMode(x.loops)
	if err != nil {
		return 0, fmt.Errorf("-loops must be any or postfix, got %q", x.loops)
	}
	if x.wait <= 0 {
		return 0, fmt.Errorf("-expansion-wait must be positive, got %v", x.wait)
	}
	if x.wait > maxExpansionWait {
		return 0, fmt.Errorf("-expansion-wait must be at most %v (well below Postfix's smtpd_proxy_timeout, 100 s), got %v", maxExpansionWait, x.wait)
	}
	if x.configDir == "" && x.loops != "any" {
		return 0, fmt.Errorf("-loops=%s needs -postfix-config: without it nothing tells which recipients Postfix delivers where", x.loops)
	}
	return mode, nil
}

// newExpander starts the expansion of recipients for the Postfix instance
// in the flags, or returns nil when -postfix-config is not set.
func (x *expansionFlags) newExpander(ctx context.Context, log *slog.Logger, obs expand.Observer) (*expand.Expander, error) {
	if x.configDir == "" {
		return nil, nil
	}
	e, err := expand.New(ctx, expand.Options{ConfigDir: x.configDir, Logger: log, Observer: obs})
	if err != nil {
		return nil, fmt.Errorf("-postfix-config %s: %w", x.configDir, err)
	}
	return e, nil
}

// expansionRunner is the expansion of a running front-end: the Expander
// of -postfix-config, or none while it cannot be made, and the hook the
// front-end calls. Expansion fails open at start as on every lookup: a
// -postfix-config that cannot be read is logged as an error and the
// recipients are judged as spelled until a SIGHUP reads it successfully;
// the front-end serves mail either way.
type expansionRunner struct {
	flags expansionFlags
	mode  expand.Mode
	log   *slog.Logger
	obs   expand.Observer
	cur   atomic.Pointer[expand.Expander]
}

// startExpansion makes the runner of the flags, or returns nil without
// -postfix-config.
func startExpansion(ctx context.Context, flags expansionFlags, mode expand.Mode, log *slog.Logger, obs expand.Observer) *expansionRunner {
	if flags.configDir == "" {
		return nil
	}
	x := &expansionRunner{flags: flags, mode: mode, log: log, obs: obs}
	x.load(ctx)
	return x
}

// load makes the Expander, logging the outcome.
func (x *expansionRunner) load(ctx context.Context) {
	e, err := x.flags.newExpander(ctx, x.log, x.obs)
	if err != nil {
		x.log.Error("recipient expansion is off: recipients are judged as spelled until a SIGHUP reads the configuration", "err", err)
		return
	}
	x.cur.Store(e)
	x.log.Info("recipient expansion", "postfix_config", x.flags.configDir, "loops", x.flags.loops, "wait", x.flags.wait.String(), "backend", e.BackendInfo())
}

// reload is SIGHUP: the configuration read again and the cache emptied,
// or, while there is no Expander, a new attempt to make one.
func (x *expansionRunner) reload(ctx context.Context) {
	e := x.cur.Load()
	if e == nil {
		x.load(ctx)
		return
	}
	if err := e.Reload(ctx); err != nil {
		x.log.Error("recipient expansion: the configuration could not be read again; the old one stays", "postfix_config", x.flags.configDir, "err", err)
		return
	}
	x.log.Info("recipient expansion: configuration read again, cache emptied", "postfix_config", x.flags.configDir, "backend", e.BackendInfo())
}

// hook is the front-end's Expand: with the current Expander, or the
// recipient as spelled while there is none.
func (x *expansionRunner) hook(rcptArg string) func(context.Context) loopcheck.Recipient {
	e := x.cur.Load()
	if e == nil {
		r := loopcheck.NewRecipient(rcptArg)
		return func(context.Context) loopcheck.Recipient { return r }
	}
	return e.Recipients(x.mode)(rcptArg)
}

// close ends every expansion.
func (x *expansionRunner) close() {
	if x == nil {
		return
	}
	if e := x.cur.Load(); e != nil {
		e.Close()
	}
}
