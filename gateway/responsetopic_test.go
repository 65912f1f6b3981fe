package gateway

import (
	"bytes"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
)

// A Response Topic asks the receiver to publish its answer there. A
// controller may publish to every device's commands, so a device that could
// name any topic as its Response Topic would have the controller write to
// another device's commands on its behalf. The publisher must itself be
// allowed to receive on the topic it names.
func TestResponseTopicMustBeReadableByThePublisher(t *testing.T) {
	e := newEnv(t, engine(t))
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	e.enroll("sensor-2", nil)
	ctl := e.mustConnect(e.enroll("ctl-1", map[string]string{"role": "controller"}), "ctl-1")
	ctl.subscribe(t, sub("devices/+/telemetry/#", 1))

	const topic = "devices/sensor-1/telemetry/temp"
	refused := []struct {
		name, responseTopic string
		qos                 byte
	}{
		{"another device's commands", "devices/sensor-2/commands/x", 1},
		{"another device's commands, QoS 0", "devices/sensor-2/commands/x", 0},
		{"another device's commands, QoS 2", "devices/sensor-2/commands/x", 2},
		{"a wildcard", "devices/sensor-1/commands/+", 1},
		{"a multi-level wildcard", "devices/sensor-1/commands/#", 1},
		{"a server topic", "$SYS/broker/x", 1},
		{"a topic it may publish but not receive", "devices/sensor-1/telemetry/x", 1},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			code := sensor.publish(t, &paho.Publish{
				Topic: topic, QoS: tc.qos, Payload: []byte("refused: " + tc.name),
				Properties: &paho.PublishProperties{ResponseTopic: tc.responseTopic, CorrelationData: []byte("c")},
			})
			if tc.qos > 0 && code != 0x87 {
				t.Fatalf("acknowledgement %#x, want 0x87 (not authorized)", code)
			}
		})
	}

	// Positive control, sent last on the same path: a Response Topic the
	// device may receive on reaches the controller, property intact. Its
	// arrival also shows that none of the refused ones was delivered.
	const reply = "devices/sensor-1/commands/reply"
	if code := sensor.publish(t, &paho.Publish{
		Topic: topic, QoS: 1, Payload: []byte("ok"),
		Properties: &paho.PublishProperties{ResponseTopic: reply, CorrelationData: []byte("corr-1")},
	}); code != 0 {
		t.Fatalf("publish with a readable Response Topic: acknowledgement %#x, want 0", code)
	}
	m := ctl.expectOnly(t, topic)
	if m.Properties == nil || m.Properties.ResponseTopic != reply {
		t.Fatalf("controller received %q with properties %+v before the control: delivered against policy", m.Payload, m.Properties)
	}
	if !bytes.Equal(m.Properties.CorrelationData, []byte("corr-1")) {
		t.Fatalf("correlation data %q, want %q", m.Properties.CorrelationData, "corr-1")
	}
	if logs := e.logs.String(); !strings.Contains(logs, "response topic not readable") {
		t.Errorf("no refusal logged with the reason; log:\n%s", logs)
	}
}

// BenchmarkPublishResponseTopic is OnPublish without and with a Response
// Topic: the check costs nothing when there is none, and one receive
// decision (cached like any other) when there is.
func BenchmarkPublishResponseTopic(b *testing.B) {
	for _, bd := range benchDeciders(b) {
		g := newIdleGateway(b, bd.d)
		pub, _ := g.addSession("sensor-1", nil, 5)
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName:   "devices/sensor-1/telemetry/temp",
			Payload:     []byte("21.5 C at sensor"),
		}
		withRT := pk
		withRT.Properties.ResponseTopic = "devices/sensor-1/commands/reply"
		for _, c := range []struct {
			name string
			pk   packets.Packet
		}{{"none", pk}, {"response_topic", withRT}} {
			if _, err := g.hook.OnPublish(pub, c.pk); err != nil {
				b.Fatalf("%s/%s: publish denied", bd.name, c.name)
			}
			b.Run(bd.name+"/"+c.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := g.hook.OnPublish(pub, c.pk); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
