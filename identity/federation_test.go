package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testpki"
)

var (
	partnerTD  = spiffeid.RequireTrustDomainFromString("partner.example")
	endpointID = spiffeid.RequireFromString("spiffe://partner.example/ztgate")
)

// Test timing: fetches every fedInterval, retries from fedMinWait up; a
// wait for something the refresher must do gives up after fedPatience.
const (
	fedMinWait  = 10 * time.Millisecond
	fedInterval = 50 * time.Millisecond
	fedPatience = 10 * time.Second
)

// partnerEndpoint is a partner's bundle endpoint: a real TLS server on
// loopback serving BundleHandler over a bundle the test replaces, with a
// serving certificate the test replaces too (the partner's rotation).
type partnerEndpoint struct {
	srv     *httptest.Server
	bundle  *swapSource
	cert    atomic.Pointer[tls.Certificate]
	hits    atomic.Int64
	handler atomic.Pointer[http.Handler] // nil: BundleHandler
}

// startPartner serves ca's bundle with a certificate for endpointID (and
// localhost / 127.0.0.1, for https_web) issued by ca, on a new loopback
// port, or on addr when given (a restart).
func startPartner(t *testing.T, ca *identity.CA, addr string) *partnerEndpoint {
	t.Helper()
	p := &partnerEndpoint{bundle: &swapSource{bundle: ca.Bundle()}}
	p.setCert(t, ca, endpointID)
	bh, err := identity.BundleHandler(partnerTD, p.bundle, time.Minute)
	if err != nil {
		t.Fatalf("BundleHandler: %v", err)
	}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		if h := p.handler.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		bh.ServeHTTP(w, r)
	}))
	if addr != "" {
		ln := listenAgain(t, addr)
		p.srv.Listener.Close()
		p.srv.Listener = ln
	}
	// Per connection, since httptest's own certificate would be served
	// to a client that sends no server name (an IP address URL).
	p.srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{*p.cert.Load()}}, nil
	}}
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what several tests do
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	return p
}

// listenAgain listens on addr, which a closed server held a moment ago.
func listenAgain(t *testing.T, addr string) net.Listener {
	t.Helper()
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("listen again on %s: %v", addr, err)
	return nil
}

func (p *partnerEndpoint) setCert(t *testing.T, ca *identity.CA, id spiffeid.ID) {
	t.Helper()
	cert, err := ca.IssueServerCert(id, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatalf("IssueServerCert: %v", err)
	}
	p.cert.Store(&cert)
}

func (p *partnerEndpoint) serve(h http.Handler) { p.handler.Store(&h) }

func (p *partnerEndpoint) url() string { return p.srv.URL + "/v1/bundle" }

// bundleOf is one bundle of partnerTD with the CAs' certificates.
func bundleOf(cas ...*identity.CA) *x509bundle.Bundle {
	certs := make([]*x509.Certificate, len(cas))
	for i, ca := range cas {
		certs[i] = ca.Certificate()
	}
	return x509bundle.FromX509Authorities(partnerTD, certs)
}

func webRoots(cas ...*identity.CA) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca.Certificate())
	}
	return pool
}

// startFederation opens and starts a federation of the domains, closed at
// the test's end, logging into the returned buffer.
func startFederation(t *testing.T, stateDir string, domains ...identity.FederatedDomain) (*identity.Federation, *testpki.LogBuffer) {
	t.Helper()
	f, logs := newFederation(t, stateDir, domains...)
	f.Start(t.Context())
	return f, logs
}

