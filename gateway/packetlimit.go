package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Packet size limits. mochi allocates a packet's whole buffer as soon as it
// has read the fixed header, before any of the body arrives, so without a
// bound one header makes it allocate up to 256 MiB.
const (
	// DefaultMaxPacketSize is the default bound on any packet, in bytes.
	// MQTT messages are telemetry, state and commands, mostly well under
	// a kilobyte; the large cloud brokers stop at 128 or 256 KiB. A
	// connection, which mochi reads one packet at a time, holds at most
	// about twice that (mochi copies the buffer once to decode it), and
	// the policy's limits rule can give an identity that needs more (a
	// firmware distributor) its own maximum.
	DefaultMaxPacketSize = 256 << 10

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
// within the pre-CONNECT bound; errPacketTooLarge one that sent a larger
// packet than its identity's maximum after it.
var (
	errPreConnect     = errors.New("gateway: first packet refused")
	errPacketTooLarge = errors.New("gateway: packet too large")
)

// packetConn is the connection mochi reads from. It follows the fixed
// headers of the packets it hands on, in the caller's buffer, in place:
//
//   - The first packet must be a CONNECT of at most the pre-CONNECT limit,
//     else the connection ends before mochi sees the header: mochi
//     allocates the buffer for a packet as soon as its header is read, and
//     for the first packet it has nothing to bound it by but this. Nothing
//     past the CONNECT is read before mochi has handled it, so what follows
//     is read with the limits of the identity the CONNECT admitted.
//   - Every later packet must be at most the identity's maximum packet
//     size. A larger one ends the connection before mochi sees its header:
//     MQTT 5 clients get DISCONNECT 0x95 first, MQTT 3.1.1 ones are closed
//     (mochi itself closes without a DISCONNECT).
//   - Every PUBLISH is charged to the identity's message and byte buckets,
//     and the read that carries it returns only once they allow: an
//     identity over its rate is slowed down by not being read (TCP pushes
//     back), nothing is dropped or refused (see attach).
//
// Only mochi's reading goroutine calls Read (and attach, from OnConnect),
// so the parsing state needs no lock. Past the first packet a Read
// allocates nothing.
type packetConn struct {
	net.Conn // the *tls.Conn

	limit     int  // the bound on the packet whose header is being read
	first     bool // the first packet (the CONNECT) is being read
	err       error
	n         int  // bytes of the current fixed header seen
	typ       byte // the current packet's type
	remaining int  // the current remaining length, as far as decoded
	hdrLen    int  // the length of the last complete fixed header
	body      int  // bytes of the current packet's body still to pass
	dflt      int  // the bound after the CONNECT while no session is attached

	// Set by attach, once the CONNECT is admitted.
	g    *Gateway
	s    *session
	told bool // the client was told (or the connection closed) for err

	deadline atomic.Int64 // the read deadline mochi set, unix ns; 0: none
	closed   chan struct{}
	once     sync.Once
	timer    *time.Timer
}

func newPacketConn(c net.Conn, maxConnect, maxPacket int) *packetConn {
	return &packetConn{Conn: c, limit: maxConnect, dflt: maxPacket, first: true, closed: make(chan struct{})}
}

// attach gives the connection the limits of its session, once the CONNECT
// is admitted. Until then it reads with the pre-CONNECT bound only.
func (c *packetConn) attach(g *Gateway, s *session) {
	c.g, c.s = g, s
}

func (c *packetConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.fail()
	}
	if c.first {
		// One byte at a time through the CONNECT's header, then no
		// further than its end: the next packet is read only once mochi
		// has decided the CONNECT (and with its identity's limits).
		switch {
		case c.body > 0:
			p = p[:min(len(p), c.body)]
		case len(p) > 1:
			p = p[:1]
		}
	}
	n, err := c.Conn.Read(p)
	n, wait := c.scan(p[:n])
	if c.err != nil && n == 0 {
		return 0, c.fail()
	}
	if wait > 0 {
		if perr := c.pause(wait); perr != nil {
			return 0, perr
		}
	}
	return n, err
}

// scan follows the packets in b, the bytes just read, and returns how many
// of them may be handed on (all, unless a header is refused: the bytes
// before it) and how long to wait before handing them on.
func (c *packetConn) scan(b []byte) (int, time.Duration) {
	var wait time.Duration
	hdr := 0 // where the header being read started in b
	for i := 0; i < len(b); {
		if c.body > 0 {
			k := min(c.body, len(b)-i)
			c.body -= k
			i += k
			if c.body == 0 {
				c.first = false
			}
			continue
		}
		if c.n == 0 {
			hdr = i
		}
		if err := c.feed(b[i]); err != nil {
			c.err = err
			return hdr, wait
		}
		i++
		if c.n > 0 {
			continue // the header goes on
		}
		if c.typ == packets.Publish {
			wait = max(wait, c.charge(c.remaining+c.hdrLen))
		}
		if c.body = c.remaining; c.body == 0 {
			c.first = false
		}
	}
	return len(b), wait
}

