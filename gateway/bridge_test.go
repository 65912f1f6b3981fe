package gateway

import (
	"bytes"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/policy"
)

// offered is one message the egress was offered.
type offered struct {
	spiffeID, topic, payload string
	qos                      byte
	retain                   bool
}

// recordingEgress records what it is offered.
type recordingEgress struct {
	mu   sync.Mutex
	msgs []offered
}

func (r *recordingEgress) Offer(sub *policy.Subject, topic string, payload []byte, qos byte, retain bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, offered{sub.Identity.SPIFFEID, topic, string(payload), qos, retain})
}

func (r *recordingEgress) all() []offered {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]offered(nil), r.msgs...)
}

func (r *recordingEgress) has(topic string) bool {
	for _, m := range r.all() {
		if m.topic == topic {
			return true
		}
	}
	return false
}

// The egress is offered every allowed PUBLISH with its publisher's subject,
// and Last Wills; never a denied publish, nor what PublishAs injected (no
// loop). PublishAs delivers only where receive allows.
func TestEgressAndPublishAs(t *testing.T) {
	eg := &recordingEgress{}
	e := newEnvWith(t, engine(t), func(c *Config) { c.Egress = eg })
	s1 := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	s2 := e.mustConnect(e.enroll("sensor-2", nil), "sensor-2")
	s1.subscribe(t, sub("devices/sensor-1/commands/#", 1))
	s2.subscribe(t, sub("devices/sensor-2/commands/#", 1))

	if rc := s1.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1, Payload: []byte("21")}); rc != 0 {
		t.Fatalf("allowed publish: reason %#x", rc)
	}
	poll(t, "the allowed publish offered", func() bool { return eg.has("devices/sensor-1/telemetry/t") })
	got := eg.all()[0]
	if got.spiffeID != "spiffe://example.org/device/sensor-1" || got.payload != "21" || got.qos != 1 || got.retain {
		t.Fatalf("offered %+v", got)
	}

	if rc := s1.publish(t, &paho.Publish{Topic: "devices/sensor-2/telemetry/t", QoS: 1, Payload: []byte("x")}); rc < 0x80 {
		t.Fatalf("another device's topic: reason %#x, want a refusal", rc)
	}

	bridgeID := spiffeid.RequireFromPath(testTD, "/bridge/cloud")
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", "devices/sensor-1/commands/reboot", []byte("now"), 1, false); err != nil {
		t.Fatal(err)
	}
	if m := s1.expectOnly(t, "devices/sensor-1/commands/reboot"); string(m.Payload) != "now" {
		t.Fatalf("payload %q", m.Payload)
	}
	// Control after it: s2 gets its own, so it would have had sensor-1's
	// by now.
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", "devices/sensor-2/commands/ping", []byte("p"), 1, false); err != nil {
		t.Fatal(err)
	}
	s2.expectOnly(t, "devices/sensor-2/commands/ping")

	// A will, retained, offered as it is published.
	w := e.enroll("sensor-3", nil)
	c3, _, err := e.connect(w, &paho.Connect{ClientID: "sensor-3", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "devices/sensor-3/state", Payload: []byte("offline"), QoS: 1, Retain: true}})
	if err != nil {
		t.Fatal(err)
	}
	c3.Kill()
	poll(t, "the will offered", func() bool { return eg.has("devices/sensor-3/state") })
	for _, m := range eg.all() {
		if m.topic == "devices/sensor-3/state" && (m.spiffeID != "spiffe://example.org/device/sensor-3" || !m.retain || m.payload != "offline") {
			t.Fatalf("will offered as %+v", m)
		}
	}

	// Settle, then nothing denied or injected was offered.
	time.Sleep(100 * time.Millisecond)
	for _, m := range eg.all() {
		switch m.topic {
		case "devices/sensor-1/telemetry/t", "devices/sensor-3/state":
		default:
			t.Fatalf("offered %+v: only allowed local publishes and wills may be", m)
		}
	}
}

