package identity_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

func TestVerifier(t *testing.T) {
	ca := newCA(t, td)
	wrongCA := newCA(t, td)
	v := identity.NewVerifier(ca.Bundle())

	type tc struct {
		name  string
		chain func(t *testing.T) []*x509.Certificate
		ok    bool
		why   string
	}
	tests := []tc{
		{"good SVID", func(t *testing.T) []*x509.Certificate {
			chain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
			return chain
		}, true, ""},
		{"good SVID, leaf only", func(t *testing.T) []*x509.Certificate {
			chain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
			return chain[:1]
		}, true, ""},
		{"good SVID from IssueSVID", func(t *testing.T) []*x509.Certificate {
			chainPEM, _, err := ca.IssueSVID(sensor, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return parseChain(t, chainPEM)
		}, true, ""},
		{"no certificate", func(*testing.T) []*x509.Certificate { return nil }, false, "no client certificate"},
		{"nil certificate", func(*testing.T) []*x509.Certificate { return []*x509.Certificate{nil} }, false, "nil certificate"},
		{"wrong CA", func(t *testing.T) []*x509.Certificate {
			chain, _ := signLeaf(t, leafTemplate(sensor), wrongCA.Certificate(), wrongCA.SignerForTest())
			return chain
		}, false, "unknown authority"},
		{"wrong CA, trusted CA appended", func(t *testing.T) []*x509.Certificate {
			chain, _ := signLeaf(t, leafTemplate(sensor), wrongCA.Certificate(), wrongCA.SignerForTest())
			return []*x509.Certificate{chain[0], ca.Certificate()}
		}, false, "unknown authority"},
		{"CA certificate as leaf", func(*testing.T) []*x509.Certificate {
			return []*x509.Certificate{ca.Certificate()}
		}, false, "CA flag"},
	}
	for _, b := range badLeaves() {
		tests = append(tests, tc{b.name, func(t *testing.T) []*x509.Certificate {
			tmpl := leafTemplate(sensor)
			b.mutate(t, tmpl)
			chain, _ := signLeaf(t, tmpl, ca.Certificate(), ca.SignerForTest())
			return chain
		}, false, b.why})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := v.Verify(tt.chain(t))
			if tt.ok {
				if err != nil || id != sensor {
					t.Fatalf("Verify = %v, %v; want %s", id, err, sensor)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted it as %s", id)
			}
			if !id.IsZero() {
				t.Errorf("Verify returned ID %s with its error", id)
			}
			if !strings.HasPrefix(err.Error(), "identity: ") || !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q, want it to start with %q and mention %q", err, "identity: ", tt.why)
			}
		})
	}
}

func TestVerifierNoCertificateError(t *testing.T) {
	_, err := identity.NewVerifier(newCA(t, td).Bundle()).Verify(nil)
	if !errors.Is(err, identity.ErrNoCertificate) {
		t.Errorf("Verify(nil) = %v, want ErrNoCertificate", err)
	}
}

// A CA trusted for one trust domain must not vouch for another trust
// domain the verifier also serves with its own CA.
func TestVerifierTrustDomainsDoNotMix(t *testing.T) {
	ca := newCA(t, td)
	otherCA := newCA(t, otherTD)
	v := identity.NewVerifier(ca.Bundle(), otherCA.Bundle())
	foreign := spiffeid.RequireFromString("spiffe://other.example/device/sensor-1")

	chain, _ := signLeaf(t, leafTemplate(foreign), otherCA.Certificate(), otherCA.SignerForTest())
	if id, err := v.Verify(chain); err != nil || id != foreign {
		t.Fatalf("positive control: other CA for its own trust domain: %v, %v", id, err)
	}
	chain, _ = signLeaf(t, leafTemplate(foreign), ca.Certificate(), ca.SignerForTest())
	if _, err := v.Verify(chain); err == nil {
		t.Fatal("example.org's CA vouched for an other.example ID")
	}
	chain, _ = signLeaf(t, leafTemplate(sensor), otherCA.Certificate(), otherCA.SignerForTest())
	if _, err := v.Verify(chain); err == nil {
		t.Fatal("other.example's CA vouched for an example.org ID")
	}
}