func newFederation(t *testing.T, stateDir string, domains ...identity.FederatedDomain) (*identity.Federation, *testpki.LogBuffer) {
	t.Helper()
	logs := &testpki.LogBuffer{}
	f, err := identity.NewFederation(identity.FederationOptions{
		Domains:  domains,
		StateDir: stateDir,
		Logger:   slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatalf("NewFederation: %v", err)
	}
	f.SetMinWaitForTest(fedMinWait)
	t.Cleanup(func() { _ = f.Close() })
	return f, logs
}

func spiffeDomain(url string, start *x509bundle.Bundle) identity.FederatedDomain {
	return identity.FederatedDomain{
		TrustDomain: partnerTD, URL: url, Profile: identity.ProfileHTTPSSPIFFE,
		EndpointID: endpointID, Bundle: start, RefreshInterval: fedInterval,
	}
}

func webDomain(url string, roots *x509.CertPool) identity.FederatedDomain {
	return identity.FederatedDomain{
		TrustDomain: partnerTD, URL: url, Profile: identity.ProfileHTTPSWeb,
		WebRoots: roots, RefreshInterval: fedInterval,
	}
}

// fedWait polls cond until it holds; it fails the test after fedPatience.
func fedWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(fedPatience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fedHolds reports whether f's bundle for partnerTD is exactly the CAs'.
func fedHolds(f *identity.Federation, cas ...*identity.CA) bool {
	b, err := f.GetX509BundleForTrustDomain(partnerTD)
	return err == nil && b.Equal(bundleOf(cas...))
}

func fedRequireHolds(t *testing.T, f *identity.Federation, cas ...*identity.CA) {
	t.Helper()
	b, err := f.GetX509BundleForTrustDomain(partnerTD)
	if err != nil {
		t.Fatalf("bundle of %s: %v", partnerTD, err)
	}
	if !b.Equal(bundleOf(cas...)) {
		t.Fatalf("bundle of %s has %d authorities, not the %d expected", partnerTD, len(b.X509Authorities()), len(cas))
	}
}

// fedDrain empties f.Updated, so the next value is from a later change.
func fedDrain(f *identity.Federation) {
	select {
	case <-f.Updated():
	default:
	}
}

// https_web: the endpoint is authenticated with the given roots; with
// roots that do not hold its issuer (or the system roots) nothing is
// fetched and the domain stays without a bundle, so its peers are refused.
func TestFederationHTTPSWeb(t *testing.T) {
	partnerCA := newCA(t, partnerTD)
	p := startPartner(t, partnerCA, "")

	f, _ := startFederation(t, "", webDomain(p.url(), webRoots(partnerCA)))
	select {
	case <-f.Updated():
	case <-time.After(fedPatience):
		t.Fatal("no update after the first fetch")
	}
	fedRequireHolds(t, f, partnerCA)
	if got := f.TrustDomains(); len(got) != 1 || got[0] != partnerTD {
		t.Errorf("TrustDomains = %v", got)
	}

	for _, tc := range []struct {
		name  string
		roots *x509.CertPool
		want  string
	}{
		{"roots without the issuer", webRoots(newCA(t, partnerTD)), "certificate signed by unknown authority"},
		{"system roots", nil, "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, logs := startFederation(t, "", webDomain(p.url(), tc.roots))
			fedWait(t, "the fetch failure in the log", func() bool { return strings.Contains(logs.String(), tc.want) })
			_, err := f.GetX509BundleForTrustDomain(partnerTD)
			if err == nil || !strings.Contains(err.Error(), "no bundle fetched yet") {
				t.Fatalf("bundle of an unauthenticated endpoint: err = %v", err)
			}
		})
	}
}

// https_spiffe: the endpoint must present an SVID with EndpointID that
// chains to the bundle held for the partner; another ID, or a chain to a
// CA not in the held bundle, is refused and the held bundle stays.
func TestFederationHTTPSSPIFFE(t *testing.T) {
	partnerCA, newPartnerCA, rogueCA := newCA(t, partnerTD), newCA(t, partnerTD), newCA(t, partnerTD)

	t.Run("authenticated", func(t *testing.T) {
		p := startPartner(t, partnerCA, "")
		p.bundle.set(bundleOf(partnerCA, newPartnerCA), nil)
		f, _ := startFederation(t, "", spiffeDomain(p.url(), partnerCA.Bundle()))
		fedWait(t, "the fetched bundle", func() bool { return fedHolds(f, partnerCA, newPartnerCA) })
	})

	for _, tc := range []struct {
		name   string
		issuer *identity.CA
		id     spiffeid.ID
		want   string
	}{
		{"another SPIFFE ID", partnerCA, spiffeid.RequireFromString("spiffe://partner.example/not-the-endpoint"), `unexpected ID \"spiffe://partner.example/not-the-endpoint\"`},
		{"chain outside the held bundle", rogueCA, endpointID, "x509svid: could not verify leaf certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPartner(t, partnerCA, "")
			p.setCert(t, tc.issuer, tc.id)
			p.bundle.set(bundleOf(partnerCA, rogueCA), nil)
			f, logs := startFederation(t, "", spiffeDomain(p.url(), partnerCA.Bundle()))
			fedWait(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), tc.want) })
			fedRequireHolds(t, f, partnerCA)
			select {
			case <-f.Updated():
				t.Fatal("Updated after a refused fetch")
			default:
			}
			// The same endpoint with the right credentials is fetched:
			// the refusal was for the credentials alone.
			p.setCert(t, partnerCA, endpointID)
			fedWait(t, "the fetch once the endpoint is right", func() bool { return fedHolds(f, partnerCA, rogueCA) })
		})
	}
}

