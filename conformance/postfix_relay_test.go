package conformance

import (
	"net"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
)

// pfServeBlindRelay copies bytes both ways between each connection accepted on
// ln and a new connection to upstream, changing nothing, until the test
// ends. It is the "proxy" that detects no loop at all, so a test run through
// it shows which checks of the end-to-end test can fail.
func pfServeBlindRelay(t *testing.T, ln net.Listener, upstream string) {
	t.Helper()
	r := smtpload.NewRelay(ln, upstream)
	t.Cleanup(func() { r.Close() })
}
