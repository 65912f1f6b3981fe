package test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testutil"
)

// reachable is a loopback HTTP server that counts the requests it gets:
// what a policy reaching the network would touch.
func reachable(t *testing.T) (url string, hits *atomic.Int64) {
	t.Helper()
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, hits
}

// Rule: a module pushed through the admin API cannot reach the network,
// neither from the policy nor from a test (tests run at every upload): the
// upload is refused (422) with an error naming the builtin, the revision
// in force stays, and nothing is sent. An operator who lists the builtin
// in policy_allow_builtins gets it (control: the same upload passes and
// reaches the server).
func TestPolicyHardening_NetworkBuiltinRefusedAtUpload(t *testing.T) {
	t.Parallel()
	url, hits := reachable(t)
	modules := map[string]string{
		"net.rego":      fmt.Sprintf("package ztgate.net\n\nprobe := http.send({\"method\": \"GET\", \"url\": %q})\n", url+"/policy"),
		"net_test.rego": fmt.Sprintf("package ztgate.net_test\n\ntest_probe if http.send({\"method\": \"GET\", \"url\": %q}).status_code == 200\n", url+"/test"),
		"dns.rego":      "package ztgate.dns\n\naddrs := net.lookup_ip_addr(\"localhost\")\n",
	}
	env := testutil.Start(t)
	before := policyOf(t, env).Revision
	for name, src := range modules {
		res, err := env.APIRaw(env.Admin, "PUT", "/v1/policy/modules/"+name, "text/plain", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		builtin := "http.send"
		if name == "dns.rego" {
			builtin = "net.lookup_ip_addr"
		}
		if res.Status != http.StatusUnprocessableEntity || !strings.Contains(res.ErrorMessage(t), "builtin "+builtin+" is not allowed") {
			t.Errorf("PUT %s: %d %s; want 422 naming %s", name, res.Status, res.Body, builtin)
		}
	}
	if got := policyOf(t, env).Revision; got != before {
		t.Errorf("revision %s after refused uploads; want %s", got, before)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("refused uploads sent %d requests", n)
	}
	// Control: a harmless module is accepted.
	if res, err := env.APIRaw(env.Admin, "PUT", "/v1/policy/modules/ok.rego", "text/plain", []byte("package ztgate.ok\n\nok := true\n")); err != nil || res.Status != http.StatusOK {
		t.Fatalf("harmless module: %v %+v", err, res)
	}

	allowed := testutil.StartObserved(t, func(c *app.Config) { c.PolicyAllowBuiltins = []string{"http.send"} })
	res, err := allowed.APIRaw(allowed.Admin, "PUT", "/v1/policy/modules/net_test.rego", "text/plain", []byte(modules["net_test.rego"]))
	if err != nil || res.Status != http.StatusOK {
		t.Fatalf("with http.send allowed: %v %d %s", err, res.Status, res.Body)
	}
	if hits.Load() == 0 {
		t.Fatal("the allowed test reached nothing: the refusals above prove nothing")
	}
}

// Rule: one device flooding denied publishes cannot rotate the decision
// log away. Its first deny is logged in full, the others are counted in an
// aggregate entry (with a sample of the topics tried), and the log stays a
// few kilobytes. Another device's deny gets a full entry of its own, and
// an allowed publish still goes through (controls).
func TestDecisionLog_DenyFloodAggregated(t *testing.T) {
	t.Parallel()
	ob := testutil.StartObserved(t, func(c *app.Config) { c.DecisionLog.AggregateInterval = time.Hour })
	s1 := ob.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
	s2 := ob.Enroll(t, "sensor-2", map[string]string{"role": "sensor"})
	dev := ob.MustConnect(t, s1, "sensor-1", nil)
	other := ob.MustConnect(t, s2, "sensor-2", nil)

	const n = 1000
	for i := range n {
		dev.PubDenied(t, msg{Topic: fmt.Sprintf("devices/sensor-2/telemetry/%d", i), Payload: "x"})
	}
	other.PubDenied(t, msg{Topic: "devices/sensor-1/telemetry/t", Payload: "x"})
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/t", Payload: "ok", QoS: 1})
	if err := ob.App.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := os.Stat(ob.DecisionLogPath)
	if err != nil {
		t.Fatal(err)
	}
	full := map[string]int{}
	var counted uint64
	for _, e := range ob.Decisions(t) {
		in := decisionInput(t, e.Input)
		if in.Action != "publish" {
			continue
		}
		if e.Aggregate != nil {
			if in.Identity.SPIFFEID != s1.ID || in.Client.ID != "sensor-1" || len(e.Aggregate.Topics) == 0 {
				t.Errorf("aggregate of %s/%s: %+v", in.Identity.SPIFFEID, in.Client.ID, e.Aggregate)
			}
			counted += e.Aggregate.Count
			continue
		}
		full[in.Identity.SPIFFEID]++
	}
	if full[s1.ID] != 1 || counted != n-1 || full[s2.ID] != 1 {
		t.Fatalf("sensor-1: %d full entries and %d counted, sensor-2: %d full; want 1 and %d, 1", full[s1.ID], counted, full[s2.ID], n-1)
	}
	if st.Size() > 16<<10 {
		t.Errorf("%d denied publishes made a %d-byte decision log", n+1, st.Size())
	}
	if s := ob.App.DecisionLog().Stats(); s.Aggregated != n-1 {
		t.Errorf("decision log stats %+v; want %d aggregated", s, n-1)
	}
	t.Logf("%d denied publishes: %d bytes of decision log", n+1, st.Size())
}
