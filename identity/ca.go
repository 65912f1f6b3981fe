package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CAValidity is how long a newly created built-in CA is valid.
const CAValidity = 10 * 365 * 24 * time.Hour

// clockSkew backdates NotBefore so that a peer whose clock runs slightly
// behind still accepts a certificate issued a moment ago.
const clockSkew = time.Minute

// NotBeforeBackdate is how far before the moment of signing the CA sets an
// SVID's NotBefore: the lifetime it was signed for is NotAfter - NotBefore -
// NotBeforeBackdate, which a renewal asks for again.
const NotBeforeBackdate = clockSkew

// CA is the built-in certificate authority (ECDSA P-256) of one trust domain.
// It is safe for concurrent use.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// LoadOrCreateCA loads DIR/ca.pem and DIR/ca.key, creating them (key 0600) on first use.
//
// A CA that exists but cannot be used (a damaged or mismatched file, a key
// readable by others, a certificate for another trust domain, an expired CA,
// only one of the two files) is an error: silently minting a new CA would cut
// off every enrolled device.
func LoadOrCreateCA(dir string, td spiffeid.TrustDomain) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("identity: CA needs a trust domain")
	}
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)
	certExists, err := fileExists(certPath)
	if err != nil {
		return nil, err
	}
	keyExists, err := fileExists(keyPath)
	if err != nil {
		return nil, err
	}
	switch {
	case certExists && keyExists:
		return loadCA(certPath, keyPath, td)
	case certExists:
		return nil, fmt.Errorf("identity: CA certificate %s exists but its key %s is missing", certPath, keyPath)
	case keyExists:
		return nil, fmt.Errorf("identity: CA key %s exists but its certificate %s is missing", keyPath, certPath)
	}
	return createCA(dir, certPath, keyPath, td)
}

func fileExists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("identity: %w", err)
	}
}

func createCA(dir, certPath, keyPath string, td spiffeid.TrustDomain) (*CA, error) {
	if err := makePrivateDir(dir); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generating CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"ztgate"},
			CommonName:   "ztgate CA " + td.Name(),
		},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Leaves only: the built-in CA never delegates to intermediates.
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: creating CA certificate: %w", err)
	}
	keyPEM, err := encodePrivateKeyPEM(key)
	if err != nil {
		return nil, err
	}
	// Key first: a crash between the two writes leaves a key without a
	// certificate, which the next start reports instead of overwriting.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certPath, encodeCertificatesPEM(cert), 0o644); err != nil {
		return nil, err
	}
	return &CA{td: td, cert: cert, key: key}, nil
}

func loadCA(certPath, keyPath string, td spiffeid.TrustDomain) (*CA, error) {
	info, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("identity: CA key: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("identity: CA key %s is not a regular file", keyPath)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity: CA key %s has mode %#o; it must be readable by its owner only (chmod 600)", keyPath, info.Mode().Perm())
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("identity: CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("identity: CA key: %w", err)
	}
	certs, err := parseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: CA certificate %s: %w", certPath, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("identity: CA certificate %s: holds %d certificates, want 1", certPath, len(certs))
	}
	cert := certs[0]
	signer, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: CA key %s: %w", keyPath, err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("identity: CA key %s: not an ECDSA P-256 key", keyPath)
	}
	if err := checkCACert(cert, key, td); err != nil {
		return nil, fmt.Errorf("identity: CA certificate %s: %w", certPath, err)
	}
	return &CA{td: td, cert: cert, key: key}, nil
}

func checkCACert(cert *x509.Certificate, key *ecdsa.PrivateKey, td spiffeid.TrustDomain) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return errors.New("not a CA certificate")
	case cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return errors.New("lacks the keyCertSign key usage")
	case !key.PublicKey.Equal(cert.PublicKey):
		return fmt.Errorf("does not match the key in %s", CAKeyFile)
	case len(cert.URIs) != 1 || cert.URIs[0].String() != td.IDString():
		return fmt.Errorf("is not the CA of trust domain %q (URI SANs %v)", td, cert.URIs)
	case time.Now().After(cert.NotAfter):
		return fmt.Errorf("expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert.CheckSignatureFrom(cert)
}

