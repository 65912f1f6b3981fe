package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/registry"
)

// wait bounds every wait for something that must happen; it is only
// reached when a test fails.
const wait = 10 * time.Second

// gateway is a real ztgate (MQTT over mTLS, API, registry, default policy)
// on 127.0.0.1, signing device SVIDs with a short lifetime.
type gateway struct {
	app  *app.App
	ttl  time.Duration
	mqtt string // 127.0.0.1:PORT
	api  string // https://127.0.0.1:PORT
}

func startGateway(t *testing.T, ttl time.Duration) *gateway {
	t.Helper()
	logs := &testpki.LogBuffer{}
	cfg := app.DefaultConfig()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.APIAddr = "127.0.0.1:0"
	cfg.SVIDTTL = ttl
	cfg.PolicyWatch = false
	// Decisions are tested here, not their latency: a starved evaluation
	// must not fail closed and turn a positive control into a flake.
	cfg.PolicyTimeout = 5 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := app.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start gateway: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("close gateway: %v", err)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	port := func(addr net.Addr) string {
		_, p, err := net.SplitHostPort(addr.String())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	return &gateway{app: a, ttl: ttl,
		mqtt: net.JoinHostPort("127.0.0.1", port(a.MQTTAddr())),
		api:  "https://" + net.JoinHostPort("127.0.0.1", port(a.APIAddr()))}
}

// enroll registers name with labels and writes an SVID directory for it
// (key made here, CSR signed by the gateway's CA with the gateway's TTL),
// as `ztgate device enroll --out` lays it out.
func (g *gateway) enroll(t *testing.T, name, idPath string, labels map[string]string) (dir string, id spiffeid.ID) {
	t.Helper()
	id = spiffeid.RequireFromPath(g.app.TrustDomain(), idPath)
	if _, err := g.app.Registry().Create(registry.Device{Name: name, SPIFFEID: id.String(), Labels: labels}); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	key := testpki.NewKey(t)
	chain, err := g.app.CA().SignCSR(testpki.CSRPEM(t, key, nil), id, g.ttl)
	if err != nil {
		t.Fatalf("sign %s: %v", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	writeFiles(t, dir, map[string][]byte{
		svidFile:   chain,
		keyFile:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		bundleFile: g.app.CA().BundlePEM(),
	})
	return dir, id
}

// controller is an MQTT 5 client labelled role=controller, with an SVID
// that outlives the test, collecting the device states it receives.
type controller struct {
	cli    *paho.Client
	states chan string
}

func (g *gateway) controller(t *testing.T) *controller {
	t.Helper()
	id := spiffeid.RequireFromPath(g.app.TrustDomain(), "/controller/ctl-1")
	if _, err := g.app.Registry().Create(registry.Device{Name: "ctl-1", SPIFFEID: id.String(),
		Labels: map[string]string{"role": "controller"}}); err != nil {
		t.Fatal(err)
	}
	chainPEM, keyPEM, err := g.app.CA().IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(g.app.CA().Certificate())
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, err := (&tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}).DialContext(ctx, "tcp", g.mqtt)
	if err != nil {
		t.Fatalf("controller: dial: %v", err)
	}
	c := &controller{states: make(chan string, 64)}
	c.cli = paho.NewClient(paho.ClientConfig{
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case c.states <- string(pr.Packet.Payload):
			default:
			}
			return true, nil
		}},
		PacketTimeout: wait,
	})
	if _, err := c.cli.Connect(ctx, &paho.Connect{ClientID: "ctl-1", KeepAlive: 30, CleanStart: true}); err != nil {
		_ = conn.Close()
		t.Fatalf("controller: connect: %v", err)
	}
	t.Cleanup(func() { _ = c.cli.Disconnect(&paho.Disconnect{}) })
	sa, err := c.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/+/state", QoS: 1}}})
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		t.Fatalf("controller: subscribe: %v %+v", err, sa)
	}
	return c
}

// command publishes a QoS 1 command and fails unless the gateway accepts it.
func (c *controller) command(t *testing.T, topic string, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	pr, err := c.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	if err != nil || pr.ReasonCode >= 0x80 {
		t.Fatalf("command on %s: %v (%+v)", topic, err, pr)
	}
}

