package bridge

import (
	"context"
	"fmt"
	"testing"

	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy"
)

// benchManager has one bridge with two out rules and no connection.
func benchManager(tb testing.TB) *Manager {
	f := &fixture{dir: tb.TempDir(), dec: &decider{deny: map[string]bool{}}, local: make(chan localPub, 1), logs: &testpki.LogBuffer{}}
	deps := f.deps()
	deps.Metrics, deps.Dial = nil, nil
	deps.Decider = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision { return policy.Decision{Allow: true} })
	m, err := New([]Config{{
		Name: "cloud", URL: "mqtts://127.0.0.1:8883",
		Out: []OutRule{
			{Filter: "devices/+/telemetry/#", RemotePrefix: "plant-a/", QoS: 1},
			{Filter: "devices/+/state", RemotePrefix: "plant-a/", QoS: 1},
		},
	}}, deps)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = m.Close() })
	return m
}

// Offer is on every publisher's goroutine: a topic no rule matches must
// cost no allocation.
func TestOfferNoMatchDoesNotAllocate(t *testing.T) {
	m := benchManager(t)
	sub, payload := device("a"), []byte("21.5")
	allocs := testing.AllocsPerRun(1000, func() {
		m.Offer(sub, "devices/a/commands/reboot", payload, 1, false)
	})
	if allocs != 0 {
		t.Fatalf("Offer of an unmatched topic: %v allocations; want 0", allocs)
	}
	if s := m.Status()[0]; s.Denied+s.Dropped+s.Queued != 0 {
		t.Fatalf("status %+v; the unmatched topic must not be counted", s)
	}
}

func BenchmarkOfferNoMatch(b *testing.B) {
	m := benchManager(b)
	sub, payload := device("a"), []byte("21.5")
	b.ReportAllocs()
	for b.Loop() {
		m.Offer(sub, "devices/a/commands/reboot", payload, 1, false)
	}
}

// BenchmarkOfferMatch is the cost on the publisher's goroutine of a
// forwarded message: match, decide (a trivial decider), copy, hand over.
func BenchmarkOfferMatch(b *testing.B) {
	m := benchManager(b)
	sub, payload := device("a"), []byte("21.5")
	topics := make([]string, 64)
	for i := range topics {
		topics[i] = fmt.Sprintf("devices/a/telemetry/%d", i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Offer(sub, topics[i%len(topics)], payload, 1, false)
		i++
	}
}
