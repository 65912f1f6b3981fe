package bench

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 127, 128, 129, 255, 256, 1000, 1 << 20, 1<<40 + 12345, math.MaxInt64} {
		i := bucketOf(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d, out of [0, %d)", v, i, histBuckets)
		}
		if i < prev {
			t.Fatalf("bucketOf(%d) = %d, below the bucket of a smaller value (%d)", v, i, prev)
		}
		prev = i
		lo, hi := bucketRange(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d = [%d, %d]", v, i, lo, hi)
		}
		if v >= 1<<histSubBits && float64(hi-lo) > float64(lo)/float64(1<<(histSubBits-1)) {
			t.Fatalf("bucket %d = [%d, %d] is wider than the precision promised", i, lo, hi)
		}
	}
	if got := bucketOf(-5); got != 0 {
		t.Fatalf("bucketOf(-5) = %d, want 0", got)
	}
}

// TestHistogramQuantiles checks quantiles against the sorted values.
func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	vals := make([]int64, 100000)
	var h histogram
	for i := range vals {
		vals[i] = int64(rng.ExpFloat64() * 1e6) // around 1 ms
		h.record(time.Duration(vals[i]))
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := float64(vals[int(q*float64(len(vals)))])
		got := float64(h.quantile(q))
		if math.Abs(got-want) > want*0.02 {
			t.Errorf("p%v = %v, want %v within 2%%", q*100, got, want)
		}
	}
	if got := int64(h.quantile(1)); got != vals[len(vals)-1] {
		t.Errorf("p100 = %d, want the maximum %d", got, vals[len(vals)-1])
	}
	var empty histogram
	if empty.quantile(0.99) != 0 {
		t.Error("quantile of an empty histogram is not 0")
	}
	var merged histogram
	merged.merge(&h)
	merged.merge(&empty)
	if merged.n != h.n || merged.max != h.max || merged.quantile(0.9) != h.quantile(0.9) {
		t.Error("merge changed the distribution")
	}
}

func TestValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no publishers", func(c *Config) { c.Publishers = 0 }, "--publishers"},
		{"too many subscribers", func(c *Config) { c.Subscribers = MaxClients + 1 }, "--subscribers"},
		{"no messages", func(c *Config) { c.Messages = 0 }, "--messages"},
		{"too many deliveries to track", func(c *Config) { c.Messages, c.Subscribers = MaxMessages, 200 }, "--messages × --subscribers"},
		{"qos 2", func(c *Config) { c.QoS = 2 }, "--qos"},
		{"payload below the header", func(c *Config) { c.Payload = headerSize - 1 }, "--payload"},
		{"negative rate", func(c *Config) { c.Rate = -1 }, "--rate"},
		{"zero duration limit", func(c *Config) { c.DurationLimit = 0 }, "--duration-limit"},
		{"unknown policy", func(c *Config) { c.Policy = "none" }, "--policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tc.want)
			}
			// Positive control: the same config with a valid value in
			// that place is accepted (the default one).
			if err := DefaultConfig().Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		k    int
		want []int64
	}{
		{10, 3, []int64{4, 3, 3}},
		{2, 4, []int64{1, 1, 0, 0}},
		{8, 2, []int64{4, 4}},
	} {
		if got := split(tc.n, tc.k); !slices.Equal(got, tc.want) {
			t.Errorf("split(%d, %d) = %v, want %v", tc.n, tc.k, got, tc.want)
		}
	}
}

// TestRunQoS1 runs a small bench end to end: every message reaches every
// subscriber exactly once under both policies. (What it measures is not
// asserted: speed is for benchmarks.)
func TestRunQoS1(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Publishers, cfg.Subscribers, cfg.Messages, cfg.QoS = 2, 2, 300, 1
	cfg.Policy = PolicyBoth
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 || rep.Runs[0].Policy != string(PolicyAllowAll) || rep.Runs[1].Policy != string(PolicyDefault) {
		t.Fatalf("runs %+v; want allow-all then default", rep.Runs)
	}
	if rep.Runs[0].PolicyRevision == rep.Runs[1].PolicyRevision {
		t.Fatalf("both runs report policy revision %s", rep.Runs[0].PolicyRevision)
	}
	for _, r := range rep.Runs {
		if r.Sent != 300 || r.Deliveries != 600 || r.ExpectedDeliveries != 600 || r.Lost != 0 || r.Duplicates != 0 || r.Foreign != 0 {
			t.Errorf("%s: sent %d, delivered %d/%d, lost %d, duplicates %d, foreign %d; want 300, 600/600, 0, 0, 0",
				r.Policy, r.Sent, r.Deliveries, r.ExpectedDeliveries, r.Lost, r.Duplicates, r.Foreign)
		}
		if r.StoppedByLimit {
			t.Errorf("%s: stopped by the duration limit", r.Policy)
		}
		if r.Decisions == nil || *r.Decisions < float64(r.Sent+r.Deliveries) {
			t.Errorf("%s: decisions %v; want at least one per publish and per delivery (%d)", r.Policy, r.Decisions, r.Sent+r.Deliveries)
		}
		if r.Latency.P50 <= 0 || r.Latency.P99 < r.Latency.P50 || r.Latency.Max < r.Latency.P99 {
			t.Errorf("%s: latency %+v is not ordered", r.Policy, r.Latency)
		}
	}
	if rep.Ratio == nil || rep.Ratio.Throughput <= 0 || rep.Ratio.P99 <= 0 {
		t.Fatalf("ratio %+v; want both ratios", rep.Ratio)
	}
}

// TestRunInterrupted ends a run through its context, as Ctrl-C does: Run
// stops and says so instead of reporting a partial run as a result.
func TestRunInterrupted(t *testing.T) {
	cfg := DefaultConfig()
	// Paced to last 10 s, so it is still publishing when cancelled.
	cfg.Publishers, cfg.Subscribers, cfg.Messages, cfg.Rate = 1, 1, 1000, 100
	// Cancelled while publishing, or while starting on a slow machine:
	// either way an interruption.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(time.Second, cancel)
	rep, err := Run(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("Run() = %+v, %v; want an interruption", rep, err)
	}
}

// TestRunDurationLimit: the limit ends publishing, paced or not, at either
// QoS, and the run says so; what was sent is still all delivered.
func TestRunDurationLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		qos, rate int
	}{
		{"qos0 unpaced", 0, 0},
		{"qos1 unpaced", 1, 0},
		{"qos1 paced", 1, 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Publishers, cfg.Subscribers, cfg.QoS, cfg.Rate = 1, 1, tc.qos, tc.rate
			cfg.Messages = 5_000_000 // far more than the limit lets through
			cfg.DurationLimit = 300 * time.Millisecond
			// Should the limit not hold, this ends the run instead.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep, err := Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Runs[0]
			if !r.StoppedByLimit || r.Sent == 0 || r.Sent >= int64(cfg.Messages) {
				t.Fatalf("stopped by limit %v after sending %d of %d; want stopped, some sent", r.StoppedByLimit, r.Sent, cfg.Messages)
			}
			if tc.qos == 1 && (r.Lost != 0 || r.Deliveries != r.Sent) {
				t.Fatalf("QoS 1: %d sent, %d delivered, %d lost; want all delivered", r.Sent, r.Deliveries, r.Lost)
			}
		})
	}
}