// expectState waits for the device state payload want.
func (c *controller) expectState(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case s := <-c.states:
			if s == want {
				return
			}
			t.Fatalf("device state %q, want %q", s, want)
		case <-deadline:
			t.Fatalf("no device state %q within %s", want, wait)
		}
	}
}

// newTestDevice builds a device client logging to a buffer.
func newTestDevice(t *testing.T, opts options) (*device, *testpki.LogBuffer) {
	t.Helper()
	logs := &testpki.LogBuffer{}
	d, err := newDevice(opts, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return d, logs
}

// runDevice runs d in the background until the test ends.
func runDevice(t *testing.T, d *device, logs *testpki.LogBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("device: %v", err)
			}
		case <-time.After(wait):
			t.Errorf("device still running %s after cancel", wait)
		}
		if t.Failed() {
			t.Logf("device log:\n%s", logs.String())
		}
	})
}

// A device with a 6-second SVID renews it at half-life, again and again,
// each time switching its MQTT connection to the new SVID and resuming its
// session. A controller publishes numbered QoS 1 commands throughout; the
// device receives every one (duplicates are allowed at QoS 1, loss is
// not), the gateway never cuts it for an expired SVID, and its Last Will
// ("offline") is never published.
func TestRenewalKeepsSessionWithoutLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for several seconds")
	}
	const ttl = 6 * time.Second
	g := startGateway(t, ttl)
	ctl := g.controller(t)
	dir, id := g.enroll(t, "sensor-1", "/device/sensor-1", nil)

	d, logs := newTestDevice(t, options{svidDir: dir, broker: g.mqtt, api: g.api, interval: time.Second})
	first := d.svids.current()
	var (
		mu       sync.Mutex
		received = map[string]int{}
	)
	d.onCommand = func(p *paho.Publish) {
		var c command
		if json.Unmarshal(p.Payload, &c) == nil {
			mu.Lock()
			received[c.ID]++
			mu.Unlock()
		}
	}
	// A reconnection takes a while on a real network. Here it would
	// be so quick that few commands, if any, were published in between;
	// slowed down, every reconnection leaves a few queued in the session.
	var dials sync.Map
	realDial := (&tls.Dialer{Config: d.conns.tls}).DialContext
	d.conns.dialTLS = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if _, again := dials.LoadOrStore("first", true); again {
			time.Sleep(300 * time.Millisecond)
		}
		return realDial(ctx, network, addr)
	}
	runDevice(t, d, logs)
	ctl.expectState(t, "online") // subscribed to its commands, then online

	// Publish for longer than two half-lives, so at least two renewals
	// (and reconnections) happen while commands flow.
	const n = 150
	start := time.Now()
	for i := range n {
		ctl.command(t, "devices/sensor-1/commands/x", fmt.Appendf(nil, `{"cmd":"ping","id":"c-%03d"}`, i))
		// Paced so that the commands span ~7 s, whatever the machine.
		if next := start.Add(time.Duration(i+1) * 7 * time.Second / n); time.Until(next) > 0 {
			time.Sleep(time.Until(next))
		}
	}

	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		got := len(received)
		mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			mu.Lock()
			var missing []string
			for i := range n {
				if k := fmt.Sprintf("c-%03d", i); received[k] == 0 {
					missing = append(missing, k)
				}
			}
			mu.Unlock()
			t.Fatalf("device received %d of %d commands; missing %v", got, n, missing)
		}
		time.Sleep(20 * time.Millisecond)
	}

	cur := d.svids.current()
	if cur.serial() == first.serial() {
		t.Fatalf("SVID serial unchanged (%s): no renewal happened", cur.serial())
	}
	if cur.id != id {
		t.Fatalf("renewed SVID is for %s, want %s", cur.id, id)
	}
	if lifetime := cur.leaf().NotAfter.Sub(cur.obtained); lifetime > ttl {
		t.Fatalf("renewed SVID lives %s, want at most the gateway's %s", lifetime, ttl)
	}
	// The directory holds the current SVID, as a pair that loads.
	onDisk, err := loadSVID(dir)
	if err != nil {
		t.Fatalf("SVID directory after renewal: %v", err)
	}
	if onDisk.serial() != cur.serial() {
		t.Fatalf("svid.pem holds serial %s, the device uses %s", onDisk.serial(), cur.serial())
	}
	renewals := strings.Count(logs.String(), "msg=\"SVID renewed\"")
	if renewals < 2 {
		t.Fatalf("%d renewals in %s; want at least 2 (half-life of a %s SVID)", renewals, time.Since(start), ttl)
	}
	// Each renewal was a reconnection ("online" again), never a Will.
	for range renewals {
		ctl.expectState(t, "online")
	}
	if strings.Contains(logs.String(), "disconnected by gateway") {
		t.Fatalf("the gateway cut the device:\n%s", logs.String())
	}
	t.Logf("%d commands received across %d renewals (%d duplicates)", n, renewals, dupes(&mu, received))
}

