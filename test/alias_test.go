package test

import (
	"testing"
)

// Attack class: MQTT 5 topic aliases. The topic that is authorized is the
// one an alias resolves to, never the empty topic of an alias-only
// PUBLISH, and a refused PUBLISH must not leave an alias pointing at a
// forbidden topic.
func TestTopicAlias_ResolvedTopicAuthorized(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	spy := f.spyOn(t)
	const (
		own      = "devices/sensor-1/telemetry/aliased"
		foreign  = "devices/sensor-2/telemetry/forged"
		foreign2 = "devices/sensor-2/state"
	)

	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	// mochi accepts topic aliases without announcing a Topic Alias Maximum
	// in CONNACK; the positive control below shows they work.

	// Positive control: register alias 1 for an allowed topic, then reuse it.
	dev.Pub(t, msg{Topic: own, Alias: 1, Payload: "with-topic", QoS: 1})
	spy.Msgs.ExpectPayload(t, own, "with-topic", wait)
	dev.Pub(t, msg{Alias: 1, Payload: "alias-only", QoS: 1})
	spy.Msgs.ExpectPayload(t, own, "alias-only", wait)

	// A forbidden topic with a new alias is refused...
	dev.PubDenied(t, msg{Topic: foreign, Alias: 2, Payload: "forged-register"})
	// ...and the alias must not have been registered for it.
	if r := dev.Send(t, msg{Alias: 2, Payload: "forged-alias-only", QoS: 1}); r.Err == nil && r.Reason < 0x80 {
		t.Errorf("alias-only PUBLISH on an alias refused for %q was accepted (reason %#x)", foreign, r.Reason)
	}
	if dev.Closed() {
		dev = f.env.MustConnect(t, f.s1, "sensor-1", nil)
		dev.Pub(t, msg{Topic: own, Alias: 1, Payload: "re-registered", QoS: 1})
		spy.Msgs.ExpectPayload(t, own, "re-registered", wait)
	}

	// Re-pointing an allowed alias at a forbidden topic is refused, and the
	// alias is never resolved to the forbidden topic afterwards.
	dev.PubDenied(t, msg{Topic: foreign2, Alias: 1, Payload: "forged-remap"})
	if r := dev.Send(t, msg{Alias: 1, Payload: "after-remap", QoS: 1}); r.Err == nil && r.Reason < 0x80 {
		t.Logf("alias-only PUBLISH after a refused remap was accepted; it must have gone to %q", own)
	}

	// QoS 0 has no PUBACK to tell; delivery is what counts. A QoS 1
	// publish on the same connection afterwards is processed after them.
	if !dev.Closed() {
		dev.Send(t, msg{Topic: foreign, Alias: 3, Payload: "forged-qos0"})
		dev.Send(t, msg{Alias: 3, Payload: "forged-qos0-alias-only"})
		if !dev.Closed() {
			dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/after-qos0", Payload: "ok", QoS: 1})
			spy.Msgs.Expect(t, "devices/sensor-1/telemetry/after-qos0", wait)
		}
	}

	// Positive control on a fresh connection, then nothing forged anywhere.
	c := f.env.MustConnect(t, f.s1, "sensor-1-control", nil)
	c.Pub(t, msg{Topic: "devices/sensor-1/telemetry/control", Payload: "ok", QoS: 1})
	spy.Msgs.Expect(t, "devices/sensor-1/telemetry/control", wait)
	spy.Msgs.Drain(own) // "after-remap", if the gateway kept the old mapping
	spy.Msgs.Never(t, foreign)
	spy.Msgs.Never(t, foreign2)
	spy.Msgs.Never(t, "")
	spy.Msgs.ExpectNone(t, quiet)
}
