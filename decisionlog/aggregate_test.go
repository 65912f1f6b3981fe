package decisionlog_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// byTopic denies with a reason that names the topic's first level, so
// that two topics can be two kinds of deny: "deny/..." is "topic not
// granted", "other/..." is "other not granted".
var byTopic = policy.DeciderFunc(func(_ context.Context, in *policy.Input) policy.Decision {
	if strings.HasPrefix(in.Topic, "allow/") {
		return policy.Decision{Allow: true, Revision: "rev-1"}
	}
	first, _, _ := strings.Cut(in.Topic, "/")
	if first == "deny" {
		first = "topic"
	}
	return policy.Decision{Reasons: []string{first + " not granted"}, Revision: "rev-1"}
})

// tally splits entries into full ones and aggregates.
func tally(es []decisionlog.Entry) (full, aggs []decisionlog.Entry) {
	for _, e := range es {
		if e.Aggregate != nil {
			aggs = append(aggs, e)
		} else {
			full = append(full, e)
		}
	}
	return full, aggs
}

// One device denying the same thing 10,000 times writes one full entry and
// aggregates counting the other 9,999, a few kilobytes in all instead of
// megabytes, so that a flood cannot rotate the evidence away. Another
// identity, and another kind of deny of the same session, still get full
// entries of their own (controls); allows are logged as before.
func TestDenyFloodAggregated(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, SampleAllow: 1, AggregateInterval: time.Hour})
	d := l.Wrap(byTopic)
	ctx := context.Background()
	const n = 10000
	var first string
	otherIDs := 0
	for i := range n {
		got := d.Decide(ctx, publish("a", "deny/x"))
		if got.Allow || got.ID == "" {
			t.Fatalf("deny %d: %+v", i, got)
		}
		if i == 0 {
			first = got.ID
		} else if got.ID != first {
			otherIDs++
		}
	}
	other := d.Decide(ctx, publish("b", "deny/x"))     // another identity
	kind := d.Decide(ctx, publish("a", "other/x"))     // another reason
	allowed := d.Decide(ctx, publish("a", "allow/x"))  // an allow, sampled at 1
	allowed2 := d.Decide(ctx, publish("a", "allow/x")) // and again: allows are not aggregated
	if other.ID == first || kind.ID == first || allowed.ID == "" || allowed2.ID == allowed.ID {
		t.Fatalf("ids %q %q %q %q, first %q", other.ID, kind.ID, allowed.ID, allowed2.ID, first)
	}
	mustClose(t, l)

	size := len(out.Bytes())
	es := ids(t, out.entries(t))
	full, aggs := tally(values(es))
	if len(full) != 5 {
		t.Fatalf("%d full entries (%d bytes in all), want 5: the first deny of a, b's, a's other kind, two allows", len(full), size)
	}
	for _, id := range []string{first, other.ID, kind.ID, allowed.ID, allowed2.ID} {
		if e, ok := es[id]; !ok || e.Aggregate != nil {
			t.Errorf("decision %s has no full entry", id)
		}
	}
	var sum uint64
	for _, a := range aggs {
		if a.Aggregate.FirstDecisionID != first || a.Result.Allow || !sameSet(a.Result.Reasons, []string{"topic not granted"}) {
			t.Errorf("aggregate %+v, want one of %s's denies", a, first)
		}
		sum += a.Aggregate.Count
	}
	if sum != n-1 {
		t.Errorf("aggregates count %d denies, want %d", sum, n-1)
	}
	if size > 8<<10 {
		t.Errorf("%d denies wrote %d bytes", n, size)
	}
	// The enforcement point's line for a folded deny names the full
	// entry of its kind, which the aggregate names too.
	if otherIDs != 0 {
		t.Errorf("%d folded denies carry another decision_id than the full entry's %s", otherIDs, first)
	}
	if s := l.Stats(); s.Aggregated != n-1 || s.Written != uint64(len(es)) {
		t.Errorf("Stats = %+v, want %d aggregated, %d written", s, n-1, len(es))
	}
}

