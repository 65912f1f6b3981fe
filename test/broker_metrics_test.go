package test

import (
	"testing"
	"time"
)

// Rule: /metrics reports the broker's own figures, and they follow what
// devices do: messages and bytes in and out, retained messages, sessions
// connected and offline, subscriptions, and messages queued for an offline
// persistent session (the figures before each step are its control).
func TestBrokerMetrics_ScrapedAfterTraffic(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	env := f.env
	value := func(name string, labels map[string]string) float64 {
		return metricValue(t, scrapeMetrics(t, env), name, labels)
	}
	offline := map[string]string{"state": "offline"}
	// waitValue scrapes until name has want, failing after wait: the
	// broker acknowledges a PUBLISH before it delivers it.
	waitValue := func(name string, labels map[string]string, want float64) {
		t.Helper()
		deadline := time.Now().Add(wait)
		for {
			v := value(name, labels)
			if v == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s%v = %v; want %v", name, labels, v, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	in0 := value("ztgate_broker_messages_received_total", nil)
	if v := value("ztgate_broker_retained_messages", nil); v != 0 {
		t.Fatalf("retained messages = %v before any was published", v)
	}

	s1 := env.MustConnect(t, f.s1, "sensor-1", persistent)
	s1.Sub(t, "devices/sensor-1/commands/#")
	s1.Close()
	waitValue("ztgate_broker_stored_sessions", offline, 1)
	if v := value("ztgate_broker_subscriptions", nil); v != 1 {
		t.Errorf("subscriptions = %v with one persistent session subscribed, want 1", v)
	}

	ctl := env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/state")
	s2 := env.MustConnect(t, f.s2, "sensor-2", nil)
	s2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "online", QoS: 1, Retain: true})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-2/state", "online", wait)
	for range 3 {
		ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/reboot", Payload: "now", QoS: 1})
	}

	waitValue("ztgate_broker_queued_messages", offline, 3)
	if v := value("ztgate_broker_retained_messages", nil); v != 1 {
		t.Errorf("retained messages = %v after one retained PUBLISH, want 1", v)
	}
	if d := value("ztgate_broker_messages_received_total", nil) - in0; d != 4 {
		t.Errorf("messages received grew by %v after 4 PUBLISHes, want 4", d)
	}
	if v := value("ztgate_broker_messages_sent_total", nil); v < 1 {
		t.Errorf("messages sent = %v after a delivery to the controller", v)
	}
	for _, name := range []string{"ztgate_broker_received_bytes_total", "ztgate_broker_sent_bytes_total"} {
		if v := value(name, nil); v <= 0 {
			t.Errorf("%s = %v after traffic", name, v)
		}
	}

	// The device comes back and takes its queue: nothing is queued, no
	// session is offline.
	s1 = env.MustConnect(t, f.s1, "sensor-1", persistent)
	for range 3 {
		s1.Msgs.ExpectPayload(t, "devices/sensor-1/commands/reboot", "now", wait)
	}
	waitValue("ztgate_broker_queued_messages", offline, 0)
	waitValue("ztgate_broker_stored_sessions", offline, 0)
	if v := value("ztgate_broker_messages_dropped_total", nil); v != 0 {
		t.Errorf("messages dropped = %v with nothing dropped, want 0", v)
	}
}
