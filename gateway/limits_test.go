package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/metrics"
	"github.com/ztgate/ztgate/policy"
)

// limitsEnv is a gateway with limits and a metrics registry.
type limitsEnv struct {
	*env
	reg *prometheus.Registry
}

func newLimitsEnv(t *testing.T, d policy.Decider, mod func(*Config)) *limitsEnv {
	t.Helper()
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, d, func(c *Config) {
		c.Metrics = metrics.New(reg)
		if mod != nil {
			mod(c)
		}
	})
	return &limitsEnv{env: e, reg: reg}
}

func (e *limitsEnv) hits(limit string) float64 {
	return metricValue(e.t, e.reg, "ztgate_limit_hits_total", "limit", limit)
}

// limitsEngine is the gateway's test policy plus a limits rule: a
// controller gets more than a device.
func limitsEngine(t *testing.T, rule string) *policy.Engine {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", "policy", "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{
		"authz.rego":  {Data: src},
		"limits.rego": {Data: []byte("package ztgate.authz\n\n" + rule)},
	}
	e, err := policy.NewEngine(fs.FS(fsys), policy.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("engine: %v", err)
	}
	return e
}

const controllerLimits = `limits := {"max_packet_size": 8192, "max_sessions_per_identity": 3, "max_subscriptions_per_session": 4} if input.device.labels.role == "controller"`

func publishOf(topic string, size int, version byte) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, ProtocolVersion: version}
	// Sized so that the whole packet is size bytes.
	pk.Payload = []byte{}
	var buf bytes.Buffer
	_ = pk.PublishEncode(&buf)
	over := buf.Len() + headerLen(size) - headerLen(buf.Len())
	pk.Payload = bytes.Repeat([]byte("p"), size-over)
	return pk
}

// A PUBLISH of exactly the maximum packet size is delivered; one byte more
// ends the connection: DISCONNECT 0x95 for MQTT 5, a close for 3.1.1.
// The maximum is the identity's: the limits rule raises it for controllers,
// and the CONNACK says so.
func TestPacketOverMaximumSize(t *testing.T) {
	const maxPacket = 4096
	for _, version := range []byte{5, 4} {
		t.Run(fmt.Sprintf("MQTT %d", version), func(t *testing.T) {
			e := newLimitsEnv(t, engine(t), func(c *Config) {
				c.MaxPacketSize, c.MaxConnectPacketSize = maxPacket, 2048
				c.LimitsPolicy = limitsEngine(t, controllerLimits)
			})
			ctl := e.mustConnect(e.enroll("ctl-1", controllerLabels), "ctl-1")
			ctl.subscribe(t, sub("devices/+/telemetry/#", 0))
			cfg := e.enroll("sensor-1", nil)
			const topic = "devices/sensor-1/telemetry/x"

			raw := dialRaw(e.env, cfg, version)
			if code := raw.Connect(t, "sensor-1"); code != 0 {
				t.Fatalf("CONNACK %#x", code)
			}
			raw.Write(t, publishOf(topic, maxPacket, version))
			if m := ctl.expectOnly(t, topic); len(m.Payload) == 0 {
				t.Fatal("empty delivery")
			}

			raw.Write(t, publishOf(topic, maxPacket+1, version))
			pk, err := raw.Read()
			if version == 5 {
				if err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != packets.ErrPacketTooLarge.Code {
					t.Fatalf("after an oversized PUBLISH: %+v, %v; want DISCONNECT 0x95", pk.FixedHeader, err)
				}
				_, err = raw.Read()
			}
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection still open after the oversized PUBLISH (%v)", err)
			}
			poll(t, "the hit counted", func() bool { return e.hits("packet_size") == 1 })
		})
	}
}

// The limits rule gives controllers a larger maximum packet size: the
// CONNACK announces it and a packet between the two maxima passes.
func TestPacketSizeFromLimitsRule(t *testing.T) {
	e := newLimitsEnv(t, engine(t), func(c *Config) {
		c.MaxPacketSize, c.MaxConnectPacketSize = 4096, 2048
		c.LimitsPolicy = limitsEngine(t, controllerLimits)
	})
	sensor := e.enroll("sensor-1", nil)
	_, ack, err := e.connect(sensor, &paho.Connect{ClientID: "s", CleanStart: true})
	if err != nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != 4096 {
		t.Fatalf("sensor CONNACK %+v, %v; want Maximum Packet Size 4096", ack, err)
	}
	ctlCfg := e.enroll("ctl-1", controllerLabels)
	_, ack, err = e.connect(ctlCfg, &paho.Connect{ClientID: "c", CleanStart: true})
	if err != nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != 8192 {
		t.Fatalf("controller CONNACK %+v, %v; want Maximum Packet Size 8192", ack, err)
	}
	raw := dialRaw(e.env, ctlCfg, 5)
	if code := raw.Connect(t, "c-raw"); code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	raw.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	raw.Write(t, publishOf("devices/ctl-1/commands/x", 6000, 5)) // denied by the policy, not by size
	raw.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	for i := 0; i < 2; i++ {
		if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("controller connection after a 6000-byte PUBLISH: %+v, %v", pk.FixedHeader, err)
		}
	}
}

