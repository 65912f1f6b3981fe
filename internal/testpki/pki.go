package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// CA is a throwaway certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA returns a self-signed CA for trust domain td (its URI SAN is
// spiffe://td, as in a SPIFFE bundle), valid for the next hour. Tests use
// it as a CA the gateway does not trust, or as the only CA of a test that
// needs no gateway.
func NewCA(t testing.TB, td string) *CA {
	t.Helper()
	key := NewKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          Serial(t),
		Subject:               pkix.Name{CommonName: "test CA " + td},
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("testpki: self-sign CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testpki: parse CA: %v", err)
	}
	return &CA{Cert: cert, Key: key}
}

// Issue returns an X.509-SVID for id signed by the CA, built from
// LeafTemplate.
func (ca *CA) Issue(t testing.TB, id string) tls.Certificate {
	t.Helper()
	return SignLeaf(t, LeafTemplate(t, id), ca.Cert, ca.Key)
}

// BundlePEM is the CA certificate in PEM, the form of a trust bundle file.
func (ca *CA) BundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// LeafTemplate is a valid X.509-SVID template for id (client auth,
// digitalSignature, valid for the next hour) that a test may break in one
// way before signing it.
func LeafTemplate(t testing.TB, id string) *x509.Certificate {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatalf("testpki: SPIFFE ID %q: %v", id, err)
	}
	return &x509.Certificate{
		SerialNumber:          Serial(t),
		URIs:                  []*url.URL{u},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// SignLeaf signs tmpl for a fresh P-256 key with the issuer and returns
// the chain (leaf, issuer) as a TLS certificate with Leaf set. It signs
// whatever tmpl says, so tests can mint certificates the gateway must
// refuse.
func SignLeaf(t testing.TB, tmpl, issuer *x509.Certificate, issuerKey crypto.Signer) tls.Certificate {
	t.Helper()
	key := NewKey(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
	if err != nil {
		t.Fatalf("testpki: sign leaf: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testpki: parse leaf: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, issuer.Raw}, PrivateKey: key, Leaf: leaf}
}

// NewKey returns a fresh P-256 key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testpki: generate key: %v", err)
	}
	return key
}

// Serial is a random positive serial number, so that certificates minted
// in the same test never share one.
func Serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatalf("testpki: serial: %v", err)
	}
	return n.Add(n, big.NewInt(1))
}

// ParseSigner parses a PEM private key (SEC 1 "EC PRIVATE KEY" or PKCS#8),
// as the gateway's CA writes it, into a signer.
func ParseSigner(t testing.TB, pemBytes []byte) crypto.Signer {
	t.Helper()
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		t.Fatal("testpki: key is not PEM")
	}
	var key any
	var err error
	switch b.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	if err != nil {
		t.Fatalf("testpki: parse key: %v", err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("testpki: key is a %T, not a signer", key)
	}
	return s
}

// CSRPEM is a PEM certificate request made with tmpl (nil: one that asks
// for nothing but the key) and signed by key.
func CSRPEM(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("testpki: CSR: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
