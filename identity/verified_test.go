package identity_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/ztgate/ztgate/identity"
)

// newCACert makes a CA certificate valid until notAfter, signed by parent
// (self-signed when parent is nil).
func newCACert(t *testing.T, cn string, notAfter time.Time, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestVerifiedExpires checks that Expires is the earliest NotAfter on the
// chain that was verified: the trust anchor from the bundle counts although
// the peer need not send it, and a certificate the peer sent that is not on
// the verified path does not.
func TestVerifiedExpires(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	at := func(d time.Duration) time.Time { return now.Add(d) }

	tests := []struct {
		name                    string
		root, inter, leaf       time.Time
		sendRoot, sendUnrelated bool
		want                    time.Time
	}{
		{"leaf expires first", at(10 * time.Hour), at(5 * time.Hour), at(time.Hour), false, false, at(time.Hour)},
		{"intermediate expires before the leaf", at(10 * time.Hour), at(2 * time.Hour), at(3 * time.Hour), false, false, at(2 * time.Hour)},
		{"root from the bundle expires first, not sent", at(90 * time.Minute), at(5 * time.Hour), at(3 * time.Hour), false, false, at(90 * time.Minute)},
		{"root expires first, sent", at(90 * time.Minute), at(5 * time.Hour), at(3 * time.Hour), true, false, at(90 * time.Minute)},
		{"unrelated certificate sent, not on the path", at(10 * time.Hour), at(5 * time.Hour), at(3 * time.Hour), false, true, at(3 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, rootKey := newCACert(t, "root", tt.root, nil, nil)
			inter, interKey := newCACert(t, "intermediate", tt.inter, root, rootKey)
			tmpl := leafTemplate(sensor)
			tmpl.NotAfter = tt.leaf
			signed, _ := signLeaf(t, tmpl, inter, interKey)
			chain := signed // leaf, intermediate
			if tt.sendRoot {
				chain = append(chain, root)
			}
			if tt.sendUnrelated {
				other, _ := newCACert(t, "unrelated", at(time.Minute), nil, nil)
				chain = append(chain, other)
			}
			v := identity.NewVerifier(x509bundle.FromX509Authorities(td, []*x509.Certificate{root}))

			got, err := v.VerifyChain(chain)
			if err != nil {
				t.Fatalf("VerifyChain: %v", err)
			}
			if got.ID != sensor {
				t.Errorf("ID = %s, want %s", got.ID, sensor)
			}
			if !got.Expires.Equal(tt.want) {
				t.Errorf("Expires = %s, want %s", got.Expires, tt.want)
			}

			// The handshake form agrees with the chain form.
			peer, err := v.VerifyPeer(tls.ConnectionState{HandshakeComplete: true, PeerCertificates: chain})
			if err != nil || peer != got {
				t.Errorf("VerifyPeer = %+v, %v; want %+v", peer, err, got)
			}
		})
	}
}

// TestVerifiedZeroOnError checks that a refused chain yields no ID and no
// expiry, so a caller ignoring the error still holds nothing usable.
func TestVerifiedZeroOnError(t *testing.T) {
	ca := newCA(t, td)
	v := identity.NewVerifier(ca.Bundle())
	good, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	if got, err := v.VerifyChain(good); err != nil || got.ID != sensor || got.Expires.IsZero() {
		t.Fatalf("positive control: %+v, %v", got, err)
	}
	wrongCA := newCA(t, td)
	bad, _ := signLeaf(t, leafTemplate(sensor), wrongCA.Certificate(), wrongCA.SignerForTest())
	if got, err := v.VerifyChain(bad); err == nil || got != (identity.Verified{}) {
		t.Fatalf("VerifyChain of a chain from an untrusted CA = %+v, %v; want zero and an error", got, err)
	}
}
