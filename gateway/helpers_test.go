package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// waitFor bounds every wait for something that should happen.
const waitFor = 10 * time.Second

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

// testEngine compiles testdata/policy once per test binary.
var testEngine = sync.OnceValues(func() (*policy.Engine, error) {
	fsys, err := policy.LoadDir(filepath.Join("testdata", "policy"))
	if err != nil {
		return nil, err
	}
	return policy.NewEngine(fsys, policy.Options{Logger: quietLogger()})
})

func quietLogger() *slog.Logger {
	if os.Getenv("ZTGATE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func engine(t testing.TB) *policy.Engine {
	t.Helper()
	e, err := testEngine()
	if err != nil {
		t.Fatalf("policy engine: %v", err)
	}
	return e
}

// switchDecider is the test policy with switches that tighten it at run
// time, standing in for a policy change.
type switchDecider struct {
	next         policy.Decider
	denyReceive  atomic.Bool
	denyWill     atomic.Bool
	denyConnect  atomic.Bool
	denySubcribe atomic.Bool
}

func (d *switchDecider) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	switch {
	case in.Action == policy.ActionReceive && d.denyReceive.Load(),
		in.Action == policy.ActionSubscribe && d.denySubcribe.Load(),
		in.Action == policy.ActionConnect && d.denyConnect.Load(),
		in.Will && d.denyWill.Load():
		return policy.Decision{Reasons: []string{"switched off"}}
	}
	return d.next.Decide(ctx, in)
}

// allowAll is the baseline decider of the benchmarks and of the tests of
// the gateway's own floor (what is refused whatever the policy says).
var allowAll = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
	return policy.Decision{Allow: true}
})

type env struct {
	t      testing.TB
	ca     *identity.CA
	caDir  string
	reg    *registry.Store
	gw     *Gateway
	addr   string
	bundle []byte
	logs   *testpki.LogBuffer
}

// newEnv starts a gateway on 127.0.0.1:0 with a fresh CA and registry.
func newEnv(t testing.TB, d policy.Decider) *env {
	t.Helper()
	return newEnvWith(t, d, nil)
}

// newEnvWith is newEnv with a last say on the gateway's config.
func newEnvWith(t testing.TB, d policy.Decider, mod func(*Config)) *env {
	t.Helper()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	ca, err := identity.LoadOrCreateCA(caDir, testTD)
	if err != nil {
		t.Fatalf("CA: %v", err)
	}
	reg, err := registry.Open(filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	t.Cleanup(func() { _ = reg.Close() })

	serverID := spiffeid.RequireFromPath(testTD, "/ztgate/gateway")
	cert, err := ca.IssueServerCert(serverID, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatalf("server cert: %v", err)
	}
	v := identity.NewVerifier(ca.Bundle())
	logs := &testpki.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	if os.Getenv("ZTGATE_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, os.Stderr), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := Config{
		Addr:     "127.0.0.1:0",
		TLS:      identity.ServerTLSConfig(cert, v),
		Verifier: v,
		Registry: reg,
		Decider:  d,
		Logger:   logger,
	}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := gw.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = gw.Close() })
	return &env{t: t, ca: ca, caDir: caDir, reg: reg, gw: gw, addr: gw.Addr().String(), bundle: ca.BundlePEM(), logs: logs}
}

// enroll registers device name (spiffe://example.org/device/NAME) and
// returns a client TLS config holding an SVID for it.
func (e *env) enroll(name string, labels map[string]string) *tls.Config {
	e.t.Helper()
	id := spiffeid.RequireFromSegments(testTD, "device", name)
	if _, err := e.reg.Create(registry.Device{Name: name, SPIFFEID: id.String(), Labels: labels}); err != nil {
		e.t.Fatalf("enroll %s: %v", name, err)
	}
	return e.svid(id)
}

// svid issues an SVID for id, enrolled or not.
func (e *env) svid(id spiffeid.ID) *tls.Config {
	e.t.Helper()
	return e.svidTTL(id, time.Hour)
}

// svidTTL issues an SVID for id that expires after ttl.
func (e *env) svidTTL(id spiffeid.ID, ttl time.Duration) *tls.Config {
	e.t.Helper()
	chain, key, err := e.ca.IssueSVID(id, ttl)
	if err != nil {
		e.t.Fatalf("SVID: %v", err)
	}
	cfg, err := identity.ClientTLSConfigPEM(chain, key, e.bundle)
	if err != nil {
		e.t.Fatalf("client TLS: %v", err)
	}
	return cfg
}

// client is a paho MQTT 5 client that records what it receives.
type client struct {
	*paho.Client
	msgs        chan *paho.Publish
	disconnects chan *paho.Disconnect
}

func (e *env) dial(cfg *tls.Config) net.Conn {
	e.t.Helper()
	d := &net.Dialer{Timeout: waitFor}
	conn, err := tls.DialWithDialer(d, "tcp", e.addr, cfg)
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	return conn
}

