package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

var wantNames = []string{
	"ztgate_broker_messages_dropped_total",
	"ztgate_broker_messages_received_total",
	"ztgate_broker_messages_sent_total",
	"ztgate_broker_queued_messages",
	"ztgate_broker_received_bytes_total",
	"ztgate_broker_retained_messages",
	"ztgate_broker_sent_bytes_total",
	"ztgate_broker_store_write_failures_total",
	"ztgate_broker_stored_sessions",
	"ztgate_broker_subscriptions",
	"ztgate_connections_total",
	"ztgate_decision_cache_bytes",
	"ztgate_decision_cache_entries",
	"ztgate_decision_cache_lookups_total",
	"ztgate_decision_duration_seconds",
	"ztgate_decision_log_entries_total",
	"ztgate_decisions_total",
	"ztgate_disconnects_total",
	"ztgate_limit_hits_total",
	"ztgate_policy_activation_failures_total",
	"ztgate_policy_activations_total",
	"ztgate_policy_revision_info",
	"ztgate_registry_devices",
	"ztgate_revocations_total",
	"ztgate_sessions",
}

// exercise touches every metric so that every family has a series.
func exercise(m *Metrics) {
	m.ObserveDecision(policy.ActionPublish, true, nil, 20*time.Microsecond)
	m.SessionOpened()
	m.ConnectionAccepted()
	m.ConnectionRefused()
	m.PolicyActivated("abc123")
	m.PolicyActivationFailed()
	m.SetRegistryCounts(map[string]int{"active": 3, "revoked": 1})
	m.Revoked()
	m.Disconnected("revoked")
	m.LimitHit("sessions")
	m.SetDecisionLogStats(func() DecisionLogStats { return DecisionLogStats{Written: 5} })
	m.SetDecisionCacheStats(func() policy.CacheStats { return policy.CacheStats{Hits: 2, Entries: 1} })
	m.SetBrokerStats(func() BrokerStats { return BrokerStats{MessagesReceived: 1} })
}

// Every family is registered, named ztgate_*, and passes the Prometheus
// linter; the pedantic registry checks that Describe and Collect agree.
func TestNamesAndLint(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	exercise(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
		if !strings.HasPrefix(mf.GetName(), "ztgate_") {
			t.Errorf("metric %s lacks the ztgate_ prefix", mf.GetName())
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, wantNames) {
		t.Fatalf("registered %v\nwant       %v", names, wantNames)
	}
	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	// The fixed label sets exist from the start, so rate() works before
	// the first event: 6 actions x 3 results, 6 histograms, 2 results.
	fresh := New(nil)
	for name, want := range map[string]int{
		"ztgate_decisions_total":           len(actions) * numResults,
		"ztgate_decision_duration_seconds": len(actions),
		"ztgate_connections_total":         2,
		"ztgate_policy_revision_info":      0,
	} {
		if got := testutil.CollectAndCount(fresh, name); got != want {
			t.Errorf("%s has %d series on a new Metrics, want %d", name, got, want)
		}
	}
}

func TestObserveDecision(t *testing.T) {
	evalErr := errors.New("policy: evaluation timed out")
	cases := []struct {
		action      policy.Action
		allow       bool
		err         error
		wantAction  string
		wantResult  string
		wantSeconds float64
	}{
		{policy.ActionConnect, true, nil, "connect", "allow", 0},
		{policy.ActionSubscribe, false, nil, "subscribe", "deny", 0},
		{policy.ActionPublish, false, evalErr, "publish", "error", 0},
		// An error wins over an allow: it was not a valid decision.
		{policy.ActionReceive, true, evalErr, "receive", "error", 0},
		{policy.ActionAdmin, false, nil, "admin", "deny", 0},
		{policy.ActionBridgeOut, false, nil, "bridge_out", "deny", 0},
		{policy.ActionBridgeIn, true, nil, "bridge_in", "allow", 0},
		{"bogus", true, nil, "other", "allow", 0},
		{"", false, nil, "other", "deny", 0},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/%s", c.wantAction, c.wantResult), func(t *testing.T) {
			m := New(nil)
			m.ObserveDecision(c.action, c.allow, c.err, 42*time.Microsecond)
			for _, a := range actions {
				for _, r := range results {
					want := 0.0
					if string(a) == c.wantAction && r == c.wantResult {
						want = 1
					}
					if got := testutil.ToFloat64(m.decisionsVec.WithLabelValues(string(a), r)); got != want {
						t.Errorf("decisions{%s,%s} = %v, want %v", a, r, got, want)
					}
				}
			}
			h := histogram(t, m, c.wantAction)
			if h.GetSampleCount() != 1 || h.GetSampleSum() != 42e-6 {
				t.Fatalf("histogram{%s}: count %d sum %v", c.wantAction, h.GetSampleCount(), h.GetSampleSum())
			}
			// 42µs lands in the 50µs bucket, not the 25µs one.
			for _, b := range h.GetBucket() {
				want := uint64(0)
				if b.GetUpperBound() >= 50e-6 {
					want = 1
				}
				if b.GetCumulativeCount() != want {
					t.Fatalf("bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
				}
			}
		})
	}
}

