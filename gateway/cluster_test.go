package gateway

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/internal/testcluster"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// memHub is an in-memory cluster fabric for gateway tests: what one node
// forwards is delivered, in order, to every other node's DeliverRemote on
// a goroutine per node; the retained set is a map.
type memHub struct {
	fail      atomic.Bool  // every call fails, as without quorum
	forwarded atomic.Int64 // messages forwarded by all nodes

	mu       sync.Mutex
	queues   map[string]chan ClusterMessage
	retained map[string]ClusterMessage
	cleared  []string // topic + " " + publisher of each ClearRetained
}

func newMemHub() *memHub {
	return &memHub{queues: map[string]chan ClusterMessage{}, retained: map[string]ClusterMessage{}}
}

var errMemNoQuorum = errors.New("memhub: no quorum")

type memLink struct {
	hub  *memHub
	node string
}

func (h *memHub) link(node string) memLink { return memLink{hub: h, node: node} }

// attach delivers the other nodes' messages to gw until the test ends.
func (h *memHub) attach(t testing.TB, node string, gw *Gateway) {
	q := make(chan ClusterMessage, 1024)
	done := make(chan struct{})
	h.mu.Lock()
	h.queues[node] = q
	h.mu.Unlock()
	go func() {
		defer close(done)
		for m := range q {
			if err := gw.DeliverRemote(m); err != nil {
				t.Errorf("DeliverRemote on %s: %v", node, err)
			}
		}
	}()
	t.Cleanup(func() {
		h.mu.Lock()
		delete(h.queues, node)
		h.mu.Unlock()
		close(q)
		<-done
	})
}

func (l memLink) Forward(_ context.Context, m ClusterMessage) error {
	if l.hub.fail.Load() {
		return errMemNoQuorum
	}
	m.Origin = l.node
	m.Payload = slices.Clone(m.Payload) // the packet's buffer is mochi's
	l.hub.forwarded.Add(1)
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	for node, q := range l.hub.queues {
		if node != l.node {
			q <- m
		}
	}
	return nil
}

func (l memLink) SetRetained(_ context.Context, m ClusterMessage) error {
	if l.hub.fail.Load() {
		return errMemNoQuorum
	}
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	if len(m.Payload) == 0 {
		delete(l.hub.retained, m.Topic)
		return nil
	}
	m.Origin = l.node
	m.Payload = slices.Clone(m.Payload)
	l.hub.retained[m.Topic] = m
	return nil
}

func (l memLink) ClearRetained(_ context.Context, topic, publisher string) error {
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	l.hub.cleared = append(l.hub.cleared, topic+" "+publisher)
	if m, ok := l.hub.retained[topic]; ok && (publisher == "" || m.Publisher == publisher) {
		delete(l.hub.retained, topic)
	}
	return nil
}

func (l memLink) LoadRetained(context.Context) ([]ClusterMessage, error) {
	if l.hub.fail.Load() {
		return nil, errMemNoQuorum
	}
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	var out []ClusterMessage
	for _, m := range l.hub.retained {
		out = append(out, m)
	}
	return out, nil
}

func (h *memHub) retainedOf(topic string) (ClusterMessage, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m, ok := h.retained[topic]
	return m, ok
}

// clusterEnvs starts one gateway per decider, all on one CA and registry,
// linked by hub; the first is the env that enrolls devices.
func clusterEnvs(t *testing.T, hub *memHub, ds ...policy.Decider) []*env {
	t.Helper()
	names := []string{"a", "b", "c", "d"}
	var envs []*env
	for i, d := range ds {
		mod := func(c *Config) { c.Cluster = hub.link(names[i]) }
		var e *env
		if i == 0 {
			e = newEnvWith(t, d, mod)
		} else {
			e = envs[0].restartFrom(t, filepath.Join(t.TempDir(), brokerstore.FileName), d, mod)
		}
		hub.attach(t, names[i], e.gw)
		envs = append(envs, e)
	}
	return envs
}

// denyReceiveOn is the test policy with receives on one topic denied.
type denyReceiveOn struct {
	next  policy.Decider
	topic string
}

func (d denyReceiveOn) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	if in.Action == policy.ActionReceive && in.Topic == d.topic {
		return policy.Decision{Reasons: []string{"not on this node"}}
	}
	return d.next.Decide(ctx, in)
}

