package identity_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/fakeworkload"
	"github.com/ztgate/ztgate/internal/testpki"
)

// workloadEnv is a Workload API with the gateway's SVID, the CA of its
// trust domain and a partner's CA, as a SPIRE agent serves them.
type workloadEnv struct {
	srv         *fakeworkload.Server
	ca, partner *testpki.CA
	logs        *testpki.LogBuffer
	log         *slog.Logger
}

func newWorkloadEnv(t *testing.T) *workloadEnv {
	t.Helper()
	e := &workloadEnv{
		srv:     fakeworkload.Start(t),
		ca:      testpki.NewCA(t, td.Name()),
		partner: testpki.NewCA(t, otherTD.Name()),
		logs:    &testpki.LogBuffer{},
	}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return e
}

// svid is an X.509-SVID for id from ca, the leaf alone, as SPIRE sends it.
func svidFrom(t *testing.T, ca *testpki.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	cert := testpki.SignLeaf(t, gatewayTemplateFor(t, id), ca.Cert, ca.Key)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert.Leaf}, PrivateKey: cert.PrivateKey.(crypto.Signer)}
}

func gatewayTemplateFor(t *testing.T, id spiffeid.ID) *x509.Certificate {
	tmpl := gatewayTemplate(t)
	tmpl.URIs = []*url.URL{id.URL()}
	return tmpl
}

func bundleFrom(trust spiffeid.TrustDomain, cas ...*testpki.CA) *x509bundle.Bundle {
	b := x509bundle.New(trust)
	for _, ca := range cas {
		b.AddX509Authority(ca.Cert)
	}
	return b
}

