package bridge

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
)

// fakeUpstream is an MQTT 5 server on loopback TLS, scripted by the test
// one connection at a time, for what Mosquitto cannot be made to do:
// withhold a PUBACK.
type fakeUpstream struct {
	l      net.Listener
	caFile string
}

func newFakeUpstream(t *testing.T, u *upstream) *fakeUpstream {
	ca := testpki.NewCA(t, "fake.test")
	cert := testpki.SignLeaf(t, testpki.ServingTemplate(t, "spiffe://fake.test/broker"), ca.Cert, ca.Key)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return &fakeUpstream{l: l, caFile: u.write("fake-ca.pem", ca.BundlePEM())}
}

// accept takes the next connection and answers its CONNECT.
func (s *fakeUpstream) accept(t *testing.T) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := s.l.Accept(); ch <- res{c, err} }()
	var r res
	select {
	case r = <-ch:
	case <-time.After(3 * testclient.Wait):
		t.Fatal("the bridge did not connect")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { _ = r.c.Close() })
	_ = r.c.SetDeadline(time.Now().Add(testclient.Wait))
	if p := s.read(t, r.c); p.Type != packets.CONNECT {
		t.Fatalf("first packet %v; want CONNECT", p)
	}
	if _, err := (&packets.Connack{}).WriteTo(r.c); err != nil {
		t.Fatal(err)
	}
	return r.c
}

func (s *fakeUpstream) read(t *testing.T, c net.Conn) *packets.ControlPacket {
	t.Helper()
	p, err := packets.ReadPacket(c)
	if err != nil {
		t.Fatalf("read from the bridge: %v", err)
	}
	return p
}

// readPublish skips PINGREQs up to a PUBLISH.
func (s *fakeUpstream) readPublish(t *testing.T, c net.Conn) *packets.Publish {
	t.Helper()
	for {
		p := s.read(t, c)
		if pub, ok := p.Content.(*packets.Publish); ok {
			return pub
		}
		if p.Type != packets.PINGREQ {
			t.Fatalf("packet %v; want PUBLISH", p)
		}
	}
}

// startScripted starts, in a fixture, the bridge "cloud" of cfg (its name, URL and CA
// set here) to a scripted upstream, with a certificate of its own.
func startScripted(t *testing.T, cfg Config) (*fixture, *Manager, *fakeUpstream) {
	t.Helper()
	srv := newFakeUpstream(t, &upstream{t: t, dir: t.TempDir()})
	f := newFixture(t)
	f.svid = testpki.NewCA(t, "example.org").Issue(t, "spiffe://example.org/gateway")
	cfg.Name, cfg.URL, cfg.CAFile = "cloud", "mqtts://"+srv.l.Addr().String(), srv.caFile
	return f, f.start(cfg), srv
}

// A message leaves the queue only with its PUBACK: written and never
// acknowledged, it is sent again on the next connection.
func TestMessageKeptUntilPuback(t *testing.T) {
	_, m, srv := startScripted(t, Config{Out: []OutRule{{Filter: "devices/+/state", QoS: 1}}})
	m.Offer(device("a"), "devices/a/state", []byte("on"), 1, false)

	c1 := srv.accept(t)
	if p := srv.readPublish(t, c1); p.Topic != "devices/a/state" || p.QoS != 1 {
		t.Fatalf("first PUBLISH %v; want devices/a/state at QoS 1", p)
	}
	_ = c1.Close() // no PUBACK

	c2 := srv.accept(t)
	p := srv.readPublish(t, c2)
	if p.Topic != "devices/a/state" || string(p.Payload) != "on" {
		t.Fatalf("after the reconnect: PUBLISH %v; want the unacknowledged message again", p)
	}
	if s := statusOf(m, "cloud"); s.Queued != 1 || s.Forwarded != 0 {
		t.Fatalf("status %+v before the PUBACK; want queued 1, forwarded 0", s)
	}
	if _, err := (&packets.Puback{PacketID: p.PacketID}).WriteTo(c2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "acknowledged message removed", func() bool {
		s := statusOf(m, "cloud")
		return s.Queued == 0 && s.Forwarded == 1
	})
}

// Up to the window, QoS 1 messages go out before the first PUBACK, in
// queue order.
func TestInflightWindowInOrder(t *testing.T) {
	_, m, srv := startScripted(t, Config{Out: []OutRule{{Filter: "devices/+/state", QoS: 1}}})
	for _, p := range []string{"1", "2", "3", "4", "5"} {
		m.Offer(device("a"), "devices/a/state", []byte(p), 1, false)
	}
	c := srv.accept(t)
	var ids []uint16
	for _, want := range []string{"1", "2", "3", "4", "5"} {
		p := srv.readPublish(t, c)
		if string(p.Payload) != want {
			t.Fatalf("PUBLISH %q; want %q (in order, before any PUBACK)", p.Payload, want)
		}
		ids = append(ids, p.PacketID)
	}
	for _, id := range ids {
		if _, err := (&packets.Puback{PacketID: id}).WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all acknowledged", func() bool {
		s := statusOf(m, "cloud")
		return s.Queued == 0 && s.Forwarded == 5
	})
}

// An upstream that ignores the Maximum Packet Size the bridge announced
// does not make it buffer the packet: it is read past, acknowledged and
// dropped, and the next message comes in.
func TestOversizedInboundDropped(t *testing.T) {
	f, m, srv := startScripted(t, Config{In: []InRule{{Filter: "devices/+/commands/#", QoS: 1}}})
	c := srv.accept(t)
	sub, ok := srv.read(t, c).Content.(*packets.Subscribe)
	if !ok || len(sub.Subscriptions) != 1 || !sub.Subscriptions[0].NoLocal {
		t.Fatalf("want one SUBSCRIBE with No Local, got %+v", sub)
	}
	if _, err := (&packets.Suback{PacketID: sub.PacketID, Reasons: []byte{1}}).WriteTo(c); err != nil {
		t.Fatal(err)
	}
	big := &packets.Publish{Topic: "devices/a/commands/big", QoS: 1, PacketID: 7, Payload: make([]byte, maxInboundPacket+1), Properties: &packets.Properties{}}
	small := &packets.Publish{Topic: "devices/a/commands/small", QoS: 1, PacketID: 8, Payload: []byte("ok"), Properties: &packets.Properties{}}
	for _, p := range []*packets.Publish{big, small} {
		if _, err := p.WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []uint16{7, 8} {
		var p *packets.ControlPacket
		for p = srv.read(t, c); p.Type == packets.PINGREQ; p = srv.read(t, c) {
		}
		if a, ok := p.Content.(*packets.Puback); !ok || a.PacketID != want {
			t.Fatalf("packet %v; want PUBACK %d", p, want)
		}
	}
	if got := expectLocal(t, f); got.Topic != "devices/a/commands/small" {
		t.Fatalf("local publish %+v; want only the small command", got)
	}
	if s := statusOf(m, "cloud"); s.Received != 2 || s.Dropped != 1 || !s.Connected {
		t.Errorf("status %+v; want received 2, dropped 1, still connected", s)
	}
}
