package conformance

import (
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
)

// startProxy serves the implementation under test on the instance's filter
// address, relaying to its after-filter smtpd, until the test ends.
func startProxy(t *testing.T, p *postfixtest.Instance) {
	t.Helper()
	t.Skip("the smtpproxy runtime has not landed yet; TestPostfixDifferentialCanFail exercises the harness meanwhile")
}