// A PUBLISH on b reaches a subscriber on c once, QoS 0 and 1, MQTT 5
// properties included; b's own subscriber gets it once too, and nothing is
// forwarded twice (no loop through DeliverRemote).
func TestClusterPublishReachesOtherNodes(t *testing.T) {
	hub := newMemHub()
	envs := clusterEnvs(t, hub, engine(t), engine(t), engine(t))
	a, b, c := envs[0], envs[1], envs[2]
	ctlCfg, devCfg := a.enroll("ctl", controllerLabels), a.enroll("dev", nil)

	subC := c.mustConnect(ctlCfg, "ctl-c")
	subC.subscribe(t, sub("devices/+/telemetry/#", 1))
	subB := b.mustConnect(ctlCfg, "ctl-b")
	subB.subscribe(t, sub("devices/+/telemetry/#", 1))

	pub := b.mustConnect(devCfg, "dev-b")
	expiry := uint32(600)
	props := &paho.PublishProperties{
		ContentType:     "text/plain",
		ResponseTopic:   "devices/dev/commands/reply",
		CorrelationData: []byte{1, 2, 3},
		MessageExpiry:   &expiry,
		User:            paho.UserProperties{{Key: "unit", Value: "C"}},
	}
	if r := pub.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/t", QoS: 1, Payload: []byte("21"), Properties: props}); r >= 0x80 {
		t.Fatalf("QoS 1 PUBACK %#x", r)
	}
	pub.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/q0", QoS: 0, Payload: []byte("0")})

	m := subC.expectOnly(t, "devices/dev/telemetry/t")
	p := m.Properties
	if string(m.Payload) != "21" || m.QoS != 1 || p == nil || p.ContentType != "text/plain" ||
		p.ResponseTopic != "devices/dev/commands/reply" || string(p.CorrelationData) != "\x01\x02\x03" ||
		p.MessageExpiry == nil || *p.MessageExpiry == 0 || *p.MessageExpiry > 600 || p.User.Get("unit") != "C" {
		t.Fatalf("c received %+v with %+v", m, p)
	}
	subC.expectOnly(t, "devices/dev/telemetry/q0")
	subB.expectOnly(t, "devices/dev/telemetry/t")
	subB.expectOnly(t, "devices/dev/telemetry/q0")
	subC.Msgs.ExpectNone(t, 300*time.Millisecond)
	subB.Msgs.ExpectNone(t, 0)
	if n := hub.forwarded.Load(); n != 2 {
		t.Fatalf("%d messages forwarded, want 2 (one per PUBLISH)", n)
	}
}

// Each delivery is decided on the subscriber's node: c's policy denies a
// topic that b's allows, so c's subscriber does not get it while b's does;
// an allowed topic reaches both (positive control).
func TestClusterDeliveryDecidedOnSubscriberNode(t *testing.T) {
	hub := newMemHub()
	const secret = "devices/dev/telemetry/secret"
	envs := clusterEnvs(t, hub, engine(t), engine(t), denyReceiveOn{next: engine(t), topic: secret})
	a, b, c := envs[0], envs[1], envs[2]
	ctlCfg, devCfg := a.enroll("ctl", controllerLabels), a.enroll("dev", nil)
	subC := c.mustConnect(ctlCfg, "ctl-c")
	subC.subscribe(t, sub("devices/+/telemetry/#", 1))
	subB := b.mustConnect(ctlCfg, "ctl-b")
	subB.subscribe(t, sub("devices/+/telemetry/#", 1))

	pub := b.mustConnect(devCfg, "dev")
	for _, topic := range []string{secret, "devices/dev/telemetry/ok"} {
		if r := pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("x")}); r >= 0x80 {
			t.Fatalf("%s: PUBACK %#x", topic, r)
		}
	}
	subB.expectOnly(t, secret)
	subB.expectOnly(t, "devices/dev/telemetry/ok")
	subC.expectOnly(t, "devices/dev/telemetry/ok") // and not the secret one before it
	subC.Msgs.ExpectNone(t, 300*time.Millisecond)
}

