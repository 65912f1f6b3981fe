package test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/fakeworkload"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
	"github.com/ztgate/ztgate/registry"
)

const (
	gatewayID = "spiffe://example.org/ztgate"
	aliceID   = "spiffe://example.org/ops/alice"
	// noSigning starts the answer of every signing route of a gateway
	// that signs nothing.
	noSigning = "api: this gateway signs no certificates (identity source "
)

// extPKI is a PKI outside the gateway for the trust domain example.org:
// two CAs (the second one for a rotation) and, for the files source, the
// gateway's certificate, key and the bundle in files.
type extPKI struct {
	ca1, ca2               *testpki.CA
	cert, key, bundle, dir string
	roots                  *x509.CertPool // both CAs: devices verify the gateway across the rotation
}

func newExtPKI(t *testing.T) *extPKI {
	t.Helper()
	dir := t.TempDir()
	p := &extPKI{
		ca1: testpki.NewCA(t, testutil.TrustDomain), ca2: testpki.NewCA(t, testutil.TrustDomain), dir: dir,
		cert: filepath.Join(dir, "gateway.pem"), key: filepath.Join(dir, "gateway.key"), bundle: filepath.Join(dir, "bundle.pem"),
		roots: x509.NewCertPool(),
	}
	p.roots.AddCert(p.ca1.Cert)
	p.roots.AddCert(p.ca2.Cert)
	return p
}

// serving issues a serving certificate for the gateway with ca.
func (p *extPKI) serving(t *testing.T, ca *testpki.CA) tls.Certificate {
	t.Helper()
	return testpki.SignLeaf(t, testpki.ServingTemplate(t, gatewayID), ca.Cert, ca.Key)
}

// writeServing writes a new serving certificate of ca and its key, each
// replaced atomically, and returns the leaf.
func (p *extPKI) writeServing(t *testing.T, ca *testpki.CA) *x509.Certificate {
	t.Helper()
	cert := p.serving(t, ca)
	chain, key := testpki.CertPEM(t, cert)
	testpki.WriteAtomic(t, p.key, key)
	testpki.WriteAtomic(t, p.cert, chain)
	return cert.Leaf
}

// filesConfig writes the files and makes the gateway read them.
func (p *extPKI) filesConfig(t *testing.T, admins ...string) func(*app.Config) {
	t.Helper()
	p.writeServing(t, p.ca1)
	testpki.WriteAtomic(t, p.bundle, testpki.BundlePEM(p.ca1, p.ca2))
	return func(c *app.Config) {
		c.Identity = app.IdentityConfig{Source: app.IdentityFiles, CertFile: p.cert, KeyFile: p.key, BundleFile: p.bundle,
			BootstrapAdmins: admins}
	}
}

// device is a client with an SVID for spiffe://example.org/device/NAME
// signed by ca.
func (p *extPKI) device(t *testing.T, e *testutil.Env, ca *testpki.CA, name string) *testutil.Device {
	t.Helper()
	return e.ExternalDevice(t, name, ca.Issue(t, e.DeviceID(name)), p.roots)
}

