package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

const (
	pemCertificate = "CERTIFICATE"
	pemCSR         = "CERTIFICATE REQUEST"
	pemPKCS8       = "PRIVATE KEY"
	pemECKey       = "EC PRIVATE KEY"
	pemRSAKey      = "RSA PRIVATE KEY"
)

// pemBlocks splits data into PEM blocks, refusing anything between or after
// them other than whitespace: a file with stray bytes is damaged, and
// silently skipping them would hide that.
func pemBlocks(data []byte) ([]*pem.Block, error) {
	var blocks []*pem.Block
	rest := data
	for {
		if len(bytes.TrimSpace(rest)) == 0 {
			break
		}
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(blocks) == 0 {
				return nil, errors.New("no PEM block found")
			}
			return nil, errors.New("unexpected data after the last PEM block")
		}
		if len(b.Headers) != 0 {
			return nil, fmt.Errorf("PEM block %q has headers (encrypted keys are not supported)", b.Type)
		}
		blocks = append(blocks, b)
	}
	if len(blocks) == 0 {
		return nil, errors.New("no PEM block found")
	}
	return blocks, nil
}

// parseCertificatesPEM parses one or more CERTIFICATE blocks and nothing else.
func parseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	blocks, err := pemBlocks(data)
	if err != nil {
		return nil, err
	}
	certs := make([]*x509.Certificate, 0, len(blocks))
	for i, b := range blocks {
		if b.Type != pemCertificate {
			return nil, fmt.Errorf("PEM block %d is %q, want %q", i+1, b.Type, pemCertificate)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", i+1, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// ParseBundlePEM parses a trust bundle: CERTIFICATE blocks, at least one,
// each a CA certificate. A bundle that holds no authority would trust
// nobody, and a leaf in it would be a trust anchor that is no CA: both are
// errors, never a bundle.
func ParseBundlePEM(data []byte) ([]*x509.Certificate, error) {
	certs, err := parseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("no CA certificate read (want CERTIFICATE blocks only): %w", err)
	}
	for i, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("certificate %d (%s) is not a CA certificate", i+1, c.Subject)
		}
	}
	return certs, nil
}

// parsePrivateKeyPEM parses exactly one private key block: PKCS#8 (what
// ztgate writes) or the SEC 1 / PKCS#1 forms OpenSSL tools still produce.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	blocks, err := pemBlocks(data)
	if err != nil {
		return nil, err
	}
	if len(blocks) != 1 {
		return nil, fmt.Errorf("found %d PEM blocks, want exactly one private key", len(blocks))
	}
	b := blocks[0]
	var key any
	switch b.Type {
	case pemPKCS8:
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case pemECKey:
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case pemRSAKey:
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want %q", b.Type, pemPKCS8)
	}
	if err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
}

func encodeCertificatesPEM(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: pemCertificate, Bytes: c.Raw})
	}
	return buf.Bytes()
}

func encodePrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("identity: encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPKCS8, Bytes: der}), nil
}