func histogram(t *testing.T, m *Metrics, action string) *dto.Histogram {
	t.Helper()
	var out dto.Metric
	if err := m.durationVec.WithLabelValues(action).(prometheus.Histogram).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetHistogram()
}

func TestObserveDecisionDoesNotAllocate(t *testing.T) {
	m := New(prometheus.NewRegistry())
	err := errors.New("x")
	if n := testing.AllocsPerRun(1000, func() {
		m.ObserveDecision(policy.ActionPublish, true, nil, time.Microsecond)
		m.ObserveDecision(policy.ActionReceive, false, err, time.Microsecond)
		m.ObserveDecision("bogus", false, nil, time.Microsecond)
	}); n != 0 {
		t.Fatalf("ObserveDecision allocates %v times per call", n)
	}
}

// Wrap counts and times every decision of the real engine and returns the
// decision unchanged.
func TestWrap(t *testing.T) {
	eng, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m := New(prometheus.NewRegistry())
	d := m.Wrap(eng)
	sub := &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/device/a", TrustDomain: "example.org",
			Path: "/device/a", Segments: []string{"device", "a"}},
		Device: &policy.Device{Name: "a", Labels: map[string]string{}, Status: "active"},
		Client: policy.Client{ID: "a", RemoteAddr: "127.0.0.1:1", ProtocolVersion: 5},
	}
	ok := &policy.Input{Action: policy.ActionPublish, Subject: sub, Topic: "devices/a/telemetry/t"}
	bad := &policy.Input{Action: policy.ActionPublish, Subject: sub, Topic: "devices/b/telemetry/t"}
	for range 3 {
		if got := d.Decide(context.Background(), ok); !got.Allow || got.Revision != eng.Revision() {
			t.Fatalf("allowed publish decided %+v", got)
		}
	}
	if got := d.Decide(context.Background(), bad); got.Allow || len(got.Reasons) == 0 {
		t.Fatalf("denied publish decided %+v", got)
	}
	if got := d.Decide(context.Background(), nil); got.Allow || got.Err == nil {
		t.Fatalf("nil input decided %+v", got)
	}
	if got := m.Wrap(nil).Decide(context.Background(), ok); got.Allow || got.Err == nil {
		t.Fatalf("nil decider decided %+v", got)
	}
	for _, c := range []struct {
		action, result string
		want           float64
	}{
		{"publish", "allow", 3}, {"publish", "deny", 1}, {"publish", "error", 1}, {"other", "error", 1},
		{"other", "deny", 0}, {"other", "allow", 0},
	} {
		if got := testutil.ToFloat64(m.decisionsVec.WithLabelValues(c.action, c.result)); got != c.want {
			t.Errorf("decisions{%s,%s} = %v, want %v", c.action, c.result, got, c.want)
		}
	}
	if h := histogram(t, m, "publish"); h.GetSampleCount() != 5 || h.GetSampleSum() <= 0 {
		t.Fatalf("publish histogram: count %d, sum %v", h.GetSampleCount(), h.GetSampleSum())
	}
}

