package identity_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/identity"
)

// These tests check that what the package writes and serves works with
// OpenSSL, the library mosquitto clients use. They skip where the openssl
// command is not installed.

func openssl(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestOpenSSLMadeCSR(t *testing.T) {
	ca := newCA(t, td)
	dir := t.TempDir()
	if out, err := openssl(t, dir, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"); err != nil {
		t.Fatalf("openssl ecparam: %v\n%s", err, out)
	}
	// A subject is what plain `openssl req` insists on; it is ignored.
	if out, err := openssl(t, dir, "req", "-new", "-key", "key.pem", "-subj", "/CN=sensor-1", "-out", "plain.csr"); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	if out, err := openssl(t, dir, "req", "-new", "-key", "key.pem", "-subj", "/CN=sensor-1",
		"-addext", "subjectAltName=URI:spiffe://example.org/admin/dev", "-out", "escalate.csr"); err != nil {
		t.Fatalf("openssl req -addext: %v\n%s", err, out)
	}

	csr, err := os.ReadFile(filepath.Join(dir, "plain.csr"))
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, err := ca.SignCSR(csr, sensor, time.Hour)
	if err != nil {
		t.Fatalf("SignCSR refused an OpenSSL CSR: %v", err)
	}
	key, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteSVIDDir(filepath.Join(dir, "svid"), chainPEM, key, ca.BundlePEM()); err != nil {
		t.Fatalf("WriteSVIDDir with an OpenSSL key: %v", err)
	}
	out, err := openssl(t, dir, "verify", "-purpose", "sslclient", "-CAfile", "svid/bundle.pem", "svid/svid.pem")
	if err != nil || !strings.Contains(out, "OK") {
		t.Errorf("openssl verify: %v\n%s", err, out)
	}

	escalate, err := os.ReadFile(filepath.Join(dir, "escalate.csr"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignCSR(escalate, sensor, time.Hour); err == nil {
		t.Error("SignCSR signed an OpenSSL CSR that asks for another identity's URI SAN")
	}
}

func TestOpenSSLClientHandshake(t *testing.T) {
	ca := newCA(t, td)
	v := identity.NewVerifier(ca.Bundle())
	addr, results := serve(t, identity.ServerTLSConfig(serverCert(t, ca), v), v)

	dir := t.TempDir()
	chainPEM, keyPEM := mustIssue(t, ca, sensor)
	if err := identity.WriteSVIDDir(dir, chainPEM, keyPEM, ca.BundlePEM()); err != nil {
		t.Fatal(err)
	}
	if out, err := openssl(t, dir, "pkey", "-in", identity.SVIDKeyFile, "-noout"); err != nil {
		t.Fatalf("openssl cannot read the PKCS#8 key: %v\n%s", err, out)
	}

	base := []string{"s_client", "-connect", addr, "-CAfile", identity.BundleFile,
		"-verify_return_error", "-verify_hostname", "localhost", "-servername", "localhost"}
	tests := []struct {
		name string
		args []string
		ok   bool
	}{
		{"with the SVID", []string{"-cert", identity.SVIDFile, "-key", identity.SVIDKeyFile}, true},
		{"with the SVID over TLS 1.2", []string{"-tls1_2", "-cert", identity.SVIDFile, "-key", identity.SVIDKeyFile}, true},
		{"without a certificate", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := openssl(t, dir, append(append([]string(nil), base...), tt.args...)...)
			r := nextResult(t, results)
			if tt.ok {
				if r.err != nil || r.peerID != sensor {
					t.Fatalf("server: %v, peer %v\n%s", r.err, r.peerID, out)
				}
				if !strings.Contains(out, "Verify return code: 0 (ok)") {
					t.Errorf("openssl did not verify the gateway's certificate:\n%s", out)
				}
				return
			}
			if r.err == nil {
				t.Fatalf("server accepted an OpenSSL client without a certificate\n%s", out)
			}
		})
	}
}
