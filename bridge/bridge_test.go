package bridge

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// decider allows everything but the topics in deny, and records every
// input it decided.
type decider struct {
	mu     sync.Mutex
	deny   map[string]bool
	inputs []policy.Input
}

func (d *decider) Decide(_ context.Context, in *policy.Input) policy.Decision {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inputs = append(d.inputs, *in)
	if d.deny[in.Topic] {
		return policy.Decision{Allow: false, ID: "dec-" + in.Topic, Reasons: []string{"test denies " + in.Topic}}
	}
	return policy.Decision{Allow: true, ID: "dec-ok"}
}

func (d *decider) decided(topic string) []policy.Input {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []policy.Input
	for _, in := range d.inputs {
		if in.Topic == topic {
			out = append(out, in)
		}
	}
	return out
}

// localPub is one call of Deps.PublishLocal.
type localPub struct {
	ID       spiffeid.ID
	ClientID string
	Topic    string
	Payload  string
	QoS      byte
	Retain   bool
}

// fixture is a Manager's dependencies, observable.
type fixture struct {
	t     *testing.T
	dir   string
	dec   *decider
	local chan localPub
	logs  *testpki.LogBuffer
	reg   *prometheus.Registry
	svid  tls.Certificate // Deps.ClientCertificate's answer

	mu    sync.Mutex
	dials []string
}

func newFixture(t *testing.T) *fixture {
	return &fixture{
		t: t, dir: t.TempDir(), dec: &decider{deny: map[string]bool{}},
		local: make(chan localPub, 1000), logs: &testpki.LogBuffer{}, reg: prometheus.NewRegistry(),
	}
}

func (f *fixture) deps() Deps {
	return Deps{
		Dir:         f.dir,
		TrustDomain: td,
		ClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &f.svid, nil
		},
		Decider: f.dec,
		PublishLocal: func(id spiffeid.ID, clientID, topic string, payload []byte, qos byte, retain bool) error {
			f.local <- localPub{id, clientID, topic, string(payload), qos, retain}
			return nil
		},
		Logger:  slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics: f.reg,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			f.mu.Lock()
			f.dials = append(f.dials, addr)
			f.mu.Unlock()
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
}

// open is New with the fixture's dependencies; the Manager is closed when
// the test ends (closing twice is harmless).
func (f *fixture) open(cfgs ...Config) *Manager {
	f.t.Helper()
	m, err := New(cfgs, f.deps())
	if err != nil {
		f.t.Fatalf("New: %v", err)
	}
	f.t.Cleanup(func() { _ = m.Close() })
	return m
}

// start is open and Start.
func (f *fixture) start(cfgs ...Config) *Manager {
	f.t.Helper()
	m := f.open(cfgs...)
	if err := m.Start(context.Background()); err != nil {
		f.t.Fatalf("Start: %v", err)
	}
	return m
}

// device is the subject of a local publisher.
func device(name string) *policy.Subject {
	id := spiffeid.RequireFromPath(td, "/device/"+name)
	return policy.NewSubject(id, &registry.Device{Name: name, Status: registry.StatusActive}, policy.Client{ID: name})
}

// eventually polls cond for up to testclient.Wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(testclient.Wait); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func statusOf(m *Manager, name string) Status {
	for _, s := range m.Status() {
		if s.Name == name {
			return s
		}
	}
	return Status{}
}

func waitConnected(t *testing.T, m *Manager, name string) {
	t.Helper()
	eventually(t, name+" connected", func() bool { return statusOf(m, name).Connected })
}

// outConfig forwards devices/+/telemetry/# and devices/+/state upstream
// under plant-a/, authenticated with cert files from the upstream's CA.
func outConfig(u *upstream, version int) Config {
	cert, key := u.clientFiles("ztgate-plant-a")
	return Config{
		Name: "cloud", URL: u.url(), CAFile: u.caFile(), CertFile: cert, KeyFile: key, ProtocolVersion: version,
		Out: []OutRule{
			{Filter: "devices/+/telemetry/#", RemotePrefix: "plant-a/", QoS: 1},
			{Filter: "devices/+/state", RemotePrefix: "plant-a/", QoS: 1},
		},
	}
}

