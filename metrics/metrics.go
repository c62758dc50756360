// Package metrics counts what the proxy does and serves it in the
// Prometheus text format, with a liveness endpoint beside it.
//
// A Metrics is an smtpproxy.Observer: give it to smtpproxy.Config.Observer
// and serve Handler on a listener of its own (the command's
// -metrics-listen). Every Metrics has its own registry, so two in one
// process (tests) never share a counter; nothing here is global.
//
// Guarantees:
//   - The observer methods are safe for concurrent use, take no lock of
//     their own beyond the client library's atomics, allocate nothing per
//     call on the relaying path (label children are resolved once) and
//     never block, so metrics cannot slow or stop mail.
//   - Label values come from fixed sets (verdicts, upstream error kinds,
//     directions, phases): no client-supplied text becomes a label, so
//     the number of series is bounded whatever the traffic.
//   - Every series of those sets exists from the start with value 0, so
//     rate() and absent-series alerts work before the first event.
package metrics

import (
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
	reg *prometheus.Registry

	sessionsActive  prometheus.Gauge
	sessionsTotal   prometheus.Counter
	sessionsRefused prometheus.Counter
	peersRefused    prometheus.Counter
	dryRun          prometheus.Gauge
	expLookups      prometheus.Counter
	expCacheHits    prometheus.Counter
	expCacheMisses  prometheus.Counter
	expErrors       map[expand.Cause]prometheus.Counter
	shortages       map[smtpproxy.ResourceOp]prometheus.Counter
	transactions    *prometheus.CounterVec
	byOutcome       map[core.Outcome]prometheus.Counter
	upstreamErrors  map[string]prometheus.Counter // by Kind
	bytesToUpstream prometheus.Counter
	bytesToClient   prometheus.Counter
	messageBytes    prometheus.Counter
	txDuration      prometheus.Histogram
	replyCommand    prometheus.Observer
	replyData       prometheus.Observer
}

var _ smtpproxy.Observer = (*Metrics)(nil)

// New returns Metrics registered in a registry of their own, together
// with the Go runtime, process and build information collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) prometheus.Collector { reg.MustRegister(c); return c }
	m := &Metrics{reg: reg}
	m.sessionsActive = f(prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "sessions_active",
		Help: "Sessions open now (each is one front smtpd connection and one after-filter connection).",
	})).(prometheus.Gauge)
	m.sessionsTotal = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "sessions_total",
		Help: "Sessions started.",
	})).(prometheus.Counter)
	m.sessionsRefused = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "sessions_refused_total",
		Help: "Connections refused with 421 4.3.2 because -max-sessions were open.",
	})).(prometheus.Counter)
	m.dryRun = f(prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "dry_run",
		Help: "1 while loops are only logged and let through (-dry-run), 0 while they are refused.",
	})).(prometheus.Gauge)
	m.expLookups = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_lookups_total",
		Help: "Postfix table lookups made to expand recipients (-postfix-config).",
	})).(prometheus.Counter)
	m.expCacheHits = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_cache_hits_total",
		Help: "Recipient expansions answered from the cache.",
	})).(prometheus.Counter)
	m.expCacheMisses = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_cache_misses_total",
		Help: "Recipient expansions computed (not in the cache).",
	})).(prometheus.Counter)
	expErrors := f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_errors_total",
		Help: "Recipient expansions left incomplete, by cause; each such recipient was judged as spelled (fail-open).",
	}, []string{"cause"})).(*prometheus.CounterVec)
	m.expErrors = make(map[expand.Cause]prometheus.Counter)
	for _, c := range expand.Causes {
		m.expErrors[c] = expErrors.WithLabelValues(c.String())
	}
	m.peersRefused = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "clients_refused_total",
		Help: "Connections refused with 554 5.7.1 because the peer is outside -allow-client (no upstream connection was opened).",
	})).(prometheus.Counter)
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

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	return m
}

// SetDryRun records whether loops are only logged (-dry-run) or refused,
// so that a monitor can confirm enforcement is on after a rollout.
func (m *Metrics) SetDryRun(on bool) {
	if on {
		m.dryRun.Set(1)
	} else {
		m.dryRun.Set(0)
	}
}

// Registry is where the metrics live, for a caller that adds its own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves GET /metrics (Prometheus text format) and GET /healthz.
// live is the liveness check: /healthz answers 200 "ok" while it returns
// nil and 503 with its error otherwise. A nil live is always healthy.
func (m *Metrics) Handler(live func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:            m.reg, // counts its own failed scrapes
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxScrapesInFlight,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if live != nil {
			if err := live(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "not live: %v\n", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// SessionStarted implements smtpproxy.Observer.
func (m *Metrics) SessionStarted() {
	m.sessionsTotal.Inc()
	m.sessionsActive.Inc()
}

// SessionEnded implements smtpproxy.Observer.
func (m *Metrics) SessionEnded() { m.sessionsActive.Dec() }

// SessionRefused implements smtpproxy.Observer.
func (m *Metrics) SessionRefused() { m.sessionsRefused.Inc() }

// PeerRefused implements smtpproxy.Observer.
func (m *Metrics) PeerRefused() { m.peersRefused.Inc() }

var _ expand.Observer = (*Metrics)(nil)

// Lookup implements expand.Observer.
func (m *Metrics) Lookup() { m.expLookups.Inc() }

// CacheHit implements expand.Observer.
func (m *Metrics) CacheHit() { m.expCacheHits.Inc() }

// CacheMiss implements expand.Observer.
func (m *Metrics) CacheMiss() { m.expCacheMisses.Inc() }

// Incomplete implements expand.Observer.
func (m *Metrics) Incomplete(cause expand.Cause) {
	if c, ok := m.expErrors[cause]; ok {
		c.Inc()
	}
}

// ResourceShortage implements smtpproxy.Observer.
func (m *Metrics) ResourceShortage(op smtpproxy.ResourceOp) {
	if c, ok := m.shortages[op]; ok {
		c.Inc()
	}
}

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
