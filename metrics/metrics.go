// Package metrics is ztgate's Prometheus instrumentation: decisions by action
// and result with their latency, sessions and connections, policy
// activations, registry size, revocations and disconnects, the decision log
// and the decision cache. Every name is prefixed ztgate_.
//
// The calls made per decision (ObserveDecision, and the Decider returned by
// Wrap) touch only counters and a histogram resolved once in New: no label
// lookup and no allocation per decision.
//
// All methods are safe for concurrent use, and on a nil *Metrics they do
// nothing, so instrumentation can be switched off by passing nil.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ztgate/ztgate/policy"
)

const namespace = "ztgate"

// DurationBuckets are the bounds, in seconds, of the decision latency
// histogram: a cached or trivial decision takes a few microseconds, a
// prepared OPA query tens of microseconds, and the engine's timeout caps the
// tail; 100 ms and above is one bucket of failures.
var DurationBuckets = []float64{
	5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
}

// actions are the action label values, in index order; anything else is
// counted as "other" so a bad caller cannot grow the label set.
var actions = [...]policy.Action{
	policy.ActionConnect, policy.ActionSubscribe, policy.ActionPublish,
	policy.ActionReceive, policy.ActionAdmin, policy.ActionBridgeOut,
	policy.ActionBridgeIn, "other",
}

const actionOther = len(actions) - 1

func actionIndex(a policy.Action) int {
	switch a {
	case policy.ActionConnect:
		return 0
	case policy.ActionSubscribe:
		return 1
	case policy.ActionPublish:
		return 2
	case policy.ActionReceive:
		return 3
	case policy.ActionAdmin:
		return 4
	case policy.ActionBridgeOut:
		return 5
	case policy.ActionBridgeIn:
		return 6
	}
	return actionOther
}

const (
	resultAllow = iota
	resultDeny
	resultError
	numResults
)

var results = [numResults]string{"allow", "deny", "error"}

// Metrics holds ztgate's collectors. It is itself a prometheus.Collector.
type Metrics struct {
	decisionsVec  *prometheus.CounterVec
	durationVec   *prometheus.HistogramVec
	sessions      prometheus.Gauge
	connectionVec *prometheus.CounterVec
	activations   prometheus.Counter
	activationErr prometheus.Counter
	revisionInfo  *prometheus.GaugeVec
	registryVec   *prometheus.GaugeVec
	revocations   prometheus.Counter
	disconnects   *prometheus.CounterVec
	decisionLog   *prometheus.Desc
	cacheLookups  *prometheus.Desc
	cacheEntries  *prometheus.Desc
	cacheBytes    *prometheus.Desc

	// Children resolved once, for the per-decision and per-connection path.
	decisions [len(actions)][numResults]prometheus.Counter
	durations [len(actions)]prometheus.Observer
	accepted  prometheus.Counter
	refused   prometheus.Counter
	limits    limitHits // limits.go

	mu       sync.Mutex
	revision string              // the revision whose info series is 1
	statuses map[string]struct{} // registry statuses ever set

	logStats   atomic.Pointer[func() DecisionLogStats]
	broker     *brokerCollector // broker.go
	cacheStats atomic.Pointer[func() policy.CacheStats]
}

