package decisionchain_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/internal/decisionchain"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/metrics"
	"github.com/ztgate/ztgate/policy"
)

// A policy whose decisions the cache keeps: it reads the topic alone.
const okPolicy = `package ztgate.authz

allow if input.topic == "ok"

reasons contains "only ok" if not allow
`

func newEngine(t *testing.T) *policy.Engine {
	t.Helper()
	e, err := policy.NewEngine(fstest.MapFS{"p.rego": {Data: []byte(okPolicy)}},
		policy.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if !e.InputRefs().Cacheable() {
		t.Fatalf("test policy not cacheable: %+v", e.InputRefs())
	}
	return e
}

func subject(name string) *policy.Subject {
	return &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/device/" + name, TrustDomain: "example.org",
			Path: "/device/" + name, Segments: []string{"device", name}},
		Device: &policy.Device{Name: name, Labels: map[string]string{}, Status: "active"},
		Client: policy.Client{ID: name, RemoteAddr: "127.0.0.1:1", ProtocolVersion: 5},
	}
}

// syncBuffer is the decision log's output, written by its goroutine.
type syncBuffer struct{ testpki.LogBuffer }

func (b *syncBuffer) entries(t *testing.T) []decisionlog.Entry {
	t.Helper()
	var out []decisionlog.Entry
	sc := bufio.NewScanner(bytes.NewReader(b.Bytes()))
	for sc.Scan() {
		var e decisionlog.Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("decision log line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

func newLogger(t *testing.T, w io.Writer, aggregate bool) *decisionlog.Logger {
	t.Helper()
	cfg := decisionlog.Config{Writer: w, ErrorLog: slog.New(slog.DiscardHandler)}
	if !aggregate {
		cfg.AggregateInterval = -1 // every deny in an entry of its own
	}
	l, err := decisionlog.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// The order of the chain, seen from outside: a decision answered from the
// cache is still counted by the metrics, and a cached deny is still logged,
// each under a decision_id of its own. A cache outside the metrics would
// leave hits uncounted; outside the log, cached denies unlogged; a log
// inside the cache would leave no deny cached.
func TestOrder(t *testing.T) {
	var out syncBuffer
	l := newLogger(t, &out, false)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	d, cache, err := decisionchain.New(decisionchain.Options{Engine: newEngine(t), Metrics: m, DecisionLog: l})
	if err != nil {
		t.Fatal(err)
	}

	s := subject("sensor-1")
	ctx := context.Background()
	const n = 3
	ids := map[string]bool{}
	for range n {
		allow := d.Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "ok"})
		deny := d.Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "other"})
		if !allow.Allow || allow.Err != nil || deny.Allow || deny.ID == "" || len(deny.Reasons) == 0 {
			t.Fatalf("allow %+v, deny %+v", allow, deny)
		}
		ids[deny.ID] = true
	}
	if len(ids) != n {
		t.Errorf("%d distinct decision ids for %d denies", len(ids), n)
	}
	// Inside: the engine decided each input once, the cache the rest.
	if st := cache.Stats(); st.Hits != 2*(n-1) || st.Misses != 2 || st.Entries != 2 {
		t.Errorf("cache %+v, want %d hits, 2 misses, 2 entries", st, 2*(n-1))
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	logged := 0
	for _, e := range out.entries(t) {
		if ids[e.DecisionID] && !e.Result.Allow && len(e.Result.Reasons) > 0 {
			logged++
		}
	}
	if logged != n {
		t.Errorf("%d of %d denies in the decision log", logged, n)
	}

	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"ztgate_decisions_total", "result", "allow", n},
		{"ztgate_decisions_total", "result", "deny", n},
		{"ztgate_decision_cache_lookups_total", "result", "hit", 2 * (n - 1)},
		{"ztgate_decision_cache_lookups_total", "result", "miss", 2},
	} {
		if got := counter(t, reg, c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
}

// counter sums the series of family name whose label is value.
func counter(t *testing.T, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// The decision log's counters reach the metrics, each under its outcome:
// two failed decisions and three denies of one session, the last two of
// which are counted in an aggregate entry written at Close.
func TestDecisionLogStats(t *testing.T) {
	l := newLogger(t, io.Discard, true)
	m := metrics.New(prometheus.NewRegistry())
	d, _, err := decisionchain.New(decisionchain.Options{Engine: newEngine(t), Metrics: m, DecisionLog: l})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 2 {
		if got := d.Decide(ctx, nil); got.Allow || got.Err == nil {
			t.Fatalf("nil input: %+v", got)
		}
	}
	in := &policy.Input{Action: policy.ActionPublish, Topic: "t", Subject: subject("a")}
	for range 3 {
		if got := d.Decide(ctx, in); got.Allow {
			t.Fatalf("%+v", got)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP ztgate_decision_log_entries_total Decision-log entries by outcome: written; dropped (a sampled allow, buffer full); synchronous (a deny written by the deciding goroutine, buffer full); failed (lost to a write error); aggregated (a repeated deny counted in an aggregate entry instead of an entry of its own).
# TYPE ztgate_decision_log_entries_total counter
ztgate_decision_log_entries_total{outcome="aggregated"} 2
ztgate_decision_log_entries_total{outcome="dropped"} 0
ztgate_decision_log_entries_total{outcome="failed"} 0
ztgate_decision_log_entries_total{outcome="synchronous"} 0
ztgate_decision_log_entries_total{outcome="written"} 4
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "ztgate_decision_log_entries_total"); err != nil {
		t.Fatal(err)
	}
}

// Metrics and the decision log are optional; the engine is not.
func TestOptionalLayers(t *testing.T) {
	e := newEngine(t)
	d, cache, err := decisionchain.New(decisionchain.Options{Engine: e})
	if err != nil {
		t.Fatal(err)
	}
	in := &policy.Input{Action: policy.ActionPublish, Subject: subject("a"), Topic: "ok"}
	for range 2 {
		if got := d.Decide(context.Background(), in); !got.Allow || got.Err != nil || got.Revision != e.Revision() {
			t.Fatalf("%+v", got)
		}
	}
	if st := cache.Stats(); st.Hits != 1 || st.Misses != 1 {
		t.Errorf("cache %+v, want 1 hit, 1 miss", st)
	}

	for _, opts := range []decisionchain.Options{
		{},
		{Metrics: metrics.New(nil), DecisionLog: newLogger(t, io.Discard, false)},
	} {
		d, c, err := decisionchain.New(opts)
		if err == nil || d != nil || c != nil || !strings.HasPrefix(err.Error(), "decisionchain: ") {
			t.Errorf("without an engine: %v, %v, %v", d, c, err)
		}
	}
}
