package gateway

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/metrics"
)

// brokerEnv is a gateway exporting its metrics to a registry of its own,
// with the limits a test sets.
func brokerEnv(t *testing.T, limits Limits) (*env, func(name, label, value string) float64) {
	t.Helper()
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, engine(t), func(c *Config) {
		c.Metrics = metrics.New(reg)
		c.Limits = limits
	})
	return e, func(name, label, value string) float64 { return metricValue(t, reg, name, label, value) }
}

// The broker's figures move with what clients do: messages and bytes in
// and out, retained messages, sessions connected and offline,
// subscriptions, and the messages queued for an offline session. Each is
// read before what should move it, as its control.
func TestBrokerMetricsFollowTraffic(t *testing.T) {
	e, value := brokerEnv(t, Limits{})
	for _, name := range []string{"ztgate_broker_messages_received_total", "ztgate_broker_messages_sent_total",
		"ztgate_broker_retained_messages", "ztgate_broker_subscriptions"} {
		if v := value(name, "", ""); v != 0 {
			t.Fatalf("%s = %v on a new gateway, want 0", name, v)
		}
	}

	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	dev := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	poll(t, "two sessions connected", func() bool {
		return value("ztgate_broker_stored_sessions", "state", "connected") == 2
	})
	if got := ctl.subscribe(t, sub("devices/+/telemetry/#", 1)); got[0] != 1 {
		t.Fatalf("SUBACK %#x", got[0])
	}
	if v := value("ztgate_broker_subscriptions", "", ""); v != 1 {
		t.Errorf("subscriptions = %v after one SUBSCRIBE, want 1", v)
	}

	in0, out0 := value("ztgate_broker_received_bytes_total", "", ""), value("ztgate_broker_sent_bytes_total", "", "")
	payload := bytes.Repeat([]byte("x"), 1000)
	for range 3 {
		if code := dev.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1, Payload: payload}); code != 0 {
			t.Fatalf("publish: reason %#x", code)
		}
		ctl.expectOnly(t, "devices/sensor-1/telemetry/t")
	}
	if v := value("ztgate_broker_messages_received_total", "", ""); v != 3 {
		t.Errorf("messages received = %v after 3 PUBLISHes, want 3", v)
	}
	poll(t, "3 messages sent", func() bool { return value("ztgate_broker_messages_sent_total", "", "") == 3 })
	if d := value("ztgate_broker_received_bytes_total", "", "") - in0; d < 3000 {
		t.Errorf("bytes received grew by %v with 3 payloads of 1000 bytes", d)
	}
	if d := value("ztgate_broker_sent_bytes_total", "", "") - out0; d < 3000 {
		t.Errorf("bytes sent grew by %v with 3 payloads of 1000 bytes delivered", d)
	}

	if code := dev.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Retain: true, Payload: []byte("on")}); code != 0 {
		t.Fatalf("retained publish: reason %#x", code)
	}
	if v := value("ztgate_broker_retained_messages", "", ""); v != 1 {
		t.Errorf("retained messages = %v after a retained PUBLISH, want 1", v)
	}
	if code := dev.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Retain: true}); code != 0 {
		t.Fatalf("retained clear: reason %#x", code)
	}
	if v := value("ztgate_broker_retained_messages", "", ""); v != 0 {
		t.Errorf("retained messages = %v after the retained message was cleared, want 0", v)
	}

	// A persistent session goes offline, and what is published to it is
	// queued there.
	s2cfg := e.enroll("sensor-2", nil)
	persistent := func(clean bool) (*client, *paho.Connack, error) {
		return e.connect(s2cfg, &paho.Connect{ClientID: "s2", CleanStart: clean,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	}
	s2, _, err := persistent(true)
	if err != nil {
		t.Fatalf("connect sensor-2: %v", err)
	}
	if got := s2.subscribe(t, sub("devices/sensor-2/commands/#", 1)); got[0] != 1 {
		t.Fatalf("SUBACK %#x", got[0])
	}
	_ = s2.Disconnect(&paho.Disconnect{})
	poll(t, "one session offline", func() bool {
		return value("ztgate_broker_stored_sessions", "state", "offline") == 1 &&
			value("ztgate_broker_stored_sessions", "state", "connected") == 2
	})
	if v := value("ztgate_broker_queued_messages", "state", "offline"); v != 0 {
		t.Fatalf("queued for offline sessions = %v before anything was published to one, want 0", v)
	}
	for range 2 {
		if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-2/commands/c", QoS: 1, Payload: []byte("c")}); code != 0 {
			t.Fatalf("command: reason %#x", code)
		}
	}
	// mochi acknowledges a PUBLISH before it delivers it.
	poll(t, "2 commands queued for the offline session", func() bool {
		return value("ztgate_broker_queued_messages", "state", "offline") == 2
	})
	if v := value("ztgate_broker_subscriptions", "", ""); v != 2 {
		t.Errorf("subscriptions = %v with the offline session's, want 2", v)
	}

	// The device comes back: its session is connected again and what was
	// queued is delivered and acknowledged.
	s2, ack, err := persistent(false)
	if err != nil || !ack.SessionPresent {
		t.Fatalf("resume sensor-2: %+v, %v", ack, err)
	}
	s2.expectOnly(t, "devices/sensor-2/commands/c")
	s2.expectOnly(t, "devices/sensor-2/commands/c")
	poll(t, "the queue delivered", func() bool {
		return value("ztgate_broker_queued_messages", "state", "offline") == 0 &&
			value("ztgate_broker_queued_messages", "state", "connected") == 0 &&
			value("ztgate_broker_stored_sessions", "state", "offline") == 0 &&
			value("ztgate_broker_stored_sessions", "state", "connected") == 3
	})
	if v := value("ztgate_broker_messages_dropped_total", "", ""); v != 0 {
		t.Errorf("messages dropped = %v with nothing dropped", v)
	}
}

