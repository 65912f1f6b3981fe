package app

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/policy"
)

// policy_allow_builtins, decision_cache_max_bytes and
// decision_log.aggregate_interval: their defaults, a file that sets them,
// and the values refused, each error naming its key.
func TestHardeningConfig(t *testing.T) {
	d := DefaultConfig()
	if len(d.PolicyAllowBuiltins) != 0 || d.DecisionCacheMaxBytes != policy.DefaultCacheMaxBytes ||
		d.DecisionLog.AggregateInterval != decisionlog.DefaultAggregateInterval {
		t.Fatalf("defaults %v %d %s", d.PolicyAllowBuiltins, d.DecisionCacheMaxBytes, d.DecisionLog.AggregateInterval)
	}
	got, err := LoadConfig(writeConfig(t, "policy_allow_builtins: [http.send, time.now_ns]\ndecision_cache_max_bytes: 8388608\n"+
		"decision_log:\n  aggregate_interval: 0s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.PolicyAllowBuiltins, []string{"http.send", "time.now_ns"}) || got.DecisionCacheMaxBytes != 8<<20 ||
		got.DecisionLog.AggregateInterval != 0 || got.DecisionLog.aggregateInterval() >= 0 {
		t.Fatalf("LoadConfig = %v %d %s", got.PolicyAllowBuiltins, got.DecisionCacheMaxBytes, got.DecisionLog.AggregateInterval)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"policy_allow_builtins: [http.sned]\n", `policy_allow_builtins: policy: "http.sned" is not a builtin`},
		{"policy_allow_builtins: [count]\n", "policy_allow_builtins: policy: builtin \"count\" is always allowed"},
		{"policy_allow_builtins: [\"\"]\n", "policy_allow_builtins"},
		{"decision_cache_max_bytes: 1000\n", "decision_cache_max_bytes"},
		{"decision_cache_max_bytes: -1\n", "decision_cache_max_bytes"},
		{"decision_log:\n  aggregate_interval: -1s\n", "decision_log.aggregate_interval"},
	} {
		if _, err := LoadConfig(writeConfig(t, tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.yaml, err, tc.want)
		}
	}
}

// policy_allow_builtins reaches the engine: a policy reading the clock
// does not start a gateway unless it is allowed, and is then not cached.
// decision_cache_max_bytes reaches the cache: a decision over a
// sixty-fourth of it is not kept, a small one is (control).
func TestHardeningConfigReachesEngineAndCache(t *testing.T) {
	dir := t.TempDir()
	src := "package ztgate.authz\n\nallow if {\n\ttime.now_ns() > 0\n\tinput.action == \"connect\"\n}\n\nallow if input.action == \"publish\"\n"
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.PolicyDir = dir
	if a, err := startErr(t, cfg); err == nil || !strings.Contains(err.Error(), "builtin time.now_ns is not allowed") {
		if a != nil {
			_ = a.Close()
		}
		t.Fatalf("Start with time.now_ns not allowed: %v", err)
	}
	cfg.PolicyAllowBuiltins = []string{"time.now_ns"}
	a := start(t, cfg)
	if a.Engine().InputRefs().Cacheable() {
		t.Errorf("a policy reading the clock is cached: %+v", a.Engine().InputRefs())
	}

	cfg = testConfig(t)
	cfg.DecisionCacheMaxBytes = 1 << 20
	a = start(t, cfg)
	s := &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/device/sensor-1", TrustDomain: "example.org",
			Path: "/device/sensor-1", Segments: []string{"device", "sensor-1"}},
		Device: &policy.Device{Name: "sensor-1", Labels: map[string]string{}, Status: "active"},
		Client: policy.Client{ID: "s1", RemoteAddr: "127.0.0.1:1", ProtocolVersion: 5},
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	big := "devices/sensor-1/telemetry/" + strings.Repeat("x", 20<<10)
	for _, topic := range []string{big, big, "devices/sensor-1/telemetry/t"} {
		if d := a.Decider().Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: topic, Time: time.Now()}); !d.Allow {
			t.Fatalf("publish %.40s: %+v", topic, d)
		}
	}
	if st := a.DecisionCache().Stats(); st.Entries != 1 || st.Misses != 3 {
		t.Errorf("cache %+v: want the 20 KiB decision not kept in a 1 MiB cache, the small one kept", st)
	}
	runtime.KeepAlive(s)
}
