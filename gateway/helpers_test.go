package gateway

import (
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

	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/mqttconn"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// waitFor bounds every wait for something that should happen.
const waitFor = testclient.Wait

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
	gw := startGateway(t, cfg)
	return &env{t: t, ca: ca, caDir: caDir, reg: reg, gw: gw, addr: gw.Addr().String(), bundle: ca.BundlePEM(), logs: logs}
}

// startGateway starts a gateway with cfg, closed when the test ends.
func startGateway(t testing.TB, cfg Config) *Gateway {
	t.Helper()
	gw, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := gw.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = gw.Close() })
	return gw
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

// client is testclient's paho MQTT 5 client under the short names the
// gateway tests use.
type client struct{ *testclient.Client }

// connect opens an MQTT 5 connection (keepalive 30 s unless cp sets one).
// It returns the CONNACK and the client; err is set when the CONNACK
// refused. A TLS handshake the client refuses fails the test.
func (e *env) connect(cfg *tls.Config, cp *paho.Connect) (*client, *paho.Connack, error) {
	e.t.Helper()
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	c, ack, err := testclient.Dialer{Addr: e.addr, TLS: cfg}.Dial(e.t, cp)
	var de *mqttconn.Error
	switch {
	case errors.As(err, &de) && de.Stage == mqttconn.StageHandshake:
		e.t.Fatalf("dial: %v", err)
	case err != nil:
		return nil, ack, err
	}
	return &client{c}, ack, nil
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
	return c.SubscribeWith(t, subs...)
}

// publish sends p and returns the reason code of its acknowledgement (0 for
// QoS 0); no acknowledgement fails the test.
func (c *client) publish(t testing.TB, p *paho.Publish) byte {
	t.Helper()
	r := c.SendPacket(t, p)
	if r.Err != nil {
		t.Fatalf("publish %s: %v", p.Topic, r.Err)
	}
	return r.Reason
}

// next returns the next message received, failing after waitFor.
func (c *client) next(t testing.TB) *paho.Publish {
	t.Helper()
	return c.Msgs.Next(t, waitFor)
}

// expectOnly asserts that the next message is on topic want (see
// testclient.Collector.ExpectNext).
func (c *client) expectOnly(t testing.TB, want string) *paho.Publish {
	t.Helper()
	return c.Msgs.ExpectNext(t, want, waitFor)
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

// dial311 opens a TLS connection for a bare MQTT 3.1.1 client.
func (e *env) dial311(cfg *tls.Config) *testclient.Raw {
	e.t.Helper()
	return testclient.DialRaw(e.t, e.addr, cfg, 4)
}

// dial5 is dial311 for a bare MQTT 5 client.
func (e *env) dial5(cfg *tls.Config) *testclient.Raw {
	e.t.Helper()
	return testclient.DialRaw(e.t, e.addr, cfg, 5)
}
