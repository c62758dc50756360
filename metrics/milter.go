package metrics

// The milter front-end's metrics (package milter): the shared series
// labelled frontend="milter", and what only a milter does.

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
)

// Milter holds the milter's metrics. Create it with NewMilter; it
// implements milter.Observer and expand.Observer.
type Milter struct {
	*common

	sessionsEnded map[milter.EndReason]prometheus.Counter
	messages      *prometheus.CounterVec
	byOutcome     map[milter.Outcome]prometheus.Counter
	dropped       prometheus.Counter
	truncated     prometheus.Counter
	judgeDuration prometheus.Histogram
	shortages     prometheus.Counter
}

var (
	_ milter.Observer = (*Milter)(nil)
	_ expand.Observer = (*Milter)(nil)
)

// milterOutcomes lists the outcomes the milter reports, for pre-created
// series.
var milterOutcomes = []milter.Outcome{milter.OutcomePass, milter.OutcomeLoop, milter.OutcomeDropped,
	milter.OutcomeDryRunLoop, milter.OutcomeExempt, milter.OutcomeCheckFailed, milter.OutcomeDropFailed}

// milterEndReasons lists why a milter session ends.
var milterEndReasons = []milter.EndReason{milter.EndClosed, milter.EndShutdown, milter.EndTimeout,
	milter.EndProtocol, milter.EndIO, milter.EndPanic}

// NewMilter returns the milter's metrics in a registry of their own.
func NewMilter() *Milter {
	m := &Milter{common: newCommon(FrontendMilter,
		"Milter sessions open now (Postfix opens one per SMTP session it checks).",
		"Milter connections closed at once because -max-sessions were open (Postfix applies milter_default_action).",
		"Milter connections refused because the peer is outside -allow-client.")}
	f := m.register
	ended := f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "sessions_ended_total",
		Help: "Milter sessions ended, by reason: closed, shutdown, timeout, protocol-error, io-error, panic.",
	}, []string{"reason"})).(*prometheus.CounterVec)
	m.sessionsEnded = make(map[milter.EndReason]prometheus.Counter)
	for _, r := range milterEndReasons {
		m.sessionsEnded[r] = ended.WithLabelValues(r.String())
	}
	m.messages = f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "transactions_total",
		Help: "Messages by verdict: pass, loop, dropped (looping recipients removed), dry-run-loop, exempt, check-failed, drop-failed (a removal could not be sent; the MTA's default action applied).",
	}, []string{"verdict"})).(*prometheus.CounterVec)
	m.byOutcome = make(map[milter.Outcome]prometheus.Counter)
	for _, o := range milterOutcomes {
		m.byOutcome[o] = m.messages.WithLabelValues(o.String())
	}
	m.dropped = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "recipients_dropped_total",
		Help: "Looping recipients removed from messages (-loop-action drop-recipient); no notice goes to anyone.",
	})).(prometheus.Counter)
	m.truncated = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "header_truncated_total",
		Help: "Messages judged on part of their header section (over -max-header-bytes).",
	})).(prometheus.Counter)
	m.judgeDuration = f(prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "transaction_duration_seconds",
		Help:    "Time from a message's first header event to the milter's end-of-message reply.",
		Buckets: transactionBuckets(),
	})).(prometheus.Histogram)
	m.shortages = f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "resource_shortages_total",
		Help: "Times the milter ran out of file descriptors (EMFILE, ENFILE), by op: accept (the listener backs off and retries). A local fault.",
	}, []string{"op"})).(*prometheus.CounterVec).WithLabelValues("accept")
	return m
}

// SessionStarted implements milter.Observer.
func (m *Milter) SessionStarted() {
	m.sessionsTotal.Inc()
	m.sessionsActive.Inc()
}

// SessionEnded implements milter.Observer.
func (m *Milter) SessionEnded(r milter.EndReason) {
	m.sessionsActive.Dec()
	if c, ok := m.sessionsEnded[r]; ok {
		c.Inc()
	}
}

// MessageJudged implements milter.Observer.
func (m *Milter) MessageJudged(o milter.Outcome, d time.Duration) {
	c, ok := m.byOutcome[o]
	if !ok {
		c = m.messages.WithLabelValues(o.String()) // "unknown": a bug, counted anyway
	}
	c.Inc()
	m.judgeDuration.Observe(d.Seconds())
}

// RecipientsDropped implements milter.Observer.
func (m *Milter) RecipientsDropped(n int) { m.dropped.Add(float64(n)) }

// HeaderTruncated implements milter.Observer.
func (m *Milter) HeaderTruncated() { m.truncated.Inc() }

// AcceptShortage implements milter.Observer.
func (m *Milter) AcceptShortage() { m.shortages.Inc() }