func versions(t *testing.T, test func(t *testing.T, v int)) {
	for _, v := range []int{5, 4} {
		t.Run(fmt.Sprintf("mqtt%d", v), func(t *testing.T) { test(t, v) })
	}
}

func TestForwardsWithRemotePrefix(t *testing.T) {
	versions(t, func(t *testing.T, v int) {
		u := startUpstream(t)
		watcher := u.client("watcher")
		watcher.Sub(t, "#")
		f := newFixture(t)
		m := f.start(outConfig(u, v))
		waitConnected(t, m, "cloud")

		m.Offer(device("a"), "devices/a/telemetry/temp", []byte("21.5"), 1, false)
		got := watcher.Msgs.ExpectPayload(t, "plant-a/devices/a/telemetry/temp", "21.5", testclient.Wait)
		if got.QoS != 1 {
			t.Errorf("upstream QoS %d; want 1", got.QoS)
		}

		ins := f.dec.decided("devices/a/telemetry/temp")
		if len(ins) != 1 {
			t.Fatalf("decided %d times; want once", len(ins))
		}
		in := ins[0]
		if in.Action != policy.ActionBridgeOut || in.Subject.Identity.SPIFFEID != "spiffe://example.org/device/a" ||
			in.Bridge == nil || in.Bridge.Name != "cloud" || in.Bridge.URL != u.url() ||
			in.Bridge.RemoteTopic != "plant-a/devices/a/telemetry/temp" || in.PayloadSize != 4 || in.QoS != 1 {
			t.Errorf("decision input %+v bridge %+v; want bridge_out of device a with the remote topic", in, in.Bridge)
		}
		eventually(t, "forwarded counted, queue empty", func() bool {
			s := statusOf(m, "cloud")
			return s.Forwarded == 1 && s.Queued == 0
		})
		if n := metricValue(t, f.reg, "ztgate_bridge_forwarded_total"); n != 1 {
			t.Errorf("ztgate_bridge_forwarded_total %v; want 1", n)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, a := range f.dials {
			if a != u.Addr {
				t.Errorf("dialled %s; the bridge may dial %s only", a, u.Addr)
			}
		}
		if len(f.dials) == 0 {
			t.Error("no dial through Deps.Dial")
		}
	})
}

func TestTopicOutsideOutNeverSeen(t *testing.T) {
	u := startUpstream(t)
	watcher := u.client("watcher")
	watcher.Sub(t, "#")
	f := newFixture(t)
	m := f.start(outConfig(u, 5))
	waitConnected(t, m, "cloud")

	m.Offer(device("a"), "devices/a/secret", []byte("s3cret"), 1, false)
	m.Offer(device("a"), "devices/a/telemetry/temp", []byte("control"), 1, false)
	watcher.Msgs.ExpectPayload(t, "plant-a/devices/a/telemetry/temp", "control", testclient.Wait)
	// The bridge sends in order, so what was offered before the control
	// would have arrived before it.
	watcher.Msgs.ExpectNone(t, 200*time.Millisecond)
	if ins := f.dec.decided("devices/a/secret"); len(ins) != 0 {
		t.Errorf("a topic outside out was decided %d times; want never", len(ins))
	}
}

func TestDeniedNeverSeenAndCounted(t *testing.T) {
	u := startUpstream(t)
	watcher := u.client("watcher")
	watcher.Sub(t, "#")
	f := newFixture(t)
	f.dec.deny["devices/b/telemetry/temp"] = true
	m := f.start(outConfig(u, 5))
	waitConnected(t, m, "cloud")

	m.Offer(device("b"), "devices/b/telemetry/temp", []byte("denied"), 1, false)
	m.Offer(device("a"), "devices/a/telemetry/temp", []byte("control"), 1, false)
	watcher.Msgs.ExpectPayload(t, "plant-a/devices/a/telemetry/temp", "control", testclient.Wait)
	watcher.Msgs.ExpectNone(t, 200*time.Millisecond)

	if s := statusOf(m, "cloud"); s.Denied != 1 {
		t.Errorf("status denied %d; want 1", s.Denied)
	}
	if n := metricValue(t, f.reg, "ztgate_bridge_denied_total", "direction", "out"); n != 1 {
		t.Errorf(`ztgate_bridge_denied_total{direction="out"} %v; want 1`, n)
	}
	if !strings.Contains(f.logs.String(), "decision_id=dec-devices/b/telemetry/temp") {
		t.Errorf("no deny log line with the decision id:\n%s", f.logs)
	}
}

func TestQueueSurvivesRestartInOrder(t *testing.T) {
	u := newUpstream(t) // not running yet
	f := newFixture(t)
	cfg := outConfig(u, 5)

	m1 := f.start(cfg)
	for i := range 100 {
		m1.Offer(device("a"), "devices/a/telemetry/seq", fmt.Appendf(nil, "%03d", i), 1, false)
	}
	eventually(t, "100 queued", func() bool { return statusOf(m1, "cloud").Queued == 100 })
	if s := statusOf(m1, "cloud"); s.Connected || s.LastError == "" {
		t.Errorf("status %+v; want disconnected with the dial error", s)
	}
	if err := m1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	m2 := f.open(cfg)
	if q := statusOf(m2, "cloud").Queued; q != 100 {
		t.Fatalf("reopened queue holds %d; want 100", q)
	}
	u.start()
	watcher := u.client("watcher")
	watcher.Sub(t, "#")
	if err := m2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Reconnect backoff may hold the first attempt for a while: wait
	// longer than the first few backoff steps.
	for i := range 100 {
		got := watcher.Msgs.Next(t, 3*testclient.Wait)
		want := fmt.Sprintf("%03d", i)
		if got.Topic != "plant-a/devices/a/telemetry/seq" || string(got.Payload) != want {
			t.Fatalf("message %d: %s %q; want %q in order", i, got.Topic, got.Payload, want)
		}
	}
	eventually(t, "queue drained", func() bool {
		s := statusOf(m2, "cloud")
		return s.Queued == 0 && s.Forwarded == 100
	})
	watcher.Msgs.ExpectNone(t, 300*time.Millisecond) // no duplicates
}

// inConfig subscribes to plant-a/devices/+/commands/# with the prefix
// stripped, authenticated with Deps.ClientCertificate (the gateway's SVID
// stand-in, here a certificate of the upstream's CA).
func inConfig(f *fixture, u *upstream, version int) Config {
	f.svid = u.clientCert("ztgate-plant-a")
	return Config{
		Name: "cloud", URL: u.url(), CAFile: u.caFile(), ProtocolVersion: version,
		In: []InRule{{Filter: "+/devices/+/commands/#", StripPrefix: "plant-a/", QoS: 1}},
	}
}

func expectLocal(t *testing.T, f *fixture) localPub {
	t.Helper()
	select {
	case p := <-f.local:
		return p
	case <-time.After(testclient.Wait):
		t.Fatal("no local publish")
		return localPub{}
	}
}

func expectNoLocal(t *testing.T, f *fixture, d time.Duration) {
	t.Helper()
	select {
	case p := <-f.local:
		t.Fatalf("unexpected local publish %+v", p)
	case <-time.After(d):
	}
}

func TestInboundPublishedLocallyAsBridge(t *testing.T) {
	versions(t, func(t *testing.T, v int) {
		u := startUpstream(t)
		f := newFixture(t)
		m := f.start(inConfig(f, u, v))
		waitConnected(t, m, "cloud")

		u.client("cloud-app").Pub(t, testclient.Msg{Topic: "plant-a/devices/a/commands/x", Payload: "reboot", QoS: 1})
		got := expectLocal(t, f)
		want := localPub{ID: spiffeid.RequireFromString("spiffe://example.org/bridge/cloud"), ClientID: "ztgate-cloud",
			Topic: "devices/a/commands/x", Payload: "reboot", QoS: 1}
		if got != want {
			t.Errorf("local publish %+v; want %+v", got, want)
		}
		ins := f.dec.decided("devices/a/commands/x")
		if len(ins) != 1 || ins[0].Action != policy.ActionBridgeIn ||
			ins[0].Subject.Identity.SPIFFEID != "spiffe://example.org/bridge/cloud" || ins[0].Subject.Device != nil ||
			ins[0].Subject.Client.ID != "ztgate-cloud" || ins[0].Bridge == nil ||
			ins[0].Bridge.RemoteTopic != "plant-a/devices/a/commands/x" {
			t.Errorf("decision inputs %+v; want one bridge_in as the bridge", ins)
		}
		if s := statusOf(m, "cloud"); s.Received != 1 {
			t.Errorf("received %d; want 1", s.Received)
		}
	})
}

func TestInboundDeniedAndOutsideStripPrefixDropped(t *testing.T) {
	u := startUpstream(t)
	f := newFixture(t)
	f.dec.deny["devices/b/commands/x"] = true
	m := f.start(inConfig(f, u, 5))
	waitConnected(t, m, "cloud")

	app := u.client("cloud-app")
	app.Pub(t, testclient.Msg{Topic: "other/devices/a/commands/x", Payload: "no prefix", QoS: 1})
	app.Pub(t, testclient.Msg{Topic: "plant-a/devices/b/commands/x", Payload: "denied", QoS: 1})
	app.Pub(t, testclient.Msg{Topic: "plant-a/devices/a/commands/y", Payload: "control", QoS: 1})
	if got := expectLocal(t, f); got.Topic != "devices/a/commands/y" || got.Payload != "control" {
		t.Fatalf("local publish %+v; want the control message only", got)
	}
	expectNoLocal(t, f, 200*time.Millisecond)
	s := statusOf(m, "cloud")
	if s.Received != 3 || s.Dropped != 1 || s.Denied != 1 {
		t.Errorf("status %+v; want received 3, dropped 1 (no prefix), denied 1", s)
	}
	if n := metricValue(t, f.reg, "ztgate_bridge_denied_total", "direction", "in"); n != 1 {
		t.Errorf(`ztgate_bridge_denied_total{direction="in"} %v; want 1`, n)
	}
}

// With in and out overlapping, what the bridge forwards matches its own
// subscription; the upstream must not hand it back (MQTT 5: No Local),
// or the bridge must recognise it (3.1.1: the echo ring).
func TestNoEchoLoop(t *testing.T) {
	versions(t, func(t *testing.T, v int) {
		u := startUpstream(t)
		watcher := u.client("watcher")
		watcher.Sub(t, "#")
		f := newFixture(t)
		cfg := outConfig(u, v)
		cfg.In = []InRule{{Filter: "plant-a/devices/#", StripPrefix: "plant-a/", QoS: 1}}
		m := f.start(cfg)
		waitConnected(t, m, "cloud")

		m.Offer(device("a"), "devices/a/telemetry/t", []byte("out"), 1, false)
		watcher.Msgs.ExpectPayload(t, "plant-a/devices/a/telemetry/t", "out", testclient.Wait)
		// Positive control: another client's message on the same filter
		// comes in; it is also the marker that the echo, sent earlier,
		// would have come in by now.
		u.client("cloud-app").Pub(t, testclient.Msg{Topic: "plant-a/devices/a/commands/c", Payload: "in", QoS: 1})
		if got := expectLocal(t, f); got.Topic != "devices/a/commands/c" {
			t.Fatalf("local publish %+v; want the control command (an echo of the forwarded message came first)", got)
		}
		expectNoLocal(t, f, 200*time.Millisecond)
	})
}

func TestUpstreamFromAnotherCARefused(t *testing.T) {
	u := startUpstream(t)
	watcher := u.client("watcher")
	watcher.Sub(t, "#")
	f := newFixture(t)

	good := outConfig(u, 5)
	bad := outConfig(u, 5)
	bad.Name = "impostor-check"
	bad.Out = []OutRule{{Filter: "devices/+/state", RemotePrefix: "bad/", QoS: 1}}
	other := testpki.NewCA(t, "other.test")
	bad.CAFile = u.write("other-ca.pem", other.BundlePEM())
	m := f.start(good, bad)
	waitConnected(t, m, "cloud")
	eventually(t, "the impostor check failed", func() bool {
		return strings.Contains(statusOf(m, "impostor-check").LastError, "certificate")
	})

	m.Offer(device("a"), "devices/a/state", []byte("on"), 1, false)
	// The good bridge forwards the same message: the control.
	watcher.Msgs.ExpectPayload(t, "plant-a/devices/a/state", "on", testclient.Wait)
	watcher.Msgs.ExpectNone(t, 300*time.Millisecond)
	if s := statusOf(m, "impostor-check"); s.Connected || s.Queued != 1 {
		t.Errorf("status %+v; want disconnected with the message still queued", s)
	}
}

// metricValue is the value of name{bridge="cloud", labels...} in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"bridge": "cloud"}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, mt := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range mt.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue metrics
				}
			}
			return mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s%v not gathered", name, want)
	return 0
}

