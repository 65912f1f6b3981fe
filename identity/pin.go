package identity

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// CA pinning is how a device makes its first contact with the API, when it
// holds a bootstrap token but no trust bundle yet (kubeadm's
// discovery-token-ca-cert-hash): the operator hands it the SHA-256 of the
// CA's public key along with the token, and the device trusts the one CA in
// the server's chain whose key hashes to that pin, and nothing else. Hashing
// the SubjectPublicKeyInfo rather than the whole certificate keeps the pin
// valid when the CA certificate is re-issued for the same key.

// pinPrefix names the hash of a pin, so that another hash can be added
// without ambiguity.
const pinPrefix = "sha256:"

// ErrPinMismatch is returned (wrapped) when no CA certificate in a server's
// chain has the pinned public key.
var ErrPinMismatch = errors.New("identity: no CA certificate in the server's chain matches the pin")

// CAPin returns the pin of a CA certificate: "sha256:" and the lower-case
// hex SHA-256 of its DER SubjectPublicKeyInfo.
func CAPin(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return pinPrefix + hex.EncodeToString(sum[:])
}

// parsePin returns the hash of a pin of CAPin's form (hex digits in either
// case).
func parsePin(pin string) ([]byte, error) {
	hexSum, ok := strings.CutPrefix(pin, pinPrefix)
	if !ok {
		return nil, fmt.Errorf("identity: CA pin must start with %q", pinPrefix)
	}
	sum, err := hex.DecodeString(hexSum)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("identity: CA pin must be %q followed by %d hex digits", pinPrefix, 2*sha256.Size)
	}
	return sum, nil
}

// VerifyPin checks a server's chain (leaf first, as presented in the TLS
// handshake) against a CA pin: a CA certificate in the chain must have the
// pinned public key, and the leaf must verify against that CA alone for
// server authentication, at the current time.
//
// host is the name or IP address the client dialled; when set, the leaf must
// be valid for it. An empty host (Go sends no SNI for an IP address, so a
// VerifyConnection callback does not learn it) still requires the leaf to
// carry a DNS or IP SAN. That is the shape of a serving certificate: the
// CA signs SVIDs from CSRs that may not request SANs, so a device holding
// an SVID of the same CA cannot pose as the server and collect the tokens of
// devices that enroll after it.
//
// A CA certificate that does not match the pin is never trusted, even when
// it is in the chain: a chain with the pinned CA appended to a leaf signed
// by another key fails.
func VerifyPin(pin string, chain []*x509.Certificate, host string) error {
	want, err := parsePin(pin)
	if err != nil {
		return err
	}
	if len(chain) == 0 {
		return errors.New("identity: the server presented no certificate")
	}
	for _, c := range chain {
		if c == nil {
			return errors.New("identity: nil certificate in the server's chain")
		}
	}
	roots := x509.NewCertPool()
	intermediates := x509.NewCertPool()
	pinned := false
	for _, c := range chain[1:] {
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		// The pin and the chain are both public: no need for a
		// constant-time comparison.
		if bytes.Equal(sum[:], want) && c.BasicConstraintsValid && c.IsCA {
			roots.AddCert(c)
			pinned = true
			continue
		}
		intermediates.AddCert(c)
	}
	if !pinned {
		return ErrPinMismatch
	}
	leaf := chain[0]
	if host == "" && len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 {
		return fmt.Errorf("identity: the server's certificate carries no DNS or IP name; it is not a serving certificate")
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		DNSName:       host,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		CurrentTime:   time.Now(),
	})
	if err != nil {
		return fmt.Errorf("identity: server certificate does not verify against the pinned CA: %w", err)
	}
	return nil
}

// PinnedClientTLSConfig is the client config of a device's first contact
// with the API: it trusts the CA whose public key matches pin and nothing
// else (neither the system roots nor any other CA in the server's chain).
// It presents no client certificate.
//
// InsecureSkipVerify is set, and that is safe here: it turns off only
// crypto/tls's own verification against RootCAs, which a device cannot do
// before it has a trust bundle. Verification is replaced, not skipped:
// crypto/tls still checks that the server holds the leaf's key, and
// VerifyConnection, which it calls on every handshake (resumed ones
// included) before any application data is sent, fails the handshake
// unless VerifyPin accepts the chain, for the name dialled when the client
// sent one (SNI) and the serving-certificate shape otherwise. Do not clear
// VerifyConnection on a copy of this config.
//
// Dial the API by host name (https://localhost:8443 rather than
// https://127.0.0.1:8443) to have the name checked as well.
func PinnedClientTLSConfig(pin string) (*tls.Config, error) {
	if _, err := parsePin(pin); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		CipherSuites:       tls12CipherSuites,
		InsecureSkipVerify: true, // replaced by VerifyConnection; see above
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyPin(pin, cs.PeerCertificates, cs.ServerName)
		},
	}, nil
}
