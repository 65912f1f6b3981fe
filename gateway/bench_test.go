package gateway

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/internal/mqttconn"
	"github.com/ztgate/ztgate/metrics"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// defaultEngine compiles ztgate's default policy once per test binary.
var defaultEngine = sync.OnceValues(func() (*policy.Engine, error) {
	return policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: quietLogger()})
})

// benchDeciders are compared in one run: the allow-all baseline (the cost
// of the broker, TLS and the hook without a policy), the real engine with
// ztgate's default policy, the same behind the decision cache, and the
// chain the app builds (decision log, metrics, cache) with and without the
// cache.
func benchDeciders(b *testing.B) []struct {
	name string
	d    policy.Decider
} {
	e, err := defaultEngine()
	if err != nil {
		b.Fatalf("default policy: %v", err)
	}
	dl, err := decisionlog.New(decisionlog.Config{Writer: io.Discard, SampleAllow: 0})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = dl.Close() })
	m := metrics.New(nil)
	return []struct {
		name string
		d    policy.Decider
	}{
		{"allow-all", allowAll},
		{"default-policy", e},
		{"default-policy-cached", policy.NewCache(e, nil, policy.CacheOptions{})},
		{"app-chain-uncached", dl.Wrap(m.Wrap(e))},
		{"app-chain-cached", dl.Wrap(m.Wrap(policy.NewCache(e, nil, policy.CacheOptions{})))},
	}
}

// BenchmarkPublishThroughGateway measures QoS 0 messages from one publisher
// to one subscriber, both over mTLS: each message is one publish decision
// and one receive decision.
func BenchmarkPublishThroughGateway(b *testing.B) {
	for _, bd := range benchDeciders(b) {
		b.Run(bd.name, func(b *testing.B) {
			e := newEnv(b, bd.d)
			var received atomic.Int64
			subCfg := e.enroll("ctl", controllerLabels)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			conn, err := mqttconn.Dial(ctx, e.addr, mqttconn.Options{
				TLS:               subCfg,
				Connect:           &paho.Connect{ClientID: "sub", CleanStart: true, KeepAlive: 60},
				OnPublishReceived: func(paho.PublishReceived) (bool, error) { received.Add(1); return true, nil },
			})
			if err != nil {
				b.Fatal(err)
			}
			subscriber := conn.Client
			defer func() { _ = subscriber.Disconnect(&paho.Disconnect{}) }()
			if _, err := subscriber.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{sub("devices/+/telemetry/#", 0)}}); err != nil {
				b.Fatal(err)
			}
			publisher := e.mustConnect(e.enroll("sensor-1", nil), "pub")
			msg := &paho.Publish{Topic: "devices/sensor-1/telemetry/temp", Payload: []byte("21.5 C at sensor")}

			// Flow control keeps the broker's per-client queue (8192) from
			// overflowing, which would drop QoS 0 messages.
			const window = 2048
			wait := func(n int64) {
				deadline := time.Now().Add(waitFor)
				for received.Load() < n {
					if time.Now().After(deadline) {
						b.Fatalf("delivered %d of %d", received.Load(), n)
					}
					time.Sleep(50 * time.Microsecond)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 1; i <= b.N; i++ {
				if _, err := publisher.Publish(ctx, msg); err != nil {
					b.Fatal(err)
				}
				if i%256 == 0 {
					wait(int64(i - window))
				}
			}
			wait(int64(b.N))
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkHookDecisionPath calls the hook's hot paths directly, as mochi
// does per PUBLISH (OnPublish) and per delivery (OnACLCheck, read), to show
// what the gateway itself allocates per message.
func BenchmarkHookDecisionPath(b *testing.B) {
	for _, bd := range benchDeciders(b) {
		g := newIdleGateway(b, bd.d)
		h := g.hook
		pub, _ := g.addSession("sensor-1", nil, 5)
		rcv, _ := g.addSession("ctl", controllerLabels, 5)
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName:   "devices/sensor-1/telemetry/temp",
			Payload:     []byte("21.5 C at sensor"),
		}
		if _, err := h.OnPublish(pub, pk); err != nil {
			b.Fatalf("%s: publish denied", bd.name)
		}
		if !h.OnACLCheck(rcv, pk.TopicName, false) {
			b.Fatalf("%s: receive denied", bd.name)
		}
		b.Run(bd.name+"/publish", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := h.OnPublish(pub, pk); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bd.name+"/receive", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !h.OnACLCheck(rcv, pk.TopicName, false) {
					b.Fatal("denied")
				}
			}
		})
	}
}