// The upstream goes away and comes back on the same port: the bridge
// reconnects on its own, subscribes again, and sends what was queued
// meanwhile.
func TestReconnectsAndResubscribes(t *testing.T) {
	u := startUpstream(t)
	f := newFixture(t)
	cfg := outConfig(u, 5)
	cfg.In = []InRule{{Filter: "plant-a/devices/+/commands/#", StripPrefix: "plant-a/", QoS: 1}}
	m := f.start(cfg)
	waitConnected(t, m, "cloud")

	u.stop()
	eventually(t, "disconnected", func() bool { return !statusOf(m, "cloud").Connected })
	if n := metricValue(t, f.reg, "ztgate_bridge_connected"); n != 0 {
		t.Errorf("ztgate_bridge_connected %v while down; want 0", n)
	}
	// Retained, so the watcher, which can only subscribe once the upstream
	// is back, sees it even if the bridge was quicker.
	m.Offer(device("a"), "devices/a/state", []byte("while down"), 1, true)
	// QoS 0 is queued while down as well, and delivered from the queue.
	m.Offer(device("b"), "devices/b/state", []byte("qos 0 while down"), 0, true)
	eventually(t, "queued while down", func() bool { return statusOf(m, "cloud").Queued == 2 })

	u.start()
	watcher := u.client("watcher")
	watcher.Sub(t, "#")
	// The first backoff steps are at most 1 s, 2 s, 4 s.
	eventually(t, "reconnected", func() bool { return statusOf(m, "cloud").Connected })
	watcher.Msgs.ExpectPayload(t, "plant-a/devices/a/state", "while down", testclient.Wait)
	watcher.Msgs.ExpectPayload(t, "plant-a/devices/b/state", "qos 0 while down", testclient.Wait)
	eventually(t, "queue drained", func() bool { return statusOf(m, "cloud").Queued == 0 })
	if n := metricValue(t, f.reg, "ztgate_bridge_connected"); n != 1 {
		t.Errorf("ztgate_bridge_connected %v; want 1", n)
	}
	u.client("cloud-app").Pub(t, testclient.Msg{Topic: "plant-a/devices/a/commands/x", Payload: "after", QoS: 1})
	if got := expectLocal(t, f); got.Topic != "devices/a/commands/x" || got.Payload != "after" {
		t.Fatalf("local publish %+v; want the command sent after the reconnect", got)
	}
	if !strings.Contains(f.logs.String(), "bridge: disconnected") || !strings.Contains(f.logs.String(), "bridge: connected") {
		t.Errorf("state changes not logged:\n%s", f.logs)
	}
}
