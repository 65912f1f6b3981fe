package testclient_test

import (
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/internal/mqttconn"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
)

// A refusal is returned for the test to judge, but nothing listening at
// all fails the test: it is never the refusal a test looks for.
func TestDialerRefusalsAndFailures(t *testing.T) {
	env := testutil.Start(t)
	dev := env.Enroll(t, "sensor-1", nil)
	ghost := env.Issue(t, env.DeviceID("ghost"))
	distrusting := dev.TLSConfig()
	distrusting.RootCAs = x509.NewCertPool()
	distrusting.RootCAs.AppendCertsFromPEM(testpki.NewCA(t, "other.example").BundlePEM())
	closed := testclient.ClosedAddr(t)

	for _, tc := range []struct {
		name    string
		d       testclient.Dialer
		stage   mqttconn.Stage
		fails   string // the test failure, when the dial fails the test
		connack byte
	}{
		{name: "server not trusted", d: testclient.Dialer{Addr: env.MQTTAddr, TLS: distrusting}, stage: mqttconn.StageHandshake},
		{name: "identity not enrolled", d: testclient.Dialer{Addr: env.MQTTAddr, TLS: ghost.TLSConfig()}, stage: mqttconn.StageConnect, connack: testclient.ReasonNotAuthorized},
		{name: "nothing listening", d: testclient.Dialer{Addr: closed, TLS: dev.TLSConfig()}, fails: "dial " + closed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				ca  *paho.Connack
				err error
			)
			msg := testclient.Failure(t, func(tb testing.TB) { _, ca, err = tc.d.Connect(tb, "c-1", nil) })
			if tc.fails != "" {
				if !strings.Contains(msg, tc.fails) {
					t.Fatalf("failure %q; want one naming %q", msg, tc.fails)
				}
				return
			}
			if msg != "" {
				t.Fatalf("a refusal failed the test: %s", msg)
			}
			var de *mqttconn.Error
			if !errors.As(err, &de) || de.Stage != tc.stage {
				t.Fatalf("error %v; want a refusal at stage %v", err, tc.stage)
			}
			if tc.stage == mqttconn.StageConnect && (ca == nil || ca.ReasonCode != tc.connack) {
				t.Fatalf("CONNACK %+v; want reason %#x", ca, tc.connack)
			}
		})
	}

	// Positive control: the same gateway, the enrolled device's own TLS.
	testclient.Dialer{Addr: env.MQTTAddr, TLS: dev.TLSConfig()}.MustConnect(t, "c-1", nil).Close()
}

// Close runs the Dialer's Settle with the client ID once the connection
// is closed, whoever closed it.
func TestDialerSettleOnClose(t *testing.T) {
	env := testutil.Start(t)
	dev := env.Enroll(t, "sensor-1", nil)
	var mu sync.Mutex
	var settled []string
	d := testclient.Dialer{Addr: env.MQTTAddr, TLS: dev.TLSConfig(), Settle: func(id string) {
		mu.Lock()
		settled = append(settled, id)
		mu.Unlock()
	}}
	c := d.MustConnect(t, "sensor-1", nil)
	c.Close()
	if !c.Closed() {
		t.Fatal("connection still open after Close")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(settled) != 1 || settled[0] != "sensor-1" {
		t.Fatalf("Settle called with %v; want [sensor-1]", settled)
	}
}

// WaitDisconnect returns the server's DISCONNECT; on a connection that
// stays open it fails.
func TestWaitDisconnect(t *testing.T) {
	env := testutil.Start(t)
	sensor := env.Enroll(t, "sensor-1", nil)
	other := env.Enroll(t, "sensor-2", nil)
	c := env.MustConnect(t, sensor, "sensor-1", nil)
	stays := env.MustConnect(t, other, "sensor-2", nil)

	env.SetStatus(t, "sensor-1", "revoke")
	if d := c.WaitDisconnect(t, testclient.Wait); d.ReasonCode != testclient.ReasonNotAuthorized {
		t.Fatalf("DISCONNECT reason %#x; want 0x87", d.ReasonCode)
	}
	msg := testclient.Failure(t, func(tb testing.TB) { stays.WaitDisconnect(tb, testclient.Quiet) })
	if !strings.Contains(msg, "still open") {
		t.Fatalf("WaitDisconnect on a live connection: failure %q; want still open", msg)
	}
}