func (e *workloadEnv) open(t *testing.T) *identity.WorkloadSource {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	src, err := identity.NewWorkloadSource(ctx, identity.WorkloadSourceOptions{Socket: e.srv.Addr(), TrustDomain: td, Logger: e.log})
	if err != nil {
		t.Fatalf("NewWorkloadSource: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func (e *workloadEnv) waitLog(t *testing.T, n int, parts ...string) {
	t.Helper()
	waitLog(t, e.logs, n, parts...)
}

func workloadLeaf(t *testing.T, src *identity.WorkloadSource) *x509.Certificate {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid.Certificates[0]
}

func TestWorkloadSourceFirstSVID(t *testing.T) {
	e := newWorkloadEnv(t)
	svid := svidFrom(t, e.ca, gatewayID)
	e.srv.SetX509([]*x509svid.SVID{svid}, bundleFrom(td, e.ca), bundleFrom(otherTD, e.partner))
	src := e.open(t)

	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != gatewayID || !got.Certificates[0].Equal(svid.Certificates[0]) {
		t.Fatalf("SVID %s, want the agent's %s", got.ID, gatewayID)
	}
	for _, want := range []*x509bundle.Bundle{bundleFrom(td, e.ca), bundleFrom(otherTD, e.partner)} {
		if b, err := src.GetX509BundleForTrustDomain(want.TrustDomain()); err != nil || !b.Equal(want) {
			t.Errorf("bundle of %s: %v", want.TrustDomain(), err)
		}
	}
	unknown := spiffeid.RequireTrustDomainFromString("unknown.example")
	if _, err := src.GetX509BundleForTrustDomain(unknown); err == nil || !strings.HasPrefix(err.Error(), "identity: ") {
		t.Errorf("bundle of a trust domain the agent did not send: %v, want an identity: error", err)
	}
	if src.Updated() == nil {
		t.Fatal("Updated is nil")
	}
	noUpdate(t, src.Updated(), "the first SVID")

	// The agent sends the leaf alone; the chain served ends with the CA
	// from the bundle, for pinning clients.
	cert, err := identity.ServerTLSConfigFromSource(src, identity.NewVerifier(bundleFrom(td, e.ca))).GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Certificate) != 2 || string(cert.Certificate[1]) != string(e.ca.Cert.Raw) {
		t.Errorf("served %d certificates, want the leaf and the CA", len(cert.Certificate))
	}
}

// NewWorkloadSource waits for an agent that has no SVID for the gateway
// yet (its entries not synced) and returns with the first.
func TestWorkloadSourceWaitsForFirstSVID(t *testing.T) {
	e := newWorkloadEnv(t)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		src, err := identity.NewWorkloadSource(ctx, identity.WorkloadSourceOptions{Socket: e.srv.Addr(), TrustDomain: td})
		if err == nil {
			_, err = src.GetX509SVID()
			_ = src.Close()
		}
		done <- err
	}()
	e.srv.SetX509([]*x509svid.SVID{svidFrom(t, e.ca, gatewayID)}, bundleFrom(td, e.ca))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestWorkloadSourceRotation(t *testing.T) {
	e := newWorkloadEnv(t)
	e.srv.SetX509([]*x509svid.SVID{svidFrom(t, e.ca, gatewayID)}, bundleFrom(td, e.ca))
	src := e.open(t)
	old := workloadLeaf(t, src)

	next := svidFrom(t, e.ca, gatewayID)
	e.srv.SetX509([]*x509svid.SVID{next}, bundleFrom(td, e.ca))
	waitUpdated(t, src.Updated(), "the agent rotated the SVID")
	if got := workloadLeaf(t, src); got.Equal(old) || !got.Equal(next.Certificates[0]) {
		t.Error("the source does not serve the rotated SVID")
	}
	cert, err := identity.ServerTLSConfigFromSource(src, nil).GetCertificate(nil)
	if err != nil || !cert.Leaf.Equal(next.Certificates[0]) {
		t.Errorf("the TLS config serves something else than the rotated SVID: %v", err)
	}
}

// A bundle change, and a federated bundle the agent stops sending, apply
// to the next verification.
func TestWorkloadSourceBundleChange(t *testing.T) {
	e := newWorkloadEnv(t)
	svid := svidFrom(t, e.ca, gatewayID)
	e.srv.SetX509([]*x509svid.SVID{svid}, bundleFrom(td, e.ca), bundleFrom(otherTD, e.partner))
	src := e.open(t)
	v, err := identity.NewVerifierFromSource(src, td, otherTD)
	if err != nil {
		t.Fatal(err)
	}
	partnerDevice := testpki.SignLeaf(t, leafTemplate(spiffeid.RequireFromPath(otherTD, "/device/p")), e.partner.Cert, e.partner.Key)
	if _, err := v.Verify([]*x509.Certificate{partnerDevice.Leaf}); err != nil {
		t.Fatalf("positive control: the partner's device before the change: %v", err)
	}

	second := testpki.NewCA(t, td.Name())
	e.srv.SetX509([]*x509svid.SVID{svid}, bundleFrom(td, e.ca, second), bundleFrom(otherTD, e.partner))
	waitUpdated(t, src.Updated(), "a CA was added to the bundle")
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(bundleFrom(td, e.ca, second)) {
		t.Errorf("bundle after the change: %v", err)
	}

	e.srv.SetX509([]*x509svid.SVID{svid}, bundleFrom(td, e.ca, second))
	waitUpdated(t, src.Updated(), "the federated bundle was dropped")
	if _, err := src.GetX509BundleForTrustDomain(otherTD); err == nil {
		t.Error("the source still holds the dropped federated bundle")
	}
	if _, err := v.Verify([]*x509.Certificate{partnerDevice.Leaf}); err == nil {
		t.Error("the partner's device verifies after its bundle was dropped")
	}
}

// An agent update that changes nothing does not make the gateway
// re-verify every session.
func TestWorkloadSourceIdenticalUpdate(t *testing.T) {
	e := newWorkloadEnv(t)
	svid := svidFrom(t, e.ca, gatewayID)
	e.srv.SetX509([]*x509svid.SVID{svid}, bundleFrom(td, e.ca))
	src := e.open(t)

	e.srv.SetX509([]*x509svid.SVID{svid}, bundleFrom(td, e.ca))
	e.waitLog(t, 1, "unchanged")
	noUpdate(t, src.Updated(), "an identical update")

	e.srv.SetX509([]*x509svid.SVID{svid}, bundleFrom(td, e.ca, testpki.NewCA(t, td.Name())))
	waitUpdated(t, src.Updated(), "a changed bundle")
}

// The gateway's SVID must be in the configured trust domain, at start and
// after every rotation; outside it, nothing is served.
func TestWorkloadSourceRefusesOtherTrustDomain(t *testing.T) {
	e := newWorkloadEnv(t)
	foreign := svidFrom(t, e.partner, spiffeid.RequireFromPath(otherTD, "/gateway"))
	e.srv.SetX509([]*x509svid.SVID{foreign}, bundleFrom(otherTD, e.partner))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	src, err := identity.NewWorkloadSource(ctx, identity.WorkloadSourceOptions{Socket: e.srv.Addr(), TrustDomain: td})
	if err == nil {
		_ = src.Close()
		t.Fatal("accepted an SVID of another trust domain")
	}
	if !strings.HasPrefix(err.Error(), "identity: workload API "+e.srv.Addr()) || !strings.Contains(err.Error(), `not in trust domain "example.org"`) {
		t.Errorf("err = %v, want an identity: error naming the socket and the trust domain", err)
	}

	good := svidFrom(t, e.ca, gatewayID)
	e.srv.SetX509([]*x509svid.SVID{good}, bundleFrom(td, e.ca))
	src = e.open(t)
	workloadLeaf(t, src) // positive control

	e.srv.SetX509([]*x509svid.SVID{foreign}, bundleFrom(td, e.ca), bundleFrom(otherTD, e.partner))
	waitUpdated(t, src.Updated(), "the agent sent an SVID of another trust domain")
	e.waitLog(t, 1, "level=ERROR", "not in trust domain")
	if svid, err := src.GetX509SVID(); err == nil {
		t.Fatalf("served %s, an SVID outside the trust domain", svid.ID)
	}
	if _, err := identity.ServerTLSConfigFromSource(src, nil).GetCertificate(nil); err == nil {
		t.Error("the TLS config served an SVID outside the trust domain")
	}

	e.srv.SetX509([]*x509svid.SVID{good}, bundleFrom(td, e.ca))
	waitUpdated(t, src.Updated(), "the agent sent a good SVID again")
	if !workloadLeaf(t, src).Equal(good.Certificates[0]) {
		t.Error("the source did not serve the good SVID again")
	}
}

func TestWorkloadSourceNoServer(t *testing.T) {
	dir, err := os.MkdirTemp("", "zt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	addr := "unix://" + filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	src, err := identity.NewWorkloadSource(ctx, identity.WorkloadSourceOptions{Socket: addr, TrustDomain: td})
	if err == nil {
		_ = src.Close()
		t.Fatal("a source without an agent")
	}
	for _, want := range []string{"identity: workload API " + addr, "no X.509-SVID received before the deadline", "no such file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to contain %q", err, want)
		}
	}
}