func values(m map[string]decisionlog.Entry) []decisionlog.Entry {
	out := make([]decisionlog.Entry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	return out
}

// withClient is publish with another client ID: another session of the
// same identity.
func withClient(name, client, topic string) *policy.Input {
	in := publish(name, topic)
	in.Subject.Client.ID = client
	return in
}

// accounted checks that every deny is in the log, in full or counted in
// an aggregate, and returns the full deny entries and the aggregates.
func accounted(t *testing.T, es []decisionlog.Entry, denies int) (full, aggs []decisionlog.Entry) {
	t.Helper()
	all, aggs := tally(es)
	var sum uint64
	for _, a := range aggs {
		if a.Aggregate.Count == 0 || a.Aggregate.Interval == "" || a.Aggregate.First.IsZero() || a.Aggregate.Last.Before(a.Aggregate.First) {
			t.Errorf("aggregate %+v", a.Aggregate)
		}
		sum += a.Aggregate.Count
	}
	for _, e := range all {
		if !e.Result.Allow {
			full = append(full, e)
		}
	}
	if got := len(full) + int(sum); got != denies {
		t.Fatalf("%d full deny entries + %d counted = %d, want all %d denies", len(full), sum, got, denies)
	}
	return full, aggs
}

// An interval ends with the aggregates of the denies it folded, and the
// next deny of each kind is written in full again: a long flood leaves a
// full entry per interval. An interval with a single deny of a kind writes
// no aggregate.
func TestAggregateIntervals(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, AggregateInterval: time.Hour})
	d := l.Wrap(fixed)
	ctx := context.Background()
	var ids []string
	for _, n := range []int{5, 3, 1} {
		for i := range n {
			got := d.Decide(ctx, publish("a", "deny/x"))
			if i == 0 {
				ids = append(ids, got.ID)
			}
		}
		decisionlog.Flush(l)
	}
	mustClose(t, l)
	full, aggs := accounted(t, out.entries(t), 9)
	if len(full) != 3 || len(aggs) != 2 {
		t.Fatalf("%d full entries, %d aggregates; want 3 and 2", len(full), len(aggs))
	}
	if ids[0] == ids[1] || ids[1] == ids[2] {
		t.Errorf("a new interval reused decision_id: %q", ids)
	}
	for i, want := range []uint64{4, 2} {
		if a := aggs[i].Aggregate; a.Count != want || a.FirstDecisionID != ids[i] || a.Interval != "1h0m0s" {
			t.Errorf("aggregate %d: %+v, want %d denies after %s", i, a, want, ids[i])
		}
	}
}

// The ticker ends intervals by itself: an aggregate appears without Close.
func TestAggregateTicker(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, AggregateInterval: 20 * time.Millisecond})
	d := l.Wrap(fixed)
	for range 3 {
		d.Decide(context.Background(), publish("a", "deny/x"))
	}
	waitFor(t, "an aggregate entry", func() bool {
		_, aggs := tally(out.entries(t))
		return len(aggs) > 0
	})
}

// Failed evaluations are denies of a kind of their own, aggregated with
// their error; subscribe floods keep a sample of their filters.
func TestAggregateErrorsAndFilters(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, AggregateInterval: time.Hour})
	d := l.Wrap(policy.DeciderFunc(func(_ context.Context, in *policy.Input) policy.Decision {
		if in.Action == policy.ActionSubscribe {
			return policy.Decision{Reasons: []string{"filter not granted"}, Revision: "rev-1"}
		}
		return fixed(context.Background(), in)
	}))
	ctx := context.Background()
	for i := range 20 {
		d.Decide(ctx, publish("a", "error/x"))
		d.Decide(ctx, &policy.Input{Action: policy.ActionSubscribe, Subject: subject("a"), Filter: fmt.Sprintf("f/%d/#", i)})
	}
	mustClose(t, l)
	full, aggs := accounted(t, out.entries(t), 40)
	if len(full) != 2 || len(aggs) != 2 {
		t.Fatalf("%d full, %d aggregates", len(full), len(aggs))
	}
	for _, a := range aggs {
		var in struct {
			Action   string
			Identity struct {
				SPIFFEID string `json:"spiffe_id"`
			}
			Client struct{ ID string }
		}
		if err := json.Unmarshal(a.Input, &in); err != nil || in.Identity.SPIFFEID != "spiffe://example.org/device/a" || in.Client.ID != "a" {
			t.Errorf("aggregate input %s (%v), want the session", a.Input, err)
		}
		switch in.Action {
		case "publish":
			if a.Error != "policy: evaluation timed out" || a.Aggregate.Count != 19 {
				t.Errorf("failed evaluations: %+v %+v", a, a.Aggregate)
			}
		case "subscribe":
			ag := a.Aggregate
			if ag.Count != 19 || len(ag.Topics) != 8 || !ag.TopicsTruncated || ag.Topics[0] != "f/1/#" || a.Error != "" {
				t.Errorf("subscribe flood: %+v", ag)
			}
		default:
			t.Errorf("aggregate of action %q", in.Action)
		}
	}
}

