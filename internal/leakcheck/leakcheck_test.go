package leakcheck

import (
	"strings"
	"testing"
	"time"
)

func parked(stop <-chan struct{}) { <-stop }

func TestFindsOwnGoroutines(t *testing.T) {
	const prefix = "github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/leakcheck.parked"
	stop := make(chan struct{})
	go parked(stop)
	var leaked []string
	for deadline := time.Now().Add(5 * time.Second); len(leaked) == 0 && time.Now().Before(deadline); {
		leaked = Find(prefix) // the goroutine may not have started yet
	}
	if len(leaked) != 1 || !strings.Contains(leaked[0], "leakcheck.parked") {
		t.Fatalf("want the parked goroutine, got %q", leaked)
	}
	close(stop)
	if left := Wait(5*time.Second, prefix); len(left) != 0 {
		t.Fatalf("the goroutine ended, yet found: %q", left)
	}
	// Other packages' goroutines are not ours.
	if got := Find("example.com/nothing."); len(got) != 0 {
		t.Fatalf("found %q", got)
	}
}