// The partner rotates its CA: the new authority is added to its bundle,
// the endpoint moves to a certificate of the new CA, the old authority is
// removed. Each fetch is authenticated against the bundle held at that
// moment, so the federation follows the rotation to the end, and reports
// each change.
func TestFederationFollowsRotation(t *testing.T) {
	oldCA, newCA := newCA(t, partnerTD), newCA(t, partnerTD)
	p := startPartner(t, oldCA, "")
	f, _ := startFederation(t, "", spiffeDomain(p.url(), oldCA.Bundle()))
	fedWait(t, "the first fetch", func() bool { return p.hits.Load() > 0 })
	fedRequireHolds(t, f, oldCA)
	fedDrain(f)

	p.bundle.set(bundleOf(oldCA, newCA), nil)
	select {
	case <-f.Updated():
	case <-time.After(fedPatience):
		t.Fatal("no update after the new authority was published")
	}
	fedWait(t, "the new authority", func() bool { return fedHolds(f, oldCA, newCA) })

	p.setCert(t, newCA, endpointID)
	p.bundle.set(bundleOf(newCA), nil)
	fedWait(t, "the old authority removed", func() bool { return fedHolds(f, newCA) })
}

// A fetched document that is no acceptable bundle of the partner is
// refused and the last good bundle kept; the refusal is logged with its
// reason. Then the endpoint serves a good bundle again and it is taken.
func TestFederationRefusesBadBundles(t *testing.T) {
	partnerCA, nextCA := newCA(t, partnerTD), newCA(t, partnerTD)
	otherCA := newCA(t, otherTD)
	leaf, _ := signLeaf(t, leafTemplate(spiffeid.RequireFromString("spiffe://partner.example/leaf")), partnerCA.Certificate(), partnerCA.SignerForTest())

	bundleHandler := func(b *x509bundle.Bundle) http.Handler {
		h, err := identity.BundleHandler(partnerTD, &swapSource{bundle: b}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	text := func(status int, body string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		})
	}
	for _, tc := range []struct {
		name string
		h    http.Handler
		want string
	}{
		{"another trust domain's CA", bundleHandler(x509bundle.FromX509Authorities(partnerTD, []*x509.Certificate{otherCA.Certificate()})),
			`is a CA of trust domain \"other.example\", not \"partner.example\"`},
		{"a leaf as authority", bundleHandler(x509bundle.FromX509Authorities(partnerTD, []*x509.Certificate{leaf[0]})), "is not a CA certificate"},
		{"no X.509 authorities", text(http.StatusOK, `{"keys":[]}`), "no X.509 authorities"},
		{"no keys member", text(http.StatusOK, `{}`), "no authorities found"},
		{"not JSON", text(http.StatusOK, `<html>maintenance</html>`), "unable to parse JWKS"},
		{"HTTP error", text(http.StatusServiceUnavailable, `{"keys":[]}`), "HTTP status 503"},
		{"too large", text(http.StatusOK, `{"keys":[],"pad":"`+strings.Repeat("x", 1<<20)+`"}`), "bundle larger than"},
		{"redirect to http", http.RedirectHandler("http://127.0.0.1:1/v1/bundle", http.StatusFound), "refused redirect to http://127.0.0.1:1/v1/bundle: not https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPartner(t, partnerCA, "")
			p.serve(tc.h)
			f, logs := startFederation(t, "", webDomain(p.url(), webRoots(partnerCA)))
			// The configured bundle is the last good one here.
			fedWait(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), tc.want) })
			_, err := f.GetX509BundleForTrustDomain(partnerTD)
			if err == nil {
				t.Fatal("a bundle is held after a refused first fetch")
			}
			p.serve(bundleHandler(bundleOf(partnerCA, nextCA)))
			fedWait(t, "the good bundle", func() bool { return fedHolds(f, partnerCA, nextCA) })
		})
	}
}

