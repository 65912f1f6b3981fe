package testpki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// ServingTemplate is a serving X.509-SVID template for id as an operator's
// CA or SPIRE would issue it to the gateway: the SPIFFE ID plus the names
// MQTT clients check (localhost, 127.0.0.1, ::1), server and client auth.
func ServingTemplate(t testing.TB, id string) *x509.Certificate {
	t.Helper()
	tmpl := LeafTemplate(t, id)
	tmpl.DNSNames = []string{"localhost"}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return tmpl
}

// BundlePEM is the certificates of cas in PEM, one trust bundle file.
func BundlePEM(cas ...*CA) []byte {
	var b bytes.Buffer
	for _, ca := range cas {
		b.Write(ca.BundlePEM())
	}
	return b.Bytes()
}

// CertPEM is cert's chain and its key (PKCS#8) in PEM.
func CertPEM(t testing.TB, cert tls.Certificate) (chainPEM, keyPEM []byte) {
	t.Helper()
	var chain bytes.Buffer
	for _, der := range cert.Certificate {
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatalf("testpki: marshal key: %v", err)
	}
	return chain.Bytes(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteAtomic replaces path with data the way PKI tools do: a temporary
// file in the same directory renamed over it, so a reader never sees half
// a file.
func WriteAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o600)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		t.Fatalf("testpki: write %s: %v", path, err)
	}
}
