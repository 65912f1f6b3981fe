package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ztgate/ztgate/internal/atomicfile"
)

const (
	// pendingKeyFile holds, in the --out directory, the key of a bootstrap
	// enrollment from before its token is sent until its SVID is written.
	pendingKeyFile = "enroll.key"
	// tokenIDHeader names, in the pending key's PEM block, the token it
	// was sent with: a key is reused only for the same token.
	tokenIDHeader = "Token-Id"
)

// enrollKey is the key of one bootstrap enrollment and a CSR for it.
type enrollKey struct {
	keyPEM, csrPEM []byte
	path           string // the pending key file; "" when none is kept
	reused         bool   // it is the key of an earlier attempt with the token
}

// enrollmentKey returns the key to enroll with the token tokenID: the one
// kept in out by an earlier attempt with the same token, or a new one,
// kept in out (crash-safely: synced, then renamed into place) before the
// caller sends anything. The API binds a redeemed token to the key of its
// CSR; the kept key is what lets a device whose answer was lost enroll by
// running the same command again. A malformed token (no ID) will be
// refused, so its key is not kept.
func enrollmentKey(out, tokenID string) (*enrollKey, error) {
	path := filepath.Join(out, pendingKeyFile)
	if tokenID == "" {
		return newEnrollKey("", "")
	}
	k, err := loadEnrollKey(path, tokenID)
	if err != nil || k != nil {
		return k, err
	}
	return newEnrollKey(path, tokenID)
}

// loadEnrollKey returns the key kept at path for tokenID, nil when there is
// none for that token (a key kept for another token is replaced).
func loadEnrollKey(path, tokenID string) (*enrollKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the kept key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" || block.Headers[tokenIDHeader] != tokenID {
		return nil, nil
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil
	}
	k, err := keyWithCSR(signer, block.Bytes)
	if err != nil {
		return nil, err
	}
	k.path, k.reused = path, true
	return k, nil
}

// newEnrollKey makes an ECDSA P-256 key and, when path is set, keeps it
// there for tokenID before returning it.
func newEnrollKey(path, tokenID string) (*enrollKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	k, err := keyWithCSR(key, der)
	if err != nil {
		return nil, err
	}
	if path == "" {
		return k, nil
	}
	kept := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{tokenIDHeader: tokenID}, Bytes: der})
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	// Synced and renamed into place: after a crash the kept key is whole
	// or absent, never a part that a retry would choke on.
	if err := atomicfile.WriteFile(path, kept, 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	k.path = path
	return k, nil
}

func keyWithCSR(key crypto.Signer, pkcs8 []byte) (*enrollKey, error) {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("creating the CSR: %w", err)
	}
	return &enrollKey{
		keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		csrPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}),
	}, nil
}

// done drops the kept key once the SVID (and its key) is written. A key
// left behind by a failed removal only makes a later run with the same
// token retry with it, which is harmless.
func (k *enrollKey) done() {
	if k.path != "" {
		_ = os.Remove(k.path)
	}
}
