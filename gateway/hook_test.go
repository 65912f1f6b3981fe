package gateway

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// newIdleGateway returns a gateway that is configured but not listening,
// for calling the hook directly.
func newIdleGateway(t testing.TB, d policy.Decider) *Gateway {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), testTD)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Open(filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	cert, err := ca.IssueServerCert(spiffeid.RequireFromPath(testTD, "/ztgate/gateway"), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v := identity.NewVerifier(ca.Bundle())
	g, err := New(Config{Addr: "127.0.0.1:0", TLS: identity.ServerTLSConfig(cert, v), Verifier: v, Registry: reg, Decider: d, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// addSession makes a mochi client (no connection) holding the session OnConnect
// would have built for device name.
func (g *Gateway) addSession(name string, labels map[string]string, version byte) (*mqtt.Client, *session) {
	id := spiffeid.RequireFromSegments(testTD, "device", name)
	dev := &registry.Device{Name: name, SPIFFEID: id.String(), Labels: labels, Status: registry.StatusActive}
	cl := g.server.NewClient(nil, listenerID, "", false)
	cl.Properties.ProtocolVersion = version
	s := &session{cl: cl, id: id, spiffeID: id.String(), clientID: name, remote: "127.0.0.1:40000", version: version, connectedAt: time.Now()}
	s.device.Store(dev)
	s.subject.Store(newSubject(id, dev, name, s.remote, version))
	s.setState(connOpen, phaseLive, false)
	cl.ID = scopedClientID(s.spiffeID, name)
	g.sessions.Store(cl, s)
	return cl, s
}

// recorder is a decider that copies every input it is asked about (the
// gateway reuses its inputs) and allows what allow says.
type recorder struct {
	mu     sync.Mutex
	inputs []policy.Input
	allow  func(in *policy.Input) bool
}

func (r *recorder) Decide(_ context.Context, in *policy.Input) policy.Decision {
	r.mu.Lock()
	r.inputs = append(r.inputs, *in)
	r.mu.Unlock()
	return policy.Decision{Allow: r.allow == nil || r.allow(in), Reasons: []string{"recorded"}, Revision: "test"}
}

func (r *recorder) take() []policy.Input {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.inputs
	r.inputs = nil
	return out
}

func TestOnACLCheckTellsSubscribeFromReceive(t *testing.T) {
	// Subscriptions are decided in OnSubscribe (here: recorded by hand);
	// receive is allowed for "ok/..." topics only.
	rec := &recorder{allow: func(in *policy.Input) bool {
		return in.Action != policy.ActionReceive || len(in.Topic) > 3 && in.Topic[:3] == "ok/"
	}}
	g := newIdleGateway(t, rec)
	h := g.hook
	cl, s := g.addSession("a", nil, 5)
	s.pending.Store(&[]filterDecision{
		{"wild/+/x", true},
		{"ok/plain", true},
		{"no/plain", true},
		{"denied/#", false},
		{"$share/g/ok/x", true},
	})

	for _, c := range []struct {
		name    string
		topic   string
		want    bool
		receive bool // a receive decision is asked
	}{
		{"recorded wildcard filter: its subscribe decision", "wild/+/x", true, false},
		{"recorded denied filter", "denied/#", false, false},
		{"recorded shared filter ($ never a delivery)", "$share/g/ok/x", true, false},
		{"recorded plain filter, receivable", "ok/plain", true, true},
		{"recorded plain filter, not receivable (a racing delivery gets no more)", "no/plain", false, true},
		{"delivery, receivable", "ok/other", true, true},
		{"delivery, not receivable", "no/other", false, true},
		{"wildcard string not recorded: no delivery carries one", "wild/#", false, false},
		{"server topic", "$SYS/broker/uptime", false, false},
		{"empty topic", "", false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec.take()
			if got := h.OnACLCheck(cl, c.topic, false); got != c.want {
				t.Fatalf("OnACLCheck(%q) = %v, want %v", c.topic, got, c.want)
			}
			ins := rec.take()
			asked := slices.ContainsFunc(ins, func(in policy.Input) bool {
				return in.Action == policy.ActionReceive && in.Topic == c.topic
			})
			if asked != c.receive {
				t.Fatalf("receive decision asked: %v, want %v (inputs %+v)", asked, c.receive, ins)
			}
		})
	}

	// OnSubscribed ends the SUBSCRIBE: a recorded wildcard filter is no
	// longer granted.
	h.OnSubscribed(cl, packets.Packet{}, nil)
	if h.OnACLCheck(cl, "wild/+/x", false) {
		t.Fatal("filter granted after OnSubscribed")
	}
}

func TestOnACLCheckFailsClosed(t *testing.T) {
	g := newIdleGateway(t, allowAll)
	h := g.hook
	cl, s := g.addSession("a", nil, 5)
	stranger := g.server.NewClient(nil, listenerID, "stranger", false)

	// Positive controls: allow-all lets a known, live session through.
	if !h.OnACLCheck(cl, "t", false) || !h.OnACLCheck(cl, "t", true) {
		t.Fatal("allow-all denied a live session")
	}
	if h.OnACLCheck(stranger, "t", false) || h.OnACLCheck(stranger, "t", true) {
		t.Fatal("a client without a session was allowed")
	}
	if _, err := h.OnPublish(stranger, packets.Packet{TopicName: "t"}); !errors.Is(err, packets.ErrRejectPacket) {
		t.Fatalf("OnPublish for a client without a session: %v", err)
	}
	s.deny()
	if h.OnACLCheck(cl, "t", false) || h.OnACLCheck(cl, "t", true) {
		t.Fatal("a revoked session was allowed")
	}
	if _, err := h.OnPublish(cl, packets.Packet{TopicName: "t"}); !errors.Is(err, packets.ErrRejectPacket) {
		t.Fatalf("OnPublish for a revoked session: %v", err)
	}
	if w, _ := h.OnWill(cl, mqtt.Will{TopicName: "t", Payload: []byte("x"), Flag: 1}); w.TopicName != "" || w.Payload != nil {
		t.Fatalf("revoked session's will kept: %+v", w)
	}
}

func TestOnPublishAnswers(t *testing.T) {
	rec := &recorder{allow: func(in *policy.Input) bool { return in.Topic == "ok" }}
	g := newIdleGateway(t, rec)
	h := g.hook
	v5, _ := g.addSession("v5", nil, 5)
	v4, _ := g.addSession("v4", nil, 4)

	pub := func(cl *mqtt.Client, topic string, qos byte) error {
		_, err := h.OnPublish(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, PacketID: uint16(qos)})
		return err
	}
	for qos := byte(0); qos <= 2; qos++ {
		if err := pub(v5, "ok", qos); err != nil {
			t.Fatalf("allowed QoS %d: %v", qos, err)
		}
		// ErrRejectPacket is the only error after which mochi neither
		// acknowledges nor publishes.
		if err := pub(v5, "no", qos); !errors.Is(err, packets.ErrRejectPacket) {
			t.Fatalf("denied QoS %d: %v", qos, err)
		}
	}
	if v5.Closed() {
		t.Fatal("MQTT 5 client disconnected for a denied publish")
	}
	if err := pub(v4, "no", 0); !errors.Is(err, packets.ErrRejectPacket) || v4.Closed() {
		t.Fatalf("3.1.1 QoS 0 denied: %v, closed %v", err, v4.Closed())
	}
	if err := pub(v4, "no", 1); !errors.Is(err, packets.ErrRejectPacket) || !v4.Closed() {
		t.Fatalf("3.1.1 QoS 1 denied: %v, closed %v", err, v4.Closed())
	}
	// The delayed-will client publishes what was decided when its timer
	// fired.
	if err := pub(g.wills.client, "anything", 1); err != nil {
		t.Fatalf("will client: %v", err)
	}
}

func TestTopicRules(t *testing.T) {
	for topic, want := range map[string]bool{
		"devices/a/state": true, "a": true, "/": true, "a//b": true,
		"": false, "$SYS/x": false, "$share/g/a": false, "$x": false,
		"a/+": false, "a/#": false, "a+b": false, "a\x00b": false,
	} {
		if got := isTopicName(topic); got != want {
			t.Errorf("isTopicName(%q) = %v, want %v", topic, got, want)
		}
	}
	for filter, want := range map[string]string{
		"devices/a/commands/#":        "devices/a/commands/#",
		"+/x":                         "+/x",
		"#":                           "#",
		"$share/g/devices/a/#":        "devices/a/#",
		"$SHARE/g/devices/a/#":        "devices/a/#",
		"$sHaRe/g/+":                  "+",
		"$share/g":                    "",
		"$share//x":                   "",
		"$share/g+/x":                 "",
		"$share/g/$share/h/x":         "",
		"$share/g/$SYS/#":             "",
		"$SYS/#":                      "",
		"a/#/b":                       "",
		"a+/b":                        "",
		"a/b#":                        "",
		"":                            "",
		"a\x00":                       "",
		"devices/a/commands/+/status": "devices/a/commands/+/status",
	} {
		got, ok := subscribeFilter(filter)
		if ok != (want != "") || got != want {
			t.Errorf("subscribeFilter(%q) = %q, %v; want %q", filter, got, ok, want)
		}
	}
}

func TestPolicyInputs(t *testing.T) {
	at := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	rec := &recorder{}
	e := newEnvWith(t, rec, func(c *Config) { c.Now = func() time.Time { return at } })
	cfg := e.enroll("sensor-1", map[string]string{"site": "lab"})

	c, _, err := e.connect(cfg, &paho.Connect{ClientID: "my-client", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "devices/sensor-1/state", QoS: 1, Retain: true, Payload: []byte("offline")}})
	if err != nil {
		t.Fatal(err)
	}
	ins := rec.take()
	if len(ins) != 2 {
		t.Fatalf("%d decisions at CONNECT, want connect and will: %+v", len(ins), ins)
	}
	conn, will := ins[0], ins[1]
	subj := conn.Subject
	if conn.Action != policy.ActionConnect || !conn.Time.Equal(at) {
		t.Errorf("connect input %+v", conn)
	}
	if id := subj.Identity; id.SPIFFEID != "spiffe://example.org/device/sensor-1" || id.TrustDomain != "example.org" ||
		id.Path != "/device/sensor-1" || !slices.Equal(id.Segments, []string{"device", "sensor-1"}) {
		t.Errorf("identity %+v", id)
	}
	if d := subj.Device; d == nil || d.Name != "sensor-1" || d.Status != "active" || d.Labels["site"] != "lab" {
		t.Errorf("device %+v", d)
	}
	if cl := subj.Client; cl.ID != "my-client" || cl.ProtocolVersion != 5 || cl.RemoteAddr == "" {
		t.Errorf("client %+v (the policy sees the client ID as sent)", cl)
	}
	if will.Action != policy.ActionPublish || !will.Will || will.Topic != "devices/sensor-1/state" ||
		will.QoS != 1 || !will.Retain || will.PayloadSize != 7 || will.Subject != subj {
		t.Errorf("will input %+v", will)
	}

	c.subscribe(t, sub("$SHARE/grp/devices/sensor-1/commands/#", 1))
	if ins := rec.take(); len(ins) != 1 || ins[0].Action != policy.ActionSubscribe ||
		ins[0].Filter != "devices/sensor-1/commands/#" || ins[0].QoS != 1 || ins[0].Topic != "" || ins[0].Subject != subj {
		t.Errorf("subscribe inputs %+v", ins)
	}

	c.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1, Retain: true, Payload: []byte("12345"),
		Properties: &paho.PublishProperties{TopicAlias: u16(4)}})
	c.publish(t, &paho.Publish{QoS: 2, Payload: []byte("123"), Properties: &paho.PublishProperties{TopicAlias: u16(4)}})
	ins = rec.take()
	if len(ins) != 2 {
		t.Fatalf("publish inputs %+v", ins)
	}
	for i, want := range []policy.Input{
		{Action: policy.ActionPublish, Topic: "devices/sensor-1/telemetry/t", QoS: 1, Retain: true, PayloadSize: 5},
		{Action: policy.ActionPublish, Topic: "devices/sensor-1/telemetry/t", QoS: 2, PayloadSize: 3},
	} {
		got := ins[i]
		if got.Action != want.Action || got.Topic != want.Topic || got.QoS != want.QoS || got.Retain != want.Retain ||
			got.PayloadSize != want.PayloadSize || got.Will || got.Filter != "" || got.Subject != subj {
			t.Errorf("publish %d: %+v, want %+v", i, got, want)
		}
	}

	// An assigned client ID reaches the policy unscoped too, and a 3.1.1
	// client is protocol version 4.
	if _, _, err := e.connect(cfg, &paho.Connect{CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	raw := e.dial311(cfg)
	if code := raw.Connect(t, "old-client"); code != 0 {
		t.Fatal(code)
	}
	ins = rec.take()
	if len(ins) != 2 {
		t.Fatalf("inputs %+v", ins)
	}
	if id := ins[0].Subject.Client.ID; id == "" || strings.Contains(id, " ") {
		t.Errorf("assigned client ID %q", id)
	}
	if cl := ins[1].Subject.Client; cl.ID != "old-client" || cl.ProtocolVersion != 4 {
		t.Errorf("3.1.1 client %+v", cl)
	}
}

func TestDecisionLogNamesTheDenial(t *testing.T) {
	rec := &recorder{allow: func(in *policy.Input) bool { return in.Action != policy.ActionPublish }}
	e := newEnv(t, rec)
	c := e.mustConnect(e.enroll("sensor-1", nil), "log-client")
	c.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1})
	logs := e.logs.String()
	for _, want := range []string{`msg="gateway: denied"`, "action=publish", "spiffe_id=spiffe://example.org/device/sensor-1",
		"client_id=log-client", "topic=devices/sensor-1/telemetry/t", "reasons=[recorded]", "revision=test"} {
		if !strings.Contains(logs, want) {
			t.Errorf("decision log lacks %s:\n%s", want, logs)
		}
	}
}
