package bench

import (
	"context"
	"log/slog"
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
		{"no nodes", func(c *Config) { c.Nodes = 0 }, "--nodes must be between 1 and"},
		{"too many nodes", func(c *Config) { c.Nodes = MaxNodes + 1 }, "--nodes must be between 1 and"},
		{"unknown placement", func(c *Config) { c.Nodes, c.Placement = 3, "random" }, "--placement"},
		{"compare without a cluster", func(c *Config) { c.NodesCompare = true }, "--nodes-compare"},
		{"cross placement on one node", func(c *Config) { c.Placement = PlacementCross }, "--placement cross needs a cluster"},
		{"placement both on one node", func(c *Config) { c.Placement = PlacementBoth }, "--placement both needs a cluster"},
		{"two comparisons", func(c *Config) { c.Nodes, c.NodesCompare, c.Policy = 3, true, PolicyBoth }, "one at a time"},
		{"three comparisons", func(c *Config) {
			c.Nodes, c.NodesCompare, c.Policy, c.Placement = 3, true, PolicyBoth, PlacementBoth
		}, "one at a time"},
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
	// Positive controls of the cluster settings: each comparison alone.
	for _, edit := range []func(*Config){
		func(c *Config) { c.Nodes, c.NodesCompare = 3, true },
		func(c *Config) { c.Nodes, c.Placement = 2, PlacementBoth },
		func(c *Config) { c.Nodes, c.Placement, c.Policy = MaxNodes, PlacementCross, PolicyBoth },
	} {
		c := DefaultConfig()
		edit(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// TestPlacement checks which node each client goes to, and so which
// deliveries cross nodes.
func TestPlacement(t *testing.T) {
	for _, tc := range []struct {
		placement  PlacementMode
		nodes      int
		pubs, subs []int // node of each client
	}{
		{PlacementSpread, 3, []int{0, 1, 2, 0}, []int{1, 2, 0, 1}},
		{PlacementSpread, 2, []int{0, 1}, []int{1, 0, 1}},
		{PlacementSame, 3, []int{0, 0, 0}, []int{0, 0}},
		{PlacementCross, 3, []int{0, 0}, []int{1, 2, 1, 2}},
		{PlacementCross, 2, []int{0}, []int{1, 1}},
	} {
		v := variant{nodes: tc.nodes, placement: tc.placement}
		for i, want := range tc.pubs {
			if got := v.publisherNode(i); got != want {
				t.Errorf("%s on %d nodes: publisher %d on node %d, want %d", tc.placement, tc.nodes, i, got, want)
			}
		}
		for j, want := range tc.subs {
			if got := v.subscriberNode(j); got != want {
				t.Errorf("%s on %d nodes: subscriber %d on node %d, want %d", tc.placement, tc.nodes, j, got, want)
			}
		}
	}
	if got := (variant{nodes: 1}).subscriberNode(3); got != 0 {
		t.Errorf("a single node's subscriber on node %d", got)
	}
}

// TestVariants: each comparison is two runs, the baseline first, and a
// bench without one is a single run.
func TestVariants(t *testing.T) {
	for _, tc := range []struct {
		edit  func(*Config)
		names []string
		nodes []int
	}{
		{func(c *Config) {}, []string{"default"}, []int{1}},
		{func(c *Config) { c.Policy = PolicyBoth }, []string{"allow-all", "default"}, []int{1, 1}},
		{func(c *Config) { c.Nodes, c.NodesCompare = 3, true }, []string{"1 node", "3 nodes"}, []int{1, 3}},
		{func(c *Config) { c.Nodes, c.Placement = 3, PlacementBoth }, []string{"same", "cross"}, []int{3, 3}},
	} {
		c := DefaultConfig()
		tc.edit(&c)
		var names []string
		var nodes []int
		for _, v := range c.variants() {
			names, nodes = append(names, v.name), append(nodes, v.nodes)
		}
		if !slices.Equal(names, tc.names) || !slices.Equal(nodes, tc.nodes) {
			t.Errorf("runs %v on %v nodes, want %v on %v", names, nodes, tc.names, tc.nodes)
		}
	}
}

// TestRunCluster runs small QoS 1 benches on clusters: every message
// reaches every subscriber, and the deliveries that crossed nodes are
// those the placement implies. Speed is not asserted.
func TestRunCluster(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		runs  []string
		cross []int64 // cross-node deliveries of each run
	}{
		// Placement both: same (no delivery crosses), then cross (all do).
		{"same vs cross", func(c *Config) { c.Nodes, c.Placement = 3, PlacementBoth }, []string{"same", "cross"}, []int64{0, 600}},
		// Spread on 2 nodes: publishers on nodes 0, 1, subscribers on
		// 1, 0: half of the (publisher, subscriber) pairs cross.
		{"single vs spread", func(c *Config) { c.Nodes, c.NodesCompare = 2, true }, []string{"1 node", "2 nodes"}, []int64{0, 300}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Publishers, cfg.Subscribers, cfg.Messages, cfg.QoS = 2, 2, 300, 1
			tc.edit(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			rep, err := Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Runs) != len(tc.runs) {
				t.Fatalf("%d runs, want %v", len(rep.Runs), tc.runs)
			}
			for i, r := range rep.Runs {
				if r.Name != tc.runs[i] {
					t.Errorf("run %d is %q, want %q", i, r.Name, tc.runs[i])
				}
				if r.Sent != 300 || r.Deliveries != 600 || r.Lost != 0 || r.Duplicates != 0 || r.Foreign != 0 || r.StoppedByLimit {
					t.Errorf("%s: sent %d, delivered %d, lost %d, duplicates %d, foreign %d, cut %v; want 300, 600, 0, 0, 0, false",
						r.Name, r.Sent, r.Deliveries, r.Lost, r.Duplicates, r.Foreign, r.StoppedByLimit)
				}
				if r.CrossNode != tc.cross[i] {
					t.Errorf("%s: %d deliveries crossed nodes, want %d", r.Name, r.CrossNode, tc.cross[i])
				}
				if r.Nodes > 1 && (r.Replicas < 1 || r.Placement == "") {
					t.Errorf("%s: %d nodes with replicas %d, placement %q; want both reported", r.Name, r.Nodes, r.Replicas, r.Placement)
				}
				if r.Decisions == nil || *r.Decisions < float64(r.Sent+r.Deliveries) {
					t.Errorf("%s: decisions %v; want every node's, at least one per publish and per delivery", r.Name, r.Decisions)
				}
			}
			want := tc.runs[1] + "/" + tc.runs[0]
			if rep.Ratio == nil || rep.Ratio.Compare != want || rep.Ratio.Throughput <= 0 || rep.Ratio.P99 <= 0 {
				t.Fatalf("ratio %+v; want %s with both ratios", rep.Ratio, want)
			}
			var text strings.Builder
			if err := rep.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{want, "cross-node delivered", "placement", "nodes"} {
				if !strings.Contains(text.String(), s) {
					t.Errorf("no %q in the table:\n%s", s, text.String())
				}
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

// TestQuietNATS: the NATS servers' errors of a bench cluster become
// warnings, and every other error of the nodes stays an error.
func TestQuietNATS(t *testing.T) {
	var buf strings.Builder
	log := slog.New(quietNATS{Handler: slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError})})
	log.With("component", "nats").Error("Error trying to connect to route")
	if buf.Len() != 0 {
		t.Fatalf("a NATS route error shown at level error: %s", buf.String())
	}
	log.With("component", "gateway").Error("gateway failed")
	log.Error("bench failed")
	if got := strings.Count(buf.String(), "level=ERROR"); got != 2 {
		t.Fatalf("%d errors shown, want the gateway's and the bench's:\n%s", got, buf.String())
	}
	buf.Reset()
	warn := slog.New(quietNATS{Handler: slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})})
	warn.With("component", "nats").WithGroup("g").Error("route")
	if !strings.Contains(buf.String(), "level=WARN") {
		t.Fatalf("a NATS error not shown as a warning at level warn: %q", buf.String())
	}
}
