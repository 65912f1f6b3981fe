package gateway

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkRepeatedDenial is one session sending the same denied QoS 0
// PUBLISH again and again, as a client flooding the gateway with it would:
// the cost of the decision and of the gateway's own log line.
func BenchmarkRepeatedDenial(b *testing.B) {
	for _, bd := range benchDeciders(b) {
		if bd.name == "allow-all" {
			continue // denies nothing
		}
		g := newIdleGateway(b, bd.d)
		pub, _ := g.addSession("sensor-1", nil, 5)
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName:   "devices/sensor-2/telemetry/temp",
			Payload:     []byte("21.5 C at sensor"),
		}
		b.Run(bd.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.hook.OnPublish(pub, pk); err == nil {
					b.Fatal("allowed")
				}
			}
		})
	}
}