// A will with a delay is offered when the gateway sends it, after the
// delay, as its publisher's; a denied will (another device's topic) never.
func TestEgressDelayedWill(t *testing.T) {
	eg := &recordingEgress{}
	e := newEnvWith(t, engine(t), func(c *Config) { c.Egress = eg })
	for _, tt := range []struct{ name, topic string }{
		{"sensor-4", "devices/sensor-9/state"}, // refused at CONNECT: never sent
		{"sensor-5", "devices/sensor-5/state"},
	} {
		c, _, err := e.connect(e.enroll(tt.name, nil), &paho.Connect{ClientID: tt.name, CleanStart: true,
			Properties:     &paho.ConnectProperties{SessionExpiryInterval: u32(60)},
			WillMessage:    &paho.WillMessage{Topic: tt.topic, Payload: []byte("gone"), QoS: 1},
			WillProperties: &paho.WillProperties{WillDelayInterval: u32(1)}})
		if err != nil {
			continue // the refused will
		}
		c.Kill()
	}
	poll(t, "the delayed will offered", func() bool { return eg.has("devices/sensor-5/state") })
	if got := eg.all(); len(got) != 1 || got[0].spiffeID != "spiffe://example.org/device/sensor-5" {
		t.Fatalf("offered %+v, want sensor-5's will alone", got)
	}
}

// A message of PublishAs is delivered where the receiver's receive
// decision allows it, and only there: a denied topic never reaches the
// subscribed device (the allowed one after it does), and a retained copy
// is given to a later subscriber only as receive allows.
func TestPublishAsDecidedOnReceive(t *testing.T) {
	const secret = "devices/sensor-1/commands/secret"
	e := newEnv(t, denyReceiveOn{next: engine(t), topic: secret})
	s1Cfg := e.enroll("sensor-1", nil)
	s1 := e.mustConnect(s1Cfg, "sensor-1")
	s1.subscribe(t, sub("devices/sensor-1/commands/#", 1))
	ctlCfg := e.enroll("ctl", controllerLabels)
	ctl := e.mustConnect(ctlCfg, "ctl")
	ctl.subscribe(t, sub("devices/+/state", 1))

	bridgeID := spiffeid.RequireFromPath(testTD, "/bridge/cloud")
	for _, topic := range []string{secret, "devices/sensor-1/commands/after"} {
		if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", topic, []byte("x"), 1, false); err != nil {
			t.Fatal(err)
		}
	}
	s1.expectOnly(t, "devices/sensor-1/commands/after") // and not the secret one before it

	// Retained, on a topic the controller may receive and the device is
	// not subscribed to.
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", "devices/sensor-2/state", []byte("up"), 1, true); err != nil {
		t.Fatal(err)
	}
	if m := ctl.expectOnly(t, "devices/sensor-2/state"); string(m.Payload) != "up" {
		t.Fatalf("payload %q", m.Payload)
	}
	late := e.mustConnect(ctlCfg, "ctl-late")
	late.subscribe(t, sub("devices/+/state", 1))
	if m := late.expectOnly(t, "devices/sensor-2/state"); !m.Retain {
		t.Fatalf("retained copy without the retain flag: %+v", m)
	}
	// A device may not receive another's state: its subscription to it is
	// refused, and so would be any delivery.
	if codes := s1.subscribe(t, sub("devices/sensor-2/state", 1)); len(codes) != 1 || codes[0] < 0x80 {
		t.Fatalf("device subscribing to another's state: %#x", codes)
	}
	s1.Msgs.ExpectNone(t, 300*time.Millisecond)

	// Retained on the topic receive denies, then on one it allows: the
	// live subscriber and a later one are given the allowed copy alone.
	for _, topic := range []string{secret, "devices/sensor-1/commands/kept"} {
		if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", topic, []byte("r"), 1, true); err != nil {
			t.Fatal(err)
		}
	}
	s1.expectOnly(t, "devices/sensor-1/commands/kept")
	s1Late := e.mustConnect(s1Cfg, "sensor-1-late")
	s1Late.subscribe(t, sub("devices/sensor-1/commands/#", 1))
	if m := s1Late.expectOnly(t, "devices/sensor-1/commands/kept"); !m.Retain {
		t.Fatalf("retained copy without the retain flag: %+v", m)
	}
	s1Late.Msgs.ExpectNone(t, 300*time.Millisecond)
}

