package conformance

import (
	"context"
	"net"
	"regexp"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

// TestPostfixFilterUnavailable shows what a client of Postfix's front
// smtpd gets when the filter cannot serve, and when: nothing listens at
// the filter address (the proxy is down or restarting), or the proxy runs
// but its upstream, the after-filter smtpd, does not (the proxy answers
// 421 4.4.1). The front smtpd opens the filter session at the first
// accepted RCPT, or with smtpd_proxy_options=speed_adjust only after the
// whole message has arrived: so the client gets its 4xx at RCPT, or with
// speed_adjust at the end of DATA. Either way it is a 4xx and nothing is
// queued: the client retries. docs/operations.md states these replies.
func TestPostfixFilterUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name        string
		speedAdjust bool
		proxyUp     bool   // the proxy runs, its upstream is down
		warning     string // what the front smtpd logs
	}{
		{"proxy_down", false, false, `warning: connect to proxy filter [^ ]+: Connection refused`},
		{"proxy_down_speed_adjust", true, false, `warning: connect to proxy filter [^ ]+: Connection refused`},
		{"afterfilter_down", false, true, `warning: proxy [^ ]+ rejected "connection request": "421 4\.4\.1 `},
		{"afterfilter_down_speed_adjust", true, true, `warning: proxy [^ ]+ rejected "connection request": "421 4\.4\.1 `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := postfixtest.New(t, postfixtest.Options{SpeedAdjust: tc.speedAdjust, ProxyTimeout: pfProxyTimeout})
			ln := p.FilterListener()
			if tc.proxyUp {
				pfServeWithUpstream(t, ln, pfClosedAddr(t))
			} else {
				ln.Close() // connection refused at the filter address
			}
			p.Start()

			res, err := postfixtest.Send(p.FrontAddr(), "sender@local.test", []string{"user@local.test"},
				[]byte("Subject: filter unavailable\n\nhello\n"))
			if err != nil {
				t.Fatalf("send: %v\n%+v", err, res)
			}
			t.Logf("RCPT: %v; DATA: %v; end of data: %v", res.Rcpt, res.Data, res.EndOfData)
			if len(res.Rcpt) != 1 {
				t.Fatalf("%d RCPT replies, want 1: %+v", len(res.Rcpt), res)
			}
			if tc.speedAdjust {
				if res.Rcpt[0].Class() != 2 || res.Data.Code != 354 || res.EndOfData.Class() != 4 {
					t.Errorf("with speed_adjust: RCPT %v, DATA %v, end of data %v; want 2xx, 354 and a 4xx at the end of data", res.Rcpt[0], res.Data, res.EndOfData)
				}
			} else if res.Rcpt[0].Class() != 4 || res.Data.Code != 0 {
				t.Errorf("RCPT %v, DATA %v; want a 4xx at RCPT and no DATA", res.Rcpt[0], res.Data)
			}
			p.WaitLog(regexp.MustCompile(tc.warning))
			// The queue may hold Postfix's own notice to the postmaster
			// (notify_classes), never the client's message.
			if q, err := p.QueueListing(); err != nil || regexp.MustCompile(`(?m)^[0-9A-F]{6,}\S*\s.*\ssender@local\.test$`).MatchString(q) {
				t.Errorf("the tempfailed message is in the queue (%v):\n%s", err, q)
			}
		})
	}
}

// pfServeWithUpstream runs our proxy on ln, relaying to upstream, until the
// test ends.
func pfServeWithUpstream(t *testing.T, ln net.Listener, upstream string) {
	t.Helper()
	srv, err := smtpproxy.New(smtpproxy.Config{Upstream: upstream, DrainTimeout: pfDrainTimeout})
	if err != nil {
		t.Fatalf("smtpproxy.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("proxy Serve: %v", err)
		}
	})
}

// pfClosedAddr is a loopback address where nothing listens (a moment ago
// something did; the kernel does not hand the port out again at once).
func pfClosedAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
