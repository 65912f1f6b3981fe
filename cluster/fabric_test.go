package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/testcluster"
)

// quiet is how long a test waits to see that nothing more arrives.
const quiet = 300 * time.Millisecond

func newFabric(t testing.TB, n *cluster.Node, opts cluster.FabricOptions) *cluster.Fabric {
	t.Helper()
	return newFabricNamed(t, n, n.Name(), opts)
}

func newFabricNamed(t testing.TB, n *cluster.Node, name string, opts cluster.FabricOptions) *cluster.Fabric {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	f, err := cluster.NewFabric(ctx, n.JetStream(), n.Conn(), name, opts)
	if err != nil {
		t.Fatalf("NewFabric %s: %v", name, err)
	}
	return f
}

// inbox collects what Run delivers.
type inbox struct {
	ch     chan cluster.Message
	cancel context.CancelFunc
	done   chan error
}

// run starts f.Run until the test ends (or stop).
func run(t testing.TB, f *cluster.Fabric) *inbox {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &inbox{ch: make(chan cluster.Message, 1024), cancel: cancel, done: make(chan error, 1)}
	go func() {
		in.done <- f.Run(ctx, func(m cluster.Message) error {
			in.ch <- m
			return nil
		})
	}()
	t.Cleanup(in.stop)
	return in
}

func (in *inbox) stop() {
	in.cancel()
	select {
	case <-in.done:
	case <-time.After(opTimeout):
	}
}

func (in *inbox) next(t testing.TB) cluster.Message {
	t.Helper()
	select {
	case m := <-in.ch:
		return m
	case <-time.After(opTimeout):
		t.Fatal("no message delivered")
		return cluster.Message{}
	}
}

func (in *inbox) none(t testing.TB) {
	t.Helper()
	select {
	case m := <-in.ch:
		t.Fatalf("unexpected message %q from %s", m.Topic, m.Origin)
	case <-time.After(quiet):
	}
}

func publish(t testing.TB, f *cluster.Fabric, m cluster.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := f.Publish(ctx, m); err != nil {
		t.Fatalf("Publish %s: %v", m.Topic, err)
	}
}

func fullMessage(topic string) cluster.Message {
	return cluster.Message{
		Topic:           topic,
		Payload:         []byte("21.5 \x00 C"),
		QoS:             1,
		Publisher:       "spiffe://example.org/device/b",
		PayloadFormat:   1,
		MessageExpiry:   3600,
		ContentType:     "text/plain",
		ResponseTopic:   "devices/b/replies",
		CorrelationData: []byte{0, 1, 2},
		UserProperties:  []cluster.UserProperty{{Key: "k", Value: "v"}, {Key: "k", Value: "v2"}, {Key: "", Value: ""}},
	}
}

// Three nodes: a message published on b reaches c once, with everything it
// carries; b's own consumer skips it; a's message reaches b (positive
// control for b's Run). QoS 0 travels too.
func TestFabricDeliversToOtherNodesOnly(t *testing.T) {
	tc := testcluster.Start(t, 3)
	opts := cluster.FabricOptions{Replicas: 3}
	fa, fb, fc := newFabric(t, tc.Nodes[0], opts), newFabric(t, tc.Nodes[1], opts), newFabric(t, tc.Nodes[2], opts)
	inB, inC := run(t, fb), run(t, fc)

	// MQTT topics may hold what NATS subjects may not.
	want := fullMessage("devices/b/telemetry/a.b c*>#")
	publish(t, fb, want)
	got := inC.next(t)
	want.Origin = tc.Nodes[1].Name()
	if got.MessageExpiry < 3599 || got.MessageExpiry > 3600 {
		t.Errorf("expiry %d, want about 3600", got.MessageExpiry)
	}
	got.MessageExpiry = want.MessageExpiry
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("c received\n%+v\nwant\n%+v", got, want)
	}

	publish(t, fa, cluster.Message{Topic: "from/a", Payload: []byte("x"), QoS: 1})
	if m := inB.next(t); m.Topic != "from/a" || m.Origin != tc.Nodes[0].Name() {
		t.Fatalf("b received %q from %q first, want from/a from a (b's own message must be skipped)", m.Topic, m.Origin)
	}
	if m := inC.next(t); m.Topic != "from/a" {
		t.Fatalf("c received %q, want from/a", m.Topic)
	}

	publish(t, fa, cluster.Message{Topic: "qos0", Payload: []byte("y")})
	if m := inC.next(t); m.Topic != "qos0" || m.QoS != 0 || string(m.Payload) != "y" {
		t.Fatalf("c received %+v, want the QoS 0 message", m)
	}
	if m := inB.next(t); m.Topic != "qos0" {
		t.Fatalf("b received %q, want qos0", m.Topic)
	}
	inB.none(t)
	inC.none(t)
	if fa.Dropped() != 0 {
		t.Fatalf("dropped %d QoS 0 messages", fa.Dropped())
	}
}

