package gateway

import (
	"crypto/tls"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/bridge"
)

// BenchmarkPublishEgress is the hook's PUBLISH path without bridges, with a
// bridge none of whose out rules match the topic (what every publish pays
// once a bridge is configured), and with one that takes the message (the
// bridge_out decision by the default policy and the hand-off to the queue
// writer).
func BenchmarkPublishEgress(b *testing.B) {
	eng := engine(b)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "devices/sensor-1/telemetry/temp",
		Payload:     []byte("21.5 C at sensor"),
	}
	manager := func(filter string) *bridge.Manager {
		m, err := bridge.New([]bridge.Config{{Name: "cloud", URL: "mqtts://127.0.0.1:1",
			Out: []bridge.OutRule{{Filter: filter, RemotePrefix: "plant-a/", QoS: 1}}, QueueMaxMessages: bridge.MaxQueueMaxMessages}},
			bridge.Deps{
				Dir:         b.TempDir(),
				TrustDomain: testTD,
				ClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return nil, errors.New("not dialled")
				},
				Decider: eng,
				PublishLocal: func(spiffeid.ID, string, string, []byte, byte, bool) error {
					return nil
				},
				Logger: quietLogger(),
			})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Close() })
		return m
	}
	for _, c := range []struct {
		name   string
		egress func() Egress
	}{
		{"none", func() Egress { return nil }},
		{"no-match", func() Egress { return manager("sites/+/telemetry/#") }},
		{"match", func() Egress { return manager("devices/+/telemetry/#") }},
	} {
		b.Run(c.name, func(b *testing.B) {
			g := newIdleGateway(b, eng)
			g.egress = c.egress()
			pub, _ := g.addSession("sensor-1", nil, 5)
			if _, err := g.hook.OnPublish(pub, pk); err != nil {
				b.Fatal("publish denied")
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.hook.OnPublish(pub, pk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