// servedSerial is the serial of the serving certificate a new handshake
// gets, as dev.
func servedSerial(t *testing.T, e *testutil.Env, dev *testutil.Device) *big.Int {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", e.MQTTAddr, dev.TLSConfig())
	if err != nil {
		t.Fatalf("TLS handshake as %s: %v", dev.ID, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// waitServed waits until a new handshake is served the certificate with
// serial want.
func waitServed(t *testing.T, e *testutil.Env, dev *testutil.Device, want *big.Int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for got := servedSerial(t, e, dev); got.Cmp(want) != 0; got = servedSerial(t, e, dev) {
		if time.Now().After(deadline) {
			t.Fatalf("new handshakes are still served serial %x, want %x", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requireTLSRefused fails the test unless dev's handshake is refused.
func requireTLSRefused(t *testing.T, e *testutil.Env, dev *testutil.Device) {
	t.Helper()
	c, ack, err := e.Connect(t, dev, "refused", nil)
	if err == nil {
		c.Close()
		t.Fatalf("%s connected; want its handshake refused", dev.ID)
	}
	if ack != nil {
		t.Fatalf("%s got CONNACK %#x; want the TLS handshake refused", dev.ID, ack.ReasonCode)
	}
}

// telemetry publishes one message of a device's own and waits for ctl to
// get it: the path is alive end to end.
func telemetry(t *testing.T, from, ctl *testutil.Client, name, payload string) {
	t.Helper()
	topic := "devices/" + name + "/telemetry/t"
	from.Pub(t, msg{Topic: topic, Payload: payload, QoS: 1})
	ctl.Msgs.ExpectPayload(t, topic, payload, wait)
}

// Rule: with identity.source files the gateway serves the operator's
// certificate and trusts the operator's bundle; it signs nothing. The
// bootstrap admin, an identity of that PKI, administers it. A rotated
// serving certificate is served to new handshakes while live sessions
// stay; a CA removed from the bundle cuts the sessions it authenticated.
func TestIdentitySources_Files(t *testing.T) {
	t.Parallel()
	p := newExtPKI(t)
	e := testutil.Start(t, testutil.WithConfig(p.filesConfig(t, aliceID)))
	if e.App.CA() != nil || e.Admin != nil {
		t.Fatal("a files gateway has a CA or a dev admin")
	}
	for _, sub := range []string{"ca", "admin"} {
		if _, err := os.Stat(filepath.Join(e.DataDir, sub)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s/ exists in the data dir of a files gateway (%v)", sub, err)
		}
	}
	e.Admin = e.ExternalDevice(t, "ops-alice", p.ca1.Issue(t, aliceID), p.roots)

	// The bootstrap admin registers the devices through the API.
	for name, labels := range map[string]map[string]string{
		"sensor-1": nil, "sensor-2": nil, "sensor-3": nil, "ctl": {"role": "controller"},
	} {
		res := e.API(t, e.Admin, "POST", "/v1/devices", map[string]any{"name": name, "labels": labels})
		if res.Status != 201 {
			t.Fatalf("register %s: %d %s", name, res.Status, res.Body)
		}
	}
	s1, s2 := p.device(t, e, p.ca1, "sensor-1"), p.device(t, e, p.ca1, "sensor-2")
	s3, ctl := p.device(t, e, p.ca2, "sensor-3"), p.device(t, e, p.ca2, "ctl")

	// Nothing is signed: each signing route says so.
	anon := e.WithCert(t, nil)
	for _, r := range []struct {
		who  *testutil.Device
		path string
		body any
	}{
		{e.Admin, "/v1/devices/sensor-1/svid", map[string]string{"csr": "x"}},
		{e.Admin, "/v1/tokens", map[string]string{"name": "newbie"}},
		{anon, "/v1/enroll", map[string]string{"token": "ztb_x", "csr": "x"}},
		{s1, "/v1/svid/renew", map[string]string{"csr": "x"}},
	} {
		res := e.API(t, r.who, "POST", r.path, r.body)
		if res.Status != 409 || !strings.HasPrefix(res.ErrorMessage(t), noSigning+"files)") {
			t.Errorf("POST %s: %d %s; want 409 %q...", r.path, res.Status, res.Body, noSigning)
		}
	}

	// The registered devices connect and are policed.
	ctlc := e.MustConnect(t, ctl, "ctl", nil)
	ctlc.Sub(t, "devices/+/telemetry/#")
	c1 := e.MustConnect(t, s1, "sensor-1", nil)
	c1.PubDenied(t, msg{Topic: "devices/sensor-2/telemetry/t", Payload: "forged"})
	telemetry(t, c1, ctlc, "sensor-1", "21.5")
	e.RequireRefused(t, e.ExternalDevice(t, "", p.ca1.Issue(t, e.DeviceID("ghost")), p.roots), "ghost", nil, testutil.ReasonNotAuthorized)

	// The admin's suspension cuts a session at once.
	c2 := e.MustConnect(t, s2, "sensor-2", nil)
	e.SetStatus(t, "sensor-2", "suspend")
	c2.WaitClosed(t, wait)
	e.RequireRefused(t, s2, "sensor-2", nil, testutil.ReasonNotAuthorized)

	// The serving certificate rotated on disk: new handshakes get the new
	// one, the connection made before keeps going.
	before := c1.TLSState.PeerCertificates[0].SerialNumber
	rotated := p.writeServing(t, p.ca1)
	waitServed(t, e, s3, rotated.SerialNumber)
	if rotated.SerialNumber.Cmp(before) == 0 {
		t.Fatal("the rotation reissued the same serial")
	}
	telemetry(t, c1, ctlc, "sensor-1", "after rotation")

	// CA1 retired: the bundle holds CA2 only (and the gateway's
	// certificate moves to CA2). The CA1 device's live session is cut;
	// the CA2 devices stay or connect (positive control).
	p.writeServing(t, p.ca2)
	testpki.WriteAtomic(t, p.bundle, testpki.BundlePEM(p.ca2))
	if d := c1.WaitDisconnect(t, wait); d.ReasonCode != testutil.ReasonNotAuthorized {
		t.Errorf("CA1 device: DISCONNECT %#x, want 0x87", d.ReasonCode)
	}
	c3 := e.MustConnect(t, s3, "sensor-3", nil)
	telemetry(t, c3, ctlc, "sensor-3", "still here")
	requireTLSRefused(t, e, s1)
	// The bundle endpoint serves the bundle of now.
	if _, b := bundleOf(t, e, testutil.TrustDomain); b == nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(p.ca2.Cert) {
		t.Errorf("GET /v1/bundle after the rotation: %v; want CA2 only", b)
	}
}

// Rule: with identity.source workload_api the gateway takes its SVID and
// bundle from the Workload API and applies each update live: a new SVID is
// served to new handshakes while live sessions stay; a bundle without a
// device's CA cuts that device's session.
func TestIdentitySources_WorkloadAPI(t *testing.T) {
	t.Parallel()
	p := newExtPKI(t)
	td := spiffeid.RequireTrustDomainFromString(testutil.TrustDomain)
	both := x509bundle.FromX509Authorities(td, []*x509.Certificate{p.ca1.Cert, p.ca2.Cert})
	agent := fakeworkload.Start(t)
	agent.SetX509([]*x509svid.SVID{toSVID(t, p.serving(t, p.ca1))}, both)
	e := testutil.Start(t, testutil.WithConfig(func(c *app.Config) {
		c.Identity = app.IdentityConfig{Source: app.IdentityWorkloadAPI, WorkloadAPISocket: agent.Addr()}
	}))
	if e.App.CA() != nil {
		t.Fatal("a workload_api gateway has a CA")
	}
	for name, labels := range map[string]map[string]string{"sensor-1": nil, "sensor-3": nil, "ctl": {"role": "controller"}} {
		if _, err := e.App.Registry().Create(registry.Device{Name: name, SPIFFEID: e.DeviceID(name), Labels: labels}); err != nil {
			t.Fatal(err)
		}
	}
	s1, s3, ctl := p.device(t, e, p.ca1, "sensor-1"), p.device(t, e, p.ca2, "sensor-3"), p.device(t, e, p.ca2, "ctl")

	ctlc := e.MustConnect(t, ctl, "ctl", nil)
	ctlc.Sub(t, "devices/+/telemetry/#")
	c1 := e.MustConnect(t, s1, "sensor-1", nil)
	telemetry(t, c1, ctlc, "sensor-1", "1")

	// The agent rotates the gateway's SVID.
	next := p.serving(t, p.ca1)
	agent.SetX509([]*x509svid.SVID{toSVID(t, next)}, both)
	waitServed(t, e, s3, next.Leaf.SerialNumber)
	telemetry(t, c1, ctlc, "sensor-1", "after rotation")

	// The agent's bundle drops CA1.
	agent.SetX509([]*x509svid.SVID{toSVID(t, p.serving(t, p.ca2))}, x509bundle.FromX509Authorities(td, []*x509.Certificate{p.ca2.Cert}))
	if d := c1.WaitDisconnect(t, wait); d.ReasonCode != testutil.ReasonNotAuthorized {
		t.Errorf("CA1 device: DISCONNECT %#x, want 0x87", d.ReasonCode)
	}
	c3 := e.MustConnect(t, s3, "sensor-3", nil)
	telemetry(t, c3, ctlc, "sensor-3", "still here")
	requireTLSRefused(t, e, s1)
}

// toSVID is cert as the Workload API hands it out.
// Rule: a new serving SVID alone changes nothing a session was admitted
// with, so it costs no re-verification pass; a bundle change does.
func TestIdentitySources_SVIDRotationAloneReverifiesNothing(t *testing.T) {
	t.Parallel()
	p := newExtPKI(t)
	td := spiffeid.RequireTrustDomainFromString(testutil.TrustDomain)
	both := x509bundle.FromX509Authorities(td, []*x509.Certificate{p.ca1.Cert, p.ca2.Cert})
	agent := fakeworkload.Start(t)
	agent.SetX509([]*x509svid.SVID{toSVID(t, p.serving(t, p.ca1))}, both)
	e := testutil.StartObserved(t, func(c *app.Config) {
		c.Identity = app.IdentityConfig{Source: app.IdentityWorkloadAPI, WorkloadAPISocket: agent.Addr()}
	})
	if _, err := e.App.Registry().Create(registry.Device{Name: "sensor-3", SPIFFEID: e.DeviceID("sensor-3")}); err != nil {
		t.Fatal(err)
	}
	s3 := p.device(t, e.Env, p.ca2, "sensor-3")

	for i := range 3 {
		next := p.serving(t, p.ca1)
		agent.SetX509([]*x509svid.SVID{toSVID(t, next)}, both)
		waitServed(t, e.Env, s3, next.Leaf.SerialNumber)
		e.Logs.WaitFor(t, wait, "trust bundles unchanged")
		if n := len(e.Logs.Lines("sessions re-evaluated")); n != 0 {
			t.Fatalf("rotation %d: %d re-evaluation passes for a new serving SVID alone, want 0", i, n)
		}
	}
	// Positive control: the same update with a bundle that gained a CA.
	third := testpki.NewCA(t, testutil.TrustDomain)
	agent.SetX509([]*x509svid.SVID{toSVID(t, p.serving(t, p.ca1))},
		x509bundle.FromX509Authorities(td, []*x509.Certificate{p.ca1.Cert, p.ca2.Cert, third.Cert}))
	e.Logs.WaitFor(t, wait, "sessions re-evaluated", `reason="trust bundle changed"`)
}

func toSVID(t *testing.T, cert tls.Certificate) *x509svid.SVID {
	t.Helper()
	return &x509svid.SVID{ID: spiffeid.RequireFromString(cert.Leaf.URIs[0].String()),
		Certificates: []*x509.Certificate{cert.Leaf}, PrivateKey: cert.PrivateKey.(crypto.Signer)}
}

// Rule: an identity configuration the gateway cannot serve safely stops
// the start with a message naming what is wrong; nothing is left running.
func TestIdentitySources_StartErrors(t *testing.T) {
	t.Parallel()
	p := newExtPKI(t)
	good := p.filesConfig(t)
	otherTD := filepath.Join(p.dir, "other-td.pem")
	otherKey := filepath.Join(p.dir, "other-td.key")
	other := testpki.NewCA(t, "other.org")
	chain, key := testpki.CertPEM(t, testpki.SignLeaf(t, testpki.ServingTemplate(t, "spiffe://other.org/ztgate"), other.Cert, other.Key))
	testpki.WriteAtomic(t, otherTD, chain)
	testpki.WriteAtomic(t, otherKey, key)
	agent := fakeworkload.Start(t)
	agent.SetX509([]*x509svid.SVID{toSVID(t, testpki.SignLeaf(t, testpki.ServingTemplate(t, "spiffe://other.org/ztgate"), other.Cert, other.Key))},
		x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("other.org"), []*x509.Certificate{other.Cert}))
	silent := fakeworkload.Start(t) // an agent with no SVID for the gateway

	cases := []struct {
		name string
		mod  func(*app.Config)
		want string
	}{
		{"unknown source", func(c *app.Config) { c.Identity.Source = "spire" }, `identity.source "spire"`},
		{"files without bundle", func(c *app.Config) { good(c); c.Identity.BundleFile = "" }, "identity.bundle_file is required"},
		{"ca_dir with files", func(c *app.Config) { good(c); c.Identity.CADir = p.dir }, "identity.ca_dir is for identity.source builtin only"},
		{"missing cert file", func(c *app.Config) { good(c); c.Identity.CertFile = filepath.Join(p.dir, "nope.pem") }, "nope.pem"},
		{"key of another cert", func(c *app.Config) { good(c); c.Identity.KeyFile = otherKey }, "other-td.key"},
		{"serving SVID of another trust domain", func(c *app.Config) {
			good(c)
			c.Identity.CertFile, c.Identity.KeyFile = otherTD, otherKey
		}, "other.org"},
		{"workload API SVID of another trust domain", func(c *app.Config) {
			c.Identity = app.IdentityConfig{Source: app.IdentityWorkloadAPI, WorkloadAPISocket: agent.Addr()}
		}, "other.org"},
		{"workload API without an SVID", func(c *app.Config) {
			c.Identity = app.IdentityConfig{Source: app.IdentityWorkloadAPI, WorkloadAPISocket: silent.Addr()}
		}, "no X.509-SVID received"},
		{"workload API socket not a URL", func(c *app.Config) {
			c.Identity = app.IdentityConfig{Source: app.IdentityWorkloadAPI, WorkloadAPISocket: "/run/agent.sock"}
		}, "identity.workload_api_socket"},
		{"bootstrap admin of an unserved trust domain", func(c *app.Config) {
			good(c)
			c.Identity.BootstrapAdmins = []string{"spiffe://other.org/ops/alice"}
		}, `trust domain "other.org" is not served`},
		{"bootstrap admin without a device name", func(c *app.Config) {
			good(c)
			c.Identity.BootstrapAdmins = []string{"spiffe://example.org/Ops/Alice"}
		}, "no device name can be made from spiffe://example.org/Ops/Alice"},
		{"federated domain without url", func(c *app.Config) {
			good(c)
			c.Federation.TrustDomains = []app.FederatedDomainConfig{{TrustDomain: "partner.org"}}
		}, "federation.trust_domains[0].url is required"},
		{"federated bundle file missing", func(c *app.Config) {
			c.Federation.TrustDomains = []app.FederatedDomainConfig{{TrustDomain: "partner.org", URL: "https://127.0.0.1:1/v1/bundle",
				Profile: app.ProfileHTTPSSPIFFE, EndpointSPIFFEID: "spiffe://partner.org/ztgate", BundleFile: filepath.Join(p.dir, "nope.pem")}}
		}, "federation.trust_domains[0]: bundle_file"},
		{"federated domain is the own", func(c *app.Config) {
			c.Federation.TrustDomains = []app.FederatedDomainConfig{{TrustDomain: testutil.TrustDomain, URL: "https://x", Profile: "https_web"}}
		}, "is the gateway's own trust domain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := app.DefaultConfig()
			cfg.DataDir = filepath.Join(t.TempDir(), "data")
			cfg.MQTTAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
			cfg.TrustDomain = testutil.TrustDomain
			cfg.Logger = slog.New(slog.DiscardHandler)
			tc.mod(&cfg)
			// Bounds the wait of a Workload API that sends nothing.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			a, err := app.Start(ctx, cfg)
			if err == nil {
				_ = a.Close()
				t.Fatalf("started; want an error with %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q; want one line with %q", err, tc.want)
			}
		})
	}
}

// Rule: a bootstrap admin is registered once; a restart leaves it as an
// operator left it (suspended here), and a device that holds its name
// under another ID stops the start instead of being taken over.
func TestIdentitySources_BootstrapAdmins(t *testing.T) {
	t.Parallel()
	p := newExtPKI(t)
	files := p.filesConfig(t, aliceID)
	dataDir := filepath.Join(t.TempDir(), "data")
	e := testutil.Start(t, testutil.WithConfig(files, func(c *app.Config) { c.DataDir = dataDir }))
	d, err := e.App.Registry().GetBySPIFFEID(aliceID)
	if err != nil || d.Name != "ops-alice" || d.Labels["role"] != "admin" || d.Status != registry.StatusActive {
		t.Fatalf("bootstrap admin registered as %+v, %v", d, err)
	}
	e.Admin = e.ExternalDevice(t, "ops-alice", p.ca1.Issue(t, aliceID), p.roots)
	if res := e.API(t, e.Admin, "GET", "/v1/devices", nil); res.Status != 200 {
		t.Fatalf("bootstrap admin lists devices: %d %s", res.Status, res.Body)
	}
	if _, err := e.App.Registry().SetStatus("ops-alice", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if _, err := e.App.Registry().Create(registry.Device{Name: "ops-bob", SPIFFEID: "spiffe://example.org/someone/else"}); err != nil {
		t.Fatal(err)
	}
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}

	// Restarted: alice stays suspended, and is refused.
	e = testutil.Start(t, testutil.WithConfig(files, func(c *app.Config) { c.DataDir = dataDir }))
	if d, err := e.App.Registry().Get("ops-alice"); err != nil || d.Status != registry.StatusSuspended {
		t.Fatalf("after restart: %+v, %v; want ops-alice still suspended", d, err)
	}
	alice := e.ExternalDevice(t, "ops-alice", p.ca1.Issue(t, aliceID), p.roots)
	if res := e.API(t, alice, "GET", "/v1/devices", nil); res.Status != 403 {
		t.Fatalf("suspended bootstrap admin: %d %s, want 403", res.Status, res.Body)
	}
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}

	// bob's name is taken by another identity.
	cfg := app.DefaultConfig()
	cfg.DataDir, cfg.MQTTAddr, cfg.APIAddr = dataDir, "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	files(&cfg)
	cfg.Identity.BootstrapAdmins = []string{aliceID, "spiffe://example.org/ops/bob"}
	a, err := app.Start(context.Background(), cfg)
	if err == nil {
		_ = a.Close()
		t.Fatal("started with a bootstrap admin whose name another device holds")
	}
	for _, want := range []string{"spiffe://example.org/ops/bob", `"ops-bob"`, "spiffe://example.org/someone/else"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// bundleOf fetches GET /v1/bundle of e without a client certificate (as a
// partner would) and parses it as td's SPIFFE bundle; status is the HTTP
// status.
func bundleOf(t *testing.T, e *testutil.Env, td string) (status int, b *spiffebundle.Bundle) {
	t.Helper()
	res := e.API(t, e.WithCert(t, nil), "GET", "/v1/bundle", nil)
	if res.Status != 200 {
		return res.Status, nil
	}
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(td), res.Body)
	if err != nil {
		t.Fatalf("GET /v1/bundle: %v\n%s", err, res.Body)
	}
	return res.Status, b
}

// Rule: the gateway serves its own trust domain's bundle at GET /v1/bundle
// (publicly, unless turned off), and trusts a partner trust domain
// configured under federation: from the partner's bundle endpoint, here
// another gateway's. A partner's device passes the handshake and is
// registered like any other, but the default policy admits only the own
// trust domain; an unfederated trust domain's device fails the handshake.
func TestIdentitySources_BundleEndpointAndFederation(t *testing.T) {
	t.Parallel()
	partner := testutil.Start(t, testutil.WithConfig(func(c *app.Config) { c.TrustDomain = "partner.org" }))
	status, pb := bundleOf(t, partner, "partner.org")
	if status != 200 || len(pb.X509Authorities()) != 1 || !pb.X509Authorities()[0].Equal(partner.App.CA().Certificate()) {
		t.Fatalf("partner's GET /v1/bundle: %d %v; want its CA", status, pb)
	}
	if hint, ok := pb.RefreshHint(); !ok || hint != app.DefaultBundleRefreshHint {
		t.Errorf("refresh hint %s %v, want %s", hint, ok, app.DefaultBundleRefreshHint)
	}

	bundleFile := filepath.Join(t.TempDir(), "partner.pem")
	testpki.WriteAtomic(t, bundleFile, partner.App.CA().BundlePEM())
	e := testutil.Start(t, testutil.WithConfig(func(c *app.Config) {
		c.Federation.TrustDomains = []app.FederatedDomainConfig{{
			TrustDomain: "partner.org", URL: partner.APIURL + "/v1/bundle", Profile: app.ProfileHTTPSSPIFFE,
			EndpointSPIFFEID: "spiffe://partner.org/ztgate", BundleFile: bundleFile,
		}}
	}))
	const p1 = "spiffe://partner.org/device/p1"
	res := e.API(t, e.Admin, "POST", "/v1/devices", map[string]any{"name": "p1", "spiffe_id": p1})
	if res.Status != 201 {
		t.Fatalf("register a partner device: %d %s", res.Status, res.Body)
	}
	res = e.API(t, e.Admin, "POST", "/v1/devices", map[string]any{"name": "x1", "spiffe_id": "spiffe://other.org/device/x1"})
	if res.Status != 400 || !strings.Contains(res.ErrorMessage(t), "other.org") {
		t.Fatalf("register an unfederated device: %d %s; want 400 naming other.org", res.Status, res.Body)
	}
	// The handshake passes (a CONNACK comes back); the default policy says no.
	e.RequireRefused(t, e.ExternalDevice(t, "p1", partner.Issue(t, p1).Cert, nil), "p1", nil, testutil.ReasonNotAuthorized)
	requireTLSRefused(t, e, e.ExternalDevice(t, "", testutil.ForeignCert(t, "spiffe://other.org/device/x1"), nil))
	// Positive control: the own trust domain's devices are served.
	e.MustConnect(t, e.Enroll(t, "sensor-1", nil), "sensor-1", nil)

	off := testutil.Start(t, testutil.WithConfig(func(c *app.Config) {
		no := false
		c.Federation.BundleEndpoint = &no
	}))
	if status, _ := bundleOf(t, off, testutil.TrustDomain); status != 404 {
		t.Fatalf("GET /v1/bundle with bundle_endpoint false: %d, want 404", status)
	}
}
