package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mpackets "github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/gateway"
)

func TestLimitsConfig(t *testing.T) {
	got, err := LoadConfig(writeConfig(t, "limits:\n  max_packet_size: 4096\n  max_connect_packet_size: 2048\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig().Limits
	want.MaxPacketSize, want.MaxConnectPacketSize = 4096, 2048
	if got.Limits != want {
		t.Fatalf("limits %+v", got.Limits)
	}
	// A key left out keeps its default, which must still fit the other.
	got, err = LoadConfig(writeConfig(t, "limits:\n  max_packet_size: 131072\n"))
	if err != nil || got.Limits.MaxConnectPacketSize != gateway.DefaultMaxConnectPacketSize {
		t.Fatalf("limits %+v, %v; want the default pre-CONNECT limit", got.Limits, err)
	}
	// Off is a value of its own, not an error.
	if _, err := LoadConfig(writeConfig(t, "limits:\n  max_sessions_per_identity: 0\n  publish_rate: 0\n  conn_rate_per_ip: 0\n")); err != nil {
		t.Fatalf("limits turned off: %v", err)
	}
	if d := DefaultConfig().Limits; d.MaxPacketSize != gateway.DefaultMaxPacketSize || d.MaxConnectPacketSize != gateway.DefaultMaxConnectPacketSize {
		t.Fatalf("default limits %+v", d)
	}

	bad := []struct {
		yaml, want string
	}{
		{"limits:\n  max_packet_size: 0\n", "limits.max_packet_size"},
		{"limits:\n  max_packet_size: -1\n", "limits.max_packet_size"},
		{"limits:\n  max_packet_size: 1\n", "limits.max_packet_size"},
		{"limits:\n  max_packet_size: 268435461\n", "limits.max_packet_size"},
		{"limits:\n  max_connect_packet_size: 0\n", "limits.max_connect_packet_size"},
		{"limits:\n  max_packet_size: 32768\n", "limits.max_connect_packet_size"}, // below the default pre-CONNECT limit
		{"limits:\n  max_packet_size: 4096\n  max_connect_packet_size: 8192\n", "limits.max_connect_packet_size"},
		{"limits:\n  max_packet: 4096\n", "limits.max_packet"},
		{"limits:\n  max_sessions_per_identity: -1\n", "limits.max_sessions_per_identity"},
		{"limits:\n  publish_rate: -5\n", "limits.publish_rate"},
		{"limits:\n  publish_burst: 0\n", "limits.publish_burst"},
		{"limits:\n  publish_bytes_rate: -1\n", "limits.publish_bytes_rate"},
		{"limits:\n  publish_bytes_burst: 1000\n", "limits.publish_bytes_burst"}, // below max_packet_size
		{"limits:\n  max_subscriptions_per_session: -1\n", "limits.max_subscriptions_per_session"},
		{"limits:\n  max_outbound_queue: 0\n", "limits.max_outbound_queue"},
		{"limits:\n  max_inflight: 70000\n", "limits.max_inflight"},
		{"limits:\n  handshake_timeout: 0s\n", "limits.handshake_timeout"},
		{"limits:\n  conn_rate_per_ip: -1\n", "limits.conn_rate_per_ip"},
		{"limits:\n  conn_burst_per_ip: 0\n", "limits.conn_burst_per_ip"},
	}
	for _, tc := range bad {
		_, err := LoadConfig(writeConfig(t, tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one naming %s", tc.yaml, err, tc.want)
		}
	}
}

// The configured limits reach the gateway: MQTT 5 clients are told the
// maximum packet size, and a first packet over the pre-CONNECT limit ends
// the connection.
func TestLimitsReachTheGateway(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxPacketSize, cfg.Limits.MaxConnectPacketSize = 8192, 2048
	a := start(t, cfg)
	conf := deviceTLS(t, a, "sensor-1", nil)
	conf.ServerName = "localhost"
	dial := func() net.Conn {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", a.MQTTAddr().String(), conf)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}

	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	c := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(dial()), PacketTimeout: wait})
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: "s1", KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("CONNECT: %v", err)
	}
	if ack.Properties == nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != 8192 {
		t.Fatalf("CONNACK properties %+v, want Maximum Packet Size 8192", ack.Properties)
	}

	// A whole CONNECT of 3000 bytes: within the maximum packet size, over
	// the pre-CONNECT limit. Read, it would be answered with a CONNACK.
	pk := mpackets.Packet{
		FixedHeader:     mpackets.FixedHeader{Type: mpackets.Connect},
		ProtocolVersion: 5,
		Connect: mpackets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, Clean: true, ClientIdentifier: "s2",
			PasswordFlag: true, Password: []byte(strings.Repeat("p", 3000-20))},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil || buf.Len() != 3000 {
		t.Fatalf("test CONNECT: %d bytes, %v", buf.Len(), err)
	}
	conn := dial()
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	if n, err := conn.Read(make([]byte, 64)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a CONNECT over the configured pre-CONNECT limit: read %d bytes, %v; want the connection closed", n, err)
	}
}
