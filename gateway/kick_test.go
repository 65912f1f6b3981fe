package gateway

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/registry"
)

// A kick ends every connection of one identity, MQTT 5 with DISCONNECT
// 0x98 and MQTT 3.1.1 by closing it, leaves other identities connected,
// and changes nothing else: the device reconnects at once.
func TestKickSessions(t *testing.T) {
	e := newEnv(t, engine(t))
	s1 := e.enroll("sensor-1", nil)
	v5 := e.mustConnect(s1, "s1-v5")
	v4 := e.dial311(s1)
	if code := v4.Connect(t, "s1-v4"); code != 0 {
		t.Fatalf("3.1.1 CONNACK %#x", code)
	}
	other := e.mustConnect(e.enroll("sensor-2", nil), "s2")
	id := spiffeid.RequireFromSegments(testTD, "device", "sensor-1").String()
	poll(t, "three sessions", func() bool { return len(e.gw.Sessions()) == 3 })

	n, err := e.gw.KickSessions(id)
	if err != nil || n != 2 {
		t.Fatalf("KickSessions = %d, %v; want 2", n, err)
	}
	if d := v5.WaitDisconnect(t, waitFor); d.ReasonCode != packets.ErrAdministrativeAction.Code {
		t.Errorf("DISCONNECT reason %#x, want 0x98", d.ReasonCode)
	}
	v4.ExpectClosed(t)
	if other.Closed() {
		t.Fatal("the kick cut another identity")
	}
	poll(t, "the kicked sessions gone", func() bool { return len(e.gw.Sessions()) == 1 })

	// Not suspended: the device is active and comes back.
	if d, err := e.reg.Get("sensor-1"); err != nil || d.Status != registry.StatusActive {
		t.Fatalf("after the kick: %+v %v", d, err)
	}
	e.mustConnect(s1, "s1-v5")
	if n, err := e.gw.KickSessions("spiffe://example.org/device/nobody"); err != nil || n != 0 {
		t.Fatalf("kick of an identity without sessions = %d, %v; want 0", n, err)
	}
}

// The session list shows subscriptions and the messages held for a client
// that does not acknowledge them, and 0 for one that does (control).
func TestSessionsSubscriptionsAndQueueDepth(t *testing.T) {
	e := newEnv(t, engine(t))
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	acker := e.mustConnect(e.enroll("sensor-1", nil), "acker")
	acker.subscribe(t, sub("devices/sensor-1/commands/#", 1))
	raw := e.dial5(e.enroll("sensor-2", nil))
	if code := raw.Connect(t, "silent"); code != 0 {
		t.Fatalf("raw CONNACK %#x", code)
	}
	raw.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "devices/sensor-2/commands/a", Qos: 1}, {Filter: "devices/sensor-2/commands/#", Qos: 0}}})
	if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("no SUBACK: %v", err)
	}
	for _, topic := range []string{"devices/sensor-2/commands/a", "devices/sensor-2/commands/a", "devices/sensor-1/commands/x"} {
		if code := ctl.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("c")}); code != 0 {
			t.Fatalf("command: reason %#x", code)
		}
	}
	acker.expectOnly(t, "devices/sensor-1/commands/x")
	// The silent client reads the two PUBLISHes but acknowledges neither.
	for range 2 {
		if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Publish {
			t.Fatalf("no PUBLISH: %v", err)
		}
	}
	byClient := func() map[string]int {
		out := map[string]int{}
		for _, s := range e.gw.Sessions() {
			out[s.ClientID] = s.QueueDepth
		}
		return out
	}
	poll(t, "queue depth 2", func() bool { return byClient()["silent"] == 2 })
	poll(t, "acker's queue empty", func() bool { return byClient()["acker"] == 0 })

	for _, s := range e.gw.Sessions() {
		switch s.ClientID {
		case "silent":
			if len(s.Subscriptions) != 2 || s.Subscriptions[0].Filter != "devices/sensor-2/commands/#" || s.Subscriptions[0].QoS != 0 ||
				s.Subscriptions[1].Filter != "devices/sensor-2/commands/a" || s.Subscriptions[1].QoS != 1 {
				t.Errorf("silent's subscriptions %+v", s.Subscriptions)
			}
		case "ctl":
			if s.Subscriptions == nil || len(s.Subscriptions) != 0 {
				t.Errorf("ctl's subscriptions %#v, want empty and not nil", s.Subscriptions)
			}
		}
	}
}
