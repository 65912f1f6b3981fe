package metrics

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/policy"
)

// The cost of instrumenting a decision, beside the bare Decider measured in
// the same run.

func BenchmarkObserveDecision(b *testing.B) {
	m := New(prometheus.NewRegistry())
	err := errors.New("x")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		m.ObserveDecision(policy.ActionPublish, i&1 == 0, nil, 17*time.Microsecond)
		if i&255 == 0 {
			m.ObserveDecision(policy.ActionReceive, false, err, 17*time.Microsecond)
		}
	}
}

func BenchmarkObserveDecisionParallel(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveDecision(policy.ActionPublish, true, nil, 17*time.Microsecond)
		}
	})
}

var benchAllow = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
	return policy.Decision{Allow: true, Revision: "rev-1"}
})

func benchDecide(b *testing.B, d policy.Decider) {
	in := &policy.Input{Action: policy.ActionPublish, Subject: &policy.Subject{}, Topic: "devices/a/telemetry/t"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		d.Decide(ctx, in)
	}
}

func BenchmarkBare(b *testing.B) { benchDecide(b, benchAllow) }

func BenchmarkWrap(b *testing.B) { benchDecide(b, New(prometheus.NewRegistry()).Wrap(benchAllow)) }
