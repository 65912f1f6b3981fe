package identity_test

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"runtime"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testpki"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD = spiffeid.RequireTrustDomainFromString("other.example")
	sensor  = spiffeid.RequireFromString("spiffe://example.org/device/sensor-1")
)

func newCA(t *testing.T, trust spiffeid.TrustDomain) *identity.CA {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(t.TempDir(), trust)
	if err != nil {
		t.Fatalf("LoadOrCreateCA: %v", err)
	}
	return ca
}

// leafTemplate is a well-formed X.509-SVID template for id; tests break
// one rule at a time on a copy.
func leafTemplate(id spiffeid.ID) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{Organization: []string{"test"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
}

// signLeaf signs tmpl with the given issuer and returns the chain (leaf,
// issuer) and a TLS certificate for it.
func signLeaf(t *testing.T, tmpl, issuer *x509.Certificate, issuerKey crypto.Signer) ([]*x509.Certificate, tls.Certificate) {
	t.Helper()
	cert := testpki.SignLeaf(t, tmpl, issuer, issuerKey)
	return []*x509.Certificate{cert.Leaf, issuer}, cert
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// badLeaf is one way a certificate signed by a trusted key can still be
// an unacceptable X.509-SVID.
type badLeaf struct {
	name   string
	mutate func(t *testing.T, c *x509.Certificate)
	// why is part of the error Verify must give, so the test fails if
	// the certificate is refused for some other reason than the rule.
	why string
}

func badLeaves() []badLeaf {
	return []badLeaf{
		{"two URI SANs", func(t *testing.T, c *x509.Certificate) {
			c.URIs = append(c.URIs, mustURL(t, "spiffe://example.org/admin/dev"))
		}, "more than one URI SAN"},
		{"non-SPIFFE URI SAN", func(t *testing.T, c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, "https://example.org/device/sensor-1")}
		}, "scheme"},
		{"no URI SAN", func(t *testing.T, c *x509.Certificate) {
			c.URIs = nil
			c.DNSNames = []string{"sensor-1.example.org"}
		}, "no URI SAN"},
		{"CA:true leaf", func(t *testing.T, c *x509.Certificate) {
			c.IsCA = true
		}, "CA flag"},
		{"leaf with certSign usage", func(t *testing.T, c *x509.Certificate) {
			c.KeyUsage |= x509.KeyUsageCertSign
		}, "KeyCertSign"},
		{"leaf with CRLSign usage", func(t *testing.T, c *x509.Certificate) {
			c.KeyUsage |= x509.KeyUsageCRLSign
		}, "KeyCrlSign"},
		{"no digitalSignature usage", func(t *testing.T, c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageKeyEncipherment
		}, "digitalSignature"},
		{"no key usage extension", func(t *testing.T, c *x509.Certificate) {
			c.KeyUsage = 0
		}, "digitalSignature"},
		{"expired", func(t *testing.T, c *x509.Certificate) {
			c.NotBefore = time.Now().Add(-2 * time.Hour)
			c.NotAfter = time.Now().Add(-time.Hour)
		}, "is after"},
		{"not yet valid", func(t *testing.T, c *x509.Certificate) {
			c.NotBefore = time.Now().Add(time.Hour)
			c.NotAfter = time.Now().Add(2 * time.Hour)
		}, "is before"},
		{"foreign trust domain signed by our CA", func(t *testing.T, c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, "spiffe://other.example/device/sensor-1")}
		}, "not served"},
		{"empty path", func(t *testing.T, c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, "spiffe://example.org")}
		}, "empty path"},
	}
}

func nextPEM(data []byte) (der, rest []byte) {
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, nil
	}
	return b.Bytes, rest
}

// waitGoroutines waits until no more goroutines run than before, as a
// closed source must leave none of its own behind, and fails with their
// stacks when they are still there after waitFor.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
