package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/metrics"
)

func TestSVIDExpiryEndsConnection(t *testing.T) {
	const ttl = 3 * time.Second
	promReg := prometheus.NewRegistry()
	e := newEnvWith(t, engine(t), func(c *Config) { c.Metrics = metrics.New(promReg) })
	long := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	e.enroll("sensor-2", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	id2 := spiffeid.RequireFromSegments(testTD, "device", "sensor-2")

	// Two connections on SVIDs that expire in a few seconds: MQTT 5 with a
	// persistent session, and MQTT 3.1.1.
	short, _, err := e.connect(e.svidTTL(id2, ttl), &paho.Connect{ClientID: "s2", CleanStart: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300), RequestProblemInfo: true}})
	if err != nil {
		t.Fatalf("connect on a short SVID: %v", err)
	}
	short.subscribe(t, sub("devices/sensor-2/commands/#", 1))
	v4 := e.dial311(e.svidTTL(id2, ttl))
	if code := v4.Connect(t, "s2-v4"); code != 0 {
		t.Fatalf("3.1.1 CONNACK %#x", code)
	}

	d := short.WaitDisconnect(t, ttl+waitFor)
	if d.ReasonCode != 0xA0 {
		t.Errorf("DISCONNECT %#x, want 0xA0", d.ReasonCode)
	}
	if d.Properties == nil || d.Properties.ReasonString != "SVID expired" {
		t.Errorf("DISCONNECT properties %+v, want reason string \"SVID expired\"", d.Properties)
	}
	v4.ExpectClosed(t)

	// Positive control: the long-lived SVID's connection, older than both,
	// is still there and works.
	if code := long.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte("up")}); code != 0 {
		t.Fatalf("long-lived session: PUBACK %#x", code)
	}
	poll(t, "expired sessions to end", func() bool {
		for _, s := range e.gw.Sessions() {
			if s.Device == "sensor-2" {
				return false
			}
		}
		return true
	})
	if n := metricValue(t, promReg, "ztgate_disconnects_total", "reason", "svid_expired"); n != 2 {
		t.Errorf("disconnects_total{reason=svid_expired} = %v, want 2", n)
	}

	// An expired SVID ends the connection, not the device's rights: the
	// persistent session keeps what arrives meanwhile, and the device
	// resumes it with a renewed SVID.
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-2/commands/x", QoS: 1, Payload: []byte("while renewing")}); code != 0 {
		t.Fatal(code)
	}
	renewed, ack, err := e.connect(e.svid(id2), &paho.Connect{ClientID: "s2", CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	if err != nil || !ack.SessionPresent {
		t.Fatalf("resume with a renewed SVID: %+v, %v", ack, err)
	}
	if m := renewed.expectOnly(t, "devices/sensor-2/commands/x"); string(m.Payload) != "while renewing" {
		t.Fatalf("received %q", m.Payload)
	}
}

func TestSVIDOutsideItsValidityRefusedAtConnect(t *testing.T) {
	now := time.Now()
	for _, verifyInHandshake := range []bool{true, false} {
		name := "handshake"
		if !verifyInHandshake {
			// The TLS config verifies nothing: OnConnect's own check of
			// the chain refuses it.
			name = "connect"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnvWith(t, allowAll, func(c *Config) {
				if !verifyInHandshake {
					c.TLS = c.TLS.Clone()
					c.TLS.VerifyConnection = nil
				}
			})
			id := spiffeid.RequireFromSegments(testTD, "device", "sensor-1")
			e.enroll("sensor-1", nil)
			for what, cfg := range map[string]*tls.Config{
				"expired":       e.signedSVID(id, now.Add(-2*time.Hour), now.Add(-time.Minute)),
				"not yet valid": e.signedSVID(id, now.Add(time.Hour), now.Add(2*time.Hour)),
			} {
				conn, err := tls.Dial("tcp", e.addr, cfg)
				if err != nil {
					continue // refused in the handshake
				}
				t.Cleanup(func() { _ = conn.Close() })
				c := testclient.NewRaw(conn, 4)
				c.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
					Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "c"}})
				pk, err := c.Read()
				switch {
				case err == nil && pk.ReasonCode == 0:
					t.Errorf("%s SVID: CONNECT accepted", what)
				case err == nil && !verifyInHandshake && pk.ReasonCode != 0x05:
					t.Errorf("%s SVID: CONNACK %#x, want 0x05", what, pk.ReasonCode)
				case err != nil && !verifyInHandshake:
					t.Errorf("%s SVID: %v; want a CONNACK refusing it", what, err)
				}
			}
			// Positive control: the same identity on a valid SVID.
			e.mustConnect(e.signedSVID(id, now.Add(-time.Minute), now.Add(time.Hour)), "valid")
		})
	}
}

// signedSVID signs an X.509-SVID for id valid from notBefore to notAfter
// with the environment's CA key, past lifetimes included (the CA's own
// API issues only from now on).
func (e *env) signedSVID(id spiffeid.ID, notBefore, notAfter time.Time) *tls.Config {
	e.t.Helper()
	raw, err := os.ReadFile(filepath.Join(e.caDir, identity.CAKeyFile))
	if err != nil {
		e.t.Fatal(err)
	}
	caKey := testpki.ParseSigner(e.t, raw)
	tmpl := testpki.LeafTemplate(e.t, id.String())
	tmpl.Subject = pkix.Name{Organization: []string{"ztgate test"}}
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	caCert := e.ca.Certificate()
	cert := testpki.SignLeaf(e.t, tmpl, caCert, caKey)
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
	}
}
