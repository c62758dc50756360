package milter

import (
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
)

// TestDefaultExpandWait: a Config without ExpandWait waits what the
// command's -expansion-wait flag and the docs give by default.
func TestDefaultExpandWait(t *testing.T) {
	var c Config
	c.setDefaults()
	if c.ExpandWait != expand.DefaultWait {
		t.Errorf("default ExpandWait %v, want expand.DefaultWait (%v), the -expansion-wait default", c.ExpandWait, expand.DefaultWait)
	}
}