// New creates the collectors and registers them with reg as one collector.
// A nil reg registers nothing (the Metrics still counts, for example to be
// collected by hand). If reg already holds the Metrics of an earlier New,
// that one is returned, so callers share one set of series. Any other
// registration error is logged and the Metrics is returned unregistered:
// instrumentation never stops the gateway.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		decisionsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "decisions_total",
			Help: "Policy decisions by action and result (allow, deny, or error: evaluation failed and denied).",
		}, []string{"action", "result"}),
		durationVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "decision_duration_seconds",
			Help:    "Time to decide, by action.",
			Buckets: DurationBuckets,
		}, []string{"action"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sessions",
			Help: "MQTT sessions currently connected.",
		}),
		connectionVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "connections_total",
			Help: "MQTT connection attempts by result (accepted or refused).",
		}, []string{"result"}),
		activations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "policy_activations_total",
			Help: "Policy revisions activated.",
		}),
		activationErr: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "policy_activation_failures_total",
			Help: "Policy revisions refused (compile or test failure); the last good revision stayed active.",
		}),
		revisionInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "policy_revision_info",
			Help: "The active policy revision (content hash), as a label of a series that is always 1.",
		}, []string{"revision"}),
		registryVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "registry_devices",
			Help: "Devices in the registry by status.",
		}, []string{"status"}),
		revocations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "revocations_total",
			Help: "Identities whose live sessions a registry change (revoke, suspend, delete) cut.",
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "disconnects_total",
			Help: "Sessions the gateway ended, by reason.",
		}, []string{"reason"}),
		decisionLog: prometheus.NewDesc(prometheus.BuildFQName(namespace, "decision_log", "entries_total"),
			"Decision-log entries by outcome: written; dropped (a sampled allow, buffer full); synchronous (a deny written by the deciding goroutine, buffer full); failed (lost to a write error); aggregated (a repeated deny counted in an aggregate entry instead of an entry of its own).",
			[]string{"outcome"}, nil),
		cacheLookups: prometheus.NewDesc(prometheus.BuildFQName(namespace, "decision_cache", "lookups_total"),
			"Decisions by what the decision cache did: hit (answered from the cache); miss (cacheable, decided by the engine and kept); bypass (passed to the engine: the policy revision is not cacheable, or the action is not cached).",
			[]string{"result"}, nil),
		cacheEntries: prometheus.NewDesc(prometheus.BuildFQName(namespace, "decision_cache", "entries"),
			"Decisions kept in the decision cache.", nil, nil),
		cacheBytes: prometheus.NewDesc(prometheus.BuildFQName(namespace, "decision_cache", "bytes"),
			"Memory the decisions kept in the decision cache are accounted for (bounded by decision_cache_max_bytes).", nil, nil),
		statuses: map[string]struct{}{},
		broker:   newBrokerCollector(),
		limits:   newLimitHits(),
	}
	if reg != nil {
		if err := reg.Register(m); err != nil {
			if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
				if old, ok := are.ExistingCollector.(*Metrics); ok {
					return old
				}
			}
			slog.Warn("metrics: not registered", "err", err)
		}
	}
	for i, a := range actions {
		for r, res := range results {
			m.decisions[i][r] = m.decisionsVec.WithLabelValues(string(a), res)
		}
		m.durations[i] = m.durationVec.WithLabelValues(string(a))
	}
	m.accepted = m.connectionVec.WithLabelValues("accepted")
	m.refused = m.connectionVec.WithLabelValues("refused")
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.decisionsVec, m.durationVec, m.sessions, m.connectionVec, m.activations,
		m.activationErr, m.revisionInfo, m.registryVec, m.revocations, m.disconnects,
		m.limits.vec,
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
	ch <- m.decisionLog
	ch <- m.cacheLookups
	ch <- m.cacheEntries
	ch <- m.cacheBytes
	m.broker.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.broker.Collect(ch)
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
	if f := m.logStats.Load(); f != nil {
		s := (*f)()
		for _, o := range []struct {
			outcome string
			n       uint64
		}{{"written", s.Written}, {"dropped", s.Dropped}, {"synchronous", s.Synchronous}, {"failed", s.Failed}, {"aggregated", s.Aggregated}} {
			ch <- prometheus.MustNewConstMetric(m.decisionLog, prometheus.CounterValue, float64(o.n), o.outcome)
		}
	}
	if f := m.cacheStats.Load(); f != nil {
		s := (*f)()
		for _, o := range []struct {
			result string
			n      uint64
		}{{"hit", s.Hits}, {"miss", s.Misses}, {"bypass", s.Bypassed}} {
			ch <- prometheus.MustNewConstMetric(m.cacheLookups, prometheus.CounterValue, float64(o.n), o.result)
		}
		ch <- prometheus.MustNewConstMetric(m.cacheEntries, prometheus.GaugeValue, float64(s.Entries))
		ch <- prometheus.MustNewConstMetric(m.cacheBytes, prometheus.GaugeValue, float64(s.Bytes))
	}
}

// ObserveDecision counts one decision and records how long it took. A
// non-nil err counts as result "error" (the decision denied).
func (m *Metrics) ObserveDecision(action policy.Action, allow bool, err error, d time.Duration) {
	if m == nil {
		return
	}
	i := actionIndex(action)
	r := resultDeny
	switch {
	case err != nil:
		r = resultError
	case allow:
		r = resultAllow
	}
	m.decisions[i][r].Inc()
	m.durations[i].Observe(d.Seconds())
}

// Wrap returns a Decider that decides with d and observes every decision. A
// nil Metrics returns d unchanged. Wrapped inside a decision logger, it times
// the evaluation alone.
func (m *Metrics) Wrap(d policy.Decider) policy.Decider {
	if m == nil {
		return d
	}
	return &decider{m: m, next: d}
}

var errNilDecider = errors.New("metrics: no decider")

type decider struct {
	m    *Metrics
	next policy.Decider
}

func (w *decider) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	var action policy.Action
	if in != nil {
		action = in.Action
	}
	if w.next == nil {
		d := policy.Decision{Err: errNilDecider}
		w.m.ObserveDecision(action, false, d.Err, 0)
		return d
	}
	start := time.Now()
	d := w.next.Decide(ctx, in)
	w.m.ObserveDecision(action, d.Allow, d.Err, time.Since(start))
	return d
}