func TestVerifierBundles(t *testing.T) {
	ca := newCA(t, td)
	newer := newCA(t, td)
	oldChain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	newChain, _ := signLeaf(t, leafTemplate(sensor), newer.Certificate(), newer.SignerForTest())

	v := identity.NewVerifier(ca.Bundle())
	if _, err := v.Verify(oldChain); err != nil {
		t.Fatalf("positive control: %v", err)
	}
	if _, err := v.Verify(newChain); err == nil {
		t.Fatal("accepted a chain of a CA not yet in the bundle")
	}

	if err := v.SetBundle(newer.Bundle()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(oldChain); err == nil {
		t.Error("SetBundle did not replace the old CA")
	}
	if _, err := v.Verify(newChain); err != nil {
		t.Errorf("SetBundle did not install the new CA: %v", err)
	}

	v.RemoveBundle(td)
	if got := v.TrustDomains(); len(got) != 0 {
		t.Errorf("TrustDomains after RemoveBundle = %v", got)
	}
	if _, err := v.Verify(newChain); err == nil || !strings.Contains(err.Error(), "not served") {
		t.Errorf("Verify after RemoveBundle = %v, want a not-served error", err)
	}

	for _, b := range []*x509bundle.Bundle{nil, x509bundle.New(td), x509bundle.FromX509Authorities(spiffeid.TrustDomain{}, []*x509.Certificate{ca.Certificate()})} {
		if err := v.SetBundle(b); err == nil {
			t.Errorf("SetBundle accepted an unusable bundle %v", b)
		}
	}
	if got := identity.NewVerifier(nil, x509bundle.New(td)).TrustDomains(); len(got) != 0 {
		t.Errorf("NewVerifier served unusable bundles: %v", got)
	}
}

// The verifier holds a copy: adding an authority to the caller's bundle
// afterwards must not widen what it trusts.
func TestVerifierCopiesBundle(t *testing.T) {
	ca := newCA(t, td)
	intruder := newCA(t, td)
	b := ca.Bundle()
	v := identity.NewVerifier(b)
	b.AddX509Authority(intruder.Certificate())
	chain, _ := signLeaf(t, leafTemplate(sensor), intruder.Certificate(), intruder.SignerForTest())
	if _, err := v.Verify(chain); err == nil {
		t.Fatal("a change to the caller's bundle reached the verifier")
	}
}

func TestVerifierConcurrentUse(t *testing.T) {
	ca := newCA(t, td)
	other := newCA(t, td)
	chain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	v := identity.NewVerifier(ca.Bundle())
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				_, _ = v.Verify(chain)
			}
		}()
	}
	for j := 0; j < 50; j++ {
		if j%2 == 0 {
			_ = v.SetBundle(other.Bundle())
		} else {
			_ = v.SetBundle(ca.Bundle())
		}
	}
	wg.Wait()
	if _, err := v.Verify(chain); err != nil {
		t.Fatalf("after the last SetBundle(ca): %v", err)
	}
}

func TestNilVerifierFailsClosed(t *testing.T) {
	var v *identity.Verifier
	ca := newCA(t, td)
	chain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	if _, err := v.Verify(chain); err == nil {
		t.Error("nil verifier accepted a chain")
	}
	if err := identity.ServerTLSConfig(tls.Certificate{}, nil).VerifyConnection(tls.ConnectionState{PeerCertificates: chain}); err == nil {
		t.Error("ServerTLSConfig without a verifier accepted a chain")
	}
}

func TestPeerIDNeedsCompleteHandshake(t *testing.T) {
	ca := newCA(t, td)
	chain, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	v := identity.NewVerifier(ca.Bundle())
	if id, err := v.PeerID(tls.ConnectionState{HandshakeComplete: true, PeerCertificates: chain}); err != nil || id != sensor {
		t.Fatalf("positive control: %v, %v", id, err)
	}
	if _, err := v.PeerID(tls.ConnectionState{PeerCertificates: chain}); err == nil {
		t.Error("PeerID accepted an incomplete handshake")
	}
	if _, err := v.PeerID(tls.ConnectionState{HandshakeComplete: true}); err == nil {
		t.Error("PeerID accepted a connection without a peer certificate")
	}
}