// A QoS 1 message to a session already holding the most messages it may
// is dropped and counted as inflight_full; the ones before it are queued.
func TestBrokerMetricsCountInflightFull(t *testing.T) {
	e, value := brokerEnv(t, Limits{MaxInflight: 2})
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	s2, _, err := e.connect(e.enroll("sensor-2", nil), &paho.Connect{ClientID: "s2", CleanStart: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	if err != nil {
		t.Fatalf("connect sensor-2: %v", err)
	}
	if got := s2.subscribe(t, sub("devices/sensor-2/commands/#", 1)); got[0] != 1 {
		t.Fatalf("SUBACK %#x", got[0])
	}
	_ = s2.Disconnect(&paho.Disconnect{})
	poll(t, "sensor-2 offline", func() bool { return value("ztgate_broker_stored_sessions", "state", "offline") == 1 })

	command := func() {
		t.Helper()
		if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-2/commands/c", QoS: 1, Payload: []byte("c")}); code != 0 {
			t.Fatalf("command: reason %#x", code)
		}
	}
	// mochi acknowledges a PUBLISH before it delivers it: each step waits
	// for the delivery to be queued or dropped.
	command()
	command()
	poll(t, "2 commands queued", func() bool { return value("ztgate_broker_queued_messages", "state", "offline") == 2 })
	if v := value("ztgate_broker_messages_dropped_total", "reason", "inflight_full"); v != 0 {
		t.Fatalf("at the limit: dropped{inflight_full} = %v, want 0", v)
	}
	command()
	poll(t, "the third command dropped", func() bool {
		return value("ztgate_broker_messages_dropped_total", "reason", "inflight_full") == 1
	})
	if q := value("ztgate_broker_queued_messages", "state", "offline"); q != 2 {
		t.Fatalf("over the limit: queued = %v, want 2", q)
	}
	if v := value("ztgate_broker_messages_dropped_total", "reason", "queue_full"); v != 0 {
		t.Errorf("dropped{queue_full} = %v, want 0", v)
	}
}

// A delivery to a client that does not read, once its outbound queue is
// full, is dropped and counted as queue_full; until then nothing is.
func TestBrokerMetricsCountQueueFull(t *testing.T) {
	e, value := brokerEnv(t, Limits{MaxOutboundQueue: 1})
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	raw := e.dial5(e.enroll("sensor-2", nil))
	if code := raw.Connect(t, "s2"); code != 0 {
		t.Fatalf("raw CONNACK %#x", code)
	}
	raw.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "devices/sensor-2/commands/#", Qos: 0}}})
	if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("no SUBACK: %v", err)
	}

	// Control: a message the client reads is no drop.
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-2/commands/c", QoS: 1, Payload: []byte("c")}); code != 0 {
		t.Fatalf("command: reason %#x", code)
	}
	if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Publish {
		t.Fatalf("first command not delivered: %v", err)
	}
	if v := value("ztgate_broker_messages_dropped_total", "reason", "queue_full"); v != 0 {
		t.Fatalf("dropped{queue_full} = %v with the client reading, want 0", v)
	}

	// Now the client reads nothing: once the connection's buffers and the
	// one-slot queue are full, deliveries are dropped. A bounded number of
	// large QoS 1 messages (acknowledged by the broker whatever becomes of
	// the delivery) is far more than those buffers hold.
	big := bytes.Repeat([]byte("x"), 128<<10)
	for i := 0; i < 400 && value("ztgate_broker_messages_dropped_total", "reason", "queue_full") == 0; i++ {
		if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-2/commands/c", QoS: 1, Payload: big}); code != 0 {
			t.Fatalf("command %d: reason %#x", i, code)
		}
	}
	if v := value("ztgate_broker_messages_dropped_total", "reason", "queue_full"); v == 0 {
		t.Fatal("dropped{queue_full} = 0 after 400 deliveries of 128 KiB to a client that reads nothing")
	}
}

// BenchmarkBrokerStats is the cost of one scrape of the broker's figures
// with n sessions held; n=0 is the baseline.
func BenchmarkBrokerStats(b *testing.B) {
	for _, n := range []int{0, 10_000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			e := newEnv(b, allowAll)
			for i := range n {
				cl := e.gw.server.NewClient(nil, listenerID, fmt.Sprintf("bench-%d", i), false)
				e.gw.server.Clients.Add(cl)
			}
			b.ReportAllocs()
			for b.Loop() {
				_ = e.gw.brokerStats()
			}
		})
	}
}