// A refused bundle never replaces a good one already held.
func TestFederationRefusedBundleKeepsLastGood(t *testing.T) {
	partnerCA := newCA(t, partnerTD)
	p := startPartner(t, partnerCA, "")
	f, logs := startFederation(t, "", spiffeDomain(p.url(), partnerCA.Bundle()))
	fedWait(t, "the first fetch", func() bool { return p.hits.Load() > 0 })
	p.bundle.set(x509bundle.FromX509Authorities(partnerTD, []*x509.Certificate{newCA(t, otherTD).Certificate()}), nil)
	fedWait(t, "the refusal", func() bool { return strings.Contains(logs.String(), "is a CA of trust domain") })
	fedRequireHolds(t, f, partnerCA)
}

// The endpoint goes down: the last bundle stays in force, the failure is
// logged once however many retries fail the same way, and when the
// endpoint is back the federation picks up what it serves.
func TestFederationEndpointDown(t *testing.T) {
	partnerCA, nextCA := newCA(t, partnerTD), newCA(t, partnerTD)
	p := startPartner(t, partnerCA, "")
	p.bundle.set(bundleOf(partnerCA, nextCA), nil)
	f, logs := startFederation(t, "", spiffeDomain(p.url(), partnerCA.Bundle()))
	fedWait(t, "the first fetch", func() bool { return fedHolds(f, partnerCA, nextCA) })

	// Up but failing: many retries, one log line.
	p.serve(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}))
	before := p.hits.Load()
	fedWait(t, "several failed retries", func() bool { return p.hits.Load() >= before+4 })
	if n := strings.Count(logs.String(), "HTTP status 503"); n != 1 {
		t.Errorf("the same failure was logged %d times over %d retries, want once:\n%s", n, p.hits.Load()-before, logs)
	}
	fedRequireHolds(t, f, partnerCA, nextCA)

	// Down: connection refused, still the last bundle.
	addr := p.srv.Listener.Addr().String()
	p.srv.Close()
	fedWait(t, "the connection failure in the log", func() bool { return strings.Contains(logs.String(), "connection refused") })
	fedRequireHolds(t, f, partnerCA, nextCA)
	fedDrain(f)

	// Back, serving a rotated bundle, on the same address.
	back := startPartner(t, partnerCA, addr)
	back.bundle.set(bundleOf(nextCA), nil)
	select {
	case <-f.Updated():
	case <-time.After(fedPatience):
		t.Fatal("no update after the endpoint came back")
	}
	fedWait(t, "the bundle served after the outage", func() bool { return fedHolds(f, nextCA) })
	fedWait(t, "the recovery in the log", func() bool { return strings.Contains(logs.String(), "bundle fetch succeeded again") })
}

