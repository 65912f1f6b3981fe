package identity_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

func makeCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignCSR(t *testing.T) {
	ca := newCA(t, td)
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 24 * time.Hour
	chainPEM, err := ca.SignCSR(csrPEM, sensor, ttl)
	if err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	chain := parseChain(t, chainPEM)
	if len(chain) != 2 || !chain[1].Equal(ca.Certificate()) {
		t.Fatalf("chain has %d certificates, want leaf then CA", len(chain))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != sensor.String() {
		t.Errorf("URI SANs = %v, want [%s]", leaf.URIs, sensor)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has extra SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Error("leaf must carry basicConstraints CA:false")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want digitalSignature only", leaf.KeyUsage)
	}
	if !hasEKU(leaf, x509.ExtKeyUsageClientAuth) || !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || len(leaf.ExtKeyUsage) != 2 {
		t.Errorf("ExtKeyUsage = %v, want clientAuth and serverAuth", leaf.ExtKeyUsage)
	}
	if bits := leaf.SerialNumber.BitLen(); leaf.SerialNumber.Sign() <= 0 || bits > 128 || bits < 64 {
		t.Errorf("serial %v (%d bits), want a positive random 128-bit number", leaf.SerialNumber, bits)
	}
	if d := leaf.NotAfter.Sub(time.Now().Add(ttl)); d > time.Minute || d < -time.Minute {
		t.Errorf("NotAfter %s, want about now+%s", leaf.NotAfter, ttl)
	}
	if leaf.NotBefore.After(time.Now()) {
		t.Errorf("NotBefore %s is in the future", leaf.NotBefore)
	}
	if _, err := tls.X509KeyPair(chainPEM, keyPEM); err != nil {
		t.Errorf("the issued leaf does not match the CSR's key: %v", err)
	}
	if id, err := identity.NewVerifier(ca.Bundle()).Verify(chain); err != nil || id != sensor {
		t.Errorf("Verify = %v, %v; want %s", id, err, sensor)
	}

	again, err := ca.SignCSR(csrPEM, sensor, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if parseChain(t, again)[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}
}

func TestSignCSRClampsToCAExpiry(t *testing.T) {
	ca := newCA(t, td)
	_, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, err := ca.SignCSR(csrPEM, sensor, 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := parseChain(t, chainPEM)[0].NotAfter, ca.Certificate().NotAfter; !got.Equal(want) {
		t.Errorf("NotAfter = %s, want the CA's %s", got, want)
	}
}

func TestSignCSRKeyTypes(t *testing.T) {
	ca := newCA(t, td)
	gen := func(f func() (crypto.Signer, error)) func(t *testing.T) crypto.Signer {
		return func(t *testing.T) crypto.Signer {
			k, err := f()
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
	}
	tests := []struct {
		name  string
		key   func(t *testing.T) crypto.Signer
		ok    bool
		usage x509.KeyUsage
	}{
		{"ECDSA P-256", gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }), true, x509.KeyUsageDigitalSignature},
		{"ECDSA P-384", gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) }), true, x509.KeyUsageDigitalSignature},
		{"Ed25519", gen(func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err }), true, x509.KeyUsageDigitalSignature},
		{"RSA 2048", gen(func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) }), true, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{"RSA 1024", gen(func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 1024) }), false, 0},
		{"ECDSA P-224", gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P224(), rand.Reader) }), false, 0},
		{"ECDSA P-521", gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P521(), rand.Reader) }), false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chainPEM, err := ca.SignCSR(makeCSR(t, tt.key(t), nil), sensor, time.Hour)
			if !tt.ok {
				if err == nil {
					t.Fatal("SignCSR accepted a refused key type")
				}
				return
			}
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			if got := parseChain(t, chainPEM)[0].KeyUsage; got != tt.usage {
				t.Errorf("KeyUsage = %v, want %v", got, tt.usage)
			}
		})
	}
}