// SessionOpened counts a session that is now connected.
func (m *Metrics) SessionOpened() {
	if m != nil {
		m.sessions.Inc()
	}
}

// SessionClosed counts a session that is no longer connected.
func (m *Metrics) SessionClosed() {
	if m != nil {
		m.sessions.Dec()
	}
}

// ConnectionAccepted counts a connection whose CONNECT was accepted.
func (m *Metrics) ConnectionAccepted() {
	if m != nil {
		m.accepted.Inc()
	}
}

// ConnectionRefused counts a connection refused (in the handshake, by the
// registry, or by policy).
func (m *Metrics) ConnectionRefused() {
	if m != nil {
		m.refused.Inc()
	}
}

// PolicyActivated counts an activation and makes rev the revision of
// ztgate_policy_revision_info.
func (m *Metrics) PolicyActivated(rev string) {
	if m == nil {
		return
	}
	m.activations.Inc()
	m.mu.Lock()
	defer m.mu.Unlock()
	if rev == m.revision {
		return
	}
	// The new series first, then the old one goes: a scrape never sees
	// no revision at all.
	m.revisionInfo.WithLabelValues(rev).Set(1)
	if m.revision != "" {
		m.revisionInfo.DeleteLabelValues(m.revision)
	}
	m.revision = rev
}

// PolicyActivationFailed counts a revision that was refused.
func (m *Metrics) PolicyActivationFailed() {
	if m != nil {
		m.activationErr.Inc()
	}
}

// SetRegistryCounts sets the number of devices per status. A status set
// before but absent from counts drops to 0 (its series stays, so rates and
// alerts over it keep working).
func (m *Metrics) SetRegistryCounts(counts map[string]int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for status := range m.statuses {
		if _, ok := counts[status]; !ok {
			m.registryVec.WithLabelValues(status).Set(0)
		}
	}
	for status, n := range counts {
		m.statuses[status] = struct{}{}
		m.registryVec.WithLabelValues(status).Set(float64(n))
	}
}

// Revoked counts a device revocation.
func (m *Metrics) Revoked() {
	if m != nil {
		m.revocations.Inc()
	}
}

// Disconnected counts a session the gateway ended. reason must come from a
// small fixed set (for example "revoked", "policy"); "" counts as "unknown".
func (m *Metrics) Disconnected(reason string) {
	if m == nil {
		return
	}
	if reason == "" {
		reason = "unknown"
	}
	m.disconnects.WithLabelValues(reason).Inc()
}

// DecisionLogStats are the counters of a decision logger that Metrics
// exports, one ztgate_decision_log_entries_total{outcome} series each. It
// has the fields, in the order, of decisionlog.Stats, so that one converts
// to the other; metrics owns the type so as not to depend on the logger.
type DecisionLogStats struct {
	Written, Dropped, Synchronous, Failed, Aggregated uint64
}

// SetDecisionLogStats exports a decision logger's counters as
// ztgate_decision_log_entries_total{outcome}.
func (m *Metrics) SetDecisionLogStats(stats func() DecisionLogStats) {
	if m == nil {
		return
	}
	if stats == nil {
		m.logStats.Store(nil)
		return
	}
	m.logStats.Store(&stats)
}

// SetDecisionCacheStats exports a decision cache's counters as
// ztgate_decision_cache_lookups_total{result}, ztgate_decision_cache_entries
// and ztgate_decision_cache_bytes;
// pass (*policy.Cache).Stats. Wrap the cache, so that
// ztgate_decisions_total counts every decision, cached or not.
func (m *Metrics) SetDecisionCacheStats(stats func() policy.CacheStats) {
	if m == nil {
		return
	}
	if stats == nil {
		m.cacheStats.Store(nil)
		return
	}
	m.cacheStats.Store(&stats)
}

// DecisionTotals returns the decisions counted so far over every action:
// allowed, and denied (evaluation errors included, which deny). It reads
// the counters the decision path already increments, so sampling it costs
// the decision path nothing; zeros on a nil Metrics.
func (m *Metrics) DecisionTotals() (allowed, denied uint64) {
	if m == nil {
		return 0, 0
	}
	var pb dto.Metric
	read := func(c prometheus.Counter) uint64 {
		pb.Reset()
		if c.Write(&pb) != nil || pb.Counter == nil {
			return 0
		}
		return uint64(pb.Counter.GetValue())
	}
	for i := range actions {
		allowed += read(m.decisions[i][resultAllow])
		denied += read(m.decisions[i][resultDeny]) + read(m.decisions[i][resultError])
	}
	return allowed, denied
}
