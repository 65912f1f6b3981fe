package app

import (
	"context"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/policy"
)

// The decision cache sits inside the metrics and the decision log: a
// decision answered from the cache is still counted, and a cached deny is
// still logged, each under its own decision_id.
func TestDecisionCacheInsideLogAndMetrics(t *testing.T) {
	cfg := testConfig(t)
	logPath := filepath.Join(t.TempDir(), "decisions.log")
	cfg.DecisionLog.Path = logPath
	// Every deny in an entry of its own: repeated denies are not
	// aggregated here (decisionflood_test.go covers the aggregation).
	cfg.DecisionLog.AggregateInterval = 0
	a := start(t, cfg)
	if !a.Engine().InputRefs().Cacheable() {
		t.Fatalf("the default policy is not cacheable: %+v", a.Engine().InputRefs())
	}

	s := &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/device/sensor-1", TrustDomain: "example.org",
			Path: "/device/sensor-1", Segments: []string{"device", "sensor-1"}},
		Device: &policy.Device{Name: "sensor-1", Labels: map[string]string{}, Status: "active"},
		Client: policy.Client{ID: "s1", RemoteAddr: "127.0.0.1:1", ProtocolVersion: 5},
	}
	ctx := context.Background()
	const n = 3
	ids := map[string]bool{}
	for range n {
		allow := a.Decider().Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/sensor-1/telemetry/t"})
		deny := a.Decider().Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/sensor-2/telemetry/t"})
		if !allow.Allow || deny.Allow || deny.ID == "" || len(deny.Reasons) == 0 {
			t.Fatalf("allow %+v, deny %+v", allow, deny)
		}
		ids[deny.ID] = true
	}
	if len(ids) != n {
		t.Errorf("%d distinct decision ids for %d denies", len(ids), n)
	}
	if st := a.DecisionCache().Stats(); st.Hits != 2*(n-1) || st.Misses != 2 {
		t.Errorf("cache %+v, want %d hits and 2 misses", st, 2*(n-1))
	}

	eventually(t, "every deny in the decision log", func() bool {
		logged := 0
		for _, e := range readDecisions(t, logPath) {
			if ids[e.DecisionID] && !e.Result.Allow && len(e.Result.Reasons) > 0 {
				logged++
			}
		}
		return logged == n
	})

	_, body := get(t, adminClient(t, a), a.APIURL()+"/metrics")
	for name, want := range map[string]float64{
		`ztgate_decisions_total{action="publish",result="allow"}`: n,
		`ztgate_decisions_total{action="publish",result="deny"}`:  n,
		`ztgate_decision_cache_lookups_total{result="hit"}`:       2 * (n - 1),
		`ztgate_decision_cache_lookups_total{result="miss"}`:      2,
		`ztgate_decision_cache_entries`:                           2,
	} {
		if got := metricValue(t, body, name); got != want {
			t.Errorf("%s = %v, want %v\n%s", name, got, want, grepLines(body, "ztgate_decision"))
		}
	}
	if code, _ := get(t, adminClient(t, a), a.APIURL()+"/v1/devices"); code != http.StatusOK {
		t.Errorf("admin request through the cache: %d", code)
	}
	if !strings.Contains(body, "ztgate_decision_cache_lookups_total") {
		t.Error("no cache metrics served")
	}
	// The subject's entries leave the cache when it is collected.
	runtime.KeepAlive(s)
}