// TrustDomain is the trust domain the CA issues SVIDs for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate is the CA's self-signed certificate. Callers must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Bundle is a new X.509 bundle of the trust domain holding the CA certificate.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// GetX509BundleForTrustDomain makes the CA an x509bundle.Source: td's bundle
// is a new bundle holding the CA certificate; any other trust domain is an
// error.
func (ca *CA) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != ca.td {
		return nil, fmt.Errorf("identity: the built-in CA holds no bundle for trust domain %q", td)
	}
	return ca.Bundle(), nil
}

// BundlePEM is the CA certificate in PEM: the bundle.pem clients trust.
func (ca *CA) BundlePEM() []byte { return encodeCertificatesPEM(ca.cert) }

// SignCSR validates a PEM CSR (signature, requests nothing beyond a key) and
// returns a PEM chain (leaf X.509-SVID for id, then the CA).
//
// The CSR must hold exactly one CERTIFICATE REQUEST block, be signed by its
// own key, carry an acceptable key (ECDSA P-256/P-384, RSA of 2048 bits or
// more, Ed25519) and request no SANs and no extensions: everything in the
// certificate is decided here. The CSR's subject name is ignored, since
// tools such as OpenSSL insist on writing one. ttl is clamped to the CA's
// own expiry.
func (ca *CA) SignCSR(csrPEM []byte, id spiffeid.ID, ttl time.Duration) ([]byte, error) {
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, invalidCSRError{err}
	}
	leaf, err := ca.issue(csr.PublicKey, id, nil, nil, ttl)
	if err != nil {
		return nil, err
	}
	return encodeCertificatesPEM(leaf, ca.cert), nil
}

// IssueServerCert makes a key and a serving certificate with id as URI SAN plus DNS/IP SANs.
//
// The DNS and IP SANs let standard MQTT clients (mosquitto_pub, paho, MQTTX)
// verify the gateway by host name; the URI SAN keeps it a valid X.509-SVID.
func (ca *CA) IssueServerCert(id spiffeid.ID, dns []string, ips []net.IP, ttl time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("identity: generating key: %w", err)
	}
	for _, name := range dns {
		if name == "" {
			return tls.Certificate{}, errors.New("identity: empty DNS name")
		}
	}
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return tls.Certificate{}, fmt.Errorf("identity: invalid IP address %v", ip)
		}
	}
	leaf, err := ca.issue(key.Public(), id, dns, ips, ttl)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, ca.cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// IssueSVID makes a key and a client X.509-SVID for id; PEM cert chain and PEM key.
// The key is PKCS#8, which Go, OpenSSL and mosquitto all read.
func (ca *CA) IssueSVID(id spiffeid.ID, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: generating key: %w", err)
	}
	leaf, err := ca.issue(key.Public(), id, nil, nil, ttl)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodePrivateKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCertificatesPEM(leaf, ca.cert), keyPEM, nil
}

// issue signs a leaf X.509-SVID for pub. Nothing of the request reaches the
// certificate but the key: the ID, SANs, usages and lifetime are ours.
func (ca *CA) issue(pub crypto.PublicKey, id spiffeid.ID, dns []string, ips []net.IP, ttl time.Duration) (*x509.Certificate, error) {
	if err := checkPublicKey(pub); err != nil {
		return nil, err
	}
	if err := checkID(id); err != nil {
		return nil, err
	}
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("identity: %s is not in trust domain %q", id, ca.td)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("identity: SVID lifetime must be positive, got %s", ttl)
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("identity: CA expired at %s", ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		// TLS 1.2 RSA key transport needs it; ECDSA and Ed25519 keys only sign.
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"ztgate"}},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dns,
		IPAddresses:           ips,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: signing certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: signing certificate: %w", err)
	}
	// What we issue must pass our own verification; anything else is a bug
	// that should surface here rather than at a peer.
	if _, _, err := x509svid.Verify([]*x509.Certificate{leaf, ca.cert}, ca.Bundle()); err != nil {
		return nil, fmt.Errorf("identity: issued certificate fails verification: %w", err)
	}
	if err := checkLeaf(leaf, id); err != nil {
		return nil, fmt.Errorf("identity: issued certificate fails verification: %w", err)
	}
	return leaf, nil
}

// newSerial returns a random serial number in [1, 2^128).
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	limit.Sub(limit, big.NewInt(1))
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("identity: generating serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
