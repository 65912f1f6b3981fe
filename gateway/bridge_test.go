package gateway

import (
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

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

	// A will, offered as it is published.
	w := e.enroll("sensor-3", nil)
	c3, _, err := e.connect(w, &paho.Connect{ClientID: "sensor-3", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "devices/sensor-3/state", Payload: []byte("offline"), QoS: 1}})
	if err != nil {
		t.Fatal(err)
	}
	c3.Kill()
	poll(t, "the will offered", func() bool { return eg.has("devices/sensor-3/state") })

	// Settle, then nothing denied or injected was offered.
	time.Sleep(100 * time.Millisecond)
	for _, m := range eg.all() {
		switch m.topic {
		case "devices/sensor-1/telemetry/t", "devices/sensor-3/state":
		default:
			t.Fatalf("offered %+v: only allowed local publishes and wills may be", m)
		}
	}

	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", "devices/+/commands/x", nil, 0, false); err == nil {
		t.Fatal("PublishAs to a wildcard topic: no error")
	}
	_ = e.gw.Close()
	if err := e.gw.PublishAs(bridgeID, "ztgate-cloud", "devices/sensor-1/commands/x", nil, 0, false); err == nil {
		t.Fatal("PublishAs after Close: no error")
	}
}
