package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy"
)

// denyLines returns the full "gateway: denied" lines of logs that contain
// every one of attrs, and the summary lines of repeated denials that do.
func denyLines(logs string, attrs ...string) (full, summaries []string) {
	for _, line := range strings.Split(logs, "\n") {
		match := true
		for _, a := range attrs {
			if !strings.Contains(line, a) {
				match = false
				break
			}
		}
		switch {
		case !match:
		case strings.Contains(line, `msg="gateway: denied"`):
			full = append(full, line)
		case strings.Contains(line, `msg="gateway: denied (repeated)"`):
			summaries = append(summaries, line)
		}
	}
	return full, summaries
}

var countRE = regexp.MustCompile(`\bcount=(\d+)`)

// summed is the total count carried by summary lines.
func summed(t *testing.T, summaries []string) int {
	t.Helper()
	n := 0
	for _, line := range summaries {
		m := countRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("summary line without a count: %s", line)
		}
		c, _ := strconv.Atoi(m[1])
		n += c
	}
	return n
}

// Item: one session repeating a denial cannot flood the gateway's log. The
// first denial of a kind is logged in full, the repeats are counted into a
// summary line written when the session closes; a different denial (topic
// or reason) gets its own full line (positive control).
func TestRepeatedDenialsAggregated(t *testing.T) {
	e := newEnv(t, engine(t))
	// The interval outlasts the test, so the count is exact: every repeat
	// is counted, none starts a new interval.
	e.gw.denials.interval.Store(int64(24 * time.Hour))
	c := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	const n = 1000
	const forged = "devices/sensor-2/telemetry/forged"
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		if _, err := c.Publish(ctx, &paho.Publish{Topic: forged, QoS: 0, Payload: []byte("x")}); err != nil {
			cancel()
			t.Fatalf("publish: %v", err)
		}
		cancel()
	}
	// Different kinds: another topic, another action, and a refusal the
	// gateway makes on its own (a server filter) with its own reason.
	c.publish(t, &paho.Publish{Topic: "devices/sensor-3/state", QoS: 1, Payload: []byte("y")})
	c.subscribe(t, sub("devices/#", 0), sub("$SYS/#", 0))
	// Positive control on the same path: an allowed publish is not logged
	// as denied, and its PUBACK shows every earlier PUBLISH was handled.
	if code := c.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte("ok")}); code != 0 {
		t.Fatalf("allowed publish: %#x", code)
	}

	full, sums := denyLines(e.logs.String(), "topic="+forged)
	if len(full) != 1 || len(sums) != 0 {
		t.Fatalf("before the session ends: %d full lines, %d summaries for %d identical denials; want 1 and 0",
			len(full), len(sums), n)
	}
	for _, other := range []string{"topic=devices/sensor-3/state", "filter=devices/#", "filter=$SYS/#"} {
		if f, _ := denyLines(e.logs.String(), other); len(f) != 1 {
			t.Errorf("%s: %d full lines, want its own one", other, len(f))
		}
	}
	if f, _ := denyLines(e.logs.String(), "topic=devices/sensor-1/state"); len(f) != 0 {
		t.Error("the allowed publish was logged as denied")
	}

	_ = c.Disconnect(&paho.Disconnect{})
	poll(t, "the summary line", func() bool {
		_, sums := denyLines(e.logs.String(), "topic="+forged)
		return len(sums) > 0
	})
	full, sums = denyLines(e.logs.String(), "topic="+forged)
	if len(full) != 1 || len(sums) != 1 || summed(t, sums) != n-1 {
		t.Fatalf("%d full lines, summaries %q; want 1 full line and one summary with count=%d", len(full), sums, n-1)
	}
	for _, attr := range []string{"action=publish", "spiffe_id=spiffe://example.org/device/sensor-1", "client_id=sensor-1", "reasons="} {
		if !strings.Contains(sums[0], attr) {
			t.Errorf("summary line lacks %s: %s", attr, sums[0])
		}
	}
}

// Item: the summary is also written when the interval ends while the
// session goes on and says nothing more: the gateway's one timer writes it.
func TestRepeatedDenialsSummarizedWhenTheIntervalEnds(t *testing.T) {
	g := newIdleGateway(t, &recorder{allow: func(*policy.Input) bool { return false }})
	logs := &testpki.LogBuffer{}
	g.log = slog.New(slog.NewTextHandler(logs, nil))
	g.denials.interval.Store(int64(200 * time.Millisecond))
	deny := func(cl *mqtt.Client) {
		_, _ = g.hook.OnPublish(cl, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName:   "devices/sensor-2/telemetry/forged",
		})
	}
	// Three denials in a row: one full line, two counted. A machine slow
	// enough to let the interval pass between two of them counts fewer;
	// then the round is tried again with a new session.
	var s *session
	for round := 0; ; round++ {
		cl, rs := g.addSession(fmt.Sprintf("sensor-%d", round), nil, 5)
		for range 3 {
			deny(cl)
		}
		rs.denials.mu.Lock()
		counted := rs.denials.kinds[0].count
		rs.denials.mu.Unlock()
		if counted == 2 {
			s = rs
			break
		}
		if round == 5 {
			t.Fatalf("never counted two repeats in a row (%d)", counted)
		}
	}
	if !g.denials.armed.Load() {
		t.Fatal("the summary timer is not armed")
	}
	client := "client_id=" + s.clientID + " "
	poll(t, "the summary, written by the timer", func() bool {
		_, sums := denyLines(logs.String(), client)
		return len(sums) == 1 && summed(t, sums) == 2
	})
	// The next denial after the interval is logged in full again.
	full, _ := denyLines(logs.String(), client)
	deny(s.cl)
	if again, _ := denyLines(logs.String(), client); len(again) != len(full)+1 {
		t.Fatalf("%d full lines after the interval, want %d", len(again), len(full)+1)
	}
}

// Each session tracks a bounded number of kinds; the rest are counted
// together, so a client varying its topics cannot grow the gateway's
// memory or its log beyond that.
func TestDenialKindsBounded(t *testing.T) {
	g := newIdleGateway(t, &recorder{allow: func(*policy.Input) bool { return false }})
	logs := &testpki.LogBuffer{}
	g.log = slog.New(slog.NewTextHandler(logs, nil))
	g.denials.interval.Store(int64(24 * time.Hour))
	cl, s := g.addSession("sensor-1", nil, 5)
	const topics = 3 * denyKinds
	for i := range topics {
		for range 3 {
			_, _ = g.hook.OnPublish(cl, packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName:   "devices/sensor-1/telemetry/" + strconv.Itoa(i),
			})
		}
	}
	if n := len(s.denials.kinds); n > denyKinds {
		t.Fatalf("%d kinds tracked, want at most %d", n, denyKinds)
	}
	g.flushDenials(s, true)
	full, sums := denyLines(logs.String())
	// One full line per tracked kind plus one for the first denial counted
	// with the rest; everything else is in the counts.
	if len(full) != denyKinds+1 || len(full)+summed(t, sums) != 3*topics {
		t.Fatalf("%d full lines and a count of %d for %d denials of %d topics", len(full), summed(t, sums), 3*topics, topics)
	}
}
