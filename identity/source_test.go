package identity_test

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testpki"
)

// The built-in CA is one implementation of go-spiffe's sources; files and
// the SPIRE Workload API are the others (filesource_test.go,
// workloadsource_test.go).
var (
	_ x509bundle.Source = (*identity.CA)(nil)
	_ x509svid.Source   = (*identity.ServingCertSource)(nil)
)

// swapSource is a bundle source whose answer a test replaces, as a file
// watcher or the Workload API would on rotation.
type swapSource struct {
	mu     sync.Mutex
	bundle *x509bundle.Bundle
	err    error
	calls  int
}

func (s *swapSource) set(b *x509bundle.Bundle, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundle, s.err = b, err
}

func (s *swapSource) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.bundle, s.err
}

// A verifier over a source asks it at every verification: after the swap
// the old CA's chain is refused and the new one's accepted.
func TestVerifierFollowsBundleSource(t *testing.T) {
	oldCA, newCA := newCA(t, td), newCA(t, td)
	oldChain, _ := signLeaf(t, leafTemplate(sensor), oldCA.Certificate(), oldCA.SignerForTest())
	newChain, _ := signLeaf(t, leafTemplate(sensor), newCA.Certificate(), newCA.SignerForTest())

	src := &swapSource{bundle: oldCA.Bundle()}
	v, err := identity.NewVerifierFromSource(src, td)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := v.Verify(oldChain); err != nil || id != sensor {
		t.Fatalf("before the swap: %v, %v", id, err)
	}
	if _, err := v.Verify(newChain); err == nil {
		t.Fatal("before the swap: accepted a chain of a CA the source does not hold")
	}

	src.set(newCA.Bundle(), nil)
	if _, err := v.Verify(oldChain); err == nil {
		t.Error("after the swap: accepted a chain of the CA the source dropped")
	}
	if id, err := v.Verify(newChain); err != nil || id != sensor {
		t.Errorf("after the swap: %v, %v", id, err)
	}
	if src.calls != 4 {
		t.Errorf("source asked %d times for 4 verifications", src.calls)
	}
}

// Whatever a faulty source answers, the verifier refuses with an identity:
// error and does not panic.
func TestVerifierSourceFailsClosed(t *testing.T) {
	ca := newCA(t, td)
	chain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	for name, tc := range map[string]struct {
		bundle *x509bundle.Bundle
		err    error
		want   string
	}{
		"positive control": {bundle: ca.Bundle()},
		"source error":     {err: errors.New("workload API unavailable"), want: "workload API unavailable"},
		"nil bundle":       {want: "no bundle"},
		"empty bundle":     {bundle: x509bundle.New(td), want: "no authorities"},
		"other trust domain's bundle": {
			bundle: x509bundle.FromX509Authorities(otherTD, []*x509.Certificate{ca.Certificate()}),
			want:   "no bundle",
		},
	} {
		t.Run(name, func(t *testing.T) {
			v, err := identity.NewVerifierFromSource(&swapSource{bundle: tc.bundle, err: tc.err}, td)
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(chain)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatal("accepted")
			case !strings.HasPrefix(err.Error(), "identity: ") || !strings.Contains(err.Error(), tc.want):
				t.Errorf("err = %v, want an identity: error containing %q", err, tc.want)
			}
		})
	}
}