// Memory is bounded: past the kinds an identity, or the log, may have
// tracked in an interval, denies are counted in overflow aggregates, never
// dropped. A device opening session after session under new client IDs
// gets no more full entries than its share.
func TestAggregateBounded(t *testing.T) {
	t.Run("limits", func(t *testing.T) {
		var out lockedBuffer
		l := newLogger(t, decisionlog.Config{Writer: &out, AggregateInterval: time.Hour})
		decisionlog.SetAggregateLimits(l, 8, 3, 1<<20)
		d := l.Wrap(fixed)
		ctx := context.Background()
		n := 0
		for id := range 10 {
			for client := range 5 {
				for range 20 {
					d.Decide(ctx, withClient(fmt.Sprint("d", id), fmt.Sprint("c", client), "deny/x"))
					n++
				}
			}
		}
		decisionlog.Flush(l)
		// Control: the next interval starts empty; a new identity's first
		// deny is written in full.
		fresh := d.Decide(ctx, publish("new", "deny/x"))
		mustClose(t, l)
		es := out.entries(t)
		full, aggs := accounted(t, es, n+1)
		if len(full) != 9 {
			t.Errorf("%d full entries, want the 8 kinds tracked and the next interval's first", len(full))
		}
		overflow := map[string]int{}
		for _, a := range aggs {
			overflow[a.Aggregate.Overflow]++
		}
		if overflow[decisionlog.OverflowIdentity] == 0 || overflow[decisionlog.OverflowKinds] != 1 {
			t.Errorf("overflow aggregates %v, want some per identity and one for the rest", overflow)
		}
		if e, ok := ids(t, es)[fresh.ID]; !ok || e.Aggregate != nil {
			t.Errorf("the next interval's first deny %q has no full entry", fresh.ID)
		}
	})
	t.Run("client ID churn", func(t *testing.T) {
		var out lockedBuffer
		l := newLogger(t, decisionlog.Config{Writer: &out, AggregateInterval: time.Hour})
		d := l.Wrap(fixed)
		const sessions = 1000
		for i := range sessions {
			d.Decide(context.Background(), withClient("a", fmt.Sprint("c", i), "deny/x"))
		}
		mustClose(t, l)
		full, aggs := accounted(t, out.entries(t), sessions)
		if len(full) > 64 || len(aggs) != 1 || aggs[0].Aggregate.Overflow != decisionlog.OverflowIdentity {
			t.Errorf("%d full entries, aggregates %+v: want at most 64 and one overflow of the identity", len(full), aggs)
		}
	})
}

// The same flood through the real engine and cache on the default policy:
// a device publishing to a new forbidden topic each time cannot defeat the
// aggregation, and the aggregate names some of the topics.
func TestDenyFloodRealEngine(t *testing.T) {
	eng, err := policy.NewEngine(defaultpolicy.FS, policy.Options{
		Logger: slog.New(slog.DiscardHandler),
		Data:   map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": "example.org"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, AggregateInterval: time.Hour})
	d := l.Wrap(policy.NewCache(eng, nil, policy.CacheOptions{}))
	ctx := context.Background()
	const n = 2000 // each a cache miss: an evaluation
	for i := range n {
		if got := d.Decide(ctx, publish("sensor-1", fmt.Sprintf("devices/sensor-2/telemetry/%d", i))); got.Allow {
			t.Fatalf("%+v", got)
		}
	}
	// Controls: the device's own telemetry is allowed; another device's
	// deny has its own full entry.
	if got := d.Decide(ctx, publish("sensor-1", "devices/sensor-1/telemetry/t")); !got.Allow {
		t.Fatalf("own telemetry: %+v", got)
	}
	other := d.Decide(ctx, publish("sensor-2", "devices/sensor-1/telemetry/t"))
	mustClose(t, l)
	size := len(out.Bytes())
	full, aggs := accounted(t, out.entries(t), n+1)
	if len(full) != 2 || len(aggs) != 1 || full[1].DecisionID != other.ID {
		t.Fatalf("%d full entries, %d aggregates", len(full), len(aggs))
	}
	if a := aggs[0].Aggregate; a.Count != n-1 || len(a.Topics) != 8 || !a.TopicsTruncated ||
		!sameSet(aggs[0].Result.Reasons, []string{"topic not granted"}) || aggs[0].Revision != eng.Revision() {
		t.Errorf("aggregate %+v of %+v", a, aggs[0])
	}
	if size > 8<<10 {
		t.Errorf("%d denies wrote %d bytes", n, size)
	}
	t.Logf("%d denies: %d bytes", n+1, size)
}

// The aggregates Close writes go out in batches that fit a rotated file:
// thousands of them (more than the smallest file, 1 MB) are all written.
func TestCloseWritesManyAggregates(t *testing.T) {
	dir := t.TempDir()
	l := newLogger(t, decisionlog.Config{Path: filepath.Join(dir, "d.log"), MaxSizeMB: 1, MaxBackups: 10, AggregateInterval: time.Hour})
	d := l.Wrap(fixed)
	const sessions = 3000
	for i := range sessions {
		for range 3 {
			d.Decide(context.Background(), publish(fmt.Sprint("d", i), "deny/x"))
		}
	}
	mustClose(t, l)
	if s := l.Stats(); s.Failed != 0 || s.Written != 2*sessions {
		t.Fatalf("Stats = %+v, want %d written, none failed", s, 2*sessions)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "d*.log"))
	var es []decisionlog.Entry
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, parseEntries(t, raw)...)
	}
	if full, aggs := accounted(t, es, 3*sessions); len(full) != sessions || len(aggs) != sessions || len(files) < 2 {
		t.Fatalf("%d full, %d aggregates in %d files", len(full), len(aggs), len(files))
	}
}
