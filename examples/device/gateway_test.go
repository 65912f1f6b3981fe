package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/identity/svidrenew"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
	"github.com/ztgate/ztgate/registry"
)

// wait bounds every wait for something that must happen; it is only
// reached when a test fails.
const wait = testutil.Wait

// withSVIDTTL makes the gateway (a real ztgate: MQTT over mTLS, API,
// registry, default policy on 127.0.0.1) sign device SVIDs with a short
// lifetime.
func withSVIDTTL(ttl time.Duration) testutil.Option {
	return testutil.WithConfig(func(c *app.Config) {
		c.SVIDTTL = ttl
		c.PolicyWatch = false
	})
}

// controller connects an MQTT 5 client labelled role=controller, with an
// SVID that outlives the test (the gateway's own are short), subscribed
// to the device states.
func controller(t *testing.T, g *testutil.Env) *testutil.Client {
	t.Helper()
	id := "spiffe://" + g.TD.Name() + "/controller/ctl-1"
	if _, err := g.App.Registry().Create(registry.Device{Name: "ctl-1", SPIFFEID: id,
		Labels: map[string]string{"role": "controller"}}); err != nil {
		t.Fatal(err)
	}
	ctl := g.MustConnect(t, g.IssueTTL(t, id, time.Hour), "ctl-1", nil)
	ctl.Sub(t, "devices/+/state")
	return ctl
}

// sendCommand publishes a QoS 1 command and fails unless the gateway
// accepts it.
func sendCommand(t *testing.T, ctl *testutil.Client, topic string, payload []byte) {
	t.Helper()
	ctl.Pub(t, testutil.Msg{Topic: topic, QoS: 1, Payload: string(payload)})
}

// expectState fails unless the next device state the controller receives
// is want.
func expectState(t *testing.T, ctl *testutil.Client, want string) {
	t.Helper()
	if m := ctl.Msgs.Next(t, wait); string(m.Payload) != want {
		t.Fatalf("device state %q, want %q", m.Payload, want)
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
	g := testutil.Start(t, withSVIDTTL(ttl))
	ctl := controller(t, g)
	dev := g.Enroll(t, "sensor-1", nil)
	dir := dev.Dir

	d, logs := newTestDevice(t, options{svidDir: dir, broker: g.MQTTAddr, api: g.APIURL, interval: time.Second})
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
	expectState(t, ctl, "online") // subscribed to its commands, then online

	// Publish for longer than two half-lives, so at least two renewals
	// (and reconnections) happen while commands flow.
	const n = 150
	start := time.Now()
	for i := range n {
		sendCommand(t, ctl, "devices/sensor-1/commands/x", fmt.Appendf(nil, `{"cmd":"ping","id":"c-%03d"}`, i))
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
	if cur.Serial() == first.Serial() {
		t.Fatalf("SVID serial unchanged (%s): no renewal happened", cur.Serial())
	}
	if cur.ID.String() != dev.ID {
		t.Fatalf("renewed SVID is for %s, want %s", cur.ID, dev.ID)
	}
	if lifetime := cur.Leaf().NotAfter.Sub(cur.Obtained); lifetime > ttl {
		t.Fatalf("renewed SVID lives %s, want at most the gateway's %s", lifetime, ttl)
	}
	// The directory holds the current SVID, as a pair that loads.
	onDisk, err := svidrenew.LoadDir(dir)
	if err != nil {
		t.Fatalf("SVID directory after renewal: %v", err)
	}
	if onDisk.Serial() != cur.Serial() {
		t.Fatalf("svid.pem holds serial %s, the device uses %s", onDisk.Serial(), cur.Serial())
	}
	renewals := strings.Count(logs.String(), "msg=\"SVID renewed\"")
	if renewals < 2 {
		t.Fatalf("%d renewals in %s; want at least 2 (half-life of a %s SVID)", renewals, time.Since(start), ttl)
	}
	// Each renewal was a reconnection ("online" again), never a Will.
	for range renewals {
		expectState(t, ctl, "online")
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
	g := testutil.Start(t, withSVIDTTL(time.Hour))
	dir := g.Enroll(t, "sensor-1", nil).Dir
	d, _ := newTestDevice(t, options{svidDir: dir, broker: g.MQTTAddr, api: g.APIURL, interval: time.Second})
	before, err := os.ReadFile(filepath.Join(dir, identity.SVIDFile))
	if err != nil {
		t.Fatal(err)
	}
	first := d.svids.current()

	if _, err := g.App.Registry().SetStatus("sensor-1", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err = d.renew.renew(ctx)
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "suspended") {
		t.Fatalf("renewal while suspended: err = %v, want a 403 naming the suspension", err)
	}
	after, err := os.ReadFile(filepath.Join(dir, identity.SVIDFile))
	if err != nil || !bytes.Equal(before, after) || d.svids.current() != first {
		t.Fatalf("a refused renewal changed the SVID (%v)", err)
	}

	// Positive control: the same device, active again, renews.
	if _, err := g.App.Registry().SetStatus("sensor-1", registry.StatusActive); err != nil {
		t.Fatal(err)
	}
	next, err := d.renew.renew(ctx)
	if err != nil {
		t.Fatalf("renewal once resumed: %v", err)
	}
	if next.Serial() == first.Serial() || d.svids.current() != next {
		t.Fatal("renewal did not replace the current SVID")
	}
	onDisk, err := svidrenew.LoadDir(dir)
	if err != nil || onDisk.Serial() != next.Serial() {
		t.Fatalf("SVID directory after renewal: %v", err)
	}
}

// When renewal keeps failing (here: nothing listens at the API address)
// the device retries with backoff, warns while the SVID is still valid,
// and once it has expired says so and keeps trying.
func TestRenewalFailureRetriesPastExpiry(t *testing.T) {
	g := testutil.Start(t, withSVIDTTL(2*time.Second))
	dir := g.Enroll(t, "sensor-1", nil).Dir
	closedAPI := "https://" + testclient.ClosedAddr(t)
	d, logs := newTestDevice(t, options{svidDir: dir, broker: g.MQTTAddr, api: closedAPI, interval: time.Second})
	first := d.svids.current()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.renew.run(ctx, func(*svidrenew.SVID) { t.Error("renewed without an API") })
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
	if time.Now().Before(first.Leaf().NotAfter) {
		t.Fatalf("expiry reported before the SVID expired (%s)", first.Leaf().NotAfter)
	}
	if d.svids.current() != first {
		t.Fatal("the SVID changed without a renewal")
	}
}
