package test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
)

const (
	partnerDomain = "partner.example"
	partnerP1     = "spiffe://partner.example/device/p1"
	// federationRecipe is the policy recipe an operator adds to admit a
	// partner's devices; it lists partner.example.
	federationRecipe = "../examples/policy-recipes/federation/federation.rego"
)

// savedPartnerBundle waits until e has fetched partner.example's bundle
// from its endpoint and kept it in the data dir (the federation writes it
// after the first good fetch) and returns it.
func savedPartnerBundle(t *testing.T, e *testutil.Env) *x509bundle.Bundle {
	t.Helper()
	path := filepath.Join(e.DataDir, app.FederationSubdir, partnerDomain+".pem")
	deadline := time.Now().Add(wait)
	for {
		if b, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(partnerDomain), path); err == nil {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("no bundle of %s fetched within %s (%s)", partnerDomain, wait, path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pushRecipe activates the federation recipe on e's running policy, as
// `ztgate policy push` does.
func pushRecipe(t *testing.T, e *testutil.Env) {
	t.Helper()
	src, err := os.ReadFile(federationRecipe)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.APIRaw(e.Admin, "PUT", "/v1/policy/modules/federation.rego", "text/plain", src)
	if err != nil || res.Status != http.StatusOK {
		t.Fatalf("push the federation recipe: %v %+v", err, res)
	}
}

// Rule: a gateway federated with a partner trust domain (whose bundle it
// fetches from the partner's bundle endpoint, with either profile) lets
// the partner's registered devices through the TLS handshake; the default
// policy still refuses them, the federation recipe admits them to their
// partner topic space and nothing else. An unfederated trust domain's
// device, and a partner ID signed by a CA not in the partner's bundle,
// fail the handshake.
func TestFederation_PartnerDevices(t *testing.T) {
	t.Parallel()
	// P, the partner: a gateway of partner.example with its built-in CA,
	// serving its bundle at GET /v1/bundle.
	p := testutil.Start(t, testutil.WithConfig(func(c *app.Config) { c.TrustDomain = partnerDomain }))
	partnerCAFile := filepath.Join(t.TempDir(), "partner-ca.pem")
	testpki.WriteAtomic(t, partnerCAFile, p.App.CA().BundlePEM())

	for _, tc := range []struct {
		profile string
		domain  app.FederatedDomainConfig
	}{
		// P's CA authenticates its endpoint, which presents P's own SVID.
		{app.ProfileHTTPSSPIFFE, app.FederatedDomainConfig{
			TrustDomain: partnerDomain, URL: p.APIURL + "/v1/bundle", Profile: app.ProfileHTTPSSPIFFE,
			EndpointSPIFFEID: "spiffe://partner.example/ztgate", BundleFile: partnerCAFile,
		}},
		// P's serving certificate as a web certificate (it has the
		// 127.0.0.1 SAN), with P's CA as the web root.
		{app.ProfileHTTPSWeb, app.FederatedDomainConfig{
			TrustDomain: partnerDomain, URL: p.APIURL + "/v1/bundle", Profile: app.ProfileHTTPSWeb, CAFile: partnerCAFile,
		}},
	} {
		t.Run(tc.profile, func(t *testing.T) {
			t.Parallel()
			g := testutil.Start(t,
				testutil.WithExtraPolicy("zz_spy.rego", testutil.SpyPolicy),
				testutil.WithConfig(func(c *app.Config) { c.Federation.TrustDomains = []app.FederatedDomainConfig{tc.domain} }))
			if b := savedPartnerBundle(t, g); !b.Equal(x509bundle.FromX509Authorities(b.TrustDomain(), p.App.CA().Bundle().X509Authorities())) {
				t.Fatalf("the fetched bundle is not P's CA")
			}
			res := g.API(t, g.Admin, "POST", "/v1/devices", map[string]any{"name": "partner-p1", "spiffe_id": partnerP1})
			if res.Status != http.StatusCreated {
				t.Fatalf("register the partner device: %d %s", res.Status, res.Body)
			}
			// P's device: an SVID from P's CA; it verifies G as G's own
			// devices do.
			p1 := g.ExternalDevice(t, "partner-p1", p.Issue(t, partnerP1).Cert, nil)
			s1 := g.Enroll(t, "sensor-1", nil)
			pctl := g.EnrollID(t, "pctl", "spiffe://example.org/workload/pctl", map[string]string{"role": "partner-controller"})
			spy := g.EnrollID(t, "spy", "spiffe://example.org/observer/spy", map[string]string{"role": "spy"})

			// The default policy: P's device passes the handshake (a
			// CONNACK comes back) and is refused; G's own device connects.
			g.RequireRefused(t, p1, "p1", nil, testutil.ReasonNotAuthorized)
			s1c := g.MustConnect(t, s1, "sensor-1", nil)

			// With the recipe, P's device is admitted to its partner space.
			pushRecipe(t, g)
			spyc := g.MustConnect(t, spy, "spy", nil)
			spyc.Sub(t, "#")
			pctlc := g.MustConnect(t, pctl, "pctl", nil)
			pctlc.Sub(t, "partners/+/+/telemetry/#")
			p1c := g.MustConnect(t, p1, "p1", nil)
			p1c.Sub(t, "partners/partner.example/p1/commands/#")

			const telemetryTopic = "partners/partner.example/p1/telemetry/temp"
			p1c.Pub(t, msg{Topic: telemetryTopic, Payload: "20.5", QoS: 1})
			pctlc.Msgs.ExpectPayload(t, telemetryTopic, "20.5", wait)
			spyc.Msgs.ExpectPayload(t, telemetryTopic, "20.5", wait)
			const commandTopic = "partners/partner.example/p1/commands/reboot"
			pctlc.Pub(t, msg{Topic: commandTopic, Payload: "now", QoS: 1})
			p1c.Msgs.ExpectPayload(t, commandTopic, "now", wait)

			// Nothing of G's device tree, nor another partner device's
			// space: the publishes are refused and reach no one, the
			// subscriptions are refused.
			forged := []string{
				"devices/sensor-1/telemetry/t", "devices/sensor-1/state", "devices/p1/telemetry/t",
				"partners/partner.example/p2/telemetry/t", "partners/example.org/sensor-1/telemetry/t",
			}
			for _, topic := range forged {
				p1c.PubDenied(t, msg{Topic: topic, Payload: "forged"})
			}
			for i, code := range p1c.SubscribeCodes(t, "devices/sensor-1/commands/#", "devices/+/telemetry/#",
				"partners/partner.example/+/commands/#", "partners/#", "#") {
				if code < 0x80 {
					t.Errorf("partner device subscription %d granted (%#x)", i, code)
				}
			}
			// Positive control on the same path: a later allowed message
			// reaches the spy, so the refused ones would have by now.
			p1c.Pub(t, msg{Topic: telemetryTopic, Payload: "after", QoS: 1})
			spyc.Msgs.ExpectPayload(t, telemetryTopic, "after", wait)
			for _, topic := range forged {
				spyc.Msgs.Never(t, topic)
			}
			// G's own device is unaffected.
			s1c.Pub(t, msg{Topic: "devices/sensor-1/telemetry/t", Payload: "own", QoS: 1})
			spyc.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/t", "own", wait)

			// A device of an unfederated trust domain, and a partner ID
			// signed by a CA that is not in the partner's bundle, fail the
			// handshake, registered or not.
			res = g.API(t, g.Admin, "POST", "/v1/devices", map[string]any{"name": "x1", "spiffe_id": "spiffe://third.example/device/x1"})
			if res.Status != http.StatusBadRequest {
				t.Errorf("register an unfederated device: %d %s; want 400", res.Status, res.Body)
			}
			requireTLSRefused(t, g, g.ExternalDevice(t, "", testutil.ForeignCert(t, "spiffe://third.example/device/x1"), nil))
			requireTLSRefused(t, g, g.ExternalDevice(t, "partner-p1", testutil.ForeignCert(t, partnerP1), nil))

			// The partner device has the registry lifecycle of any
			// other: suspended, its session ends.
			g.SetStatus(t, "partner-p1", "suspend")
			p1c.WaitClosed(t, wait)
			g.RequireRefused(t, p1, "p1", nil, testutil.ReasonNotAuthorized)
		})
	}
}

// Rule: a CA the partner removes from the bundle at its endpoint stops
// being trusted at the next refresh: the live sessions of the partner's
// devices it signed are cut (DISCONNECT 0x87) and they cannot reconnect,
// while a device of the partner's new CA connects.
func TestFederation_PartnerCARemovedCutsSessions(t *testing.T) {
	t.Parallel()
	partnerTD := spiffeid.RequireTrustDomainFromString(partnerDomain)
	oldCA, newCA := testpki.NewCA(t, partnerDomain), testpki.NewCA(t, partnerDomain)
	served := x509bundle.NewSet(x509bundle.FromX509Authorities(partnerTD, []*x509.Certificate{oldCA.Cert, newCA.Cert}))
	handler, err := identity.BundleHandler(partnerTD, served, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The partner's endpoint, https_web, with a web certificate of its own.
	web := testpki.NewCA(t, "web.example")
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{testpki.SignLeaf(t, testpki.ServingTemplate(t, "spiffe://web.example/bundle"), web.Cert, web.Key)}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	webCAFile := filepath.Join(t.TempDir(), "web-ca.pem")
	testpki.WriteAtomic(t, webCAFile, web.BundlePEM())

	recipe, err := os.ReadFile(federationRecipe)
	if err != nil {
		t.Fatal(err)
	}
	g := testutil.Start(t,
		testutil.WithExtraPolicy("federation.rego", string(recipe)),
		testutil.WithConfig(func(c *app.Config) {
			c.Federation.TrustDomains = []app.FederatedDomainConfig{{
				TrustDomain: partnerDomain, URL: srv.URL + "/bundle", Profile: app.ProfileHTTPSWeb, CAFile: webCAFile,
				RefreshInterval: time.Second,
			}}
		}))
	savedPartnerBundle(t, g)
	for name, id := range map[string]string{"partner-p1": partnerP1, "partner-p2": "spiffe://partner.example/device/p2"} {
		if res := g.API(t, g.Admin, "POST", "/v1/devices", map[string]any{"name": name, "spiffe_id": id}); res.Status != http.StatusCreated {
			t.Fatalf("register %s: %d %s", name, res.Status, res.Body)
		}
	}
	p1 := g.ExternalDevice(t, "partner-p1", oldCA.Issue(t, partnerP1), nil)
	p2 := g.ExternalDevice(t, "partner-p2", newCA.Issue(t, "spiffe://partner.example/device/p2"), nil)
	p1c := g.MustConnect(t, p1, "p1", nil)
	p2c := g.MustConnect(t, p2, "p2", nil)

	// The partner retires its old CA.
	served.Add(x509bundle.FromX509Authorities(partnerTD, []*x509.Certificate{newCA.Cert}))
	if d := p1c.WaitDisconnect(t, wait); d.ReasonCode != testutil.ReasonNotAuthorized {
		t.Errorf("old CA's device: DISCONNECT %#x, want 0x87", d.ReasonCode)
	}
	requireTLSRefused(t, g, p1)
	// The new CA's device stays, and can still publish.
	p2c.Pub(t, msg{Topic: "partners/partner.example/p2/telemetry/t", Payload: "still here", QoS: 1})
	if p2c.Closed() {
		t.Fatal("the new CA's device was cut too")
	}
	g.MustConnect(t, g.ExternalDevice(t, "partner-p2", newCA.Issue(t, "spiffe://partner.example/device/p2"), nil), "p2-again", nil)
}
