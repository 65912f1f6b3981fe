package bridge

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"
)

// sinkConn is the write side of a link whose reads come from a buffer.
type sinkConn struct{ net.Conn }

func (sinkConn) Write(b []byte) (int, error)      { return len(b), nil }
func (sinkConn) SetWriteDeadline(time.Time) error { return nil }
func (sinkConn) SetDeadline(time.Time) error      { return nil }
func (sinkConn) Close() error                     { return nil }
func (sinkConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (sinkConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (sinkConn) SetReadDeadline(time.Time) error  { return nil }
func (sinkConn) Read([]byte) (int, error)         { return 0, net.ErrClosed }

// What the upstream sends is parsed by the bridge's own code: whatever the
// bytes, the CONNACK handshake and the packet reader return an error or a
// message, and never panic or hang.
func FuzzUpstreamBytes(f *testing.F) {
	f.Add(byte(5), []byte{0x20, 0x03, 0, 0, 0, 0x30, 0x08, 0, 3, 'a', '/', 'b', 0, 'h', 'i'})
	f.Add(byte(4), []byte{0x20, 0x02, 0, 0, 0x32, 0x07, 0, 1, 'a', 0, 7, 'x', 'y', 0x40, 0x02, 0, 1})
	f.Add(byte(5), []byte{0x20, 0x09, 0, 0, 6, 0x21, 0, 4, 0x27, 0, 0, 1})
	f.Add(byte(5), []byte{0x20, 0x03, 0, 0, 0, 0x90, 0x04, 0, 1, 0, 1, 0xe0, 0x02, 0x8e, 0})
	f.Add(byte(5), []byte{0x20, 0x03, 0, 0, 0, 0x32, 0xff, 0xff, 0xff, 0x7f, 0, 1})
	f.Fuzz(func(t *testing.T, v byte, data []byte) {
		if v != 4 {
			v = 5
		}
		var got []inbound
		l := &link{
			conn: sinkConn{}, r: bufio.NewReader(bytes.NewReader(data)), v: v,
			onPublish: func(in inbound) {
				if len(in.Topic) > maxInboundPacket || len(in.Payload) > maxInboundPacket {
					t.Fatalf("inbound larger than the bound: topic %d payload %d", len(in.Topic), len(in.Payload))
				}
				got = append(got, in)
			},
			window: maxWindow, maxQoS: 1, retainAvail: true, keepAlive: keepAlive,
			acks: make(chan ack, len(data)+1), subacks: make(chan []byte, 1), done: make(chan struct{}),
		}
		if err := l.handshake("c"); err != nil {
			return
		}
		if l.window < 1 || l.window > maxWindow {
			t.Fatalf("window %d out of [1, %d]", l.window, maxWindow)
		}
		// Every packet takes at least two bytes, so this ends.
		for range len(data) + 1 {
			if err := l.readOne(); err != nil {
				return
			}
		}
		t.Fatal("readOne did not reach the end of the input")
	})
}