// A retained message set on a is given to a new subscriber on c, and it is
// known there as its publisher's: revoking the publisher clears c's copy,
// and the cluster's (ClearRetained with that publisher).
func TestClusterRetained(t *testing.T) {
	hub := newMemHub()
	envs := clusterEnvs(t, hub, engine(t), engine(t), engine(t))
	a, c := envs[0], envs[2]
	ctlCfg, devCfg := a.enroll("ctl", controllerLabels), a.enroll("dev", nil)
	pub := a.mustConnect(devCfg, "dev")
	if r := pub.publish(t, &paho.Publish{Topic: "devices/dev/state", QoS: 1, Retain: true, Payload: []byte("on")}); r >= 0x80 {
		t.Fatalf("PUBACK %#x", r)
	}
	devID := deviceID("dev").String()
	if m, ok := hub.retainedOf("devices/dev/state"); !ok || string(m.Payload) != "on" || m.Publisher != devID {
		t.Fatalf("cluster retained %+v, %v", m, ok)
	}
	poll(t, "retained on c", func() bool { return len(c.gw.RetainedMessages("#", 0)) == 1 })
	if got := c.gw.RetainedMessages("#", 0)[0]; got.SPIFFEID != devID {
		t.Fatalf("c's retained message is %+v, want it known as %s's", got, devID)
	}
	late := c.mustConnect(ctlCfg, "late")
	late.subscribe(t, sub("devices/+/state", 1))
	if m := late.expectOnly(t, "devices/dev/state"); string(m.Payload) != "on" || !m.Retain {
		t.Fatalf("late subscriber got %+v", m)
	}

	// A gateway that starts now loads the cluster's set.
	d := a.restartFrom(t, filepath.Join(t.TempDir(), brokerstore.FileName), engine(t),
		func(cfg *Config) { cfg.Cluster = hub.link("d") })
	if got := d.gw.RetainedMessages("#", 0); len(got) != 1 || got[0].SPIFFEID != devID {
		t.Fatalf("new node loaded %+v", got)
	}

	if _, err := a.reg.SetStatus("dev", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*env{a, c, d} {
		poll(t, "retained cleared", func() bool { return len(e.gw.RetainedMessages("#", 0)) == 0 })
	}
	poll(t, "cluster copy cleared", func() bool { _, ok := hub.retainedOf("devices/dev/state"); return !ok })
	hub.mu.Lock()
	cleared := slices.Clone(hub.cleared)
	hub.mu.Unlock()
	if !slices.Contains(cleared, "devices/dev/state "+devID) {
		t.Fatalf("ClearRetained calls %q, want one for the revoked publisher", cleared)
	}
}

// A QoS 1 PUBLISH the cluster did not store is not acknowledged as a
// success: MQTT 5 gets PUBACK 0x80, MQTT 3.1.1 is disconnected, and nobody
// receives it; with the link back the same PUBLISH goes through. QoS 0 is
// still delivered locally.
func TestClusterPublishLinkDown(t *testing.T) {
	hub := newMemHub()
	envs := clusterEnvs(t, hub, engine(t), engine(t))
	a, b := envs[0], envs[1]
	ctlCfg, devCfg := a.enroll("ctl", controllerLabels), a.enroll("dev", nil)
	subA := a.mustConnect(ctlCfg, "ctl-a")
	subA.subscribe(t, sub("devices/+/telemetry/#", 1))
	subB := b.mustConnect(ctlCfg, "ctl-b")
	subB.subscribe(t, sub("devices/+/telemetry/#", 1))
	pub := b.mustConnect(devCfg, "dev")

	hub.fail.Store(true)
	if r := pub.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/t", QoS: 1, Payload: []byte("x")}); r != codeClusterUnavailable.Code {
		t.Fatalf("PUBACK %#x with the cluster down, want %#x", r, codeClusterUnavailable.Code)
	}
	pub.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/q0", QoS: 0, Payload: []byte("y")})
	subB.expectOnly(t, "devices/dev/telemetry/q0")
	subB.Msgs.ExpectNone(t, 300*time.Millisecond)
	subA.Msgs.ExpectNone(t, 0)
	if !strings.Contains(b.logs.String(), "cluster did not take a PUBLISH") {
		t.Fatalf("no log line for the failure:\n%s", b.logs.String())
	}

	raw := b.dial311(devCfg)
	if code := raw.Connect(t, "dev-311"); code != 0 {
		t.Fatalf("CONNACK %d", code)
	}
	raw.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "devices/dev/telemetry/311", PacketID: 7, Payload: []byte("z")})
	raw.ExpectClosed(t)

	hub.fail.Store(false)
	if r := pub.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/t", QoS: 1, Payload: []byte("x")}); r >= 0x80 {
		t.Fatalf("PUBACK %#x with the cluster back", r)
	}
	subA.expectOnly(t, "devices/dev/telemetry/t")
	subB.expectOnly(t, "devices/dev/telemetry/t")
}