func TestSignCSRRefuses(t *testing.T) {
	ca := newCA(t, td)
	key := p256(t)
	good := makeCSR(t, key, nil)

	badSig := func(t *testing.T) []byte {
		b, _ := pem.Decode(good)
		der := append([]byte(nil), b.Bytes...)
		// The last bytes are the signature's S value: flip one bit.
		der[len(der)-2] ^= 0x01
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	otherKeyCSR := func(t *testing.T) []byte {
		// A CSR whose public key is one key and whose signature is
		// another's: the requester does not hold the key it names.
		a, b := p256(t), p256(t)
		tmpl := &x509.CertificateRequest{}
		derA, err := x509.CreateCertificateRequest(rand.Reader, tmpl, a)
		if err != nil {
			t.Fatal(err)
		}
		csrA, _ := x509.ParseCertificateRequest(derA)
		derB, err := x509.CreateCertificateRequest(rand.Reader, tmpl, b)
		if err != nil {
			t.Fatal(err)
		}
		csrB, _ := x509.ParseCertificateRequest(derB)
		der := spliceCSR(t, csrA.RawTBSCertificateRequest, derB, csrB)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	bcExt := func(t *testing.T) pkix.Extension {
		v, err := asn1.Marshal(struct {
			IsCA bool `asn1:"optional"`
		}{true})
		if err != nil {
			t.Fatal(err)
		}
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}
	}

	tests := []struct {
		name    string
		csr     func(t *testing.T) []byte
		id      spiffeid.ID
		ttl     time.Duration
		wantErr string
	}{
		{"positive control", func(*testing.T) []byte { return good }, sensor, time.Hour, ""},
		{"positive control with a subject name", func(t *testing.T) []byte {
			return makeCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sensor-1"}})
		}, sensor, time.Hour, ""},
		{"bad signature", badSig, sensor, time.Hour, "signature"},
		{"signed by another key", otherKeyCSR, sensor, time.Hour, "signature"},
		{"URI SAN of another identity", func(t *testing.T) []byte {
			return makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "spiffe://example.org/admin/dev")}})
		}, sensor, time.Hour, "URI"},
		{"DNS SAN", func(t *testing.T) []byte {
			return makeCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"localhost"}})
		}, sensor, time.Hour, "alternative names"},
		{"IP SAN", func(t *testing.T) []byte {
			return makeCSR(t, key, &x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
		}, sensor, time.Hour, "alternative names"},
		{"email SAN", func(t *testing.T) []byte {
			return makeCSR(t, key, &x509.CertificateRequest{EmailAddresses: []string{"a@example.org"}})
		}, sensor, time.Hour, "alternative names"},
		{"basicConstraints CA:true extension", func(t *testing.T) []byte {
			return makeCSR(t, key, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{bcExt(t)}})
		}, sensor, time.Hour, "extensions"},
		{"ID in another trust domain", func(*testing.T) []byte { return good },
			spiffeid.RequireFromString("spiffe://other.example/device/sensor-1"), time.Hour, "trust domain"},
		{"ID with empty path", func(*testing.T) []byte { return good }, td.ID(), time.Hour, "empty path"},
		{"zero ID", func(*testing.T) []byte { return good }, spiffeid.ID{}, time.Hour, "empty SPIFFE ID"},
		{"zero lifetime", func(*testing.T) []byte { return good }, sensor, 0, "lifetime"},
		{"negative lifetime", func(*testing.T) []byte { return good }, sensor, -time.Hour, "lifetime"},
		{"garbage", func(*testing.T) []byte { return []byte("hello, CA") }, sensor, time.Hour, "no PEM block"},
		{"empty", func(*testing.T) []byte { return nil }, sensor, time.Hour, "no PEM block"},
		{"DER without PEM", func(*testing.T) []byte { b, _ := pem.Decode(good); return b.Bytes }, sensor, time.Hour, "PEM"},
		{"two CSR blocks", func(*testing.T) []byte { return append(append([]byte(nil), good...), good...) }, sensor, time.Hour, "exactly one"},
		{"trailing garbage", func(*testing.T) []byte { return append(append([]byte(nil), good...), "junk"...) }, sensor, time.Hour, "unexpected data"},
		{"certificate instead of CSR", func(*testing.T) []byte { return ca.BundlePEM() }, sensor, time.Hour, "CERTIFICATE REQUEST"},
		{"corrupt DER in a CSR block", func(*testing.T) []byte {
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 0x02, 0x01}})
		}, sensor, time.Hour, "CSR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chainPEM, err := ca.SignCSR(tt.csr(t), tt.id, tt.ttl)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("SignCSR: %v", err)
				}
				leaf := parseChain(t, chainPEM)[0]
				if leaf.Subject.CommonName != "" {
					t.Errorf("the CSR's subject reached the certificate: %v", leaf.Subject)
				}
				return
			}
			if err == nil {
				t.Fatal("SignCSR signed a CSR it must refuse")
			}
			if chainPEM != nil {
				t.Error("SignCSR returned a chain with its error")
			}
			if !strings.HasPrefix(err.Error(), "identity: ") || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want it to start with %q and mention %q", err, "identity: ", tt.wantErr)
			}
		})
	}
}

// spliceCSR puts tbs (naming one key) together with the signature of
// another CSR, producing a well-formed CSR whose signature does not verify.
func spliceCSR(t *testing.T, tbs, signedDER []byte, signed *x509.CertificateRequest) []byte {
	t.Helper()
	var outer struct {
		Raw       asn1.RawContent
		TBS       asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}
	if _, err := asn1.Unmarshal(signedDER, &outer); err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		TBS       asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{asn1.RawValue{FullBytes: tbs}, outer.Algorithm, asn1.BitString{Bytes: signed.Signature, BitLength: 8 * len(signed.Signature)}})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want {
			return true
		}
	}
	return false
}

func TestNewKeyAndCSR(t *testing.T) {
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("key PEM type %v, want PRIVATE KEY (PKCS#8)", kb)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		t.Fatalf("key is %T, want ECDSA P-256", key)
	}
	cb, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if !ek.PublicKey.Equal(csr.PublicKey) {
		t.Error("CSR does not carry the generated key")
	}
	if len(csr.Extensions) != 0 || len(csr.URIs) != 0 || len(csr.Subject.Names) != 0 {
		t.Error("CSR requests more than a key")
	}
}

func TestSignCSRErrorsAreInvalidCSR(t *testing.T) {
	ca := newCA(t, td)
	id := sensor
	if _, err := ca.SignCSR([]byte("garbage"), id, time.Hour); !errors.Is(err, identity.ErrInvalidCSR) {
		t.Fatalf("garbage CSR: got %v, want ErrInvalidCSR", err)
	}
	_, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignCSR(csrPEM, id, time.Hour); err != nil {
		t.Fatalf("good CSR: %v", err)
	}
}