// Only the trust domains given are served, even when the source holds a
// bundle for another; RemoveBundle and SetBundle work as on NewVerifier's.
func TestVerifierFromSourceServedDomains(t *testing.T) {
	ca, other := newCA(t, td), newCA(t, otherTD)
	chain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	otherChain, _ := signLeaf(t, leafTemplate(spiffeid.RequireFromPath(otherTD, "/device/x")), other.Certificate(), other.SignerForTest())

	v, err := identity.NewVerifierFromSource(x509bundle.NewSet(ca.Bundle(), other.Bundle()), td)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(chain); err != nil {
		t.Fatalf("positive control: %v", err)
	}
	if _, err := v.Verify(otherChain); err == nil || !strings.Contains(err.Error(), "not served") {
		t.Errorf("unserved trust domain: %v, want a not-served error", err)
	}
	if got := v.TrustDomains(); len(got) != 1 || got[0] != td {
		t.Errorf("TrustDomains = %v, want [%s]", got, td)
	}
	v.RemoveBundle(td)
	if _, err := v.Verify(chain); err == nil || !strings.Contains(err.Error(), "not served") {
		t.Errorf("after RemoveBundle: %v, want a not-served error", err)
	}
	if err := v.SetBundle(ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(chain); err != nil {
		t.Errorf("after SetBundle: %v", err)
	}
}

func TestNewVerifierFromSourceBadInput(t *testing.T) {
	ca := newCA(t, td)
	for name, build := range map[string]func() (*identity.Verifier, error){
		"nil source":         func() (*identity.Verifier, error) { return identity.NewVerifierFromSource(nil, td) },
		"no trust domain":    func() (*identity.Verifier, error) { return identity.NewVerifierFromSource(ca) },
		"empty trust domain": func() (*identity.Verifier, error) { return identity.NewVerifierFromSource(ca, spiffeid.TrustDomain{}) },
	} {
		if v, err := build(); err == nil || v != nil || !strings.HasPrefix(err.Error(), "identity: ") {
			t.Errorf("%s: %v, %v; want an identity: error", name, v, err)
		}
	}
	if _, err := identity.NewVerifierFromSource(ca, td); err != nil {
		t.Errorf("positive control: %v", err)
	}
}

func TestCAIsBundleSource(t *testing.T) {
	ca := newCA(t, td)
	b, err := ca.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Equal(ca.Bundle()) {
		t.Error("the CA's bundle from the source differs from Bundle()")
	}
	// The caller gets its own bundle: changing it must not widen trust.
	b.AddX509Authority(newCA(t, td).Certificate())
	if again, _ := ca.GetX509BundleForTrustDomain(td); !again.Equal(ca.Bundle()) {
		t.Error("a change to a returned bundle reached the CA")
	}
	if _, err := ca.GetX509BundleForTrustDomain(otherTD); err == nil {
		t.Error("the CA answered for another trust domain")
	}
}

// The serving SVID from the source is what the TLS configs serve: same
// leaf, chain ending with the CA, key matching, renewed as GetCertificate.
func TestServingCertSourceSVID(t *testing.T) {
	ca := newCA(t, td)
	s, err := identity.NewServingCertSource(ca, gatewayID, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != gatewayID || len(svid.Certificates) != 2 || !svid.Certificates[1].Equal(ca.Certificate()) {
		t.Fatalf("SVID %s with %d certificates, want %s, leaf and CA", svid.ID, len(svid.Certificates), gatewayID)
	}
	if id, err := identity.NewVerifier(ca.Bundle()).Verify(svid.Certificates); err != nil || id != gatewayID {
		t.Fatalf("SVID verifies as %v, %v", id, err)
	}
	if !svid.Certificates[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(svid.PrivateKey.Public()) {
		t.Error("SVID key does not match its leaf")
	}
	served, err := s.ServerTLSConfig(nil).GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !served.Leaf.Equal(svid.Certificates[0]) || len(served.Certificate) != 2 || string(served.Certificate[1]) != string(ca.Certificate().Raw) {
		t.Error("the TLS config serves something other than the source's SVID")
	}

	// A caller changing the returned SVID must not change what is served.
	svid.Certificates[0] = ca.Certificate()
	if again, _ := s.GetX509SVID(); !again.Certificates[0].Equal(served.Leaf) {
		t.Error("a change to a returned SVID reached the source")
	}

	s.SetNowForTest(func() time.Time { return time.Now().Add(identity.ServingCertTTL * 3 / 4) })
	renewed, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Certificates[0].SerialNumber.Cmp(served.Leaf.SerialNumber) == 0 {
		t.Error("GetX509SVID did not renew after two thirds of the lifetime")
	}
}

// svidFunc is an x509svid.Source answering whatever a test gives.
type svidFunc func() (*x509svid.SVID, error)

func (f svidFunc) GetX509SVID() (*x509svid.SVID, error) { return f() }

// The adapter serves the source's chain ending with the trust anchor,
// appending it from the bundle when the source leaves it out (as the
// Workload API does), and fails closed on a source with nothing to serve.
func TestGetCertificateAdapter(t *testing.T) {
	ca := newCA(t, td)
	certPEM, keyPEM, err := ca.IssueSVID(sensor, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	full, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leafOnly := *full
	leafOnly.Certificates = full.Certificates[:1]
	wantChain := [][]byte{full.Certificates[0].Raw, ca.Certificate().Raw}

	for name, tc := range map[string]struct {
		svid    *x509svid.SVID
		err     error
		anchors x509bundle.Source
		want    [][]byte // nil: an error is wanted
	}{
		"chain with CA, CA as anchors": {svid: full, anchors: ca, want: wantChain},
		"chain with CA, no anchors":    {svid: full, want: wantChain},
		"leaf only, CA appended":       {svid: &leafOnly, anchors: ca, want: wantChain},
		"leaf only, unrelated anchors": {svid: &leafOnly, anchors: newCA(t, td), want: wantChain[:1]},
		"leaf only, no anchors":        {svid: &leafOnly, want: wantChain[:1]},
		"source error":                 {err: errors.New("agent unreachable")},
		"nil SVID":                     {},
		"no certificates":              {svid: &x509svid.SVID{ID: sensor, PrivateKey: full.PrivateKey}},
		"no key":                       {svid: &x509svid.SVID{ID: sensor, Certificates: full.Certificates}},
		"nil certificate in chain":     {svid: &x509svid.SVID{ID: sensor, Certificates: []*x509.Certificate{full.Certificates[0], nil}, PrivateKey: full.PrivateKey}},
	} {
		t.Run(name, func(t *testing.T) {
			get := identity.GetCertificate(svidFunc(func() (*x509svid.SVID, error) { return tc.svid, tc.err }), tc.anchors)
			cert, err := get(nil)
			if tc.want == nil {
				if err == nil || !strings.HasPrefix(err.Error(), "identity: ") {
					t.Fatalf("got %v, %v; want an identity: error", cert, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cert.Certificate) != len(tc.want) {
				t.Fatalf("served %d certificates, want %d", len(cert.Certificate), len(tc.want))
			}
			for i := range tc.want {
				if string(cert.Certificate[i]) != string(tc.want[i]) {
					t.Errorf("certificate %d differs", i)
				}
			}
			if cert.Leaf != tc.svid.Certificates[0] || cert.PrivateKey != tc.svid.PrivateKey {
				t.Error("leaf or key is not the SVID's")
			}
		})
	}
	if _, err := identity.GetCertificate(nil, ca)(nil); err == nil {
		t.Error("nil source served a certificate")
	}
}

// The built-in source is the CA and its serving certificate behind the
// Source interface: it never changes by itself, so it has no Updated.
func TestBuiltinSource(t *testing.T) {
	ca := newCA(t, td)
	serving, err := identity.NewServingCertSource(ca, gatewayID, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := identity.NewBuiltinSource(ca, serving)
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := serving.GetX509SVID()
	if svid.ID != gatewayID || !svid.Certificates[0].Equal(want.Certificates[0]) {
		t.Errorf("SVID %s is not the serving certificate", svid.ID)
	}
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(ca.Bundle()) {
		t.Errorf("bundle: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(otherTD); err == nil {
		t.Error("answered for another trust domain")
	}
	if src.Updated() != nil {
		t.Error("Updated is not nil")
	}
	if err := src.Close(); err != nil {
		t.Error(err)
	}
	if src.CA() != ca {
		t.Error("CA() is not the CA")
	}
}

// The configs served from any source are the fixed-certificate configs
// with the certificate asked of the source at each handshake.
func TestTLSConfigFromSource(t *testing.T) {
	ca := newCA(t, td)
	serving, err := identity.NewServingCertSource(ca, gatewayID, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := identity.NewVerifier(ca.Bundle())
	fixed := serverCert(t, ca)
	src := identity.NewBuiltinSource(ca, serving)
	for _, tc := range []struct {
		name      string
		got, want *tls.Config
	}{
		{"MQTT", identity.ServerTLSConfigFromSource(src, v), identity.ServerTLSConfig(fixed, v)},
		{"API", identity.APIServerTLSConfigFromSource(src, v), identity.APIServerTLSConfig(fixed, v)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, want := tc.got, tc.want
			if len(got.Certificates) != 0 || got.GetCertificate == nil {
				t.Fatal("config serves a fixed certificate")
			}
			if got.MinVersion != want.MinVersion || got.ClientAuth != want.ClientAuth ||
				got.SessionTicketsDisabled != want.SessionTicketsDisabled || !slices.Equal(got.CipherSuites, want.CipherSuites) ||
				got.VerifyConnection == nil || got.VerifyPeerCertificate != nil {
				t.Error("config differs from the fixed-certificate config beyond the certificate")
			}
			cert, err := got.GetCertificate(nil)
			if err != nil {
				t.Fatal(err)
			}
			if id, err := v.Verify([]*x509.Certificate{cert.Leaf}); err != nil || id != gatewayID {
				t.Errorf("served leaf verifies as %v, %v", id, err)
			}
			// A peer chain of an untrusted CA fails VerifyConnection.
			foreign := testpki.NewCA(t, td.Name()).Issue(t, sensor.String())
			if err := got.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{foreign.Leaf}}); err == nil {
				t.Error("VerifyConnection accepted a chain of an untrusted CA")
			}
		})
	}
}