func TestWorkloadSourceBadOptions(t *testing.T) {
	e := newWorkloadEnv(t)
	e.srv.SetX509([]*x509svid.SVID{svidFrom(t, e.ca, gatewayID)}, bundleFrom(td, e.ca))
	open := func(opts identity.WorkloadSourceOptions) error {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		src, err := identity.NewWorkloadSource(ctx, opts)
		if err == nil {
			err = src.Close()
		}
		return err
	}
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	for name, tc := range map[string]struct {
		opts identity.WorkloadSourceOptions
		want string
	}{
		"no trust domain":     {identity.WorkloadSourceOptions{Socket: e.srv.Addr()}, "trust domain"},
		"no socket":           {identity.WorkloadSourceOptions{TrustDomain: td}, "SPIFFE_ENDPOINT_SOCKET"},
		"path without scheme": {identity.WorkloadSourceOptions{Socket: strings.TrimPrefix(e.srv.Addr(), "unix://"), TrustDomain: td}, "unix://"},
		"unsupported scheme":  {identity.WorkloadSourceOptions{Socket: "http://127.0.0.1:8081", TrustDomain: td}, "unix://"},
	} {
		if err := open(tc.opts); err == nil || !strings.HasPrefix(err.Error(), "identity: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an identity: error mentioning %q", name, err, tc.want)
		}
	}
	if err := open(identity.WorkloadSourceOptions{Socket: e.srv.Addr(), TrustDomain: td}); err != nil {
		t.Errorf("positive control: %v", err)
	}
	// An empty socket is the standard SPIFFE_ENDPOINT_SOCKET.
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", e.srv.Addr())
	if err := open(identity.WorkloadSourceOptions{TrustDomain: td}); err != nil {
		t.Errorf("socket from SPIFFE_ENDPOINT_SOCKET: %v", err)
	}
}

func TestWorkloadSourceClose(t *testing.T) {
	e := newWorkloadEnv(t)
	e.srv.SetX509([]*x509svid.SVID{svidFrom(t, e.ca, gatewayID)}, bundleFrom(td, e.ca))
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	src, err := identity.NewWorkloadSource(ctx, identity.WorkloadSourceOptions{Socket: e.srv.Addr(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	waitGoroutines(t, before)
	if _, err := src.GetX509SVID(); err == nil {
		t.Error("a closed source served an SVID")
	}
	if _, err := src.GetX509BundleForTrustDomain(td); err == nil {
		t.Error("a closed source served a bundle")
	}
}
