// Package metrics counts what the front-ends do and serves it in the
// Prometheus text format, with a liveness endpoint beside it.
//
// Metrics is the proxy's (an smtpproxy.Observer), Milter the milter's (a
// milter.Observer); both are expand.Observers for recipient expansion.
// Give one to its front-end's Config.Observer and serve Handler on a
// listener of its own (the command's -metrics-listen). What both count
// has the same name in both (sessions, refusals, verdicts, dry run,
// expansion), told apart by the label frontend ("proxy" or "milter").
// Every one has its own registry, so two in one process (tests) never
// share a counter; nothing here is global.
//
// Guarantees:
//   - The observer methods are safe for concurrent use, take no lock of
//     their own beyond the client library's atomics, allocate nothing per
//     call on the relaying path (label children are resolved once) and
//     never block, so metrics cannot slow or stop mail.
//   - Label values come from fixed sets (verdicts, upstream error kinds,
//     directions, phases, causes): no client-supplied text becomes a
//     label, so the number of series is bounded whatever the traffic.
//   - Every series of those sets exists from the start with value 0, so
//     rate() and absent-series alerts work before the first event.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// namespace prefixes every metric of the proxy.
const namespace = "smtpprox"

// Upstream error kinds: the label values of smtpprox_upstream_errors_total,
// one for each core.UpstreamFailure (Kind).
const (
	KindConnect  = "connect"  // the after-filter could not be reached
	KindTimeout  = "timeout"  // it did not answer within -upstream-reply-timeout
	KindClosed   = "closed"   // it closed or reset the connection
	KindProtocol = "protocol" // it answered out of turn or malformed, or refused RSET
	KindOther    = "other"    // a kind this package does not know: a bug, counted anyway
)

// Label values of the byte and latency metrics.
const (
	DirectionToUpstream = "to_upstream"
	DirectionToClient   = "to_client"
	PhaseCommand        = "command" // greeting and command replies
	PhaseData           = "data"    // the answer to DATA and the end-of-data reply
)

// maxScrapesInFlight bounds concurrent scrapes: one gather walks every
// series, and a stuck or hostile scraper must not pile them up.
const maxScrapesInFlight = 4

// transactionBuckets (seconds) span a small message through the proxy on
// loopback (milliseconds) to a large one fed by a slow client through a
// before-queue front smtpd (minutes: the client data timeout is 3 minutes
// per pause, not per message).
func transactionBuckets() []float64 {
	return []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
}

// replyBuckets (seconds) span an after-filter smtpd answering a command on
// loopback (sub-millisecond) to one stalling towards the default
// -upstream-reply-timeout (90 s), past which the wait is an error.
func replyBuckets() []float64 {
	return []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 90}
}

// Metrics holds the proxy's metrics and their registry. Create it with
// New; it implements smtpproxy.Observer.
type Metrics struct {
	*common

	shortages       map[smtpproxy.ResourceOp]prometheus.Counter
	headerMemory    prometheus.Gauge
	transactions    *prometheus.CounterVec
	byOutcome       map[core.Outcome]prometheus.Counter
	upstreamErrors  map[string]prometheus.Counter
	bytesToUpstream prometheus.Counter
	bytesToClient   prometheus.Counter
	messageBytes    prometheus.Counter
	txDuration      prometheus.Histogram
	replyCommand    prometheus.Observer
	replyData       prometheus.Observer
}

var (
	_ smtpproxy.Observer = (*Metrics)(nil)
	_ expand.Observer    = (*Metrics)(nil)
)

