package cluster

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func codecSample() Message {
	return Message{
		Topic: "devices/x/telemetry/a.b c*>", Payload: []byte("payload\x00"), QoS: 2, Retain: true,
		Publisher: "spiffe://example.org/device/x", Origin: "n1", PayloadFormat: 1, MessageExpiry: 1<<32 - 1,
		ContentType: "application/json", ResponseTopic: "devices/x/replies", CorrelationData: []byte{0, 1},
		UserProperties: []UserProperty{{Key: "k", Value: "v"}, {}},
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, m := range []Message{codecSample(), {Topic: "t"}} {
		got, err := decodeMessage(encodeMessage(nil, &m))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("decoded\n%+v\nwant\n%+v", got, m)
		}
	}
}

// Every truncation and every corrupted header of a valid envelope is an
// error (or, when only the payload is cut, a shorter payload): never a
// panic, never a huge allocation.
func TestEnvelopeRefusesMalformed(t *testing.T) {
	m := codecSample()
	b := encodeMessage(nil, &m)
	payloadAt := len(b) - len(m.Payload)
	for n := range payloadAt {
		if _, err := decodeMessage(b[:n]); !errors.Is(err, errEnvelope) {
			t.Fatalf("%d of %d bytes: err %v, want errEnvelope", n, len(b), err)
		}
	}
	for _, tt := range []struct {
		name string
		mut  func([]byte)
	}{
		{"version", func(b []byte) { b[0] = 2 }},
		{"flags", func(b []byte) { b[1] = 0x80 }},
		{"qos", func(b []byte) { b[2] = 3 }},
	} {
		c := bytes.Clone(b)
		tt.mut(c)
		if _, err := decodeMessage(c); !errors.Is(err, errEnvelope) {
			t.Errorf("%s: err %v, want errEnvelope", tt.name, err)
		}
	}
	// A property count far beyond the bytes left.
	huge := []byte{envelopeV1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}
	if _, err := decodeMessage(huge); !errors.Is(err, errEnvelope) {
		t.Fatalf("huge count: %v", err)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	m := codecSample()
	f.Add(encodeMessage(nil, &m))
	f.Add([]byte{envelopeV1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err != nil {
			return
		}
		again, err := decodeMessage(encodeMessage(nil, &m))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encoding %+v: %+v, %v", m, again, err)
		}
	})
}

func BenchmarkEnvelope(b *testing.B) {
	m := codecSample()
	m.Payload = bytes.Repeat([]byte("p"), 64)
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = encodeMessage(nil, &m)
		}
	})
	enc := encodeMessage(nil, &m)
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = decodeMessage(enc)
		}
	})
}