// A Last Will, sent by mochi without OnPublish, reaches the other nodes.
func TestClusterWillForwarded(t *testing.T) {
	hub := newMemHub()
	envs := clusterEnvs(t, hub, engine(t), engine(t))
	a, b := envs[0], envs[1]
	ctlCfg, devCfg := a.enroll("ctl", controllerLabels), a.enroll("dev", nil)
	subB := b.mustConnect(ctlCfg, "ctl-b")
	subB.subscribe(t, sub("devices/+/state", 1))
	dev, _, err := a.connect(devCfg, &paho.Connect{ClientID: "dev", CleanStart: true, WillMessage: &paho.WillMessage{
		Topic: "devices/dev/state", Payload: []byte("offline"), QoS: 1}})
	if err != nil {
		t.Fatal(err)
	}
	dev.Kill()
	if m := subB.expectOnly(t, "devices/dev/state"); string(m.Payload) != "offline" {
		t.Fatalf("will %q", m.Payload)
	}
}

// A message no device could have published is dropped by DeliverRemote,
// not retried; a gateway not in a cluster refuses remote messages.
func TestDeliverRemoteRefusesInvalid(t *testing.T) {
	hub := newMemHub()
	e := clusterEnvs(t, hub, engine(t))[0]
	for _, m := range []ClusterMessage{
		{Topic: "a/#", Publisher: "spiffe://example.org/device/x"},
		{Topic: "$SYS/x", Publisher: "spiffe://example.org/device/x"},
		{Topic: "a", Publisher: ""},
		{Topic: "a", Publisher: "spiffe://example.org/device/x y"},
		{Topic: "a", QoS: 3, Publisher: "spiffe://example.org/device/x"},
	} {
		if err := e.gw.DeliverRemote(m); err != nil {
			t.Errorf("DeliverRemote(%+v) = %v, want nil (dropped)", m, err)
		}
	}
	if got := e.gw.RetainedMessages("#", 0); len(got) != 0 {
		t.Fatalf("retained %+v", got)
	}
	// Positive control.
	if err := e.gw.DeliverRemote(ClusterMessage{Topic: "a/b", Retain: true, Payload: []byte("x"),
		Publisher: "spiffe://example.org/device/x"}); err != nil {
		t.Fatal(err)
	}
	if got := e.gw.RetainedMessages("#", 0); len(got) != 1 || got[0].SPIFFEID != "spiffe://example.org/device/x" {
		t.Fatalf("retained %+v", got)
	}
	single := newEnv(t, engine(t))
	if err := single.gw.DeliverRemote(ClusterMessage{Topic: "a", Publisher: "spiffe://example.org/device/x"}); err == nil {
		t.Fatal("a single node took a remote message")
	}
}

// A node that cannot read the cluster's retained messages does not start.
func TestClusterStartNeedsRetained(t *testing.T) {
	hub := newMemHub()
	a := clusterEnvs(t, hub, engine(t))[0]
	hub.fail.Store(true)
	gw, err := New(Config{Addr: "127.0.0.1:0", TLS: a.gw.tls, Verifier: a.gw.verifier, Registry: a.reg,
		Decider: engine(t), Logger: quietLogger(), Cluster: hub.link("x")})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	if err := gw.Start(); err == nil || !errors.Is(err, errMemNoQuorum) || !strings.HasPrefix(err.Error(), "gateway: ") {
		t.Fatalf("Start = %v, want a gateway: error wrapping the link's", err)
	}
}

// fabricLink adapts a real cluster.Fabric for the gateway, as the app does.
type fabricLink struct{ f *cluster.Fabric }

func toFabric(m ClusterMessage) cluster.Message {
	out := cluster.Message{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain, Publisher: m.Publisher,
		PayloadFormat: m.PayloadFormat, MessageExpiry: m.MessageExpiry, ContentType: m.ContentType,
		ResponseTopic: m.ResponseTopic, CorrelationData: m.CorrelationData}
	for _, u := range m.UserProperties {
		out.UserProperties = append(out.UserProperties, cluster.UserProperty{Key: u.Key, Value: u.Value})
	}
	return out
}

func fromFabric(m cluster.Message) ClusterMessage {
	out := ClusterMessage{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain, Publisher: m.Publisher,
		Origin: m.Origin, PayloadFormat: m.PayloadFormat, MessageExpiry: m.MessageExpiry, ContentType: m.ContentType,
		ResponseTopic: m.ResponseTopic, CorrelationData: m.CorrelationData}
	for _, u := range m.UserProperties {
		out.UserProperties = append(out.UserProperties, ClusterUserProperty{Key: u.Key, Value: u.Value})
	}
	return out
}

