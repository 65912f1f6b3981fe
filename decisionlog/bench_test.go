package decisionlog_test

import (
	"context"
	"io"
	"testing"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/policy"
)

// The cost the decision log adds to a decision, beside the bare Decider
// measured in the same run. The deny writes to io.Discard, so the figure is
// the hand-off plus the writer goroutine's encoding competing for the CPU,
// not the disk.

var (
	benchAllow = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
		return policy.Decision{Allow: true, Revision: "rev-1"}
	})
	benchDeny = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
		return policy.Decision{Reasons: []string{"topic not granted"}, Revision: "rev-1"}
	})
)

func benchDecide(b *testing.B, d policy.Decider, l *decisionlog.Logger) {
	b.Helper()
	in := publish("sensor-1", "devices/sensor-1/telemetry/temp")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		d.Decide(ctx, in)
	}
	b.StopTimer()
	if l != nil {
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
		s := l.Stats()
		b.ReportMetric(float64(s.Synchronous)/float64(b.N), "sync/op")
	}
}

func benchLogger(b *testing.B, rate float64) *decisionlog.Logger {
	b.Helper()
	l, err := decisionlog.New(decisionlog.Config{Writer: io.Discard, SampleAllow: rate})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

func BenchmarkBareAllow(b *testing.B) { benchDecide(b, benchAllow, nil) }

func BenchmarkWrapAllowNotSampled(b *testing.B) {
	l := benchLogger(b, 0)
	benchDecide(b, l.Wrap(benchAllow), l)
}

func BenchmarkWrapAllowRate001(b *testing.B) {
	l := benchLogger(b, 0.01)
	benchDecide(b, l.Wrap(benchAllow), l)
}

func BenchmarkBareDeny(b *testing.B) { benchDecide(b, benchDeny, nil) }

// BenchmarkWrapDeny: the same deny again and again, as a flood sends it:
// after the first, each is counted in its kind's aggregate.
func BenchmarkWrapDeny(b *testing.B) {
	l := benchLogger(b, 0)
	benchDecide(b, l.Wrap(benchDeny), l)
}

// BenchmarkWrapDenyNotAggregated: every deny written in full, as before
// aggregation (and as with aggregate_interval 0).
func BenchmarkWrapDenyNotAggregated(b *testing.B) {
	l, err := decisionlog.New(decisionlog.Config{Writer: io.Discard, AggregateInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	benchDecide(b, l.Wrap(benchDeny), l)
}
