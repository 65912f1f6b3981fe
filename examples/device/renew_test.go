package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testpki"
)

func TestParseAPIURL(t *testing.T) {
	for _, ok := range []string{"https://localhost:8443", "https://localhost:8443/", "https://gw.example.org"} {
		if _, err := parseAPIURL(ok); err != nil {
			t.Errorf("parseAPIURL(%q) = %v, want nil", ok, err)
		}
	}
	// Renewal sends the SVID's CSR and trusts the answer only over TLS
	// to the named host; nothing else is accepted.
	for _, bad := range []string{"http://localhost:8443", "localhost:8443", "https://", "https://h/v1",
		"https://u:p@h", "https://h?x=1", "ftp://h", "::"} {
		if _, err := parseAPIURL(bad); err == nil {
			t.Errorf("parseAPIURL(%q) = nil, want an error", bad)
		}
	}
}

// testCA is a throwaway CA for tests that need no gateway.
type testCA struct {
	t    *testing.T
	key  crypto.Signer
	cert *x509.Certificate
}

func newTestCA(t *testing.T, td string) *testCA {
	t.Helper()
	ca := testpki.NewCA(t, td)
	return &testCA{t: t, key: ca.Key, cert: ca.Cert}
}

// issue returns the PEM chain (leaf, CA) of an SVID for id and key, and
// the key in PEM; a nil key means a fresh one.
func (ca *testCA) issue(id string, key *ecdsa.PrivateKey) (chainPEM, keyPEM []byte) {
	ca.t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			ca.t.Fatal(err)
		}
	}
	u, err := url.Parse(id)
	if err != nil {
		ca.t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		ca.t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(2)),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	chainPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	return chainPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func (ca *testCA) bundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}