func (l fabricLink) Forward(ctx context.Context, m ClusterMessage) error {
	return l.f.Publish(ctx, toFabric(m))
}

func (l fabricLink) SetRetained(ctx context.Context, m ClusterMessage) error {
	return l.f.SetRetained(ctx, toFabric(m))
}

func (l fabricLink) ClearRetained(ctx context.Context, topic, publisher string) error {
	return l.f.ClearRetained(ctx, topic, publisher)
}

func (l fabricLink) LoadRetained(ctx context.Context) ([]ClusterMessage, error) {
	ms, err := l.f.LoadRetained(ctx)
	out := make([]ClusterMessage, len(ms))
	for i, m := range ms {
		out[i] = fromFabric(m)
	}
	return out, err
}

// The same over the real fabric on a 3-node JetStream cluster: a QoS 1
// message published on b reaches c's subscriber once, and a retained one
// set on a reaches a new subscriber on c.
func TestClusterOverFabric(t *testing.T) {
	tc := testcluster.Start(t, 3)
	var envs []*env
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), testcluster.FormTimeout)
		f, err := cluster.NewFabric(ctx, tc.Nodes[i].JetStream(), tc.Nodes[i].Conn(), tc.Cfgs[i].Node,
			cluster.FabricOptions{Replicas: 3, Logger: quietLogger()})
		cancel()
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		mod := func(c *Config) { c.Cluster = fabricLink{f} }
		var e *env
		if i == 0 {
			e = newEnvWith(t, engine(t), mod)
		} else {
			e = envs[0].restartFrom(t, filepath.Join(t.TempDir(), brokerstore.FileName), engine(t), mod)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = f.Run(ctx, func(m cluster.Message) error { return e.gw.DeliverRemote(fromFabric(m)) })
		}()
		t.Cleanup(func() { stop(); <-done })
		envs = append(envs, e)
	}
	a, b, c := envs[0], envs[1], envs[2]
	ctlCfg, devCfg := a.enroll("ctl", controllerLabels), a.enroll("dev", nil)
	subC := c.mustConnect(ctlCfg, "ctl-c")
	subC.subscribe(t, sub("devices/+/telemetry/#", 1))
	pub := b.mustConnect(devCfg, "dev")
	if r := pub.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/t", QoS: 1, Payload: []byte("1")}); r >= 0x80 {
		t.Fatalf("PUBACK %#x", r)
	}
	subC.expectOnly(t, "devices/dev/telemetry/t")

	pubA := a.mustConnect(devCfg, "dev-a")
	if r := pubA.publish(t, &paho.Publish{Topic: "devices/dev/state", QoS: 1, Retain: true, Payload: []byte("on")}); r >= 0x80 {
		t.Fatalf("PUBACK %#x", r)
	}
	poll(t, "retained on c", func() bool { return len(c.gw.RetainedMessages("#", 0)) == 1 })
	late := c.mustConnect(ctlCfg, "late")
	late.subscribe(t, sub("devices/+/state", 1))
	if m := late.expectOnly(t, "devices/dev/state"); string(m.Payload) != "on" {
		t.Fatalf("late subscriber got %q", m.Payload)
	}
	subC.Msgs.ExpectNone(t, 300*time.Millisecond)
}

// At start the cluster's retained set replaces the local store's copy: a
// topic cleared in the cluster while the node was down stays cleared, one
// replaced has the cluster's message. A message of a publisher this node's
// registry does not know (yet) is loaded, and not cleared from the cluster
// as if its publisher had been deleted.
func TestClusterStartRetainedFromCluster(t *testing.T) {
	hub := newMemHub()
	st := openStore(t, filepath.Join(t.TempDir(), brokerstore.FileName), false)
	a := newEnvWith(t, engine(t), func(c *Config) { c.Store = st; c.Cluster = hub.link("a") })
	pub := a.mustConnect(a.enroll("dev", nil), "dev")
	for _, m := range []testMsg{{"devices/dev/state", "old"}, {"devices/dev/telemetry/t", "t"}} {
		if r := pub.publish(t, &paho.Publish{Topic: m.topic, QoS: 1, Retain: true, Payload: []byte(m.payload)}); r >= 0x80 {
			t.Fatalf("PUBACK %#x", r)
		}
	}
	snap := a.crash(t)

	// Meanwhile, on other nodes.
	other := hub.link("b")
	ctx := context.Background()
	const ghost = "spiffe://example.org/device/ghost" // not (yet) in this node's registry
	if err := other.SetRetained(ctx, ClusterMessage{Topic: "devices/dev/state", Payload: []byte("new"), Retain: true, Publisher: ghost}); err != nil {
		t.Fatal(err)
	}
	if err := other.SetRetained(ctx, ClusterMessage{Topic: "devices/dev/telemetry/t", Retain: true}); err != nil {
		t.Fatal(err)
	}

	e := a.restartFrom(t, snap, engine(t), func(c *Config) { c.Cluster = hub.link("a") })
	got := e.gw.RetainedMessages("#", 0)
	if len(got) != 1 || got[0].Topic != "devices/dev/state" || got[0].SPIFFEID != ghost || got[0].PayloadSize != len("new") {
		t.Fatalf("retained after start %+v, want only the cluster's devices/dev/state of %s", got, ghost)
	}
	if _, ok := hub.retainedOf("devices/dev/state"); !ok {
		t.Fatal("the cluster's message of a publisher unknown here was cleared")
	}
}

