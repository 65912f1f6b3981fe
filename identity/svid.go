package identity

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// LoadSVIDDir reads DIR/svid.pem, DIR/svid.key and DIR/bundle.pem into a
// client TLS config that trusts the bundle.
//
// The server is verified by crypto/tls against the bundle and the host name
// dialled, which the gateway's certificate carries as DNS/IP SANs.
func LoadSVIDDir(dir string) (*tls.Config, error) {
	files, err := readSVIDDir(dir)
	if err != nil {
		return nil, err
	}
	cert, roots, err := parseSVIDFiles(dir, files)
	if err != nil {
		return nil, err
	}
	return clientTLSConfig(cert, roots), nil
}

// ClientTLSConfigPEM is LoadSVIDDir for contents already in memory: an SVID
// chain (leaf first), its private key and the bundle that signs the server.
func ClientTLSConfigPEM(chainPEM, keyPEM, bundlePEM []byte) (*tls.Config, error) {
	cert, roots, err := parseSVIDFiles("", svidFiles{chain: chainPEM, key: keyPEM, bundle: bundlePEM})
	if err != nil {
		return nil, err
	}
	return clientTLSConfig(cert, roots), nil
}

// WriteSVIDDir writes DIR/svid.pem, DIR/svid.key (0600) and DIR/bundle.pem,
// creating DIR with mode 0700 when missing. The contents are checked first
// (as LoadSVIDDir would) so a directory is never left holding an SVID that
// cannot be used; each file is replaced atomically.
func WriteSVIDDir(dir string, chainPEM, keyPEM, bundlePEM []byte) error {
	files := svidFiles{chain: chainPEM, key: keyPEM, bundle: bundlePEM}
	if _, _, err := parseSVIDFiles("", files); err != nil {
		return err
	}
	if err := makePrivateDir(dir); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, SVIDKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, SVIDFile), chainPEM, 0o644); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, BundleFile), bundlePEM, 0o644)
}

type svidFiles struct {
	chain, key, bundle []byte
}

func readSVIDDir(dir string) (svidFiles, error) {
	var f svidFiles
	for _, x := range []struct {
		name string
		dst  *[]byte
	}{
		{SVIDFile, &f.chain},
		{SVIDKeyFile, &f.key},
		{BundleFile, &f.bundle},
	} {
		b, err := os.ReadFile(filepath.Join(dir, x.name))
		if err != nil {
			return svidFiles{}, fmt.Errorf("identity: %w", err)
		}
		*x.dst = b
	}
	return f, nil
}

// parseSVIDFiles checks the three parts of an SVID directory; dir only
// names the files in errors.
func parseSVIDFiles(dir string, f svidFiles) (tls.Certificate, *x509.CertPool, error) {
	name := func(file string) string {
		if dir == "" {
			return file
		}
		return filepath.Join(dir, file)
	}
	chain, err := parseCertificatesPEM(f.chain)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("identity: %s: %w", name(SVIDFile), err)
	}
	key, err := parsePrivateKeyPEM(f.key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("identity: %s: %w", name(SVIDKeyFile), err)
	}
	// go-spiffe checks the SVID shape (one SPIFFE URI SAN, non-root path,
	// leaf usages, CA signers) and that the key belongs to the leaf.
	if _, err := x509svid.ParseRaw(concatRaw(chain), mustPKCS8(key)); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("identity: %s and %s: %w", name(SVIDFile), name(SVIDKeyFile), err)
	}
	leaf := chain[0]
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return tls.Certificate{}, nil, fmt.Errorf("identity: %s: expired at %s", name(SVIDFile), leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return tls.Certificate{}, nil, fmt.Errorf("identity: %s: not valid before %s", name(SVIDFile), leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	roots, err := ParseBundlePEM(f.bundle)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("identity: %s: %w", name(BundleFile), err)
	}
	pool := x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	return tls.Certificate{Certificate: raw, PrivateKey: key, Leaf: leaf}, pool, nil
}

func clientTLSConfig(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: tls12CipherSuites,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
	}
}

func concatRaw(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		buf.Write(c.Raw)
	}
	return buf.Bytes()
}

// mustPKCS8 re-encodes a key parsePrivateKeyPEM accepted; it cannot fail
// for those key types, and a nil result fails go-spiffe's parse closed.
func mustPKCS8(key crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil
	}
	return der
}