// dialRaw is dial5 or dial311.
func dialRaw(e *env, cfg *tls.Config, version byte) rawClient {
	if version == 5 {
		return rawClient{e.dial5(cfg)}
	}
	return rawClient{e.dial311(cfg)}
}

// The sessions of one identity are bounded; a takeover is not one more,
// and an ended session frees its slot. A controller gets its own maximum
// from the limits rule.
func TestMaxSessionsPerIdentity(t *testing.T) {
	for _, version := range []byte{5, 4} {
		t.Run(fmt.Sprintf("MQTT %d", version), func(t *testing.T) {
			e := newLimitsEnv(t, engine(t), func(c *Config) {
				c.Limits.MaxSessionsPerIdentity = 2
				c.LimitsPolicy = limitsEngine(t, controllerLimits)
			})
			want := packets.ErrQuotaExceeded.Code
			if version < 5 {
				want = packets.Err3NotAuthorized.Code
			}
			cfg := e.enroll("sensor-1", nil)
			connect := func(id string) (rawClient, byte) {
				raw := dialRaw(e.env, cfg, version)
				return raw, raw.Connect(t, id)
			}
			a, code := connect("a")
			if code != 0 {
				t.Fatalf("first session: %#x", code)
			}
			if _, code := connect("b"); code != 0 {
				t.Fatalf("second session (at the maximum): %#x", code)
			}
			if _, code := connect("c"); code != want {
				t.Fatalf("third session: CONNACK %#x, want %#x", code, want)
			}
			// A new connection of client ID a takes a's session over.
			if _, code := connect("a"); code != 0 {
				t.Fatalf("takeover of a: %#x", code)
			}
			a.ExpectClosed(t)
			if _, code := connect("c"); code != want {
				t.Fatalf("third session after the takeover: CONNACK %#x, want %#x", code, want)
			}
			// Another identity is not affected.
			for _, id := range []string{"x", "y"} {
				raw := dialRaw(e.env, e.enroll("sensor-"+id, nil), version)
				if code := raw.Connect(t, id); code != 0 {
					t.Fatalf("other identity: %#x", code)
				}
			}
			// The controller may hold three.
			ctl := e.enroll("ctl-1", controllerLabels)
			for i, wantCode := range []byte{0, 0, 0, want} {
				raw := dialRaw(e.env, ctl, version)
				if code := raw.Connect(t, fmt.Sprintf("ctl-%d", i)); code != wantCode {
					t.Fatalf("controller session %d: CONNACK %#x, want %#x", i+1, code, wantCode)
				}
			}
			if got := e.hits("sessions"); got != 3 {
				t.Fatalf("%v session hits counted, want 3", got)
			}
		})
	}
}

