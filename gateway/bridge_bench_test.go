package gateway

import (
	"crypto/tls"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/policy"
)

// BenchmarkPublishEgress is the hook's PUBLISH path without bridges, with a
// bridge none of whose out rules match the topic (what every publish pays
// once a bridge is configured), and with one that takes the message (the
// bridge_out decision by the default policy, which allows it, and the
// hand-off to the queue writer). Each with the engine alone and behind the
// decision cache, as the gateway runs it (a bridge_out decision is then a
// hit).
func BenchmarkPublishEgress(b *testing.B) {
	eng, err := defaultEngine()
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range []struct {
		name    string
		decider policy.Decider
	}{
		{"engine", eng},
		{"cached", policy.NewCache(eng, nil, policy.CacheOptions{})},
	} {
		b.Run(d.name, func(b *testing.B) { benchPublishEgress(b, d.decider) })
	}
}

func benchPublishEgress(b *testing.B, eng policy.Decider) {
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
		filter string // of the bridge's out rule; "": no bridge
	}{
		{"none", ""},
		{"no-match", "sites/+/telemetry/#"},
		{"match", "devices/+/telemetry/#"},
	} {
		b.Run(c.name, func(b *testing.B) {
			g := newIdleGateway(b, eng)
			var m *bridge.Manager
			if c.filter != "" {
				m = manager(c.filter)
				g.egress = m
			}
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
			// What was measured: every message taken (or dropped once
			// the unstarted writer's buffer was full), none denied.
			if m != nil {
				st := m.Status()[0]
				if taken := st.Queued+st.Dropped > 0; st.Denied != 0 || taken != (c.name == "match") {
					b.Fatalf("%s: %+v", c.name, st)
				}
			}
		})
	}
}