// StateDir keeps the fetched bundle, so a new federation (a restart)
// whose endpoint is down starts from it rather than from the configured
// one; and an https_spiffe domain may then come without a configured one.
func TestFederationStateDir(t *testing.T) {
	partnerCA, nextCA := newCA(t, partnerTD), newCA(t, partnerTD)
	dir := filepath.Join(t.TempDir(), "federation")
	p := startPartner(t, partnerCA, "")
	p.bundle.set(bundleOf(partnerCA, nextCA), nil)
	url := p.url()

	f, _ := startFederation(t, dir, spiffeDomain(url, partnerCA.Bundle()))
	fedWait(t, "the fetched bundle", func() bool { return fedHolds(f, partnerCA, nextCA) })
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "partner.example.pem")
	fedWait(t, "the saved bundle", func() bool { _, err := os.Stat(path); return err == nil })
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("saved bundle mode %v", fi.Mode().Perm())
	}
	p.srv.Close()

	for _, tc := range []struct {
		name  string
		start *x509bundle.Bundle
	}{
		{"saved wins over configured", partnerCA.Bundle()},
		{"saved without configured", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f2, logs := startFederation(t, dir, spiffeDomain(url, tc.start))
			fedRequireHolds(t, f2, partnerCA, nextCA)
			fedWait(t, "the fetch failure", func() bool { return strings.Contains(logs.String(), "bundle fetch failed") })
			fedRequireHolds(t, f2, partnerCA, nextCA)
		})
	}

	t.Run("no saved bundle: the configured one", func(t *testing.T) {
		f3, _ := newFederation(t, t.TempDir(), spiffeDomain(url, partnerCA.Bundle()))
		fedRequireHolds(t, f3, partnerCA)
	})

	t.Run("damaged saved bundle", func(t *testing.T) {
		bad := t.TempDir()
		if err := os.WriteFile(filepath.Join(bad, "partner.example.pem"), []byte("not PEM"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := identity.NewFederation(identity.FederationOptions{StateDir: bad, Domains: []identity.FederatedDomain{spiffeDomain(url, partnerCA.Bundle())}})
		if err == nil || !strings.Contains(err.Error(), "partner.example.pem") || !strings.Contains(err.Error(), "remove the file") {
			t.Fatalf("err = %v", err)
		}
	})
}

// NewFederation refuses what it cannot fetch safely, with the reason.
func TestNewFederationErrors(t *testing.T) {
	partnerCA := newCA(t, partnerTD)
	good := spiffeDomain("https://127.0.0.1:1/v1/bundle", partnerCA.Bundle())
	with := func(mut func(*identity.FederatedDomain)) identity.FederatedDomain {
		d := good
		mut(&d)
		return d
	}
	for _, tc := range []struct {
		name    string
		domains []identity.FederatedDomain
		want    string
	}{
		{"no trust domain", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.TrustDomain = spiffeid.TrustDomain{} })}, "no trust domain"},
		{"no URL", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.URL = "" })}, "has no bundle endpoint URL"},
		{"http URL", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.URL = "http://127.0.0.1/b" })}, "want an https:// URL"},
		{"unknown profile", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.Profile = "http" })}, `profile "http"`},
		{"https_spiffe without endpoint ID", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.EndpointID = spiffeid.ID{} })}, "needs the endpoint's SPIFFE ID"},
		{"endpoint ID in another domain", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) {
			d.EndpointID = spiffeid.RequireFromString("spiffe://other.example/x")
		})}, "is not in it"},
		{"https_spiffe without any bundle", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.Bundle = nil })}, "needs a bundle to authenticate the endpoint"},
		{"bundle of another domain", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.Bundle = newCA(t, otherTD).Bundle() })}, `is for trust domain "other.example"`},
		{"empty bundle", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.Bundle = x509bundle.New(partnerTD) })}, "no X.509 authorities"},
		{"https_web with endpoint ID", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.Profile = identity.ProfileHTTPSWeb })}, "endpoint SPIFFE ID is for profile https_spiffe"},
		{"negative interval", []identity.FederatedDomain{with(func(d *identity.FederatedDomain) { d.RefreshInterval = -time.Second })}, "negative refresh interval"},
		{"listed twice", []identity.FederatedDomain{good, good}, "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewFederation(identity.FederationOptions{Domains: tc.domains})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "identity: federation: ") {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	// Positive control: the unmutated domain is accepted, and an
	// https_web domain needs no bundle to start.
	if _, err := identity.NewFederation(identity.FederationOptions{Domains: []identity.FederatedDomain{good}}); err != nil {
		t.Fatalf("good domain: %v", err)
	}
	if _, err := identity.NewFederation(identity.FederationOptions{Domains: []identity.FederatedDomain{webDomain("https://127.0.0.1:1/", nil)}}); err != nil {
		t.Fatalf("https_web domain: %v", err)
	}
}