// A clean session that ends frees its slot.
func TestMaxSessionsSlotFreedOnDisconnect(t *testing.T) {
	e := newLimitsEnv(t, engine(t), func(c *Config) { c.Limits.MaxSessionsPerIdentity = 1 })
	cfg := e.enroll("sensor-1", nil)
	c := e.mustConnect(cfg, "a")
	if _, _, err := e.connect(cfg, &paho.Connect{ClientID: "b", CleanStart: true}); err == nil {
		t.Fatal("second session accepted at a maximum of 1")
	}
	c.Close()
	poll(t, "the slot freed", func() bool {
		c, _, err := e.connect(cfg, &paho.Connect{ClientID: "b", CleanStart: true})
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// A new filter beyond the maximum is refused before the policy: 0x97 for
// MQTT 5, 0x80 for 3.1.1. The filters the session holds can be subscribed
// again, and the controller gets its own maximum.
func TestMaxSubscriptionsPerSession(t *testing.T) {
	t.Run("MQTT 5", func(t *testing.T) {
		e := newLimitsEnv(t, engine(t), func(c *Config) {
			c.Limits.MaxSubscriptionsPerSession = 2
			c.LimitsPolicy = limitsEngine(t, controllerLimits)
		})
		c := e.mustConnect(e.enroll("sensor-1", nil), "s")
		got := c.subscribe(t, sub("devices/sensor-1/commands/a", 1), sub("devices/sensor-1/commands/b", 1))
		if !bytes.Equal(got, []byte{1, 1}) {
			t.Fatalf("two filters at a maximum of 2: %v", got)
		}
		got = c.subscribe(t, sub("devices/sensor-1/commands/a", 0), sub("devices/sensor-1/commands/c", 1))
		if !bytes.Equal(got, []byte{0, packets.ErrQuotaExceeded.Code}) {
			t.Fatalf("again a, then a third: %x; want 00 97", got)
		}
		// A filter the policy denies keeps its own code.
		ctl := e.mustConnect(e.enroll("ctl-1", controllerLabels), "c")
		got = ctl.subscribe(t, sub("devices/+/state", 0), sub("devices/a/telemetry/#", 0), sub("devices/b/telemetry/#", 0),
			sub("devices/c/telemetry/#", 0), sub("devices/d/telemetry/#", 0))
		if !bytes.Equal(got, []byte{0, 0, 0, 0, packets.ErrQuotaExceeded.Code}) {
			t.Fatalf("controller at its maximum of 4: %x", got)
		}
		if h := e.hits("subscriptions"); h != 2 {
			t.Fatalf("%v hits, want 2", h)
		}
	})
	t.Run("MQTT 3.1.1", func(t *testing.T) {
		e := newLimitsEnv(t, engine(t), func(c *Config) { c.Limits.MaxSubscriptionsPerSession = 1 })
		raw := rawClient{e.dial311(e.enroll("sensor-1", nil))}
		if code := raw.Connect(t, "s"); code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		codes := raw.subscribe(t, 1, "devices/sensor-1/commands/a", "devices/sensor-1/commands/b")
		if !bytes.Equal(codes, []byte{0, 0x80}) {
			t.Fatalf("SUBACK %x; want 00 80", codes)
		}
	})
}

// Over the message rate of its identity a publisher is held back, not
// dropped: every QoS 1 message arrives, the hits are counted and logged
// once, and the sessions of the identity share the bucket.
func TestPublishRateHoldsBack(t *testing.T) {
	const burst = 5
	e := newLimitsEnv(t, engine(t), func(c *Config) {
		c.Limits.PublishRate, c.Limits.PublishBurst = 50, burst
	})
	ctl := e.mustConnect(e.enroll("ctl-1", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/telemetry/#", 1))
	cfg := e.enroll("sensor-1", nil)
	pub := e.mustConnect(cfg, "pub-1")
	other := e.mustConnect(cfg, "pub-2")
	const topic = "devices/sensor-1/telemetry/x"

	// Positive control: the burst passes without a hit. The bucket is
	// full at the start; it refills at 50/s, so the burst leaves room.
	for i := range burst - 1 {
		if code := pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte{byte(i)}}); code != 0 {
			t.Fatalf("publish %d: %#x", i, code)
		}
	}
	for range burst - 1 {
		ctl.expectOnly(t, topic)
	}
	if h := e.hits("publish_rate"); h != 0 {
		t.Fatalf("%v hits within the burst", h)
	}

	// Over it, from both sessions: all arrive, later.
	const n = 30
	for i := range n {
		c := pub
		if i%2 == 1 {
			c = other
		}
		if code := c.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte{byte(i)}}); code != 0 {
			t.Fatalf("publish %d: %#x", i, code)
		}
	}
	for range n {
		ctl.expectOnly(t, topic)
	}
	if h := e.hits("publish_rate"); h < 2 {
		t.Fatalf("%v hits over the rate, want some from both sessions", h)
	}
	if lines := strings.Count(e.logs.String(), "limit=publish_rate"); lines != 1 {
		t.Fatalf("%d log lines for the rate, want 1 a minute", lines)
	}
}

// The byte rate is the same bucket, counted in bytes.
func TestPublishBytesRateHoldsBack(t *testing.T) {
	e := newLimitsEnv(t, engine(t), func(c *Config) {
		c.MaxPacketSize, c.MaxConnectPacketSize = 4096, 2048
		c.Limits.PublishBytesRate, c.Limits.PublishBytesBurst = 64<<10, 8<<10
	})
	ctl := e.mustConnect(e.enroll("ctl-1", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/telemetry/#", 1))
	pub := e.mustConnect(e.enroll("sensor-1", nil), "pub")
	const topic = "devices/sensor-1/telemetry/x"
	payload := bytes.Repeat([]byte("b"), 3000)
	// Two packets of ~3 KiB fit the 8 KiB burst.
	for range 2 {
		pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
		ctl.expectOnly(t, topic)
	}
	if h := e.hits("publish_bytes"); h != 0 {
		t.Fatalf("%v byte hits within the burst", h)
	}
	for range 20 {
		pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	}
	for range 20 {
		ctl.expectOnly(t, topic)
	}
	if h := e.hits("publish_bytes"); h == 0 {
		t.Fatal("no byte hit over the rate")
	}
}

// A connection that completes neither the TLS handshake nor the CONNECT in
// time is closed and counted; one that is slow but in time connects.
func TestHandshakeTimeout(t *testing.T) {
	const timeout = time.Second
	e := newLimitsEnv(t, engine(t), func(c *Config) { c.Limits.HandshakeTimeout = timeout })
	cfg := e.enroll("sensor-1", nil)

	silent, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(waitFor))
	if _, err := silent.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("silent connection: %v; want it closed by the gateway", err)
	}
	poll(t, "the timeout counted", func() bool { return e.hits("handshake_timeout") == 1 })

	// Positive control: the handshake starts well within the timeout.
	tcp, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(timeout / 4)
	cfg = cfg.Clone()
	cfg.ServerName = "localhost"
	raw := rawClient{testclient.NewRaw(tls.Client(tcp, cfg), 5)}
	if code := raw.Connect(t, "slow"); code != 0 {
		t.Fatalf("slow but in time: CONNACK %#x", code)
	}
	if h := e.hits("handshake_timeout"); h != 1 {
		t.Fatalf("%v timeouts counted, want 1", h)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// New connections from one source address beyond its burst are closed
// before the handshake; another address is not affected.
func TestConnRatePerIP(t *testing.T) {
	const burst = 3
	e := newLimitsEnv(t, engine(t), func(c *Config) {
		c.Limits.ConnRatePerIP, c.Limits.ConnBurstPerIP = 0.01, burst
	})
	cfg := e.enroll("sensor-1", nil)
	dialFrom := func(src string) error {
		d := &net.Dialer{Timeout: waitFor, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c := cfg.Clone()
		c.ServerName = "localhost"
		conn, err := tls.DialWithDialer(d, "tcp", e.addr, c)
		if err != nil {
			return err
		}
		// TLS 1.3: the server's verdict on the client certificate comes
		// with the first read.
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		return err
	}
	for i := range burst {
		if err := dialFrom("127.0.0.2"); err != nil {
			t.Fatalf("connection %d of the burst: %v", i+1, err)
		}
	}
	if err := dialFrom("127.0.0.2"); err == nil {
		t.Fatal("a connection over the burst got through")
	}
	if err := dialFrom("127.0.0.3"); err != nil {
		t.Fatalf("another address: %v", err)
	}
	poll(t, "the hit counted", func() bool { return e.hits("conn_rate") == 1 })
}

// Half-open connections (TCP only, no ClientHello) held by another address
// do not keep a device from connecting.
func TestHalfOpenConnectionsDoNotStarve(t *testing.T) {
	e := newLimitsEnv(t, engine(t), func(c *Config) { c.Limits.ConnRatePerIP, c.Limits.ConnBurstPerIP = 1000, 1000 })
	held := holdHalfOpen(t, e.addr, 200)
	defer closeAll(held)
	c := e.mustConnect(e.enroll("sensor-1", nil), "s")
	c.Close()
}

func holdHalfOpen(t testing.TB, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	d := &net.Dialer{Timeout: waitFor, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.4")}}
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			closeAll(conns)
			t.Fatalf("half-open %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	return conns
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// A limits rule that fails or names an unknown limit refuses the CONNECT:
// a typo must not leave an identity at limits nobody meant.
func TestLimitsRuleFailureRefusesConnect(t *testing.T) {
	cases := []struct{ name, rule string }{
		{"unknown limit", `limits := {"max_session": 16}`},
		{"not a number", `limits := {"publish_rate": "fast"}`},
		{"not an object", `limits := 5`},
		{"fraction of a session", `limits := {"max_sessions_per_identity": 1.5}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newLimitsEnv(t, engine(t), func(c *Config) { c.LimitsPolicy = limitsEngine(t, tc.rule) })
			if _, _, err := e.connect(e.enroll("sensor-1", nil), &paho.Connect{ClientID: "s", CleanStart: true}); err == nil {
				t.Fatal("CONNECT accepted")
			}
			if h := e.hits("limits_rule"); h != 1 {
				t.Fatalf("%v hits", h)
			}
		})
	}
	// Positive control: a rule undefined for the identity leaves the
	// configured limits.
	e := newLimitsEnv(t, engine(t), func(c *Config) { c.LimitsPolicy = limitsEngine(t, controllerLimits) })
	e.mustConnect(e.enroll("sensor-1", nil), "s").Close()
}

// rawClient adds a SUBSCRIBE to the raw client.
type rawClient struct{ *testclient.Raw }

func (c rawClient) subscribe(t *testing.T, id uint16, filters ...string) []byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 0})
	}
	c.Write(t, pk)
	ack, err := c.Read()
	if err != nil || ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK: %+v, %v", ack.FixedHeader, err)
	}
	return ack.ReasonCodes
}
