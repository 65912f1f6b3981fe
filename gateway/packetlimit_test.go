package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/policy"
)

const (
	// mqttMaxRemaining is the largest remaining length MQTT can encode
	// (0xFF 0xFF 0xFF 0x7F): a header that asks for 256 MiB.
	mqttMaxRemaining = 268435455

	// perConnAllocBound bounds what one refused connection may allocate in
	// the test binary (the end of the gateway's TLS handshake, mochi's
	// client, the test's reads): a fraction of the 1 MiB maximum packet
	// size, and a thousandth of the 256 MiB a header can declare.
	perConnAllocBound = 256 << 10
)

// limitCases are the limits the tests run under: the defaults, which apply
// without any configuration, and configured ones.
var limitCases = []struct {
	name                  string
	mod                   func(*Config)
	maxPacket, maxConnect int
}{
	{"defaults", nil, DefaultMaxPacketSize, DefaultMaxConnectPacketSize},
	{"configured", func(c *Config) { c.MaxPacketSize, c.MaxConnectPacketSize = 8<<10, 2<<10 }, 8 << 10, 2 << 10},
}

// newEnvSlowDeadline is newEnvWith with a pre-CONNECT deadline far beyond
// waitFor, so that a connection the gateway closes was closed for what it
// sent, not because the deadline fired.
func newEnvSlowDeadline(t *testing.T, d policy.Decider, mod func(*Config)) *env {
	t.Helper()
	var cfg Config
	e := newEnvWith(t, d, func(c *Config) {
		if mod != nil {
			mod(c)
		}
		cfg = *c
	})
	_ = e.gw.Close()
	gw, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	gw.connectTimeout = 10 * waitFor
	if err := gw.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = gw.Close() })
	e.gw, e.addr = gw, gw.Addr().String()
	return e
}

// fixedHeader encodes a fixed header of packet type typ (flags 0) declaring
// remaining bytes to follow.
func fixedHeader(typ byte, remaining int) []byte {
	var buf bytes.Buffer
	fh := packets.FixedHeader{Type: typ, Remaining: remaining}
	fh.Encode(&buf)
	return buf.Bytes()
}

// totalAlloc is the heap allocated so far by the whole test binary, the
// gateway included: it only grows, so a difference is what was allocated
// in between, whatever the garbage collector did.
func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// expectAllClosed waits, for every connection at once, until the gateway
// closes it, and returns how many it left open after waitFor.
func expectAllClosed(conns []net.Conn) (open int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(waitFor))
			buf := make([]byte, 512)
			for {
				_, err := c.Read(buf)
				if err == nil {
					continue // a CONNACK or DISCONNECT before the close
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					mu.Lock()
					open++
					mu.Unlock()
				}
				return
			}
		}()
	}
	wg.Wait()
	return open
}

// A fixed header is all it takes to make mochi allocate the length it
// declares, before a byte of the body arrives. The first packet of a
// connection is bounded by the small pre-CONNECT limit, every packet by the
// maximum packet size, and a connection that declares more is closed
// without being read further: the tests send the header and nothing else.
func TestDeclaredLengthBeyondLimitClosesConnection(t *testing.T) {
	const n = 4
	for _, lc := range limitCases {
		cases := []struct {
			name         string
			afterConnect bool // send a valid CONNECT first
			header       []byte
		}{
			{"CONNECT declaring 256 MiB", false, fixedHeader(packets.Connect, mqttMaxRemaining)},
			{"CONNECT one byte over the pre-CONNECT limit", false, fixedHeader(packets.Connect, lc.maxConnect-headerLen(lc.maxConnect)+1)},
			{"CONNECT within the maximum packet size but over the pre-CONNECT limit", false, fixedHeader(packets.Connect, lc.maxPacket-8)},
			{"PUBLISH as first packet", false, fixedHeader(packets.Publish, 16)},
			{"PUBLISH declaring 256 MiB after CONNECT", true, fixedHeader(packets.Publish, mqttMaxRemaining)},
			{"PUBLISH over the maximum packet size after CONNECT", true, fixedHeader(packets.Publish, lc.maxPacket)},
		}
		for _, tc := range cases {
			t.Run(lc.name+"/"+tc.name, func(t *testing.T) {
				e := newEnvSlowDeadline(t, engine(t), lc.mod)
				cfg := e.enroll("sensor-1", nil)
				conns := make([]net.Conn, n)
				for i := range conns {
					c := e.dial5(cfg)
					if tc.afterConnect {
						if code := c.Connect(t, fmt.Sprintf("sensor-1-%d", i)); code != 0 {
							t.Fatalf("CONNACK %#x", code)
						}
					}
					conns[i] = c.Conn
				}
				before := totalAlloc()
				for _, c := range conns {
					_ = c.SetWriteDeadline(time.Now().Add(waitFor))
					if _, err := c.Write(tc.header); err != nil {
						t.Fatalf("write header: %v", err)
					}
				}
				open := expectAllClosed(conns)
				grew := totalAlloc() - before
				t.Logf("%d connections: %d KiB allocated in all", n, grew>>10)
				if grew > n*perConnAllocBound {
					t.Errorf("%d connections allocated %d KiB, want less than %d KiB", n, grew>>10, n*perConnAllocBound>>10)
				}
				if open > 0 {
					t.Errorf("%d of %d connections still open after the header: the gateway is waiting for the body", open, n)
				}
				if !tc.afterConnect {
					poll(t, "the refusal logged with the identity", func() bool {
						return strings.Contains(e.logs.String(), "connection refused before CONNECT") &&
							strings.Contains(e.logs.String(), "spiffe_id=spiffe://example.org/device/sensor-1")
					})
				}
			})
		}
	}
}

