package smtpproxy

import (
	"log/slog"
	"net"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/syncbuf"
)

// The runtime's tests run the proxy between an smtptest.Client and an
// smtptest.Upstream; these add what a Server of this package needs.

// proxy is a running Server on 127.0.0.1.
type proxy struct {
	addr string
	stop func() error
	logs *syncbuf.Buffer
}

func startProxy(t testing.TB, cfg Config) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveProxy(t, cfg, ln)
}

func serveProxy(t testing.TB, cfg Config, ln net.Listener) *proxy {
	t.Helper()
	return serveTuned(t, cfg, ln, nil)
}

// serveTuned is serveProxy with tune, if not nil, run on the Server
// before it serves: for tests of settings Config does not hold.
func serveTuned(t testing.TB, cfg Config, ln net.Listener, tune func(*Server)) *proxy {
	t.Helper()
	logs := &syncbuf.Buffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(srv)
	}
	stop := smtptest.Serve(t, srv, ln)
	return &proxy{addr: ln.Addr().String(), stop: stop, logs: logs}
}

// openSession starts a proxy with cfg and returns it with a client past
// the upstream's greeting.
func openSession(t testing.TB, cfg Config) (*proxy, *smtptest.Client) {
	t.Helper()
	p := startProxy(t, cfg)
	c := dialClient(t, p.addr)
	c.ExpectReply(greeting)
	return p, c
}

// dialClient connects to a proxy address (host:port, [v6addr]:port or
// unix:/path).
func dialClient(t testing.TB, addr string) *smtptest.Client {
	t.Helper()
	network, address, err := SplitAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	return smtptest.Dial(t, network, address)
}