// PublishAs refuses what no device could publish, and anything once the
// gateway is closed; a valid message beside them is accepted.
func TestPublishSize(t *testing.T) {
	// Checked against mochi's own encoding of the same packet.
	for _, tt := range []struct {
		topic string
		n     int
		qos   byte
	}{{"a", 0, 0}, {"a/b", 100, 1}, {"devices/x", 200, 1}, {"t", 20000, 0}, {"t", 3 << 20, 1}} {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: tt.qos}, TopicName: tt.topic,
			Payload: make([]byte, tt.n), ProtocolVersion: 5}
		if tt.qos > 0 {
			pk.PacketID = 1
		}
		var b bytes.Buffer
		if err := pk.PublishEncode(&b); err != nil {
			t.Fatal(err)
		}
		if got := publishSize(tt.topic, tt.n, tt.qos); got != b.Len() {
			t.Errorf("publishSize(%q, %d, %d) = %d, mochi encodes %d bytes", tt.topic, tt.n, tt.qos, got, b.Len())
		}
	}
}

func TestPublishAsRefuses(t *testing.T) {
	e := newEnv(t, engine(t))
	bridgeID := spiffeid.RequireFromPath(testTD, "/bridge/cloud")
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", "devices/sensor-1/commands/x", nil, 1, false); err != nil {
		t.Fatalf("a valid message: %v", err)
	}
	for _, tt := range []struct {
		name  string
		id    spiffeid.ID
		topic string
		qos   byte
	}{
		{"no identity", spiffeid.ID{}, "devices/sensor-1/commands/x", 0},
		{"empty topic", bridgeID, "", 0},
		{"wildcard +", bridgeID, "devices/+/commands/x", 0},
		{"wildcard #", bridgeID, "devices/#", 0},
		{"server topic", bridgeID, "$SYS/broker/x", 0},
		{"NUL", bridgeID, "devices/a\x00/commands/x", 0},
		{"not UTF-8", bridgeID, "devices/\xff/commands/x", 0},
		{"longer than MQTT allows", bridgeID, "devices/" + strings.Repeat("a", 65536), 0},
		{"QoS 3", bridgeID, "devices/sensor-1/commands/x", 3},
	} {
		err := e.gw.PublishAs(tt.id, "ztgate-cloud", tt.topic, []byte("x"), tt.qos, false)
		if err == nil || !strings.HasPrefix(err.Error(), "gateway: ") {
			t.Errorf("%s: err %v, want a gateway error", tt.name, err)
		}
	}
	// The maximum packet size bounds an upstream's messages as a device's:
	// a packet of exactly the maximum passes, one byte more does not.
	const topic = "devices/sensor-1/commands/x"
	fits := int(e.gw.maxPacket) - publishSize(topic, 0, 1)
	for publishSize(topic, fits, 1) > int(e.gw.maxPacket) {
		fits-- // the remaining length's own bytes grow with the payload
	}
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", topic, make([]byte, fits), 1, false); err != nil {
		t.Fatalf("a packet of the maximum size: %v", err)
	}
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", topic, make([]byte, fits+1), 1, false); err == nil ||
		!strings.Contains(err.Error(), "larger than the maximum packet size") {
		t.Fatalf("a packet one byte over the maximum: %v", err)
	}
	_ = e.gw.Close()
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", "devices/sensor-1/commands/x", nil, 0, false); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("PublishAs after Close: %v", err)
	}
}

// In a cluster, a node's egress is offered what its own clients publish,
// never what another node delivers to it (that node offered it): the
// message reaches the subscriber on b and is offered on a alone.
func TestEgressNotOfferedRemoteMessages(t *testing.T) {
	hub := newMemHub()
	egA, egB := &recordingEgress{}, &recordingEgress{}
	a := newEnvWith(t, engine(t), func(c *Config) { c.Cluster, c.Egress = hub.link("a"), egA })
	hub.attach(t, "a", a.gw)
	b := a.restartFrom(t, filepath.Join(t.TempDir(), brokerstore.FileName), engine(t),
		func(c *Config) { c.Cluster, c.Egress = hub.link("b"), egB })
	hub.attach(t, "b", b.gw)

	ctl := b.mustConnect(a.enroll("ctl", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/telemetry/#", 1))
	dev := a.mustConnect(a.enroll("dev", nil), "dev")
	if rc := dev.publish(t, &paho.Publish{Topic: "devices/dev/telemetry/t", QoS: 1, Payload: []byte("1")}); rc >= 0x80 {
		t.Fatalf("PUBACK %#x", rc)
	}
	ctl.expectOnly(t, "devices/dev/telemetry/t")
	if got := egA.all(); len(got) != 1 || got[0].topic != "devices/dev/telemetry/t" {
		t.Fatalf("a offered %+v, want the one publish", got)
	}
	if got := egB.all(); len(got) != 0 {
		t.Fatalf("b offered %+v, a message another node delivered", got)
	}
}
