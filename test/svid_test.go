package test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/ztgate/ztgate/internal/testutil"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Attack class: bad SVIDs signed by the trusted CA, and certificates that
// are not SVIDs of ours at all. Each is refused (in the TLS handshake or
// with CONNACK 0x87); the positive control is a certificate crafted by the
// same code for an enrolled device, which connects.
func TestSVID_BadCertificatesRefused(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	env.Enroll(t, "crafted", nil)
	sleeper := env.Enroll(t, "sleeper", nil)
	env.SetStatus(t, "sleeper", "suspend")
	gone := env.Enroll(t, "gone", nil)
	env.SetStatus(t, "gone", "revoke")

	good := env.CertWith(t, nil)
	env.MustConnect(t, env.WithCert(t, &good), "crafted", nil).Close()

	crafted := func(tweak func(*x509.Certificate)) *testutil.Device {
		c := env.CertWith(t, tweak)
		return env.WithCert(t, &c)
	}
	foreign := testutil.ForeignCert(t, env.DeviceID("crafted"))
	// A leaf from another CA presented with our CA certificate as its
	// "intermediate": the chain must actually verify.
	spliced := foreign
	spliced.Certificate = [][]byte{foreign.Certificate[0], env.App.CA().Certificate().Raw}

	cases := []struct {
		name string
		dev  *testutil.Device
		code byte // 0: any refusal (TLS or MQTT); else the CONNACK reason
	}{
		{"two URI SANs", crafted(func(c *x509.Certificate) {
			c.URIs = append(c.URIs, mustURL(t, env.DeviceID("other")))
		}), 0},
		{"two URI SANs, second one enrolled", crafted(func(c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, env.DeviceID("nobody")), mustURL(t, env.DeviceID("crafted"))}
		}), 0},
		{"CA:true leaf", crafted(func(c *x509.Certificate) {
			c.IsCA = true
			c.KeyUsage |= x509.KeyUsageCertSign
		}), 0},
		{"cert-sign usage on a leaf", crafted(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }), 0},
		{"no digitalSignature usage", crafted(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyAgreement }), 0},
		{"no SAN", crafted(func(c *x509.Certificate) { c.URIs = nil }), 0},
		{"DNS SAN only", crafted(func(c *x509.Certificate) {
			c.URIs = nil
			c.DNSNames = []string{"crafted"}
		}), 0},
		{"non-SPIFFE URI", crafted(func(c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, "https://example.org/device/crafted")}
		}), 0},
		{"trust domain we do not serve", crafted(func(c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, "spiffe://other.org/device/crafted")}
		}), 0},
		{"trust domain ID without path", crafted(func(c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, "spiffe://example.org")}
		}), 0},
		{"expired", crafted(func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}), 0},
		{"not yet valid", crafted(func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
		}), 0},
		{"another CA", env.WithCert(t, &foreign), 0},
		{"another CA spliced with ours", env.WithCert(t, &spliced), 0},
		{"no client certificate", env.WithCert(t, nil), 0},
		{"valid SVID, not enrolled", env.Issue(t, env.DeviceID("stranger")), testutil.ReasonNotAuthorized},
		{"valid SVID, enrolled, suspended", sleeper, testutil.ReasonNotAuthorized},
		{"valid SVID, enrolled, revoked", gone, testutil.ReasonNotAuthorized},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := env.RequireRefused(t, c.dev, "crafted", nil, c.code)
			t.Logf("refused: %v", err)
		})
	}
}