// Positive controls at the limits: a CONNECT of exactly the pre-CONNECT
// limit is accepted and a PUBLISH of exactly the maximum packet size is
// delivered, and MQTT 5 clients are told the maximum in the CONNACK.
func TestPacketsAtTheLimitsWork(t *testing.T) {
	for _, lc := range limitCases {
		t.Run(lc.name, func(t *testing.T) {
			e := newEnvWith(t, engine(t), lc.mod)
			ctl := e.mustConnect(e.enroll("ctl-1", map[string]string{"role": "controller"}), "ctl-1")
			ctl.subscribe(t, sub("devices/+/telemetry/#", 0))
			sensor := e.enroll("sensor-1", nil)

			_, ack, err := e.connect(sensor, &paho.Connect{ClientID: "sensor-1-paho", CleanStart: true})
			if err != nil {
				t.Fatalf("CONNECT: %v", err)
			}
			if ack.Properties == nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != uint32(lc.maxPacket) {
				t.Errorf("CONNACK properties %+v, want Maximum Packet Size %d", ack.Properties, lc.maxPacket)
			}

			raw := e.dial5(sensor)
			connect := sizedTo(t, packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Connect},
				Connect: packets.ConnectParams{
					ProtocolName: []byte("MQTT"), Keepalive: 30, Clean: true, ClientIdentifier: "sensor-1-raw",
					WillFlag: true, WillTopic: "devices/sensor-1/state",
				},
			}, lc.maxConnect, func(pk *packets.Packet, b []byte) { pk.Connect.WillPayload = b })
			raw.Write(t, connect)
			if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
				t.Fatalf("CONNECT of %d bytes: %v, CONNACK %+v", lc.maxConnect, err, pk)
			}

			const topic = "devices/sensor-1/telemetry/big"
			publish := sizedTo(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic},
				lc.maxPacket, func(pk *packets.Packet, b []byte) { pk.Payload = b })
			raw.Write(t, publish)
			m := ctl.expectOnly(t, topic)
			if len(m.Payload) != len(publish.Payload) {
				t.Fatalf("delivered %d bytes of payload, want %d", len(m.Payload), len(publish.Payload))
			}
		})
	}
}

// The CONNECT the issue names: a 60 KiB will under the default limits.
func TestConnectWith60KiBWill(t *testing.T) {
	e := newEnv(t, engine(t))
	will := bytes.Repeat([]byte("w"), 60<<10)
	if _, _, err := e.connect(e.enroll("sensor-1", nil), &paho.Connect{
		ClientID: "sensor-1", CleanStart: true, WillMessage: &paho.WillMessage{Topic: "devices/sensor-1/state", Payload: will},
	}); err != nil {
		t.Fatalf("CONNECT with a 60 KiB will: %v", err)
	}
}

// headerLen is the size of the fixed header of a packet of size bytes in
// all: the type byte and 1 to 4 bytes of remaining length.
func headerLen(size int) int {
	for h := 2; h < 5; h++ {
		if size-h < 1<<(7*(h-1)) {
			return h
		}
	}
	return 5
}

// encoded is pk as an MQTT 5 client sends it.
func encoded(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	pk.ProtocolVersion = 5
	return testclient.EncodePacket(t, pk)
}

// sizedTo fills the payload of pk (through set) so that pk is exactly size
// bytes on the wire.
func sizedTo(t *testing.T, pk packets.Packet, size int, set func(*packets.Packet, []byte)) packets.Packet {
	t.Helper()
	set(&pk, nil)
	over := len(encoded(t, pk))
	// The fixed header grows with the length; size the payload with the
	// header the full packet will have.
	over += headerLen(size) - headerLen(over)
	set(&pk, bytes.Repeat([]byte("p"), size-over))
	if got := len(encoded(t, pk)); got != size {
		t.Fatalf("test packet is %d bytes, want %d", got, size)
	}
	return pk
}

// BenchmarkOnPacketEncode is what the CONNACK property costs every other
// packet the gateway writes: mochi calls the hook for each.
func BenchmarkOnPacketEncode(b *testing.B) {
	g := newIdleGateway(b, allowAll)
	cl, _ := g.addSession("sensor-1", nil, 5)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "devices/sensor-1/telemetry/temp",
		Payload:     []byte("21.5 C at sensor"),
	}
	b.ReportAllocs()
	for b.Loop() {
		pk = g.hook.OnPacketEncode(cl, pk)
	}
}
