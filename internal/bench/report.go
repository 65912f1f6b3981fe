package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
)

// Report is the outcome of a bench: one Result per run, and when two ran
// the ratio of the second to the first (default policy to allow-all, the
// cluster to a single node, or cross-node to same-node placement).
type Report struct {
	Settings Settings `json:"settings"`
	Runs     []Result `json:"runs"`
	Ratio    *Ratio   `json:"ratio,omitempty"`
}

// Settings is the configuration of a bench and the machine it ran on.
type Settings struct {
	Publishers    int    `json:"publishers"`
	Subscribers   int    `json:"subscribers"`
	Messages      int    `json:"messages"`
	QoS           int    `json:"qos"`
	PayloadBytes  int    `json:"payload_bytes"`
	Rate          int    `json:"rate"` // messages/s for all publishers; 0: unlimited
	Policy        string `json:"policy"`
	DurationLimit string `json:"duration_limit"`
	Storage       string `json:"storage"`
	Persistent    bool   `json:"persistent_subscribers"`
	Nodes         int    `json:"nodes"`
	NodesCompare  bool   `json:"nodes_compare"`
	Placement     string `json:"placement"`
	GoVersion     string `json:"go_version"`
	GOMAXPROCS    int    `json:"gomaxprocs"`
	NumCPU        int    `json:"num_cpu"`
}

func settingsOf(cfg Config) Settings {
	return Settings{
		Publishers:    cfg.Publishers,
		Subscribers:   cfg.Subscribers,
		Messages:      cfg.Messages,
		QoS:           cfg.QoS,
		PayloadBytes:  cfg.Payload,
		Rate:          cfg.Rate,
		Policy:        string(cfg.Policy),
		DurationLimit: cfg.DurationLimit.String(),
		Storage:       string(cfg.Storage),
		Persistent:    cfg.Persistent,
		Nodes:         cfg.Nodes,
		NodesCompare:  cfg.NodesCompare,
		Placement:     string(cfg.Placement),
		GoVersion:     runtime.Version(),
		GOMAXPROCS:    runtime.GOMAXPROCS(0),
		NumCPU:        runtime.NumCPU(),
	}
}

// Result is one run: one gateway or cluster, one policy, the whole load.
//
// The clock runs from the first publish to the last first delivery.
// Messages/s counts a message once it reached every subscriber
// (deliveries/s divided by the subscribers); deliveries/s counts each
// message at each subscriber once. Allocations are those of the whole
// process, gateway and bench clients together, per message sent.
type Result struct {
	// Name tells the run from the other one it is compared with.
	Name           string `json:"name"`
	Policy         string `json:"policy"`
	PolicyRevision string `json:"policy_revision"`
	// Nodes is the number of gateways: 1, or the nodes of a cluster, with
	// Replicas the JetStream replicas of its state and Placement how the
	// clients were spread over the nodes.
	Nodes     int    `json:"nodes"`
	Replicas  int    `json:"replicas,omitempty"`
	Placement string `json:"placement,omitempty"`

	Sent               int64 `json:"sent"`
	Deliveries         int64 `json:"deliveries"`
	ExpectedDeliveries int64 `json:"expected_deliveries"`
	// Lost is expected deliveries that did not arrive by the end of the
	// run; Duplicates are second and later deliveries of one message to
	// one subscriber.
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"`
	// Foreign counts payloads no publisher of the run sent (always 0
	// unless something corrupts messages).
	Foreign int64 `json:"foreign"`
	// CrossNode counts the first deliveries to a subscriber on another
	// node than the message's publisher.
	CrossNode int64 `json:"cross_node_deliveries"`
	// MissedSlots are sends the rate asked for that a publisher was too
	// busy to make: the rate was not sustained.
	MissedSlots int64 `json:"missed_slots"`
	// StoppedByLimit is true when the duration limit ended publishing or
	// delivery before the run was complete.
	StoppedByLimit bool `json:"stopped_by_duration_limit"`

	ElapsedSeconds   float64 `json:"elapsed_seconds"`
	MessagesPerSec   float64 `json:"messages_per_second"`
	DeliveriesPerSec float64 `json:"deliveries_per_second"`
	// PublishRate is messages sent per second while publishing.
	PublishRate float64 `json:"publish_rate"`
	Latency     Latency `json:"latency_us"`

	// Decisions made by the gateway during the run (every action,
	// cached or not), from its metrics; nil if they were not available.
	Decisions       *float64 `json:"decisions,omitempty"`
	DecisionsPerSec float64  `json:"decisions_per_second,omitempty"`
	// CacheHitRatio is the share of decisions the decision cache answered.
	CacheHitRatio *float64 `json:"decision_cache_hit_ratio,omitempty"`

	AllocsPerMessage float64 `json:"allocs_per_message"`
	BytesPerMessage  float64 `json:"bytes_per_message"`
}

