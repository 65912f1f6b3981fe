package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The envelope of a Message in the streams, version 1:
//
//	byte    version (1)
//	byte    flags (bit 0: retain)
//	byte    QoS
//	byte    payload format
//	uvarint message expiry
//	6 x (uvarint length, bytes): topic, publisher, origin, content type,
//	        response topic, correlation data
//	uvarint number of user properties, then that many (key, value) pairs
//	        as (uvarint length, bytes)
//	bytes   payload: the rest
//
// Binary rather than JSON: the payload is copied once, not base64'd, and a
// QoS 0 message costs one allocation to encode.
const (
	envelopeV1   = 1
	flagRetain   = 1 << 0
	envelopeHead = 4
)

var errEnvelope = errors.New("cluster: malformed message envelope")

func encodeMessage(buf []byte, m *Message) []byte {
	n := envelopeHead + binary.MaxVarintLen32 + len(m.Payload) +
		6*binary.MaxVarintLen32 + len(m.Topic) + len(m.Publisher) + len(m.Origin) + len(m.ContentType) +
		len(m.ResponseTopic) + len(m.CorrelationData) + binary.MaxVarintLen32
	for _, p := range m.UserProperties {
		n += 2*binary.MaxVarintLen32 + len(p.Key) + len(p.Value)
	}
	if cap(buf)-len(buf) < n {
		nb := make([]byte, len(buf), len(buf)+n)
		copy(nb, buf)
		buf = nb
	}
	var flags byte
	if m.Retain {
		flags |= flagRetain
	}
	buf = append(buf, envelopeV1, flags, m.QoS, m.PayloadFormat)
	buf = binary.AppendUvarint(buf, uint64(m.MessageExpiry))
	for _, s := range [...]string{m.Topic, m.Publisher, m.Origin, m.ContentType, m.ResponseTopic} {
		buf = appendString(buf, s)
	}
	buf = binary.AppendUvarint(buf, uint64(len(m.CorrelationData)))
	buf = append(buf, m.CorrelationData...)
	buf = binary.AppendUvarint(buf, uint64(len(m.UserProperties)))
	for _, p := range m.UserProperties {
		buf = appendString(buf, p.Key)
		buf = appendString(buf, p.Value)
	}
	return append(buf, m.Payload...)
}

func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// decodeMessage reads an envelope. It never panics: every length is checked
// against what is left. The byte slices of the result alias b.
func decodeMessage(b []byte) (Message, error) {
	var m Message
	if len(b) < envelopeHead {
		return m, fmt.Errorf("%w: %d bytes", errEnvelope, len(b))
	}
	if b[0] != envelopeV1 {
		return m, fmt.Errorf("%w: version %d", errEnvelope, b[0])
	}
	if b[1]&^flagRetain != 0 || b[2] > 2 {
		return m, fmt.Errorf("%w: flags %#x, QoS %d", errEnvelope, b[1], b[2])
	}
	m.Retain, m.QoS, m.PayloadFormat = b[1]&flagRetain != 0, b[2], b[3]
	d := decoder{b: b[envelopeHead:]}
	exp := d.uvarint()
	if exp > 1<<32-1 {
		d.err = true
	}
	m.MessageExpiry = uint32(exp)
	m.Topic = string(d.bytes())
	m.Publisher = string(d.bytes())
	m.Origin = string(d.bytes())
	m.ContentType = string(d.bytes())
	m.ResponseTopic = string(d.bytes())
	if cd := d.bytes(); len(cd) > 0 {
		m.CorrelationData = cd
	}
	// Each property takes at least two bytes: the count cannot be more than
	// half of what is left.
	if n := d.uvarint(); n > 0 && !d.err {
		if n > uint64(len(d.b)/2) {
			return Message{}, fmt.Errorf("%w: %d user properties", errEnvelope, n)
		}
		m.UserProperties = make([]UserProperty, n)
		for i := range m.UserProperties {
			m.UserProperties[i] = UserProperty{Key: string(d.bytes()), Value: string(d.bytes())}
		}
	}
	if d.err {
		return Message{}, fmt.Errorf("%w: truncated", errEnvelope)
	}
	if len(d.b) > 0 {
		m.Payload = d.b
	}
	return m, nil
}

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) uvarint() uint64 {
	if d.err {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = true
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}
