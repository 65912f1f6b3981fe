package bridge

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The bridge's MQTT client: the packets of a client that connects with a
// clean start, publishes at QoS 0 and 1 and subscribes at QoS 0 and 1, in
// MQTT 5 or 3.1.1. It is small on purpose; what the upstream sends is
// parsed with bounds on every length.

const (
	pktConnect    = 1
	pktConnack    = 2
	pktPublish    = 3
	pktPuback     = 4
	pktSubscribe  = 8
	pktSuback     = 9
	pktPingreq    = 12
	pktPingresp   = 13
	pktDisconnect = 14
)

const (
	// maxInboundPacket bounds what the bridge reads from the upstream in
	// one packet. MQTT 5 upstreams are told (Maximum Packet Size) and do
	// not send more; a bigger PUBLISH from a 3.1.1 upstream is read past,
	// acknowledged and dropped.
	maxInboundPacket = 1 << 20
	// receiveMaximum is the MQTT 5 Receive Maximum the bridge announces:
	// inbound messages are handled one by one, so a small window suffices.
	receiveMaximum = 32
	// maxWindow caps the outbound QoS 1 messages in flight.
	maxWindow  = 32
	keepAlive  = 30 * time.Second
	ioTimeout  = 30 * time.Second
	subTimeout = 30 * time.Second
)

var errProtocol = errors.New("bridge: protocol error from upstream")

// ---- encoding

func appendVarint(b []byte, n int) []byte {
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if n == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// frame prepends the fixed header to body.
func frame(typ, flags byte, body []byte) []byte {
	out := make([]byte, 0, 5+len(body))
	out = append(out, typ<<4|flags)
	out = appendVarint(out, len(body))
	return append(out, body...)
}

func encodeConnect(v byte, clientID string) []byte {
	b := appendString(nil, "MQTT")
	b = append(b, v, 0x02) // clean start, no will, no user name or password
	b = binary.BigEndian.AppendUint16(b, uint16(keepAlive/time.Second))
	if v == 5 {
		var p []byte
		p = append(p, 0x21) // Receive Maximum
		p = binary.BigEndian.AppendUint16(p, receiveMaximum)
		p = append(p, 0x27) // Maximum Packet Size
		p = binary.BigEndian.AppendUint32(p, maxInboundPacket)
		b = appendVarint(b, len(p))
		b = append(b, p...)
	}
	b = appendString(b, clientID)
	return frame(pktConnect, 0, b)
}

func encodePublish(v byte, topic string, payload []byte, qos byte, retain bool, id uint16) []byte {
	b := make([]byte, 0, 2+len(topic)+3+len(payload))
	b = appendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	if v == 5 {
		b = append(b, 0) // no properties
	}
	b = append(b, payload...)
	flags := qos << 1
	if retain {
		flags |= 1
	}
	return frame(pktPublish, flags, b)
}

// encodeSubscribe subscribes to the filters of rules, as shared
// subscriptions of the group share when it is not empty.
func encodeSubscribe(v byte, id uint16, rules []InRule, share string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	if v == 5 {
		b = append(b, 0)
	}
	for _, r := range rules {
		if share != "" {
			b = appendString(b, "$share/"+share+"/"+r.Filter)
		} else {
			b = appendString(b, r.Filter)
		}
		opts := r.QoS
		if v == 5 && share == "" {
			// No Local: the upstream never sends back what this
			// connection published, so overlapping in and out rules
			// make no loop.
			opts |= 0x04
		}
		b = append(b, opts)
	}
	return frame(pktSubscribe, 0x02, b)
}

func encodePuback(id uint16) []byte {
	// MQTT 5 allows omitting the reason code when it is Success.
	return frame(pktPuback, 0, binary.BigEndian.AppendUint16(nil, id))
}

// ---- decoding

// dec reads fields from a packet body; the first short read sets err and
// every later read returns zero values.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail() {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated packet", errProtocol)
	}
	d.b = nil
}