// Latency is end-to-end delivery latency, publish call to receipt, in
// microseconds; quantiles are within 1.6%, the maximum exact.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Ratio compares the second run with the first, named by Compare:
// "default/allow-all" (the price of the policy), "N nodes/1 node" (of the
// cluster) or "cross/same" (of delivering across nodes). A throughput
// ratio of 0.5 is half the messages/s, a p99 ratio of 3 a tail three times
// as long.
type Ratio struct {
	Compare    string  `json:"compare"`
	Throughput float64 `json:"throughput"`
	P99        float64 `json:"p99"`
}

func ratioOf(runs []Result) *Ratio {
	if len(runs) != 2 {
		return nil
	}
	base, def := &runs[0], &runs[1]
	r := &Ratio{Compare: def.Name + "/" + base.Name}
	if base.MessagesPerSec > 0 {
		r.Throughput = def.MessagesPerSec / base.MessagesPerSec
	}
	if base.Latency.P99 > 0 {
		r.P99 = def.Latency.P99 / base.Latency.P99
	}
	return r
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report as a table, one column per run.
func (r *Report) WriteText(w io.Writer) error {
	s := r.Settings
	rate := "unlimited"
	if s.Rate > 0 {
		rate = fmt.Sprintf("%d msgs/s", s.Rate)
	}
	fmt.Fprintf(w, "ztgate bench: %d publishers -> %d subscribers, %d messages, QoS %d, %d-byte payload, rate %s\n",
		s.Publishers, s.Subscribers, s.Messages, s.QoS, s.PayloadBytes, rate)
	fmt.Fprintf(w, "storage %s, persistent subscribers %v", s.Storage, s.Persistent)
	if s.Nodes > 1 {
		fmt.Fprintf(w, ", %d-node cluster on loopback, placement %s", s.Nodes, s.Placement)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%s, GOMAXPROCS %d, %d CPUs; allocations are the whole process' per message sent\n\n",
		s.GoVersion, s.GOMAXPROCS, s.NumCPU)

	tw := tabwriter.NewWriter(w, 0, 0, 0, ' ', tabwriter.AlignRight)
	// Every label has the same width, so right alignment leaves the
	// labels flush left and the figures flush right; the figures carry
	// their own separating spaces.
	const labelWidth = 20
	label := func(s string) string { return fmt.Sprintf("%-*s", labelWidth, s) }
	head := []string{label("run")}
	cluster := false
	for _, run := range r.Runs {
		head = append(head, "  "+run.Name)
		cluster = cluster || run.Nodes > 1
	}
	if r.Ratio != nil {
		head = append(head, "  "+r.Ratio.Compare)
	}
	row := func(name string, cell func(Result) string, ratio string) {
		cols := []string{label(name)}
		for _, run := range r.Runs {
			cols = append(cols, "  "+cell(run))
		}
		if r.Ratio != nil {
			cols = append(cols, "  "+ratio)
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	}
	var thr, p99 string
	if r.Ratio != nil {
		thr, p99 = fmt.Sprintf("%.2fx", r.Ratio.Throughput), fmt.Sprintf("%.2fx", r.Ratio.P99)
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	row("policy", func(x Result) string { return x.Policy }, "")
	row("policy revision", func(x Result) string { return shortRev(x.PolicyRevision) }, "")
	if cluster {
		row("nodes", nodesCell, "")
		row("placement", func(x Result) string { return cmp.Or(x.Placement, "-") }, "")
	}
	row("messages/s", func(x Result) string { return count(x.MessagesPerSec) }, thr)
	row("deliveries/s", func(x Result) string { return count(x.DeliveriesPerSec) }, "")
	row("publish rate/s", func(x Result) string { return count(x.PublishRate) }, "")
	row("latency p50", func(x Result) string { return latency(x.Latency.P50) }, "")
	row("latency p90", func(x Result) string { return latency(x.Latency.P90) }, "")
	row("latency p99", func(x Result) string { return latency(x.Latency.P99) }, p99)
	row("latency max", func(x Result) string { return latency(x.Latency.Max) }, "")
	row("sent", func(x Result) string { return fmt.Sprint(x.Sent) }, "")
	row("deliveries", func(x Result) string { return fmt.Sprintf("%d/%d", x.Deliveries, x.ExpectedDeliveries) }, "")
	row("lost", func(x Result) string { return fmt.Sprint(x.Lost) }, "")
	row("duplicates", func(x Result) string { return fmt.Sprint(x.Duplicates) }, "")
	if cluster {
		row("cross-node delivered", func(x Result) string {
			if x.Deliveries == 0 {
				return fmt.Sprint(x.CrossNode)
			}
			return fmt.Sprintf("%d (%.0f%%)", x.CrossNode, 100*float64(x.CrossNode)/float64(x.Deliveries))
		}, "")
	}
	if s.Rate > 0 {
		row("missed rate slots", func(x Result) string { return fmt.Sprint(x.MissedSlots) }, "")
	}
	row("decisions/s", func(x Result) string {
		if x.Decisions == nil {
			return "n/a"
		}
		return count(x.DecisionsPerSec)
	}, "")
	row("decisions/message", func(x Result) string {
		if x.Decisions == nil || x.Sent == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", *x.Decisions/float64(x.Sent))
	}, "")
	row("decision cache hits", func(x Result) string {
		if x.CacheHitRatio == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.1f%%", 100**x.CacheHitRatio)
	}, "")
	row("allocs/message", func(x Result) string { return fmt.Sprintf("%.1f", x.AllocsPerMessage) }, "")
	row("bytes/message", func(x Result) string { return fmt.Sprintf("%.0f", x.BytesPerMessage) }, "")
	row("elapsed", func(x Result) string { return fmt.Sprintf("%.2fs", x.ElapsedSeconds) }, "")
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, run := range r.Runs {
		if run.StoppedByLimit {
			fmt.Fprintf(w, "\n%s: stopped by the duration limit (%s): %d of %d messages sent, %d of %d deliveries made; raise --duration-limit or lower --messages\n",
				run.Name, s.DurationLimit, run.Sent, s.Messages, run.Deliveries, run.ExpectedDeliveries)
		}
	}
	return nil
}

// nodesCell is a run's nodes, and the replicas of a cluster's state.
func nodesCell(x Result) string {
	if x.Nodes <= 1 {
		return "1"
	}
	return fmt.Sprintf("%d, R%d", x.Nodes, x.Replicas)
}

func shortRev(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// count formats a rate with thousands separators.
func count(v float64) string {
	n := int64(v + 0.5)
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// latency formats microseconds in the unit that suits them.
func latency(us float64) string {
	switch {
	case us >= 1e6:
		return fmt.Sprintf("%.2f s", us/1e6)
	case us >= 1e3:
		return fmt.Sprintf("%.2f ms", us/1e3)
	}
	return fmt.Sprintf("%.0f µs", us)
}
