// ztgate patch: the on-demand writer (see README.md).

package mqtt

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// writerGoroutines counts the goroutines sending a client's outbound queue.
func writerGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "(*Client).WriteLoop") || strings.Contains(s, "(*Client).drainOutbound") {
			count++
		}
	}
	return count
}

// waitWriters waits, a bounded time, until at most max writer goroutines run.
func waitWriters(max int) int {
	n := writerGoroutines()
	for i := 0; i < 200 && n > max; i++ {
		time.Sleep(10 * time.Millisecond)
		n = writerGoroutines()
	}
	return n
}

// An idle client costs no writer goroutine; a delivery starts one, which
// writes it and ends again.
func TestIdleClientHasNoWriter(t *testing.T) {
	s := newServer()
	defer s.Close()
	before := writerGoroutines()

	r, w := net.Pipe()
	defer w.Close()
	done := make(chan error, 1)
	go func() { done <- s.EstablishConnection("tcp", r) }()
	_, err := w.Write(packets.TPacketData[packets.Connect].Get(packets.TConnectClean).RawBytes)
	require.NoError(t, err)
	connack := packets.TPacketData[packets.Connack].Get(packets.TConnackAcceptedNoSession).RawBytes
	got := make([]byte, len(connack))
	_, err = io.ReadFull(w, got)
	require.NoError(t, err)
	require.Equal(t, connack, got)

	// A PINGRESP comes from the reader, after attachClient set up writing.
	_, err = w.Write(packets.TPacketData[packets.Pingreq].Get(packets.TPingreq).RawBytes)
	require.NoError(t, err)
	pong := packets.TPacketData[packets.Pingresp].Get(packets.TPingresp).RawBytes
	got = make([]byte, len(pong))
	_, err = io.ReadFull(w, got)
	require.NoError(t, err)
	require.Equal(t, pong, got)

	require.LessOrEqual(t, waitWriters(before), before, "an idle client keeps a writer goroutine")

	// Positive control: a delivery is still written, then the writer ends.
	all := s.Clients.GetAll()
	require.Len(t, all, 1)
	var cl *Client
	for _, c := range all {
		cl = c
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("hi")}
	_, err = s.publishToClient(cl, packets.Subscription{Filter: "a/b"}, pk)
	require.NoError(t, err)
	fh := make([]byte, 2)
	_, err = io.ReadFull(w, fh)
	require.NoError(t, err)
	require.Equal(t, byte(packets.Publish<<4), fh[0])
	_, err = io.ReadFull(w, make([]byte, fh[1]))
	require.NoError(t, err)
	require.LessOrEqual(t, waitWriters(before), before, "the writer outlives the queue")

	_, err = w.Write(packets.TPacketData[packets.Disconnect].Get(packets.TDisconnect).RawBytes)
	require.NoError(t, err)
	go func() { _, _ = io.Copy(io.Discard, w) }()
	require.NoError(t, <-done)
}

// Many concurrent deliveries to one client: the writer stops and restarts
// as the queue empties and fills, and no packet is stranded in the queue.
func TestOnDemandWriterStrandsNothing(t *testing.T) {
	s := newServer()
	defer s.Close()
	r, w := net.Pipe()
	defer w.Close()
	cl := s.NewClient(r, "tcp", "writer", false)
	cl.Properties.ProtocolVersion = 4

	const senders, each = 8, 500
	counted := make(chan int, 1)
	go func() {
		n := 0
		buf := make([]byte, 2)
		for n < senders*each {
			if _, err := io.ReadFull(w, buf[:2]); err != nil {
				break
			}
			rest := make([]byte, buf[1])
			if _, err := io.ReadFull(w, rest); err != nil {
				break
			}
			n++
		}
		counted <- n
	}()

	cl.enableWriter() // as attachClient does after the CONNACK
	var wg sync.WaitGroup
	for i := 0; i < senders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("x")}
			for j := 0; j < each; j++ {
				for {
					_, err := s.publishToClient(cl, packets.Subscription{Filter: "a/b"}, pk)
					if err == nil {
						break
					}
					require.ErrorIs(t, err, packets.ErrPendingClientWritesExceeded)
					time.Sleep(time.Millisecond) // queue full: retry, bounded by the reader
				}
			}
		}()
	}
	wg.Wait()
	select {
	case n := <-counted:
		require.Equal(t, senders*each, n)
	case <-time.After(30 * time.Second):
		t.Fatalf("packets stranded in the queue: %d left", len(cl.State.outbound))
	}
	cl.Stop(nil)
}

// With LazyOutboundQueue a connected client holds no outbound queue until
// its first delivery, which is still written.
func TestLazyOutboundQueue(t *testing.T) {
	s := newServer()
	s.Options.LazyOutboundQueue = true
	defer s.Close()
	cl := s.NewClient(nil, "tcp", "lazy", false)
	require.Nil(t, cl.outboundQueue(false), "queue made with the client")

	r, w := net.Pipe()
	defer w.Close()
	cl = s.NewClient(r, "tcp", "lazy", false)
	cl.Properties.ProtocolVersion = 4
	cl.enableWriter()
	require.Nil(t, cl.outboundQueue(false), "queue made before a delivery")

	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("hi")}
	_, err := s.publishToClient(cl, packets.Subscription{Filter: "a/b"}, pk)
	require.NoError(t, err)
	fh := make([]byte, 2)
	_, err = io.ReadFull(w, fh)
	require.NoError(t, err)
	require.Equal(t, byte(packets.Publish<<4), fh[0])
	_, err = io.ReadFull(w, make([]byte, fh[1]))
	require.NoError(t, err)
	require.NotNil(t, cl.outboundQueue(false))
	require.Equal(t, int(s.Options.Capabilities.MaximumClientWritesPending), cap(cl.outboundQueue(false)))
	cl.Stop(nil)
}