// The federation serves only its domains, and nothing after Close.
func TestFederationServesOnlyItsDomains(t *testing.T) {
	partnerCA := newCA(t, partnerTD)
	f, _ := newFederation(t, "", spiffeDomain("https://127.0.0.1:1/", partnerCA.Bundle()))
	for _, other := range []spiffeid.TrustDomain{td, otherTD} {
		if _, err := f.GetX509BundleForTrustDomain(other); err == nil || !strings.Contains(err.Error(), "is not federated") {
			t.Errorf("bundle of %s: err = %v", other, err)
		}
	}
	fedRequireHolds(t, f, partnerCA)
	_ = f.Close()
	if _, err := f.GetX509BundleForTrustDomain(partnerTD); err == nil {
		t.Error("a closed federation still serves a bundle")
	}
}

// Close stops every refresher, including one blocked in a fetch the
// endpoint never answers, and leaves no goroutine behind.
func TestFederationCloseStopsRefreshers(t *testing.T) {
	partnerCA := newCA(t, partnerTD)
	stalled := startPartner(t, partnerCA, "")
	inFetch := make(chan struct{}, 1)
	stalled.serve(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case inFetch <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	}))
	third := spiffeid.RequireTrustDomainFromString("third.example")
	// Not newFederation: its cleanup would Close again, and a Close that
	// hangs must fail this test, not hang it.
	logs := &testpki.LogBuffer{}
	f, err := identity.NewFederation(identity.FederationOptions{
		Domains: []identity.FederatedDomain{
			spiffeDomain(stalled.url(), partnerCA.Bundle()),
			{TrustDomain: third, URL: "https://127.0.0.1:1/", Profile: identity.ProfileHTTPSWeb, RefreshInterval: fedInterval},
		},
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.SetMinWaitForTest(fedMinWait)
	f.Start(context.Background())
	select {
	case <-inFetch:
	case <-time.After(fedPatience):
		t.Fatalf("the fetch never reached the endpoint:\n%s", logs)
	}
	if n := federationGoroutines(); n != 2 {
		t.Fatalf("%d refresher goroutines running, want 2", n)
	}
	done := make(chan error, 1)
	go func() { done <- f.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(fedPatience):
		t.Fatal("Close did not return while a fetch was stalled")
	}
	if n := federationGoroutines(); n != 0 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d refresher goroutines after Close:\n%s", n, buf[:runtime.Stack(buf, true)])
	}
	f.Start(context.Background()) // after Close: nothing
	if n := federationGoroutines(); n != 0 {
		t.Fatalf("Start after Close started %d goroutines", n)
	}
}

// federationGoroutines counts the goroutines running a refresher.
func federationGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "identity.(*Federation).refresh(") {
			count++
		}
	}
	return count
}