// New returns the proxy's Metrics, labelled frontend="proxy", registered
// in a registry of their own together with the Go runtime, process and
// build information collectors.
func New() *Metrics {
	m := &Metrics{common: newCommon(FrontendProxy,
		"Sessions open now (each is one front smtpd connection and one after-filter connection).",
		"Connections refused with 421 4.3.2 because -max-sessions were open.",
		"Connections refused with 554 5.7.1 because the peer is outside -allow-client (no upstream connection was opened).")}
	f := m.register
	m.headerMemory = f(prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "header_memory_bytes",
		Help: "Bytes of the header memory budget (-max-header-memory) the sessions' header sections hold now.",
	})).(prometheus.Gauge)
	shortages := f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "resource_shortages_total",
		Help: "Times the proxy ran out of file descriptors (EMFILE, ENFILE), by op: accept (the listener backs off and retries) or upstream_connect (the client got 421 4.3.2). A local fault, not the after-filter's.",
	}, []string{"op"})).(*prometheus.CounterVec)
	m.shortages = make(map[smtpproxy.ResourceOp]prometheus.Counter)
	for _, op := range []smtpproxy.ResourceOp{smtpproxy.ResourceAccept, smtpproxy.ResourceUpstreamConnect} {
		m.shortages[op] = shortages.WithLabelValues(op.String())
	}
	m.transactions = f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "transactions_total",
		Help: "Messages by verdict: pass, loop, dry-run-loop, header-too-large, bare-lf, upstream-refused, upstream-failed, check-failed, aborted.",
	}, []string{"verdict"})).(*prometheus.CounterVec)
	m.byOutcome = make(map[core.Outcome]prometheus.Counter)
	for _, o := range core.Outcomes() {
		m.byOutcome[o] = m.transactions.WithLabelValues(o.String())
	}
	upErrors := f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_errors_total",
		Help: "Failures of the after-filter smtpd by kind: connect, timeout, closed, protocol, other.",
	}, []string{"kind"})).(*prometheus.CounterVec)
	m.upstreamErrors = make(map[string]prometheus.Counter)
	for _, k := range []string{KindConnect, KindTimeout, KindClosed, KindProtocol, KindOther} {
		m.upstreamErrors[k] = upErrors.WithLabelValues(k)
	}
	relayed := f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "relayed_bytes_total",
		Help: "Octets written, by direction: to_upstream (commands and messages to the after-filter), to_client (replies to the front smtpd).",
	}, []string{"direction"})).(*prometheus.CounterVec)
	m.bytesToUpstream = relayed.WithLabelValues(DirectionToUpstream)
	m.bytesToClient = relayed.WithLabelValues(DirectionToClient)
	m.messageBytes = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "message_bytes_total",
		Help: "Message octets read from the front smtpd, every verdict (unstuffed, line ends counted as two).",
	})).(prometheus.Counter)
	m.txDuration = f(prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "transaction_duration_seconds",
		Help:    "Time from the client's DATA to the end-of-data reply (or the message's end when cut short).",
		Buckets: transactionBuckets(),
	})).(prometheus.Histogram)
	reply := f(prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "upstream_reply_seconds",
		Help:    "Time the after-filter smtpd took to answer, by phase: command (greeting and commands) or data (DATA and the end-of-data reply, where it writes the queue file).",
		Buckets: replyBuckets(),
	}, []string{"phase"})).(*prometheus.HistogramVec)
	m.replyCommand = reply.WithLabelValues(PhaseCommand)
	m.replyData = reply.WithLabelValues(PhaseData)

	return m
}

// SessionStarted implements smtpproxy.Observer.
func (m *Metrics) SessionStarted() {
	m.sessionsTotal.Inc()
	m.sessionsActive.Inc()
}

// SessionEnded implements smtpproxy.Observer.
func (m *Metrics) SessionEnded() { m.sessionsActive.Dec() }

// ResourceShortage implements smtpproxy.Observer.
func (m *Metrics) ResourceShortage(op smtpproxy.ResourceOp) {
	if c, ok := m.shortages[op]; ok {
		c.Inc()
	}
}

// HeaderMemory implements smtpproxy.Observer.
func (m *Metrics) HeaderMemory(delta int64) { m.headerMemory.Add(float64(delta)) }

// TransactionEnded implements smtpproxy.Observer.
func (m *Metrics) TransactionEnded(tx *core.Transaction, d time.Duration) {
	c, ok := m.byOutcome[tx.Outcome]
	if !ok {
		c = m.transactions.WithLabelValues(tx.Outcome.String()) // "unknown": a bug, counted anyway
	}
	c.Inc()
	m.messageBytes.Add(float64(tx.Size))
	m.txDuration.Observe(d.Seconds())
}

// UpstreamFailed implements smtpproxy.Observer.
func (m *Metrics) UpstreamFailed(kind core.UpstreamFailure) {
	m.upstreamErrors[Kind(kind)].Inc()
}

// UpstreamReplied implements smtpproxy.Observer.
func (m *Metrics) UpstreamReplied(d time.Duration, inData bool) {
	if inData {
		m.replyData.Observe(d.Seconds())
	} else {
		m.replyCommand.Observe(d.Seconds())
	}
}

// Relayed implements smtpproxy.Observer.
func (m *Metrics) Relayed(toUpstream, toClient int) {
	if toUpstream > 0 {
		m.bytesToUpstream.Add(float64(toUpstream))
	}
	if toClient > 0 {
		m.bytesToClient.Add(float64(toClient))
	}
}

// Kind is the label value of an upstream failure's kind.
func Kind(f core.UpstreamFailure) string {
	switch f {
	case core.FailConnect:
		return KindConnect
	case core.FailTimeout:
		return KindTimeout
	case core.FailClosed:
		return KindClosed
	case core.FailProtocol:
		return KindProtocol
	}
	return KindOther
}
