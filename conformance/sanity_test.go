package conformance

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// sanityLimit bounds a case run against the blind relay; it only guards
// against a hang.
const sanityLimit = 10 * time.Second

// expectedFailLimit bounds a case that must fail against the blind relay:
// some such cases wait for a close that a blind relay never makes, and a
// shorter guard only makes them fail sooner (the verdict is the same).
const expectedFailLimit = 3 * time.Second

// MinCases is the least size of the suite: enough cases for every edge of
// SPEC the suite must cover.
const MinCases = 120

func loadAll(t *testing.T) []*Case {
	t.Helper()
	cases, err := LoadCases("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	return cases
}

func TestSuiteSize(t *testing.T) {
	if n := len(loadAll(t)); n < MinCases {
		t.Fatalf("%d cases, want at least %d", n, MinCases)
	}
}

// isLoopCase reports whether a case expects a loop rejection.
func isLoopCase(c *Case) bool {
	for _, p := range c.WantClient {
		for _, lit := range p.Literals() {
			if bytes.Contains(lit, []byte("554 5.4.6 mail forwarding loop for ")) {
				return true
			}
		}
	}
	return false
}

// TestBlindRelayFailsLoopCases shows that the cases can fail: a relay
// that lets every loop through fails every case that expects a 554.
func TestBlindRelayFailsLoopCases(t *testing.T) {
	impl := blindRelay()
	n := 0
	t.Run("cases", func(t *testing.T) {
		for _, c := range loadAll(t) {
			if !isLoopCase(c) {
				continue
			}
			n++
			t.Run(c.Name, func(t *testing.T) {
				t.Parallel()
				r := RunCase(context.Background(), c, impl, expectedFailLimit)
				if r.Status != Fail {
					t.Errorf("the blind relay got %s, want a failure", r.Status)
				} else if !strings.Contains(r.Detail, "554 5.4.6") {
					t.Errorf("the failure does not show the missing 554:\n%s", r.Detail)
				}
			})
		}
	})
	if n < 40 {
		t.Errorf("only %d loop cases found; the suite should have at least 40", n)
	}
}

// TestBlindRelayPassesRelayCases shows the other side: the runner passes
// what a transparent relay does get right (plain relaying of commands,
// replies, XFORWARD and ESMTP parameters), so a failure elsewhere is the
// implementation's, not the runner's.
func TestBlindRelayPassesRelayCases(t *testing.T) {
	impl := blindRelay()
	n := 0
	for _, c := range loadAll(t) {
		if !strings.HasPrefix(c.Name, "relay-") && !strings.HasPrefix(c.Name, "esmtp-") && !strings.HasPrefix(c.Name, "xforward-") {
			continue
		}
		n++
		if r := RunCase(context.Background(), c, impl, sanityLimit); r.Status != Pass {
			t.Errorf("%s: %s: %s\n%s", c.Name, r.Status, r.Reason, r.Detail)
		}
	}
	if n < 25 {
		t.Errorf("only %d relay cases found", n)
	}
}