func dupes(mu *sync.Mutex, m map[string]int) int {
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, c := range m {
		n += c - 1
	}
	return n
}

// A suspended device cannot renew: the API refuses, the device keeps its
// current SVID (in memory and on disk) and reports why. Resumed, it renews.
func TestRenewRefusedWhileSuspended(t *testing.T) {
	g := startGateway(t, time.Hour)
	dir, _ := g.enroll(t, "sensor-1", "/device/sensor-1", nil)
	d, _ := newTestDevice(t, options{svidDir: dir, broker: g.mqtt, api: g.api, interval: time.Second})
	before, err := os.ReadFile(filepath.Join(dir, svidFile))
	if err != nil {
		t.Fatal(err)
	}
	first := d.svids.current()

	if _, err := g.app.Registry().SetStatus("sensor-1", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err = d.renew.renew(ctx)
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "suspended") {
		t.Fatalf("renewal while suspended: err = %v, want a 403 naming the suspension", err)
	}
	after, err := os.ReadFile(filepath.Join(dir, svidFile))
	if err != nil || !bytes.Equal(before, after) || d.svids.current() != first {
		t.Fatalf("a refused renewal changed the SVID (%v)", err)
	}

	// Positive control: the same device, active again, renews.
	if _, err := g.app.Registry().SetStatus("sensor-1", registry.StatusActive); err != nil {
		t.Fatal(err)
	}
	next, err := d.renew.renew(ctx)
	if err != nil {
		t.Fatalf("renewal once resumed: %v", err)
	}
	if next.serial() == first.serial() || d.svids.current() != next {
		t.Fatal("renewal did not replace the current SVID")
	}
	onDisk, err := loadSVID(dir)
	if err != nil || onDisk.serial() != next.serial() {
		t.Fatalf("SVID directory after renewal: %v", err)
	}
}

// When renewal keeps failing (here: nothing listens at the API address)
// the device retries with backoff, warns while the SVID is still valid,
// and once it has expired says so and keeps trying.
func TestRenewalFailureRetriesPastExpiry(t *testing.T) {
	g := startGateway(t, 2*time.Second)
	dir, _ := g.enroll(t, "sensor-1", "/device/sensor-1", nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAPI := "https://" + l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	d, logs := newTestDevice(t, options{svidDir: dir, broker: g.mqtt, api: closedAPI, interval: time.Second})
	first := d.svids.current()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.renew.run(ctx, func(*svid) { t.Error("renewed without an API") })
	}()
	defer func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("device log:\n%s", logs.String())
		}
	}()

	deadline := time.Now().Add(wait)
	for !strings.Contains(logs.String(), "SVID expired and not renewed") {
		if time.Now().After(deadline) {
			t.Fatalf("no expiry report within %s", wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := logs.String()
	if !strings.Contains(out, "SVID renewal failed; retrying") {
		t.Fatalf("no retry reported before expiry:\n%s", out)
	}
	if time.Now().Before(first.leaf().NotAfter) {
		t.Fatalf("expiry reported before the SVID expired (%s)", first.leaf().NotAfter)
	}
	if d.svids.current() != first {
		t.Fatal("the SVID changed without a renewal")
	}
}
