package policy_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// The decision path on the default policy, beside two baselines measured in
// the same run: an allow-all Decider (the floor: what a call costs with no
// policy) and the same engine fed through a JSON round trip of the input
// (what building the input naively would cost).

// benchTimeout is far above any evaluation's cost: a benchmark on a busy
// machine must not fail on a scheduling stall.
const benchTimeout = time.Second

func benchEngine(b *testing.B) *policy.Engine {
	b.Helper()
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Timeout: benchTimeout})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

func benchSubject(name string, role string) *policy.Subject {
	return &policy.Subject{
		Identity: policy.Identity{
			SPIFFEID:    "spiffe://example.org/device/" + name,
			TrustDomain: "example.org",
			Path:        "/device/" + name,
			Segments:    []string{"device", name},
		},
		Device: &policy.Device{Name: name, Labels: map[string]string{"role": role}, Status: "active"},
		Client: policy.Client{ID: name, RemoteAddr: "127.0.0.1:50412", ProtocolVersion: 5},
	}
}

func runDecide(b *testing.B, d policy.Decider, in *policy.Input, want bool) {
	b.Helper()
	ctx := context.Background()
	if got := d.Decide(ctx, in); got.Allow != want || got.Err != nil {
		b.Fatalf("Decide = %+v, want allow=%v", got, want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		d.Decide(ctx, in)
	}
}

func runJSON(b *testing.B, e *policy.Engine, in *policy.Input, want bool) {
	b.Helper()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		raw, err := json.Marshal(in)
		if err != nil {
			b.Fatal(err)
		}
		d, err := e.DecideJSON(ctx, raw)
		if err != nil || d.Allow != want {
			b.Fatalf("DecideJSON = %+v, %v", d, err)
		}
	}
}

var allowAll = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
	return policy.Decision{Allow: true}
})

func BenchmarkDecidePublish(b *testing.B) {
	e := benchEngine(b)
	s := benchSubject("sensor-1", "sensor")
	now := time.Now()
	ok := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/sensor-1/telemetry/temp", QoS: 1, PayloadSize: 12, Time: now}
	bad := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/sensor-2/telemetry/temp", QoS: 1, PayloadSize: 12, Time: now}
	b.Run("baseline-allow-all", func(b *testing.B) { runDecide(b, allowAll, ok, true) })
	b.Run("allowed", func(b *testing.B) { runDecide(b, e, ok, true) })
	b.Run("denied", func(b *testing.B) { runDecide(b, e, bad, false) })
	b.Run("allowed-json-roundtrip", func(b *testing.B) { runJSON(b, e, ok, true) })
	b.Run("denied-json-roundtrip", func(b *testing.B) { runJSON(b, e, bad, false) })
}

func BenchmarkDecideReceive(b *testing.B) {
	e := benchEngine(b)
	dev := benchSubject("sensor-1", "sensor")
	ctl := benchSubject("controller-1", "controller")
	now := time.Now()
	cmd := &policy.Input{Action: policy.ActionReceive, Subject: dev, Topic: "devices/sensor-1/commands/reboot", QoS: 1, PayloadSize: 12, Time: now}
	tel := &policy.Input{Action: policy.ActionReceive, Subject: ctl, Topic: "devices/sensor-1/telemetry/temp", QoS: 1, PayloadSize: 12, Time: now}
	bad := &policy.Input{Action: policy.ActionReceive, Subject: dev, Topic: "devices/sensor-2/commands/reboot", QoS: 1, PayloadSize: 12, Time: now}
	b.Run("baseline-allow-all", func(b *testing.B) { runDecide(b, allowAll, cmd, true) })
	b.Run("allowed-device", func(b *testing.B) { runDecide(b, e, cmd, true) })
	b.Run("allowed-controller", func(b *testing.B) { runDecide(b, e, tel, true) })
	b.Run("denied", func(b *testing.B) { runDecide(b, e, bad, false) })
	b.Run("allowed-json-roundtrip", func(b *testing.B) { runJSON(b, e, cmd, true) })
	b.Run("denied-json-roundtrip", func(b *testing.B) { runJSON(b, e, bad, false) })
}

// The same publish decisions with the base document the gateway passes
// (data.ztgate.config.trust_domain, which the default policy reads).
func BenchmarkDecideWithConfig(b *testing.B) {
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Timeout: benchTimeout,
		Data:    map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": "example.org"}}},
	})
	if err != nil {
		b.Fatal(err)
	}
	s := benchSubject("sensor-1", "sensor")
	now := time.Now()
	ok := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/sensor-1/telemetry/temp", QoS: 1, PayloadSize: 12, Time: now}
	bad := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/sensor-2/telemetry/temp", QoS: 1, PayloadSize: 12, Time: now}
	b.Run("allowed", func(b *testing.B) { runDecide(b, e, ok, true) })
	b.Run("denied", func(b *testing.B) { runDecide(b, e, bad, false) })
}