type testMsg struct{ topic, payload string }

// A QoS 1 message from another node is queued for an offline persistent
// session here, as a local one is, and handed over when it resumes; a
// delayed will is forwarded when it fires.
func TestClusterQueuedForOfflineSessionAndDelayedWill(t *testing.T) {
	hub := newMemHub()
	envs := clusterEnvs(t, hub, engine(t), engine(t))
	a, b := envs[0], envs[1]
	ctlCfg, devCfg := a.enroll("ctl", controllerLabels), a.enroll("dev", nil)
	connectCtl := func() *client {
		c, _, err := b.connect(ctlCfg, &paho.Connect{ClientID: "ctl", CleanStart: false,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctl := connectCtl()
	ctl.subscribe(t, sub("devices/+/telemetry/#", 1), sub("devices/+/state", 1))
	b.goOffline(t, ctl, "ctl")

	pub := a.mustConnect(devCfg, "dev")
	if r := pub.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/t", QoS: 1, Payload: []byte("q")}); r >= 0x80 {
		t.Fatalf("PUBACK %#x", r)
	}
	poll(t, "queued on b", func() bool {
		cl, ok := b.gw.server.Clients.Get(scopedClientID(deviceID("ctl").String(), "ctl"))
		return ok && cl.State.Inflight.Len() == 1
	})
	ctl = connectCtl()
	if m := ctl.expectOnly(t, "devices/dev/telemetry/t"); string(m.Payload) != "q" {
		t.Fatalf("queued message %q", m.Payload)
	}

	w, _, err := a.connect(devCfg, &paho.Connect{ClientID: "dev-w", CleanStart: true,
		Properties:     &paho.ConnectProperties{SessionExpiryInterval: u32(60)},
		WillMessage:    &paho.WillMessage{Topic: "devices/dev/state", Payload: []byte("gone"), QoS: 1},
		WillProperties: &paho.WillProperties{WillDelayInterval: u32(1)}})
	if err != nil {
		t.Fatal(err)
	}
	w.Kill()
	if m := ctl.expectOnly(t, "devices/dev/state"); string(m.Payload) != "gone" {
		t.Fatalf("delayed will %q", m.Payload)
	}
}

// BenchmarkClusterPublishQoS1 measures a QoS 1 PUBLISH up to its PUBACK
// over mTLS, on a single node (baseline) and on a node of a 3-node cluster
// whose fabric stores it on a majority first.
func BenchmarkClusterPublishQoS1(b *testing.B) {
	run := func(b *testing.B, mod func(*Config)) {
		e := newEnvWith(b, allowAll, mod)
		pub := e.mustConnect(e.enroll("dev", nil), "dev")
		p := &paho.Publish{Topic: "devices/dev/telemetry/t", QoS: 1, Payload: make([]byte, 64)}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if r := pub.publish(b, p); r >= 0x80 {
				b.Fatalf("PUBACK %#x", r)
			}
		}
	}
	b.Run("single-node", func(b *testing.B) { run(b, nil) })
	b.Run("fabric-3-nodes", func(b *testing.B) {
		tc := testcluster.Start(b, 3)
		ctx, cancel := context.WithTimeout(context.Background(), testcluster.FormTimeout)
		defer cancel()
		f, err := cluster.NewFabric(ctx, tc.Nodes[0].JetStream(), tc.Nodes[0].Conn(), tc.Cfgs[0].Node,
			cluster.FabricOptions{Replicas: 3, Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		run(b, func(c *Config) { c.Cluster = fabricLink{f} })
	})
}
