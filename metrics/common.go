package metrics

// What both front-ends count under the same names, told apart by the label
// frontend: sessions, refusals, whether loops are only logged, recipient
// expansion; and the endpoint that serves them.

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
)

// Label values of frontend, on every series of a front-end.
const (
	FrontendProxy  = "proxy"
	FrontendMilter = "milter"
)

// common holds the series both front-ends have, their registry and the
// register function that labels a front-end's series.
type common struct {
	reg      *prometheus.Registry
	register func(prometheus.Collector) prometheus.Collector

	sessionsActive  prometheus.Gauge
	sessionsTotal   prometheus.Counter
	sessionsRefused prometheus.Counter
	peersRefused    prometheus.Counter
	dryRun          prometheus.Gauge
	expLookups      prometheus.Counter
	expCacheHits    prometheus.Counter
	expCacheMisses  prometheus.Counter
	expErrors       map[expand.Cause]prometheus.Counter
}

// newCommon makes a registry with the Go runtime, process and build
// collectors, and the shared series of a front-end, each labelled
// frontend; the help texts say what a session and a refusal are for it.
func newCommon(frontend, sessionsHelp, refusedHelp, peersHelp string) *common {
	reg := prometheus.NewRegistry()
	labelled := prometheus.WrapRegistererWith(prometheus.Labels{"frontend": frontend}, reg)
	c := &common{reg: reg}
	c.register = func(col prometheus.Collector) prometheus.Collector { labelled.MustRegister(col); return col }
	f := c.register
	c.sessionsActive = f(prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "sessions_active", Help: sessionsHelp,
	})).(prometheus.Gauge)
	c.sessionsTotal = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "sessions_total", Help: "Sessions started.",
	})).(prometheus.Counter)
	c.sessionsRefused = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "sessions_refused_total", Help: refusedHelp,
	})).(prometheus.Counter)
	c.peersRefused = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "clients_refused_total", Help: peersHelp,
	})).(prometheus.Counter)
	c.dryRun = f(prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "dry_run",
		Help: "1 while loops are only logged and let through (-dry-run), 0 while they are refused.",
	})).(prometheus.Gauge)
	c.expLookups = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_lookups_total",
		Help: "Postfix table lookups made to expand recipients (-postfix-config).",
	})).(prometheus.Counter)
	c.expCacheHits = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_cache_hits_total",
		Help: "Recipient expansions answered from the cache.",
	})).(prometheus.Counter)
	c.expCacheMisses = f(prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_cache_misses_total",
		Help: "Recipient expansions computed (not in the cache).",
	})).(prometheus.Counter)
	expErrors := f(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "expansion_errors_total",
		Help: "Recipient expansions left incomplete, by cause; each such recipient was judged as spelled (fail-open).",
	}, []string{"cause"})).(*prometheus.CounterVec)
	c.expErrors = make(map[expand.Cause]prometheus.Counter)
	for _, cause := range expand.Causes {
		c.expErrors[cause] = expErrors.WithLabelValues(cause.String())
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	return c
}

// Registry is where the metrics live, for a caller that adds its own.
func (c *common) Registry() *prometheus.Registry { return c.reg }

// SetDryRun records whether loops are only logged (-dry-run) or refused,
// so that a monitor can confirm enforcement is on after a rollout.
func (c *common) SetDryRun(on bool) {
	if on {
		c.dryRun.Set(1)
	} else {
		c.dryRun.Set(0)
	}
}

// SessionRefused counts a connection over the session limit.
func (c *common) SessionRefused() { c.sessionsRefused.Inc() }

// PeerRefused counts a connection from a peer outside -allow-client.
func (c *common) PeerRefused() { c.peersRefused.Inc() }

// Lookup implements expand.Observer.
func (c *common) Lookup() { c.expLookups.Inc() }

// CacheHit implements expand.Observer.
func (c *common) CacheHit() { c.expCacheHits.Inc() }

// CacheMiss implements expand.Observer.
func (c *common) CacheMiss() { c.expCacheMisses.Inc() }

// Incomplete implements expand.Observer.
func (c *common) Incomplete(cause expand.Cause) {
	if ctr, ok := c.expErrors[cause]; ok {
		ctr.Inc()
	}
}

// Handler serves GET /metrics (Prometheus text format) and GET /healthz.
// live is the liveness check: /healthz answers 200 "ok" while it returns
// nil and 503 with its error otherwise. A nil live is always healthy.
func (c *common) Handler(live func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{
		Registry:            c.reg, // counts its own failed scrapes
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