func TestLifecycleMetrics(t *testing.T) {
	m := New(prometheus.NewRegistry())

	m.SessionOpened()
	m.SessionOpened()
	m.SessionClosed()
	if got := testutil.ToFloat64(m.sessions); got != 1 {
		t.Errorf("sessions = %v, want 1", got)
	}

	m.ConnectionAccepted()
	m.ConnectionRefused()
	m.ConnectionRefused()
	if a, r := testutil.ToFloat64(m.accepted), testutil.ToFloat64(m.refused); a != 1 || r != 2 {
		t.Errorf("connections accepted %v refused %v, want 1 and 2", a, r)
	}

	m.PolicyActivated("rev-a")
	m.PolicyActivated("rev-b")
	m.PolicyActivated("rev-b") // reloaded, same content
	m.PolicyActivationFailed()
	if got := testutil.ToFloat64(m.activations); got != 3 {
		t.Errorf("activations = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.activationErr); got != 1 {
		t.Errorf("activation failures = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.revisionInfo); n != 1 {
		t.Errorf("%d revision series, want only the active one", n)
	}
	if got := testutil.ToFloat64(m.revisionInfo.WithLabelValues("rev-b")); got != 1 {
		t.Errorf("revision_info{rev-b} = %v, want 1", got)
	}

	m.SetRegistryCounts(map[string]int{"active": 5, "suspended": 2})
	m.SetRegistryCounts(map[string]int{"active": 4, "revoked": 1})
	for status, want := range map[string]float64{"active": 4, "suspended": 0, "revoked": 1} {
		if got := testutil.ToFloat64(m.registryVec.WithLabelValues(status)); got != want {
			t.Errorf("registry_devices{%s} = %v, want %v", status, got, want)
		}
	}

	m.Revoked()
	if got := testutil.ToFloat64(m.revocations); got != 1 {
		t.Errorf("revocations = %v", got)
	}

	m.Disconnected("revoked")
	m.Disconnected("revoked")
	m.Disconnected("")
	if got := testutil.ToFloat64(m.disconnects.WithLabelValues("revoked")); got != 2 {
		t.Errorf("disconnects{revoked} = %v", got)
	}
	if got := testutil.ToFloat64(m.disconnects.WithLabelValues("unknown")); got != 1 {
		t.Errorf("disconnects{unknown} = %v", got)
	}
}

// Each counter of the decision log is exported under its own outcome; the
// counts of a real decisionlog.Logger are tested where the two are chained
// (internal/decisionchain).
func TestDecisionLogStats(t *testing.T) {
	m := New(prometheus.NewRegistry())
	if n := testutil.CollectAndCount(m, "ztgate_decision_log_entries_total"); n != 0 {
		t.Fatalf("%d decision-log series without a decision log", n)
	}
	m.SetDecisionLogStats(func() DecisionLogStats {
		return DecisionLogStats{Written: 1, Dropped: 2, Synchronous: 3, Failed: 4, Aggregated: 5}
	})
	want := `
# HELP ztgate_decision_log_entries_total Decision-log entries by outcome: written; dropped (a sampled allow, buffer full); synchronous (a deny written by the deciding goroutine, buffer full); failed (lost to a write error); aggregated (a repeated deny counted in an aggregate entry instead of an entry of its own).
# TYPE ztgate_decision_log_entries_total counter
ztgate_decision_log_entries_total{outcome="aggregated"} 5
ztgate_decision_log_entries_total{outcome="dropped"} 2
ztgate_decision_log_entries_total{outcome="failed"} 4
ztgate_decision_log_entries_total{outcome="synchronous"} 3
ztgate_decision_log_entries_total{outcome="written"} 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "ztgate_decision_log_entries_total"); err != nil {
		t.Fatal(err)
	}
	m.SetDecisionLogStats(nil)
	if n := testutil.CollectAndCount(m, "ztgate_decision_log_entries_total"); n != 0 {
		t.Errorf("%d series after the decision log was unset", n)
	}
}

// The decision cache's counters, with the cache inside Wrap as the app
// chains them: decisions_total counts every decision, hits included.
func TestDecisionCacheStats(t *testing.T) {
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	m := New(prometheus.NewRegistry())
	if n := testutil.CollectAndCount(m, "ztgate_decision_cache_lookups_total", "ztgate_decision_cache_entries"); n != 0 {
		t.Fatalf("%d decision-cache series without a cache", n)
	}
	c := policy.NewCache(e, nil, policy.CacheOptions{})
	m.SetDecisionCacheStats(c.Stats)
	d := m.Wrap(c)
	s := &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/device/a", TrustDomain: "example.org", Path: "/device/a", Segments: []string{"device", "a"}},
		Device:   &policy.Device{Name: "a", Labels: map[string]string{}, Status: "active"},
	}
	ctx := context.Background()
	for range 3 {
		if !d.Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/a/telemetry/t"}).Allow {
			t.Fatal("publish denied")
		}
	}
	if !d.Decide(ctx, &policy.Input{Action: policy.ActionConnect, Subject: s}).Allow {
		t.Fatal("connect denied")
	}
	want := `
# HELP ztgate_decision_cache_entries Decisions kept in the decision cache.
# TYPE ztgate_decision_cache_entries gauge
ztgate_decision_cache_entries 1
# HELP ztgate_decision_cache_lookups_total Decisions by what the decision cache did: hit (answered from the cache); miss (cacheable, decided by the engine and kept); bypass (passed to the engine: the policy revision is not cacheable, or the action is not cached).
# TYPE ztgate_decision_cache_lookups_total counter
ztgate_decision_cache_lookups_total{result="bypass"} 1
ztgate_decision_cache_lookups_total{result="hit"} 2
ztgate_decision_cache_lookups_total{result="miss"} 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "ztgate_decision_cache_lookups_total", "ztgate_decision_cache_entries"); err != nil {
		t.Fatal(err)
	}
	wantBytes := fmt.Sprintf(`
# HELP ztgate_decision_cache_bytes Memory the decisions kept in the decision cache are accounted for (bounded by decision_cache_max_bytes).
# TYPE ztgate_decision_cache_bytes gauge
ztgate_decision_cache_bytes %d
`, c.Stats().Bytes)
	if err := testutil.CollectAndCompare(m, strings.NewReader(wantBytes), "ztgate_decision_cache_bytes"); err != nil || c.Stats().Bytes <= 0 {
		t.Fatalf("%v (%+v)", err, c.Stats())
	}
	if got := testutil.ToFloat64(m.decisions[actionIndex(policy.ActionPublish)][resultAllow]); got != 3 {
		t.Errorf("publish allows counted: %v, want 3 (hits included)", got)
	}
	runtime.KeepAlive(s) // its entry leaves the cache with it
	m.SetDecisionCacheStats(nil)
	if n := testutil.CollectAndCount(m, "ztgate_decision_cache_lookups_total"); n != 0 {
		t.Errorf("%d series after the cache was unset", n)
	}
}

func TestRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := New(reg)
	if b := New(reg); b != a {
		t.Fatal("a second New on the same registry must return the registered Metrics")
	}
	// A foreign collector that takes one of our names: no panic, and the
	// Metrics still works unregistered.
	reg2 := prometheus.NewRegistry()
	reg2.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztgate_sessions", Help: "someone else's"}))
	c := New(reg2)
	c.SessionOpened()
	if got := testutil.ToFloat64(c.sessions); got != 1 {
		t.Fatalf("sessions = %v", got)
	}
	// Positive control: on its own registry the same Metrics registers.
	if err := prometheus.NewRegistry().Register(c); err != nil {
		t.Fatal(err)
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	exercise(m)
	m.SessionClosed()
	d := policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision { return policy.Decision{Allow: true} })
	if !m.Wrap(d).Decide(context.Background(), nil).Allow {
		t.Fatal("a nil Metrics must pass decisions through")
	}
}

