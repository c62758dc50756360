package expand

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// pingTimeout bounds the check that the proxymap socket answers at start
// and on reload: a local socket answers at once or not at all.
const pingTimeout = 5 * time.Second

// ProxymapSocket is the socket a filter reaches proxymap(8) on: the
// public one, which the extra master.cf entry "proxymap unix n - n - -
// proxymap" creates (private/ is for Postfix's own daemons, mode 0700).
func (c *Config) ProxymapSocket() string {
	return filepath.Join(c.QueueDirectory, "public", "proxymap")
}

// unapproved returns the tables the expansion needs that proxy_read_maps
// does not approve (builtin tables need no approval).
func (c *Config) unapproved() []string {
	var out []string
	for _, t := range c.tables() {
		if !isBuiltin(t) && !slices.Contains(c.ProxyReadMaps, t) {
			out = append(out, t)
		}
	}
	return out
}

// requestForm names the proxymap request form for logs.
func requestForm(newForm bool) string {
	if newForm {
		return "request form of Postfix 3.11 and later"
	}
	return "request form of Postfix 3.10 and earlier"
}

// chooseBackend picks the lookup backend and says why.
func chooseBackend(ctx context.Context, cfg *Config, opts Options) (Backend, string, error) {
	postmap := func(why string) (Backend, string, error) {
		return NewPostmap(opts.ConfigDir, cfg.AliasMaps, opts.PostmapProcs),
			"postmap: one postmap -q / postalias -q process per lookup; " + why, nil
	}
	if opts.Prefer == BackendPostmap {
		return postmap("chosen by configuration")
	}
	sock := cfg.ProxymapSocket()
	if missing := cfg.unapproved(); len(missing) > 0 {
		why := fmt.Sprintf("proxymap not used: proxy_read_maps does not approve %s (add %s to it)",
			strings.Join(missing, ", "), "proxy:"+strings.Join(missing, " proxy:"))
		if opts.Prefer == BackendProxymap {
			return nil, "", fmt.Errorf("expand: %s", why)
		}
		return postmap(why)
	}
	pm := NewProxymap(sock, cfg.ProxymapNewForm(), opts.ProxymapConns)
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := pm.Ping(pctx); err != nil {
		pm.Close()
		why := fmt.Sprintf("proxymap not used: %s does not answer: %v (add \"proxymap unix n - n - - proxymap\" to master.cf, and run this process with supplementary group postdrop)", sock, err)
		if opts.Prefer == BackendProxymap {
			return nil, "", fmt.Errorf("expand: %s", why)
		}
		return postmap(why)
	}
	return pm, fmt.Sprintf("proxymap at %s, Postfix %s, %s; %d tables approved in proxy_read_maps",
		sock, cfg.MailVersion, requestForm(cfg.ProxymapNewForm()), len(cfg.tables())), nil
}
