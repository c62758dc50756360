package metrics

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
)

// The milter's metrics carry the proxy's names where they mean the same,
// labelled frontend="milter", every series of the fixed label sets there
// from the start; the observer calls count as they say.
func TestMilterMetrics(t *testing.T) {
	m := NewMilter()
	web := httptest.NewServer(m.Handler(nil))
	defer web.Close()
	before := scrape(t, web.URL+"/metrics")
	for _, o := range []string{"pass", "loop", "dropped", "dry-run-loop", "exempt", "check-failed", "drop-failed"} {
		checkSamples(t, before, map[string]float64{`smtpprox_transactions_total{frontend="milter",verdict="` + o + `"}`: 0})
	}
	for _, r := range []string{"closed", "shutdown", "timeout", "protocol-error", "io-error", "panic"} {
		checkSamples(t, before, map[string]float64{`smtpprox_sessions_ended_total{frontend="milter",reason="` + r + `"}`: 0})
	}
	for _, c := range expand.Causes {
		checkSamples(t, before, map[string]float64{`smtpprox_expansion_errors_total{cause="` + c.String() + `",frontend="milter"}`: 0})
	}

	m.SetDryRun(true)
	m.SessionStarted()
	m.SessionStarted()
	m.SessionEnded(milter.EndProtocol)
	m.SessionRefused()
	m.PeerRefused()
	m.PeerRefused()
	m.MessageJudged(milter.OutcomeLoop, 3*time.Millisecond)
	m.MessageJudged(milter.OutcomeDropped, time.Millisecond)
	m.RecipientsDropped(2)
	m.HeaderTruncated()
	m.AcceptShortage()
	m.Lookup()
	m.CacheHit()
	m.CacheMiss()
	m.Incomplete(expand.CauseTimeout)
	checkSamples(t, scrape(t, web.URL+"/metrics"), map[string]float64{
		`smtpprox_dry_run{frontend="milter"}`:                                      1,
		`smtpprox_sessions_active{frontend="milter"}`:                              1,
		`smtpprox_sessions_total{frontend="milter"}`:                               2,
		`smtpprox_sessions_ended_total{frontend="milter",reason="protocol-error"}`: 1,
		`smtpprox_sessions_refused_total{frontend="milter"}`:                       1,
		`smtpprox_clients_refused_total{frontend="milter"}`:                        2,
		`smtpprox_transactions_total{frontend="milter",verdict="loop"}`:            1,
		`smtpprox_transactions_total{frontend="milter",verdict="dropped"}`:         1,
		`smtpprox_transactions_total{frontend="milter",verdict="pass"}`:            0,
		`smtpprox_recipients_dropped_total{frontend="milter"}`:                     2,
		`smtpprox_header_truncated_total{frontend="milter"}`:                       1,
		`smtpprox_resource_shortages_total{frontend="milter",op="accept"}`:         1,
		`smtpprox_transaction_duration_seconds_count{frontend="milter"}`:           2,
		`smtpprox_expansion_lookups_total{frontend="milter"}`:                      1,
		`smtpprox_expansion_cache_hits_total{frontend="milter"}`:                   1,
		`smtpprox_expansion_cache_misses_total{frontend="milter"}`:                 1,
		`smtpprox_expansion_errors_total{cause="timeout",frontend="milter"}`:       1,
	})
}