// maxPacket is the bound on every packet after the CONNECT: the session's
// own, or the gateway's while none is attached (a CONNECT being refused).
func (c *packetConn) maxPacket() int {
	if c.s != nil && c.s.lim.maxPacket > 0 {
		return c.s.lim.maxPacket
	}
	return c.dflt
}

// feed takes the next byte of a fixed header: the type byte, then the
// remaining length (MQTT 1.5.5: at most 4 bytes, 7 bits each, low first).
// When the header is complete, n is back at 0, hdrLen is its length and
// remaining the length of the body.
func (c *packetConn) feed(b byte) error {
	if c.n == 0 {
		c.n, c.remaining = 1, 0
		c.typ = b >> 4
		if !c.first {
			c.limit = c.maxPacket()
		}
		if c.first && b != connectType {
			return fmt.Errorf("%w: first packet is not a CONNECT (fixed header byte %#02x)", errPreConnect, b)
		}
		return nil
	}
	c.remaining |= int(b&0x7f) << (7 * (c.n - 1))
	c.n++
	// The length decoded so far only grows with more bytes: refuse as
	// soon as it is too large, without waiting for the rest.
	if size := c.n + c.remaining; size > c.limit {
		if c.first {
			return fmt.Errorf("%w: CONNECT of at least %d bytes, more than the %d allowed before CONNECT", errPreConnect, size, c.limit)
		}
		return fmt.Errorf("%w: at least %d bytes, more than the %d allowed", errPacketTooLarge, size, c.limit)
	}
	switch {
	case b&0x80 == 0:
		c.hdrLen, c.n = c.n, 0
	case c.n == 5:
		if c.first {
			return fmt.Errorf("%w: malformed remaining length", errPreConnect)
		}
		return fmt.Errorf("gateway: malformed remaining length")
	}
	return nil
}

// fail ends the connection for c.err, once: a packet over the maximum gets
// DISCONNECT 0x95 first on MQTT 5. It returns the error for Read.
func (c *packetConn) fail() error {
	if c.told {
		return c.err
	}
	c.told = true
	if errors.Is(c.err, errPacketTooLarge) && c.s != nil {
		c.g.packetTooLarge(c.s, c.err)
		return c.err
	}
	_ = c.Conn.Close()
	return c.err
}

// charge charges a PUBLISH of size bytes to the identity's buckets and
// returns how long to hold it back.
func (c *packetConn) charge(size int) time.Duration {
	if c.s == nil || c.s.lim.ident == nil {
		return 0
	}
	id := c.s.lim.ident
	if id.msgs.params.Load() == nil && id.bytes.params.Load() == nil {
		return 0 // no rate: not even the clock
	}
	now := nanotime(time.Now())
	wm := id.msgs.take(now, 1)
	wb := id.bytes.take(now, float64(size))
	switch {
	case wm == 0 && wb == 0:
		return 0
	case wm >= wb:
		c.g.limitHit(id, limitPublishRate, "PUBLISH held back: messages of the identity over the rate",
			slog.String("client_id", c.s.clientID))
		return wm
	default:
		c.g.limitHit(id, limitPublishBytes, "PUBLISH held back: bytes of the identity over the rate",
			slog.String("client_id", c.s.clientID))
		return wb
	}
}

// pause holds the reading for d, or until the connection is closed. The
// client is not idle meanwhile, only unread: the read deadline mochi set
// from the keepalive moves by d.
func (c *packetConn) pause(d time.Duration) error {
	if c.timer == nil {
		c.timer = time.NewTimer(d)
	} else {
		c.timer.Reset(d)
	}
	select {
	case <-c.timer.C:
	case <-c.closed:
		c.timer.Stop()
		return net.ErrClosed
	}
	if dl := c.deadline.Load(); dl != 0 {
		next := dl + int64(d)
		c.deadline.Store(next)
		_ = c.Conn.SetReadDeadline(time.Unix(0, next))
	}
	return nil
}

// SetDeadline records the read deadline (mochi's keepalive) for pause.
func (c *packetConn) SetDeadline(t time.Time) error {
	c.recordDeadline(t)
	return c.Conn.SetDeadline(t)
}

// SetReadDeadline records the read deadline for pause.
func (c *packetConn) SetReadDeadline(t time.Time) error {
	c.recordDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *packetConn) recordDeadline(t time.Time) {
	if t.IsZero() {
		c.deadline.Store(0)
	} else {
		c.deadline.Store(t.UnixNano())
	}
}

// Close ends a pause in progress and closes the connection.
func (c *packetConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// connState returns the TLS state of a connection the listener handed to
// mochi; ok is false for any other connection.
func connState(c net.Conn) (tls.ConnectionState, bool) {
	switch c := c.(type) {
	case *packetConn:
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
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		pk.Properties.MaximumPacketSize = h.g.maxPacket
		if s := h.g.session(cl); s != nil && s.lim.maxPacket > 0 {
			pk.Properties.MaximumPacketSize = uint32(s.lim.maxPacket)
		}
	}
	return pk
}