func (d *dec) bytes(n int) []byte {
	if n < 0 || len(d.b) < n {
		d.fail()
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *dec) u8() byte {
	b := d.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (d *dec) u16() uint16 {
	b := d.bytes(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (d *dec) u32() uint32 {
	b := d.bytes(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (d *dec) str() string { return string(d.bytes(int(d.u16()))) }

func (d *dec) varint() int {
	n, mul := 0, 1
	for i := 0; i < 4; i++ {
		c := d.u8()
		if d.err != nil {
			return 0
		}
		n += int(c&0x7f) * mul
		if c&0x80 == 0 {
			return n
		}
		mul *= 128
	}
	d.err = fmt.Errorf("%w: malformed variable byte integer", errProtocol)
	return 0
}

// props is what the bridge uses of MQTT 5 properties.
type props struct {
	receiveMax      int
	maxQoS          int // -1: not given
	retainAvailable int // -1: not given
	maxPacket       int
	serverKeepAlive int // -1: not given
	reason          string
	topicAlias      bool
}

// readProps reads an MQTT 5 property block. Properties the bridge does
// not use are skipped by their type; an unknown identifier is a protocol
// error, since its length is unknown.
func (d *dec) readProps() props {
	p := props{maxQoS: -1, retainAvailable: -1, serverKeepAlive: -1}
	n := d.varint()
	block := &dec{b: d.bytes(n)}
	if d.err != nil {
		return p
	}
	for len(block.b) > 0 && block.err == nil {
		switch id := block.varint(); id {
		case 0x01, 0x17, 0x19, 0x28, 0x29, 0x2A: // byte
			block.u8()
		case 0x24:
			p.maxQoS = int(block.u8())
		case 0x25:
			p.retainAvailable = int(block.u8())
		case 0x02, 0x11, 0x18: // four-byte integer
			block.u32()
		case 0x27:
			p.maxPacket = int(block.u32())
		case 0x21:
			p.receiveMax = int(block.u16())
		case 0x13:
			p.serverKeepAlive = int(block.u16())
		case 0x22: // two-byte integer
			block.u16()
		case 0x23:
			block.u16()
			p.topicAlias = true
		case 0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C: // string
			block.str()
		case 0x1F:
			p.reason = block.str()
		case 0x09, 0x16: // binary
			block.bytes(int(block.u16()))
		case 0x0B:
			block.varint()
		case 0x26: // string pair
			block.str()
			block.str()
		default:
			block.err = fmt.Errorf("%w: unknown property 0x%02x", errProtocol, id)
		}
	}
	if block.err != nil {
		d.err = block.err
	}
	return p
}

// readHeader reads a fixed header.
func readHeader(r *bufio.Reader) (typ, flags byte, length int, err error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, 0, 0, err
	}
	mul := 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, 0, 0, fmt.Errorf("%w: malformed remaining length", errProtocol)
		}
		c, err := r.ReadByte()
		if err != nil {
			return 0, 0, 0, err
		}
		length += int(c&0x7f) * mul
		if c&0x80 == 0 {
			break
		}
		mul *= 128
	}
	return h >> 4, h & 0x0f, length, nil
}

// ---- the connection

// inbound is a PUBLISH received from the upstream.
type inbound struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// ack is a PUBACK: the packet id and the reason code (0 success).
type ack struct {
	id     uint16
	reason byte
}

// link is one live MQTT connection to the upstream.
type link struct {
	conn      net.Conn
	r         *bufio.Reader
	v         byte
	onPublish func(inbound)

	// From the CONNACK.
	window      int
	maxQoS      byte
	retainAvail bool
	maxPacket   int
	keepAlive   time.Duration

	wmu     sync.Mutex
	acks    chan ack
	subacks chan []byte
	done    chan struct{}
	errOnce sync.Once
	err     error
}

// dialMQTT runs the CONNECT exchange on conn (already TLS) and starts the
// reader and the pinger. The link owns conn from here, also on error.
func dialMQTT(ctx context.Context, conn net.Conn, v byte, clientID string, onPublish func(inbound)) (*link, error) {
	l := &link{
		conn: conn, r: bufio.NewReader(conn), v: v, onPublish: onPublish,
		window: maxWindow, maxQoS: 1, retainAvail: true, keepAlive: keepAlive,
		acks: make(chan ack, maxWindow), subacks: make(chan []byte, 1), done: make(chan struct{}),
	}
	deadline := time.Now().Add(ioTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	err := l.handshake(clientID)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	go l.readLoop()
	go l.pinger()
	return l, nil
}

func (l *link) handshake(clientID string) error {
	if _, err := l.conn.Write(encodeConnect(l.v, clientID)); err != nil {
		return fmt.Errorf("bridge: send CONNECT: %w", err)
	}
	typ, _, n, err := readHeader(l.r)
	if err != nil {
		return fmt.Errorf("bridge: read CONNACK: %w", err)
	}
	if typ != pktConnack || n > 64<<10 {
		return fmt.Errorf("%w: packet type %d instead of CONNACK", errProtocol, typ)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(l.r, body); err != nil {
		return fmt.Errorf("bridge: read CONNACK: %w", err)
	}
	d := &dec{b: body}
	d.u8() // acknowledge flags: a clean start has no session present
	code := d.u8()
	if d.err != nil {
		return d.err
	}
	if l.v == 4 {
		if code != 0 {
			return fmt.Errorf("bridge: upstream refused the connection: return code %d", code)
		}
		return nil
	}
	p := d.readProps()
	if d.err != nil {
		return d.err
	}
	if code >= 0x80 {
		return fmt.Errorf("bridge: upstream refused the connection: reason 0x%02x %s", code, p.reason)
	}
	l.applyConnack(p)
	return nil
}

func (l *link) applyConnack(p props) {
	if p.receiveMax > 0 {
		l.window = min(l.window, p.receiveMax)
	}
	if p.maxQoS == 0 {
		l.maxQoS = 0
	}
	if p.retainAvailable == 0 {
		l.retainAvail = false
	}
	l.maxPacket = p.maxPacket
	if p.serverKeepAlive > 0 {
		l.keepAlive = time.Duration(p.serverKeepAlive) * time.Second
	}
}

// fail records the first error and tears the connection down.
func (l *link) fail(err error) {
	l.errOnce.Do(func() {
		l.err = err
		close(l.done)
		_ = l.conn.Close()
	})
}

// Err is why the link ended; valid once done is closed.
func (l *link) Err() error {
	<-l.done
	return l.err
}

func (l *link) write(b []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	_ = l.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := l.conn.Write(b); err != nil {
		err = fmt.Errorf("bridge: write: %w", err)
		l.fail(err)
		return err
	}
	return nil
}

// close ends the link with a DISCONNECT (normal disconnection).
func (l *link) close() {
	select {
	case <-l.done:
		return
	default:
	}
	l.wmu.Lock()
	_ = l.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = l.conn.Write([]byte{pktDisconnect << 4, 0})
	l.wmu.Unlock()
	l.fail(errors.New("bridge: closed"))
}

func (l *link) pinger() {
	t := time.NewTicker(l.keepAlive / 2)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			if l.write([]byte{pktPingreq << 4, 0}) != nil {
				return
			}
		}
	}
}

func (l *link) readLoop() {
	for {
		// The pinger makes the upstream answer every keepAlive/2; silence
		// for longer than the keep alive is a dead connection.
		_ = l.conn.SetReadDeadline(time.Now().Add(l.keepAlive + l.keepAlive/2))
		if err := l.readOne(); err != nil {
			l.fail(err)
			return
		}
	}
}

func (l *link) readOne() error {
	typ, flags, n, err := readHeader(l.r)
	if err != nil {
		return fmt.Errorf("bridge: read: %w", err)
	}
	if n > maxInboundPacket {
		if typ == pktPublish {
			return l.skipPublish(flags, n)
		}
		return fmt.Errorf("%w: packet of %d bytes", errProtocol, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(l.r, body); err != nil {
		return fmt.Errorf("bridge: read: %w", err)
	}
	d := &dec{b: body}
	switch typ {
	case pktPublish:
		return l.handlePublish(flags, d)
	case pktPuback:
		a := ack{id: d.u16()}
		if l.v == 5 && len(d.b) > 0 {
			a.reason = d.u8()
		}
		if d.err != nil {
			return d.err
		}
		select {
		case l.acks <- a:
		case <-l.done:
		}
		return nil
	case pktSuback:
		select {
		case l.subacks <- body:
		default: // a SUBACK nobody waits for
		}
		return nil
	case pktPingresp:
		return nil
	case pktDisconnect:
		if l.v == 5 && len(body) > 0 {
			code := d.u8()
			var p props
			if len(d.b) > 0 {
				p = d.readProps()
			}
			return fmt.Errorf("bridge: upstream disconnected: reason 0x%02x %s", code, p.reason)
		}
		return errors.New("bridge: upstream disconnected")
	default:
		return fmt.Errorf("%w: unexpected packet type %d", errProtocol, typ)
	}
}

func (l *link) handlePublish(flags byte, d *dec) error {
	qos := (flags >> 1) & 3
	if qos > 1 {
		// The bridge subscribes with QoS 1 at most.
		return fmt.Errorf("%w: PUBLISH with QoS %d", errProtocol, qos)
	}
	topic := d.str()
	var id uint16
	if qos > 0 {
		id = d.u16()
	}
	if l.v == 5 {
		if p := d.readProps(); p.topicAlias {
			// The bridge announces no Topic Alias Maximum, so none may come.
			return fmt.Errorf("%w: topic alias not allowed", errProtocol)
		}
	}
	if d.err != nil {
		return d.err
	}
	if topic == "" {
		return fmt.Errorf("%w: PUBLISH without a topic", errProtocol)
	}
	l.onPublish(inbound{Topic: topic, Payload: d.b, QoS: qos, Retain: flags&1 == 1})
	if qos > 0 {
		return l.write(encodePuback(id))
	}
	return nil
}

// skipPublish reads past a PUBLISH bigger than maxInboundPacket and
// acknowledges it, so an upstream that sends one does not make the bridge
// reconnect for it forever.
func (l *link) skipPublish(flags byte, n int) error {
	var h [2]byte
	if _, err := io.ReadFull(l.r, h[:]); err != nil {
		return fmt.Errorf("bridge: read: %w", err)
	}
	tl := int(binary.BigEndian.Uint16(h[:]))
	skip := tl
	qos := (flags >> 1) & 3
	if qos > 0 {
		skip += 2
	}
	if qos > 1 || 2+skip > n {
		return fmt.Errorf("%w: malformed PUBLISH", errProtocol)
	}
	if _, err := l.r.Discard(tl); err != nil {
		return fmt.Errorf("bridge: read: %w", err)
	}
	var id uint16
	if qos > 0 {
		if _, err := io.ReadFull(l.r, h[:]); err != nil {
			return fmt.Errorf("bridge: read: %w", err)
		}
		id = binary.BigEndian.Uint16(h[:])
	}
	if _, err := io.CopyN(io.Discard, l.r, int64(n-2-skip)); err != nil {
		return fmt.Errorf("bridge: read: %w", err)
	}
	l.onPublish(inbound{QoS: qos}) // an empty topic: counted as dropped
	if qos == 1 {
		return l.write(encodePuback(id))
	}
	return nil
}

// subscribe sends one SUBSCRIBE for rules and waits for its SUBACK; it
// returns the filters the upstream refused.
func (l *link) subscribe(ctx context.Context, id uint16, rules []InRule, share string) ([]string, error) {
	if err := l.write(encodeSubscribe(l.v, id, rules, share)); err != nil {
		return nil, err
	}
	t := time.NewTimer(subTimeout)
	defer t.Stop()
	var body []byte
	select {
	case body = <-l.subacks:
	case <-l.done:
		return nil, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, errors.New("bridge: no SUBACK")
	}
	d := &dec{b: body}
	if got := d.u16(); got != id {
		return nil, fmt.Errorf("%w: SUBACK for packet %d, want %d", errProtocol, got, id)
	}
	if l.v == 5 {
		d.readProps()
	}
	if d.err != nil || len(d.b) != len(rules) {
		return nil, fmt.Errorf("%w: malformed SUBACK", errProtocol)
	}
	var refused []string
	for i, code := range d.b {
		if code >= 0x80 {
			refused = append(refused, rules[i].Filter)
		}
	}
	return refused, nil
}
