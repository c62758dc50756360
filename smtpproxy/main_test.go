package smtpproxy

import (
	"os"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/leakcheck"
)

// TestMain fails the package's tests when a session goroutine, a linger or
// a pooled worker outlives them: Serve returns only when every goroutine
// it started has ended and every connection is closed.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Main(m, "github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy."))
}