// A QoS 1 publish returns only once the stream stored it: with two of three
// nodes down there is no quorum, and Publish fails within its deadline with
// ErrNoQuorum rather than pretending.
func TestFabricQoS1NeedsQuorum(t *testing.T) {
	tc := testcluster.Start(t, 3)
	f := newFabric(t, tc.Nodes[0], cluster.FabricOptions{Replicas: 3})
	// Positive control.
	publish(t, f, cluster.Message{Topic: "t", Payload: []byte("ok"), QoS: 1})

	tc.Stop(1)
	tc.Stop(2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := f.Publish(ctx, cluster.Message{Topic: "t", Payload: []byte("lost"), QoS: 1})
	if !errors.Is(err, cluster.ErrNoQuorum) || !strings.HasPrefix(err.Error(), "cluster: ") {
		t.Fatalf("Publish without quorum = %v, want a cluster: error matching ErrNoQuorum", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if err := f.SetRetained(ctx2, cluster.Message{Topic: "t", Payload: []byte("r")}); !errors.Is(err, cluster.ErrNoQuorum) {
		t.Fatalf("SetRetained without quorum = %v, want ErrNoQuorum", err)
	}
}

// A node's consumer is durable: what is published while its Run is stopped,
// or while the node itself is down, is delivered when it runs again, in
// order; a brand-new node starts at new messages.
func TestFabricCatchesUp(t *testing.T) {
	tc := testcluster.Start(t, 3)
	opts := cluster.FabricOptions{Replicas: 3}
	fa, fc := newFabric(t, tc.Nodes[0], opts), newFabric(t, tc.Nodes[2], opts)

	in := run(t, fc)
	publish(t, fa, cluster.Message{Topic: "m1", QoS: 1, Payload: []byte("1")})
	if m := in.next(t); m.Topic != "m1" {
		t.Fatalf("got %q, want m1", m.Topic)
	}
	in.stop()
	publish(t, fa, cluster.Message{Topic: "m2", QoS: 1, Payload: []byte("2")})
	publish(t, fa, cluster.Message{Topic: "m3", QoS: 0, Payload: []byte("3")})
	in = run(t, fc)
	for _, want := range []string{"m2", "m3"} {
		if m := in.next(t); m.Topic != want {
			t.Fatalf("after the restart of Run: got %q, want %q", m.Topic, want)
		}
	}
	in.stop()

	// The node itself goes down and comes back.
	tc.Stop(2)
	publish(t, fa, cluster.Message{Topic: "m4", QoS: 1, Payload: []byte("4")})
	tc.Restart(2)
	tc.WaitJetStream(formTimeout, 2)
	fc = newFabric(t, tc.Nodes[2], opts)
	in = run(t, fc)
	if m := in.next(t); m.Topic != "m4" {
		t.Fatalf("after the node's restart: got %q, want m4", m.Topic)
	}

	// A new node does not replay history.
	late := run(t, newFabricNamed(t, tc.Nodes[1], "late", opts))
	late.none(t)
	publish(t, fa, cluster.Message{Topic: "m5", QoS: 1, Payload: []byte("5")})
	m := late.next(t)
	if m.Topic == "m4" {
		// DeliverNew starts after the last message the consumer's
		// leader has: a leader on the node just restarted may not have
		// caught up with m4 yet. History before that is never replayed.
		m = late.next(t)
	}
	if m.Topic != "m5" {
		t.Fatalf("new node: got %q, want m5 (and nothing older)", m.Topic)
	}
	if m := in.next(t); m.Topic != "m5" {
		t.Fatalf("c: got %q, want m5", m.Topic)
	}
}

// A message whose expiry passes in the stream is not delivered; one still
// valid is, with what is left of its expiry.
func TestFabricDropsExpired(t *testing.T) {
	tc := testcluster.Start(t, 3)
	opts := cluster.FabricOptions{Replicas: 3}
	fa, fc := newFabric(t, tc.Nodes[0], opts), newFabric(t, tc.Nodes[2], opts)
	publish(t, fa, cluster.Message{Topic: "short", QoS: 1, MessageExpiry: 1, Payload: []byte("x")})
	publish(t, fa, cluster.Message{Topic: "long", QoS: 1, MessageExpiry: 100, Payload: []byte("y")})
	time.Sleep(1100 * time.Millisecond) // the first one's expiry, with no Run consuming
	in := run(t, fc)
	m := in.next(t)
	if m.Topic != "long" || m.MessageExpiry == 0 || m.MessageExpiry > 99 {
		t.Fatalf("got %q with expiry %d, want long with less than 100 s left (short expired)", m.Topic, m.MessageExpiry)
	}
	in.none(t)
}

func loadRetained(t testing.TB, f *cluster.Fabric) map[string]cluster.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	ms, err := f.LoadRetained(ctx)
	if err != nil {
		t.Fatalf("LoadRetained: %v", err)
	}
	out := make(map[string]cluster.Message, len(ms))
	for _, m := range ms {
		if _, dup := out[m.Topic]; dup {
			t.Fatalf("topic %q loaded twice", m.Topic)
		}
		out[m.Topic] = m
	}
	return out
}

func setRetained(t testing.TB, f *cluster.Fabric, topic, payload, publisher string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return f.SetRetained(ctx, cluster.Message{Topic: topic, Payload: []byte(payload), QoS: 1, Publisher: publisher})
}

func TestFabricRetained(t *testing.T) {
	tc := testcluster.Start(t, 3)
	opts := cluster.FabricOptions{Replicas: 3}
	fa, fb, fc := newFabric(t, tc.Nodes[0], opts), newFabric(t, tc.Nodes[1], opts), newFabric(t, tc.Nodes[2], opts)
	if got := loadRetained(t, fc); len(got) != 0 {
		t.Fatalf("empty stream loaded %d messages", len(got))
	}
	long := strings.Repeat("x/", 300) // longer than one subject token holds
	const pa, pb = "spiffe://example.org/device/a", "spiffe://example.org/device/b"
	steps := []struct {
		f                         *cluster.Fabric
		topic, payload, publisher string
	}{
		{fa, "s/1", "v1", pa},
		{fb, "s/1", "v2", pb}, // overwrites
		{fc, "s/2 a.b*>", "w", pa},
		{fa, long, "l", pa},
		{fb, "gone", "g", pb},
		{fa, "gone", "", ""}, // an empty payload deletes
	}
	for _, s := range steps {
		if err := setRetained(t, s.f, s.topic, s.payload, s.publisher); err != nil {
			t.Fatalf("SetRetained %q: %v", s.topic, err)
		}
	}
	got := loadRetained(t, fc)
	want := map[string]string{"s/1": "v2", "s/2 a.b*>": "w", long: "l"}
	if len(got) != len(want) {
		t.Fatalf("loaded %d retained messages, want %d: %v", len(got), len(want), got)
	}
	for topic, p := range want {
		if m, ok := got[topic]; !ok || string(m.Payload) != p || !m.Retain {
			t.Fatalf("retained %q = %+v, want payload %q", topic, m, p)
		}
	}
	if got["s/1"].Publisher != pb || got["s/1"].Origin != tc.Nodes[1].Name() {
		t.Fatalf("s/1 publisher %q origin %q, want b's", got["s/1"].Publisher, got["s/1"].Origin)
	}

	// ClearRetained only clears the named publisher's message.
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := fa.ClearRetained(ctx, "s/1", pa); err != nil {
		t.Fatal(err)
	}
	if _, ok := loadRetained(t, fb)["s/1"]; !ok {
		t.Fatal("ClearRetained of a's cleared b's message")
	}
	if err := fa.ClearRetained(ctx, "s/1", pb); err != nil {
		t.Fatal(err)
	}
	if err := fa.ClearRetained(ctx, long, ""); err != nil {
		t.Fatal(err)
	}
	got = loadRetained(t, fb)
	if _, ok := got["s/1"]; ok || len(got) != 1 {
		t.Fatalf("after clearing: %v, want only %q", got, "s/2 a.b*>")
	}
	if err := fa.ClearRetained(ctx, "never", ""); err != nil {
		t.Fatalf("clearing a topic with nothing retained: %v", err)
	}
}

// The retained set is bounded: a new topic beyond MaxRetained is refused,
// a topic already held can still be replaced and cleared.
func TestFabricRetainedLimit(t *testing.T) {
	tc := testcluster.Start(t, 3)
	f := newFabric(t, tc.Nodes[0], cluster.FabricOptions{Replicas: 3, MaxRetained: 2})
	for i := range 2 {
		if err := setRetained(t, f, fmt.Sprint("t", i), "v", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := setRetained(t, f, "t2", "v", ""); err == nil || !strings.HasPrefix(err.Error(), "cluster: ") {
		t.Fatalf("third topic: %v, want a cluster: error", err)
	}
	if err := setRetained(t, f, "t0", "v2", ""); err != nil {
		t.Fatalf("replacing a held topic at the limit: %v", err)
	}
	if err := setRetained(t, f, "t1", "", ""); err != nil {
		t.Fatal(err)
	}
	if err := setRetained(t, f, "t2", "v", ""); err != nil {
		t.Fatalf("new topic after a clear: %v", err)
	}
	got := loadRetained(t, f)
	if len(got) != 2 || !bytes.Equal(got["t0"].Payload, []byte("v2")) {
		t.Fatalf("retained %v", got)
	}
}

func TestNewFabricRefusesBadInput(t *testing.T) {
	tc := testcluster.Start(t, 2)
	n := tc.Nodes[0]
	for _, tt := range []struct {
		name string
		node string
		opts cluster.FabricOptions
	}{
		{"empty node", "", cluster.FabricOptions{}},
		{"dot in node", "a.b", cluster.FabricOptions{}},
		{"wildcard node", "a>", cluster.FabricOptions{}},
		{"negative replicas", "a", cluster.FabricOptions{Replicas: -1}},
		{"negative age", "a", cluster.FabricOptions{MaxAge: -time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			_, err := cluster.NewFabric(ctx, n.JetStream(), n.Conn(), tt.node, tt.opts)
			if err == nil || !strings.HasPrefix(err.Error(), "cluster: ") {
				t.Fatalf("NewFabric = %v, want a cluster: error", err)
			}
		})
	}
	// Positive control.
	newFabricNamed(t, n, "a", cluster.FabricOptions{Replicas: 2})
}

// The publish benchmarks run on a 3-node cluster with 3 replicas; the
// baseline is a core NATS request-reply between two nodes on the same
// kind of connection (one round trip, nothing stored).
func benchFabric(b *testing.B) (*testcluster.Cluster, *cluster.Fabric, cluster.Message) {
	tc := testcluster.Start(b, 3)
	f := newFabric(b, tc.Nodes[0], cluster.FabricOptions{Replicas: 3})
	return tc, f, cluster.Message{Topic: "devices/x/telemetry", Payload: bytes.Repeat([]byte("p"), 64),
		Publisher: "spiffe://example.org/device/x"}
}

func BenchmarkFabricPublishQoS1(b *testing.B) {
	_, f, m := benchFabric(b)
	m.QoS = 1
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := f.Publish(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFabricPublishQoS0(b *testing.B) {
	_, f, m := benchFabric(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = f.Publish(ctx, m) // a full outstanding window drops, as it would in service
	}
	b.ReportMetric(float64(f.Dropped()), "dropped")
}

func BenchmarkFabricBaselineCoreRequest(b *testing.B) {
	tc, _, m := benchFabric(b)
	sub, err := tc.Nodes[1].Conn().Subscribe("bench.echo", func(r *nats.Msg) { _ = r.Respond(nil) })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := tc.Nodes[1].Conn().Flush(); err != nil {
		b.Fatal(err)
	}
	nc := tc.Nodes[0].Conn()
	// The subscription's interest reaches node 0 over the route shortly.
	deadline := time.Now().Add(opTimeout)
	for _, err := nc.Request("bench.echo", nil, time.Second); err != nil; _, err = nc.Request("bench.echo", nil, time.Second) {
		if time.Now().After(deadline) {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := nc.Request("bench.echo", m.Payload, opTimeout); err != nil {
			b.Fatal(err)
		}
	}
}
