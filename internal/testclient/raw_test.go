package testclient

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// fakeServer reads one packet from conn as a server would and returns it.
func fakeServerRead(t *testing.T, r *bufio.Reader) packets.Packet {
	t.Helper()
	var pk packets.Packet
	b, err := r.ReadByte()
	if err != nil {
		t.Errorf("server read: %v", err)
		return pk
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		t.Errorf("server decode: %v", err)
		return pk
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		t.Errorf("server length: %v", err)
		return pk
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Errorf("server body: %v", err)
		return pk
	}
	if pk.FixedHeader.Type == packets.Connect {
		if err := pk.ConnectDecode(body); err != nil {
			t.Errorf("server CONNECT: %v", err)
		}
	}
	return pk
}

func serverPacket(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// The raw client speaks the version it was given: a 3.1.1 CONNECT is
// answered, a 5 DISCONNECT is decoded with its reason, and the close after
// it is seen.
func TestRawConnectAndClose(t *testing.T) {
	for _, version := range []byte{4, 5} {
		client, server := net.Pipe()
		t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
		got := make(chan packets.Packet, 1)
		go func() {
			defer server.Close()
			got <- fakeServerRead(t, bufio.NewReader(server))
			_, _ = server.Write(serverPacket(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: version, ReasonCode: 0}))
			if version == 5 {
				_, _ = server.Write(serverPacket(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5, ReasonCode: 0x87}))
			}
		}()
		c := NewRaw(client, version)
		if code := c.Connect(t, "raw-1"); code != 0 {
			t.Fatalf("v%d: CONNACK %#x", version, code)
		}
		if pk := <-got; pk.ProtocolVersion != version || pk.Connect.ClientIdentifier != "raw-1" || !pk.Connect.Clean || pk.Connect.Keepalive != 30 {
			t.Fatalf("v%d: server read CONNECT %+v", version, pk.Connect)
		}
		if version == 5 {
			pk, err := c.Read()
			if err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != 0x87 {
				t.Fatalf("v5: read %+v, %v; want DISCONNECT 0x87", pk.FixedHeader, err)
			}
		}
		c.ExpectClosed(t)
	}
}

// A server that closes without a CONNACK fails the connect.
func TestRawConnectWithoutConnack(t *testing.T) {
	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close() })
	go func() {
		fakeServerRead(t, bufio.NewReader(server))
		_ = server.Close()
	}()
	msg := failure(t, func(tb testing.TB) { NewRaw(client, 4).Connect(tb, "raw-1") })
	if !strings.Contains(msg, "no CONNACK") {
		t.Fatalf("failure %q; want no CONNACK", msg)
	}
}

// Only the packets a client sends can be encoded; anything else fails
// the test instead of sending garbage.
func TestEncodePacketRefusesServerPackets(t *testing.T) {
	if b := EncodePacket(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}); len(b) != 2 {
		t.Fatalf("PINGREQ encoded as %x", b)
	}
	msg := failure(t, func(tb testing.TB) {
		EncodePacket(tb, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}})
	})
	if !strings.Contains(msg, "cannot encode") {
		t.Fatalf("failure %q; want cannot encode", msg)
	}
}
