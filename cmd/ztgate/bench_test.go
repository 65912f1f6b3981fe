package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/bench"
)

// TestBenchJSON runs a tiny bench under both policies at QoS 1 and reads
// its JSON report: every message delivered once, both runs, the ratio.
// What it measured is not asserted: speed is for benchmarks.
func TestBenchJSON(t *testing.T) {
	out := ok(t, "bench", "--publishers", "1", "--subscribers", "1", "--messages", "200",
		"--policy", "both", "--qos", "1", "--json")
	var rep bench.Report
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("report is not the JSON of a bench.Report: %v\n%s", err, out)
	}
	if s := rep.Settings; s.Publishers != 1 || s.Subscribers != 1 || s.Messages != 200 || s.QoS != 1 || s.Policy != "both" {
		t.Fatalf("settings %+v do not echo the flags", s)
	}
	if len(rep.Runs) != 2 || rep.Runs[0].Policy != "allow-all" || rep.Runs[1].Policy != "default" {
		t.Fatalf("runs %+v; want allow-all, then default", rep.Runs)
	}
	for _, r := range rep.Runs {
		if r.Sent != 200 || r.Deliveries != 200 || r.Lost != 0 || r.Duplicates != 0 {
			t.Errorf("%s: sent %d, delivered %d, lost %d, duplicates %d; want 200, 200, 0, 0",
				r.Policy, r.Sent, r.Deliveries, r.Lost, r.Duplicates)
		}
		if r.PolicyRevision == "" || r.MessagesPerSec <= 0 || r.Latency.P99 <= 0 || r.Decisions == nil {
			t.Errorf("%s: revision %q, messages/s %v, p99 %v, decisions %v; want all reported",
				r.Policy, r.PolicyRevision, r.MessagesPerSec, r.Latency.P99, r.Decisions)
		}
	}
	if rep.Ratio == nil || rep.Ratio.Throughput <= 0 || rep.Ratio.P99 <= 0 {
		t.Fatalf("ratio %+v; want throughput and p99 ratios", rep.Ratio)
	}
}

// TestBenchTable reads the table: the rows the report promises, the ratio
// column only when both policies ran, and a paced run's missed slots.
func TestBenchTable(t *testing.T) {
	both := ok(t, "bench", "--publishers", "2", "--subscribers", "1", "--messages", "100", "--policy", "both")
	for _, want := range []string{"allow-all", "default/allow-all", "messages/s", "deliveries/s",
		"latency p50", "latency p90", "latency p99", "latency max", "lost", "duplicates",
		"decisions/s", "allocs/message", "policy revision"} {
		if !strings.Contains(both, want) {
			t.Errorf("no %q in the table:\n%s", want, both)
		}
	}
	if strings.Contains(both, "missed rate slots") {
		t.Errorf("an unpaced run reports missed rate slots:\n%s", both)
	}
	one := ok(t, "bench", "--publishers", "1", "--subscribers", "2", "--messages", "50", "--rate", "1000", "--policy", "default")
	if strings.Contains(one, "default/allow-all") || strings.Contains(one, "allow-all") {
		t.Errorf("a default-only run shows the allow-all baseline:\n%s", one)
	}
	for _, want := range []string{"rate 1000 msgs/s", "missed rate slots", "lost"} {
		if !strings.Contains(one, want) {
			t.Errorf("no %q in the table:\n%s", want, one)
		}
	}
}

// TestBenchClusterTable compares a single node with a two-node cluster at
// QoS 1 in one command: both runs complete, and the table names the
// comparison and counts the deliveries that crossed nodes.
func TestBenchClusterTable(t *testing.T) {
	out := ok(t, "bench", "--publishers", "2", "--subscribers", "2", "--messages", "200", "--qos", "1",
		"--nodes", "2", "--nodes-compare")
	for _, want := range []string{"2-node cluster on loopback, placement spread", "1 node", "2 nodes/1 node",
		"cross-node delivered", "200 (50%)", "messages/s", "latency p99"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the table:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^lost +0 +0 *$`).MatchString(out) {
		t.Errorf("a run lost messages at QoS 1:\n%s", out)
	}
}

func TestBenchBadFlags(t *testing.T) {
	for _, tc := range []struct {
		want string
		args []string
	}{
		{"--qos must be 0 or 1", []string{"--qos", "2"}},
		{"--publishers must be between", []string{"--publishers", "0"}},
		{"--subscribers must be between", []string{"--subscribers", "100000"}},
		{"--messages must be between", []string{"--messages", "-5"}},
		{"--payload must be between", []string{"--payload", "10"}},
		{"--rate must be between", []string{"--rate", "-1"}},
		{"--duration-limit must be positive", []string{"--duration-limit", "0s"}},
		{`--policy "none"`, []string{"--policy", "none"}},
		{"--log-level", []string{"--log-level", "loud"}},
		{"--nodes must be between 1 and 5, got 0", []string{"--nodes", "0"}},
		{"--nodes must be between 1 and 5, got 9", []string{"--nodes", "9"}},
		{"--nodes-compare compares a single node with a cluster", []string{"--nodes-compare"}},
		{"--placement both needs a cluster", []string{"--placement", "both"}},
		{"one at a time", []string{"--nodes", "3", "--placement", "both", "--policy", "both"}},
	} {
		t.Run(tc.want, func(t *testing.T) {
			failsWith(t, tc.want, append([]string{"bench"}, tc.args...)...)
		})
	}
	// A command line that does not parse exits 2.
	usageFails(t, `invalid argument "abc"`, "bench", "--messages", "abc")
	usageFails(t, "unknown flag", "bench", "--publisher", "3")
	usageFails(t, "unknown command", "bench", "extra")
	usageFails(t, `--placement "nowhere"`, "bench", "--nodes", "3", "--placement", "nowhere")
}

// TestBenchInterrupt stops a bench as Ctrl-C does: it ends at once with
// one line saying so.
func TestBenchInterrupt(t *testing.T) {
	// Paced to take 100 s unless stopped.
	b := runInBackground(t, "bench", "--publishers", "1", "--subscribers", "1", "--messages", "10000", "--rate", "100")
	b.waitFor(t, "bench: default policy")
	b.cancel()
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		t.Fatal("bench did not stop after interrupt")
	}
	assertOneLineError(t, result{code: b.code, stdout: b.out.String(), stderr: b.errb.String()}, "bench: interrupted", []string{"bench"})
}