// connect opens an MQTT 5 connection. It returns the CONNACK and the
// client; err is set when the CONNACK refused.
func (e *env) connect(cfg *tls.Config, cp *paho.Connect) (*client, *paho.Connack, error) {
	e.t.Helper()
	c := &client{msgs: make(chan *paho.Publish, 1024), disconnects: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: pahopackets.NewThreadSafeConn(e.dial(cfg)),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				select {
				case c.msgs <- pr.Packet:
				default:
				}
				return true, nil
			},
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case c.disconnects <- d:
			default:
			}
		},
		PacketTimeout: waitFor,
	})
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := c.Connect(ctx, cp)
	if err == nil {
		e.t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	}
	return c, ack, err
}

// mustConnect connects or fails the test.
func (e *env) mustConnect(cfg *tls.Config, clientID string) *client {
	e.t.Helper()
	c, _, err := e.connect(cfg, &paho.Connect{ClientID: clientID, CleanStart: true})
	if err != nil {
		e.t.Fatalf("connect %s: %v", clientID, err)
	}
	return c
}

func (c *client) subscribe(t testing.TB, subs ...paho.SubscribeOptions) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if sa == nil {
		t.Fatalf("subscribe: %v", err)
	}
	return sa.Reasons
}

// publish sends p and returns the reason code of its acknowledgement (0 for
// QoS 0).
func (c *client) publish(t testing.TB, p *paho.Publish) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	r, err := c.Publish(ctx, p)
	if r == nil {
		t.Fatalf("publish %s: %v", p.Topic, err)
	}
	return r.ReasonCode
}

// next returns the next message received, failing after waitFor.
func (c *client) next(t testing.TB) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(waitFor):
		t.Fatal("no message received")
		return nil
	}
}

// expectOnly asserts that the next message is on topic want: anything
// received before it was delivered against the test's expectation. Tests
// send the message they expect after the ones that must not arrive, over
// the same path, so its arrival bounds the wait.
func (c *client) expectOnly(t testing.TB, want string) *paho.Publish {
	t.Helper()
	m := c.next(t)
	if m.Topic != want {
		t.Fatalf("received %q (%q) before %q: delivered against policy", m.Topic, m.Payload, want)
	}
	return m
}

// poll waits until cond holds.
func poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sub(filter string, qos byte) paho.SubscribeOptions {
	return paho.SubscribeOptions{Topic: filter, QoS: qos}
}

func u32(v uint32) *uint32 { return &v }
func u16(v uint16) *uint16 { return &v }

// raw311 is a bare MQTT client: MQTT 3.1.1, which paho.golang does not
// speak, or MQTT 5 where a test needs what paho does not do (not
// acknowledging, for one).
type raw311 struct {
	conn    net.Conn
	r       *bufio.Reader
	version byte // 4 unless set
}

func (e *env) dial311(cfg *tls.Config) *raw311 {
	e.t.Helper()
	conn := e.dial(cfg)
	e.t.Cleanup(func() { _ = conn.Close() })
	return &raw311{conn: conn, r: bufio.NewReader(conn), version: 4}
}

// dial5 is dial311 for a bare MQTT 5 client.
func (e *env) dial5(cfg *tls.Config) *raw311 {
	c := e.dial311(cfg)
	c.version = 5
	return c
}

func (c *raw311) write(t testing.TB, pk packets.Packet) {
	t.Helper()
	pk.ProtocolVersion = c.version
	b := encodePacket(t, pk)
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitFor))
	if _, err := c.conn.Write(b); err != nil {
		t.Fatalf("raw311 write: %v", err)
	}
}

// encodePacket is pk as a client sends it, in pk.ProtocolVersion.
func encodePacket(t testing.TB, pk packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	default:
		t.Fatalf("cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return buf.Bytes()
}

// read returns the next packet, or an error (io.EOF and the like once the
// server closed the connection).
func (c *raw311) read() (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(waitFor))
	var pk packets.Packet
	pk.ProtocolVersion = c.version
	b, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = errors.New("raw311: unexpected packet")
	}
	return pk, err
}

// expectClosed reads until the server closes the connection, failing if it
// stays open.
func (c *raw311) expectClosed(t testing.TB) {
	t.Helper()
	for i := 0; i < 100; i++ {
		pk, err := c.read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("connection still open")
		}
		if err != nil {
			return
		}
		t.Logf("read %d before the close", pk.FixedHeader.Type)
	}
	t.Fatal("connection still open")
}

func (c *raw311) connect(t testing.TB, clientID string) byte {
	t.Helper()
	return c.connectWith(t, packets.ConnectParams{Clean: true, ClientIdentifier: clientID}, packets.Properties{})
}

// connectWith sends a CONNECT (protocol name and, if unset, keepalive
// filled in) and returns the CONNACK's reason code.
func (c *raw311) connectWith(t testing.TB, cp packets.ConnectParams, props packets.Properties) byte {
	t.Helper()
	cp.ProtocolName = []byte("MQTT")
	if cp.Keepalive == 0 {
		cp.Keepalive = 30
	}
	c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: cp, Properties: props})
	pk, err := c.read()
	if err != nil || pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("raw311: no CONNACK: %v", err)
	}
	return pk.ReasonCode
}
