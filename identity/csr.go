package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// RSA keys beyond this size only cost CPU on every handshake.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// NewKeyAndCSR makes an ECDSA P-256 key and a CSR for it that requests
// nothing but the key, as SignCSR expects. Both are PEM; the key is PKCS#8.
func NewKeyAndCSR() (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: generating key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: creating CSR: %w", err)
	}
	keyPEM, err = encodePrivateKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der}), nil
}

// ErrInvalidCSR is matched (errors.Is) by every SignCSR error that is the
// CSR's fault rather than the CA's, so callers can tell bad input from an
// internal failure.
var ErrInvalidCSR = errors.New("identity: invalid CSR")

type invalidCSRError struct{ err error }

func (e invalidCSRError) Error() string        { return e.err.Error() }
func (e invalidCSRError) Unwrap() error        { return e.err }
func (e invalidCSRError) Is(target error) bool { return target == ErrInvalidCSR }

// parseCSR parses exactly one CERTIFICATE REQUEST block and refuses a CSR
// that is not signed by its own key, carries a weak key, or asks for
// anything besides that key.
func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	blocks, err := pemBlocks(csrPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: CSR: %w", err)
	}
	if len(blocks) != 1 {
		return nil, fmt.Errorf("identity: CSR: found %d PEM blocks, want exactly one %q", len(blocks), pemCSR)
	}
	if blocks[0].Type != pemCSR {
		return nil, fmt.Errorf("identity: CSR: PEM block is %q, want %q", blocks[0].Type, pemCSR)
	}
	csr, err := x509.ParseCertificateRequest(blocks[0].Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("identity: CSR: bad signature: %w", err)
	}
	switch {
	case len(csr.URIs) != 0:
		return nil, errors.New("identity: CSR: must not request URI SANs (the SPIFFE ID is assigned by the CA)")
	case len(csr.DNSNames) != 0, len(csr.EmailAddresses) != 0, len(csr.IPAddresses) != 0:
		return nil, errors.New("identity: CSR: must not request subject alternative names")
	case len(csr.Extensions) != 0:
		return nil, fmt.Errorf("identity: CSR: must not request extensions (found %d)", len(csr.Extensions))
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("identity: CSR: %w", err)
	}
	return csr, nil
}

// checkPublicKey accepts the key types and sizes ztgate issues for.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("identity: ECDSA key on curve %s refused (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("identity: %d-bit RSA key refused (want %d to %d bits)", bits, minRSABits, maxRSABits)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("identity: malformed Ed25519 key")
		}
	default:
		return fmt.Errorf("identity: key type %T refused", pub)
	}
	return nil
}

// CheckCSR applies SignCSR's checks to a PEM CSR without signing anything,
// so a caller can refuse a bad CSR before it spends something that cannot
// be undone (a one-time bootstrap token). Errors match ErrInvalidCSR.
func CheckCSR(csrPEM []byte) error {
	if _, err := parseCSR(csrPEM); err != nil {
		return invalidCSRError{err}
	}
	return nil
}
