package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Packet size limits. mochi allocates a packet's whole buffer as soon as it
// has read the fixed header, before any of the body arrives, so without a
// bound one header makes it allocate up to 256 MiB.
const (
	// DefaultMaxPacketSize is the default bound on any packet, in bytes.
	// MQTT messages are telemetry, state and commands, mostly well under
	// a kilobyte (the large cloud brokers stop at 128 or 256 KiB); 1 MiB
	// leaves room for bulkier payloads while a connection, which mochi
	// reads one packet at a time, holds at most about twice that (mochi
	// copies the buffer once to decode it).
	DefaultMaxPacketSize = 1 << 20

	// DefaultMaxConnectPacketSize is the default bound on the first packet
	// of a connection, in bytes. It is read from any peer with a valid
	// SVID, enrolled or not, revoked or not, before the registry or the
	// policy has been asked. A CONNECT holds a client ID, properties and
	// the Last Will; 64 KiB admits a will of 60 KiB with its topic and
	// properties, far more than a status message needs, and 24 such
	// connections hold 3 MiB, not the 6 GiB of 24 declared 256 MiB ones.
	DefaultMaxConnectPacketSize = 64 << 10

	// MaxPacketSizeLimit is the largest packet MQTT can encode: a
	// remaining length of 268,435,455 behind a fixed header of 5 bytes.
	MaxPacketSizeLimit = 268435455 + 5

	// connectType is the first byte of a CONNECT: type 1, flags 0
	// (MQTT 2.1.3: the flags of a CONNECT are reserved and 0).
	connectType = packets.Connect << 4
)

// packetLimits resolves the two configured limits: 0 takes the default, a
// negative value or one MQTT cannot reach is an error, and the pre-CONNECT
// bound is never larger than the bound on any packet.
func packetLimits(maxPacket, maxConnect int) (int, int, error) {
	switch {
	case maxPacket < 0 || maxPacket > MaxPacketSizeLimit:
		return 0, 0, fmt.Errorf("gateway: maximum packet size %d: want 1 to %d bytes (0: the default, %d)",
			maxPacket, MaxPacketSizeLimit, DefaultMaxPacketSize)
	case maxConnect < 0 || maxConnect > MaxPacketSizeLimit:
		return 0, 0, fmt.Errorf("gateway: maximum CONNECT packet size %d: want 1 to %d bytes (0: the default, %d)",
			maxConnect, MaxPacketSizeLimit, DefaultMaxConnectPacketSize)
	}
	if maxPacket == 0 {
		maxPacket = DefaultMaxPacketSize
	}
	if maxConnect == 0 {
		maxConnect = min(DefaultMaxConnectPacketSize, maxPacket)
	}
	if maxConnect > maxPacket {
		return 0, 0, fmt.Errorf("gateway: maximum CONNECT packet size %d exceeds the maximum packet size %d", maxConnect, maxPacket)
	}
	return maxPacket, maxConnect, nil
}

// errPreConnect ends a connection whose first packet is not a CONNECT
// within the pre-CONNECT bound.
var errPreConnect = errors.New("gateway: first packet refused")

// preConnectConn is the connection mochi reads from. Until the fixed header
// of the first packet has passed, it parses the bytes it hands on and ends
// the connection unless they begin a CONNECT of at most limit bytes: mochi
// allocates the buffer for a packet as soon as its header is read, and for
// the first packet it has nothing to bound it by but this.
//
// The bytes are parsed in the caller's buffer, in place; after the header,
// Read is the TLS connection's Read and nothing more. Only mochi's reading
// goroutine calls Read, so the state needs no lock.
type preConnectConn struct {
	net.Conn // the *tls.Conn

	limit     int
	done      bool // the header passed; from here on mochi's bound applies
	err       error
	n         int // bytes of the fixed header seen
	remaining int // the remaining length, as far as decoded
}

func newPreConnectConn(c *tls.Conn, limit int) *preConnectConn {
	return &preConnectConn{Conn: c, limit: limit}
}

func (c *preConnectConn) Read(p []byte) (int, error) {
	if c.done {
		return c.Conn.Read(p)
	}
	return c.readHeader(p)
}

// readHeader reads and checks the first fixed header. A header out of
// bounds closes the connection and fails the read, so mochi never sees it.
func (c *preConnectConn) readHeader(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	for i := 0; i < n && !c.done; i++ {
		if ferr := c.feed(p[i]); ferr != nil {
			c.err = ferr
			_ = c.Conn.Close()
			return 0, ferr
		}
	}
	return n, err
}

// feed takes the next byte of the fixed header: the type byte, then the
// remaining length (MQTT 1.5.5: at most 4 bytes, 7 bits each, low first).
func (c *preConnectConn) feed(b byte) error {
	if c.n == 0 {
		c.n = 1
		if b != connectType {
			return fmt.Errorf("%w: first packet is not a CONNECT (fixed header byte %#02x)", errPreConnect, b)
		}
		return nil
	}
	c.remaining |= int(b&0x7f) << (7 * (c.n - 1))
	c.n++
	// The length decoded so far only grows with more bytes: refuse as
	// soon as it is too large, without waiting for the rest.
	if size := c.n + c.remaining; size > c.limit {
		return fmt.Errorf("%w: CONNECT of at least %d bytes, more than the %d allowed before CONNECT", errPreConnect, size, c.limit)
	}
	switch {
	case b&0x80 == 0:
		c.done = true
	case c.n == 5:
		return fmt.Errorf("%w: malformed remaining length", errPreConnect)
	}
	return nil
}

// connState returns the TLS state of a connection the listener handed to
// mochi; ok is false for any other connection.
func connState(c net.Conn) (tls.ConnectionState, bool) {
	switch c := c.(type) {
	case *preConnectConn:
		return connState(c.Conn)
	case *tls.Conn:
		return c.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// OnPacketEncode tells MQTT 5 clients the maximum packet size in the
// CONNACK (MQTT 3.2.2.3.6), which mochi enforces but does not send, so that
// a client knows its limit instead of being disconnected for it. MQTT 3.1.1
// CONNACKs have no properties; mochi encodes none for them.
func (h *hook) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		pk.Properties.MaximumPacketSize = h.g.maxPacket
	}
	return pk
}
