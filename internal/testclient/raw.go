package testclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/internal/mqttconn"
)

// Raw is a bare MQTT client that writes and reads mochi packets: MQTT
// 3.1.1, which paho.golang does not speak, or MQTT 5 where a test needs
// what paho does not do (not acknowledging, malformed packets, for one).
type Raw struct {
	Conn net.Conn
	// Version is the protocol version packets are encoded and decoded in:
	// 4 (MQTT 3.1.1) or 5.
	Version byte
	r       *bufio.Reader
}

// DialRaw opens a TLS connection to addr for a raw client speaking
// version; the test fails if the handshake does. The connection is closed
// when the test ends.
func DialRaw(t testing.TB, addr string, cfg *tls.Config, version byte) *Raw {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	conn, err := mqttconn.DialTLS(ctx, addr, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return NewRaw(conn, version)
}

// NewRaw is a raw client on conn, speaking version.
func NewRaw(conn net.Conn, version byte) *Raw {
	return &Raw{Conn: conn, r: bufio.NewReader(conn), Version: version}
}

// Write sends pk, encoded in the client's version.
func (c *Raw) Write(t testing.TB, pk packets.Packet) {
	t.Helper()
	pk.ProtocolVersion = c.Version
	b := EncodePacket(t, pk)
	_ = c.Conn.SetWriteDeadline(time.Now().Add(Wait))
	if _, err := c.Conn.Write(b); err != nil {
		t.Fatalf("raw write: %v", err)
	}
}

// EncodePacket is pk as a client sends it, in pk.ProtocolVersion.
func EncodePacket(t testing.TB, pk packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	default:
		t.Fatalf("cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return buf.Bytes()
}

// Read returns the next packet the server sent, or an error (io.EOF and
// the like once the server closed the connection, os.ErrDeadlineExceeded
// when nothing came within Wait).
func (c *Raw) Read() (packets.Packet, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(Wait))
	var pk packets.Packet
	pk.ProtocolVersion = c.Version
	b, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("testclient: unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// ExpectClosed reads until the server closes the connection, failing if
// it stays open.
func (c *Raw) ExpectClosed(t testing.TB) {
	t.Helper()
	for range 100 {
		pk, err := c.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("connection still open")
		}
		if err != nil {
			return
		}
		t.Logf("read %d before the close", pk.FixedHeader.Type)
	}
	t.Fatal("connection still open")
}

// Connect sends a clean-session CONNECT as clientID and returns the
// CONNACK's reason code.
func (c *Raw) Connect(t testing.TB, clientID string) byte {
	t.Helper()
	return c.ConnectWith(t, packets.ConnectParams{Clean: true, ClientIdentifier: clientID}, packets.Properties{})
}

// ConnectWith sends a CONNECT (protocol name and, if unset, keepalive
// filled in) and returns the CONNACK's reason code; it fails the test when
// no CONNACK comes.
func (c *Raw) ConnectWith(t testing.TB, cp packets.ConnectParams, props packets.Properties) byte {
	t.Helper()
	cp.ProtocolName = []byte("MQTT")
	if cp.Keepalive == 0 {
		cp.Keepalive = 30
	}
	c.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: cp, Properties: props})
	pk, err := c.Read()
	if err != nil || pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("raw: no CONNACK: %v", err)
	}
	return pk.ReasonCode
}
