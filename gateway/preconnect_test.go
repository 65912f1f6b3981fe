package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// chunkConn is a net.Conn whose reads return the given chunks, one per
// Read, then io.EOF; it records whether it was closed.
type chunkConn struct {
	net.Conn // nil: only Read and Close are used
	chunks   [][]byte
	closed   bool
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	if c.chunks[0] = c.chunks[0][n:]; len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func (c *chunkConn) Close() error {
	c.closed = true
	return nil
}

func bytesOf(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// byteChunks splits b into one-byte reads.
func byteChunks(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

func TestPacketConnFirstHeader(t *testing.T) {
	const limit = 1000
	body := bytes.Repeat([]byte{'b'}, 10)
	cases := []struct {
		name   string
		stream []byte
		ok     bool
	}{
		{"small CONNECT", bytesOf([]byte{0x10, 10}, body), true},
		{"CONNECT of exactly the limit", bytesOf(fixedHeader(1, limit-3), body), true},
		{"CONNECT one byte over the limit", fixedHeader(1, limit-2), false},
		{"CONNECT declaring 256 MiB", []byte{0x10, 0xff, 0xff, 0xff, 0x7f}, false},
		{"CONNECT with reserved flags set", []byte{0x11, 10}, false},
		{"PUBLISH first", []byte{0x30, 10}, false},
		{"PINGREQ first", []byte{0xc0, 0}, false},
		{"remaining length of 5 bytes", []byte{0x10, 0x80, 0x80, 0x80, 0x80, 0x01}, false},
	}
	for _, tc := range cases {
		for _, split := range []bool{false, true} {
			name := tc.name
			if split {
				name += ", one byte per read"
			}
			t.Run(name, func(t *testing.T) {
				chunks := [][]byte{bytes.Clone(tc.stream)}
				if split {
					chunks = byteChunks(bytes.Clone(tc.stream))
				}
				under := &chunkConn{chunks: chunks}
				c := newPacketConn(under, limit, 1<<20)
				got, err := io.ReadAll(c)
				if tc.ok {
					if err != nil || !bytes.Equal(got, tc.stream) || under.closed {
						t.Fatalf("read %q, %v (closed %v); want the stream unchanged", got, err, under.closed)
					}
					return
				}
				if !errors.Is(err, errPreConnect) || !under.closed {
					t.Fatalf("error %v, closed %v; want errPreConnect and the connection closed", err, under.closed)
				}
				// What was read before the refusal is only header bytes:
				// never the declared body, never the refused byte.
				if len(got) >= len(tc.stream) {
					t.Fatalf("read %d bytes of a refused stream of %d", len(got), len(tc.stream))
				}
				if _, err := c.Read(make([]byte, 8)); !errors.Is(err, errPreConnect) {
					t.Fatalf("read after the refusal: %v, want errPreConnect again", err)
				}
			})
		}
	}
}

// Past the CONNECT, reading follows every packet and allocates nothing.
func TestPacketConnReadAllocatesNothingAfterConnect(t *testing.T) {
	under := &loopConn{}
	c := newPacketConn(under, 1000, 1<<20)
	buf := make([]byte, 512)
	for i := 0; i < 20 && c.first; i++ {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	if c.first {
		t.Fatal("the CONNECT never ended")
	}
	if allocs := testing.AllocsPerRun(1000, func() { _, _ = c.Read(buf) }); allocs != 0 {
		t.Fatalf("%v allocations per Read, want 0", allocs)
	}
}

// loopConn returns small packets (a CONNECT type byte and a length of 0),
// forever.
type loopConn struct {
	net.Conn
	odd bool // the next byte is a length
}

func (c *loopConn) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0x10
		if c.odd {
			p[i] = 0
		}
		c.odd = !c.odd
	}
	return len(p), nil
}

func BenchmarkPacketConnRead(b *testing.B) {
	c := newPacketConn(&loopConn{}, 1000, 1<<20)
	buf := make([]byte, 2048)
	for c.first {
		_, _ = c.Read(buf)
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = c.Read(buf)
	}
}

func TestPacketLimits(t *testing.T) {
	cases := []struct {
		name                    string
		maxPacket, maxConnect   int
		wantPacket, wantConnect int
		wantErr                 bool
	}{
		{"defaults", 0, 0, DefaultMaxPacketSize, DefaultMaxConnectPacketSize, false},
		{"configured", 4096, 1024, 4096, 1024, false},
		{"pre-CONNECT default capped by a small maximum", 4096, 0, 4096, 4096, false},
		{"the MQTT ceiling", MaxPacketSizeLimit, MaxPacketSizeLimit, MaxPacketSizeLimit, MaxPacketSizeLimit, false},
		{"negative maximum", -1, 0, 0, 0, true},
		{"negative pre-CONNECT", 0, -1, 0, 0, true},
		{"beyond what MQTT encodes", MaxPacketSizeLimit + 1, 0, 0, 0, true},
		{"pre-CONNECT above the maximum", 4096, 8192, 0, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, c, err := packetLimits(tc.maxPacket, tc.maxConnect)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %d, %d; want an error", p, c)
				}
				return
			}
			if err != nil || p != tc.wantPacket || c != tc.wantConnect {
				t.Fatalf("got %d, %d, %v; want %d, %d", p, c, err, tc.wantPacket, tc.wantConnect)
			}
		})
	}
}

func TestNewRefusesBadPacketLimits(t *testing.T) {
	e := newEnv(t, allowAll)
	_, err := New(Config{Addr: "127.0.0.1:0", TLS: e.gw.tls, Verifier: e.gw.verifier, Registry: e.reg, Decider: allowAll,
		MaxPacketSize: -1})
	if err == nil {
		t.Fatal("New took a negative maximum packet size")
	}
}