func TestConcurrent(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	const workers, per = 4, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				m.ObserveDecision(actions[i%len(actions)], i%2 == 0, nil, time.Duration(i)*time.Microsecond)
				m.SessionOpened()
				m.SessionClosed()
				m.PolicyActivated(fmt.Sprint("rev-", w, "-", i%3))
				m.SetRegistryCounts(map[string]int{"active": i})
				m.Disconnected("policy")
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	var total float64
	for i := range actions {
		for r := range numResults {
			total += testutil.ToFloat64(m.decisions[i][r])
		}
	}
	if total != workers*per {
		t.Fatalf("%v decisions counted, want %d", total, workers*per)
	}
	if got := testutil.ToFloat64(m.sessions); got != 0 {
		t.Fatalf("sessions = %v, want 0", got)
	}
	if n := testutil.CollectAndCount(m.revisionInfo); n != 1 {
		t.Fatalf("%d revision series, want 1", n)
	}
}

func TestDecisionTotals(t *testing.T) {
	m := New(nil)
	if a, d := m.DecisionTotals(); a != 0 || d != 0 {
		t.Fatalf("fresh: %d %d", a, d)
	}
	m.ObserveDecision(policy.ActionPublish, true, nil, 0)
	m.ObserveDecision(policy.ActionReceive, true, nil, 0)
	m.ObserveDecision(policy.ActionConnect, false, nil, 0)
	m.ObserveDecision(policy.ActionAdmin, false, errors.New("boom"), 0) // an error denies
	m.ObserveDecision("bogus", true, nil, 0)
	if a, d := m.DecisionTotals(); a != 3 || d != 2 {
		t.Fatalf("totals %d allowed, %d denied; want 3, 2", a, d)
	}
	var nilM *Metrics
	if a, d := nilM.DecisionTotals(); a != 0 || d != 0 {
		t.Fatal("nil Metrics counts")
	}
}