// Attack class: TLS session resumption skips Go's client-certificate
// verification (and VerifyPeerCertificate). A client with a session cache
// reconnects; whether or not the server resumes, a resumed attempt must
// be refused once the trust bundle no longer trusts the client and once
// the identity is suspended, and work again when both are restored.
func TestSVID_SessionResumptionSkipsNoCheck(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	dev := env.Enroll(t, "resumer", nil)
	cfg := dev.TLSConfig()
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	o := &testutil.ConnOpts{TLS: cfg}

	first := env.MustConnect(t, dev, "resumer", o)
	first.Pub(t, msg{Topic: "devices/resumer/telemetry/t", Payload: "1", QoS: 1})
	first.Close()
	second := env.MustConnect(t, dev, "resumer", o)
	second.Pub(t, msg{Topic: "devices/resumer/telemetry/t", Payload: "2", QoS: 1})
	second.Close()
	t.Logf("second connection resumed the TLS session: %v", second.TLSState.DidResume)
	if second.TLSState.DidResume {
		t.Log("the server resumes TLS sessions; the refusals below are what keeps it safe")
	}

	// The trust bundle no longer holds the CA: every client is untrusted,
	// including one offering a cached session.
	v := env.App.Verifier()
	v.RemoveBundle(env.TD)
	err := env.RequireRefused(t, dev, "resumer", o, 0)
	t.Logf("with the bundle removed: %v", err)
	if err := v.SetBundle(env.App.CA().Bundle()); err != nil {
		t.Fatal(err)
	}
	env.MustConnect(t, dev, "resumer", o).Close()

	env.SetStatus(t, "resumer", "suspend")
	env.RequireRefused(t, dev, "resumer", o, testutil.ReasonNotAuthorized)
	env.SetStatus(t, "resumer", "resume")
	env.MustConnect(t, dev, "resumer", o).Close()
}

// Username and password in CONNECT grant nothing: an SVID that is not
// enrolled is refused whatever the credentials, and an enrolled device
// that sends the admin's name and a password gets no more than its own
// topics.
func TestSVID_UsernamePasswordGrantNothing(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	stranger := f.env.Issue(t, f.env.DeviceID("stranger"))
	for _, creds := range []testutil.ConnOpts{
		{Username: "admin-dev", Password: "admin"},
		{Username: "sensor-1", Password: "sensor-1"},
		{Username: "spiffe://example.org/admin/dev", Password: "x"},
		{Password: "password-only"},
	} {
		c := creds
		f.env.RequireRefused(t, stranger, "stranger", &c, testutil.ReasonNotAuthorized)
	}

	c, ca, err := f.env.Connect(t, f.s1, "sensor-1", &testutil.ConnOpts{Username: "admin-dev", Password: "admin"})
	if err != nil {
		// Refusing credentials outright also grants nothing.
		t.Logf("CONNECT with credentials refused: %v (connack %+v)", err, ca)
		return
	}
	codes := c.SubscribeCodes(t, "#", "devices/+/telemetry/#", "devices/sensor-1/commands/#")
	if codes[0] != 0x87 || codes[1] != 0x87 || codes[2] != 0x01 {
		t.Errorf("SUBSCRIBE with admin credentials: %#x; want [0x87 0x87 0x01]", codes)
	}
	c.PubDenied(t, msg{Topic: "devices/sensor-2/telemetry/t", Payload: "forged"})
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/x", Payload: "ok", QoS: 1})
	c.Msgs.ExpectPayload(t, "devices/sensor-1/commands/x", "ok", wait)
	c.Msgs.ExpectNone(t, quiet)
}

// There is no plaintext listener: an MQTT CONNECT sent without TLS to the
// MQTT port gets no CONNACK, and plain HTTP to the API port reaches no
// route. The same requests over mTLS are the positive control.
func TestSVID_NoPlaintext(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	dev := env.Enroll(t, "sensor-1", nil)
	env.MustConnect(t, dev, "sensor-1", nil).Close()

	conn, err := net.DialTimeout("tcp", env.MQTTAddr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(wait))
	cp := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 4, ClientID: "plain", CleanStart: true, KeepAlive: 30}
	if _, err := cp.WriteTo(conn); err != nil {
		t.Logf("plaintext CONNECT not even written: %v", err)
	} else if pk, err := packets.ReadPacket(conn); err == nil {
		t.Fatalf("plaintext CONNECT answered with %v", pk)
	} else {
		t.Logf("plaintext CONNECT: %v", err)
	}

	if res := env.API(t, env.Admin, "GET", "/v1/devices", nil); res.Status != 200 {
		t.Fatalf("control: %d %s", res.Status, res.Body)
	}
	plain := &http.Client{Timeout: wait}
	resp, err := plain.Get("http" + strings.TrimPrefix(env.APIURL, "https") + "/v1/devices")
	if err == nil {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if resp.StatusCode < 400 || strings.Contains(string(body), "sensor-1") {
			t.Fatalf("plain HTTP to the API: %d %s", resp.StatusCode, body)
		}
		t.Logf("plain HTTP to the API: %d", resp.StatusCode)
	}
}
