package identity_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

func TestLoadOrCreateCACreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "ca")
	ca, err := identity.LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatalf("LoadOrCreateCA: %v", err)
	}
	if ca.TrustDomain() != td {
		t.Errorf("TrustDomain = %q, want %q", ca.TrustDomain(), td)
	}
	cert := ca.Certificate()
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate is not a signing CA: IsCA=%v usage=%v", cert.IsCA, cert.KeyUsage)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("CA URI SANs = %v, want [spiffe://example.org]", cert.URIs)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", cert.PublicKey)
	}
	if life := time.Until(cert.NotAfter); life < 9*365*24*time.Hour {
		t.Errorf("CA valid for %s, want about ten years", life)
	}

	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{dir, 0o700},
		{filepath.Join(dir, identity.CAKeyFile), 0o600},
	} {
		info, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != f.mode {
			t.Errorf("%s mode = %#o, want %#o", f.path, got, f.mode)
		}
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, identity.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, ca.BundlePEM()) {
		t.Error("ca.pem differs from BundlePEM")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("CA dir holds %d entries, want exactly ca.pem and ca.key (no temp files)", len(entries))
	}
	if b := ca.Bundle(); b.TrustDomain() != td || !b.HasX509Authority(cert) {
		t.Error("Bundle does not hold the CA certificate for the trust domain")
	}
}

func TestLoadOrCreateCAReloads(t *testing.T) {
	dir := t.TempDir()
	first, err := identity.LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, _, err := first.IssueSVID(sensor, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	second, err := identity.LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !second.Certificate().Equal(first.Certificate()) {
		t.Fatal("reload produced a different CA certificate")
	}
	// An SVID from before the restart still verifies, and the reloaded key
	// still signs SVIDs the old bundle accepts.
	v := identity.NewVerifier(second.Bundle())
	if _, err := v.Verify(parseChain(t, chainPEM)); err != nil {
		t.Errorf("SVID issued before reload: %v", err)
	}
	chain2, _, err := second.IssueSVID(sensor, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.NewVerifier(first.Bundle()).Verify(parseChain(t, chain2)); err != nil {
		t.Errorf("SVID issued after reload: %v", err)
	}
}

func TestLoadOrCreateCARefusesUnusableFiles(t *testing.T) {
	otherDir := t.TempDir()
	if _, err := identity.LoadOrCreateCA(otherDir, td); err != nil {
		t.Fatal(err)
	}
	otherKey, err := os.ReadFile(filepath.Join(otherDir, identity.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := os.ReadFile(filepath.Join(otherDir, identity.CACertFile))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		trust   spiffeid.TrustDomain
		damage  func(t *testing.T, dir string)
		wantErr string
	}{
		{"positive control", td, func(*testing.T, string) {}, ""},
		{"corrupt certificate", td, func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, identity.CACertFile), []byte("not a certificate\n"), 0o644)
		}, "ca.pem"},
		{"truncated certificate", td, func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, identity.CACertFile))
			writeFile(t, filepath.Join(dir, identity.CACertFile), b[:len(b)/2], 0o644)
		}, "ca.pem"},
		{"corrupt key", td, func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, identity.CAKeyFile), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
		}, "ca.key"},
		{"key of another CA", td, func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, identity.CAKeyFile), otherKey, 0o600)
		}, "does not match"},
		{"certificate of another CA", td, func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, identity.CACertFile), otherCert, 0o644)
		}, "does not match"},
		{"other trust domain", otherTD, func(*testing.T, string) {}, "trust domain"},
		{"key readable by others", td, func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, identity.CAKeyFile), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "chmod 600"},
		{"certificate missing", td, func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, identity.CACertFile)); err != nil {
				t.Fatal(err)
			}
		}, "missing"},
		{"key missing", td, func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, identity.CAKeyFile)); err != nil {
				t.Fatal(err)
			}
		}, "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := identity.LoadOrCreateCA(dir, td); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, dir)
			before := snapshot(t, dir)
			ca, err := identity.LoadOrCreateCA(dir, tt.trust)
			if tt.wantErr == "" {
				if err != nil || ca == nil {
					t.Fatalf("LoadOrCreateCA: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("LoadOrCreateCA accepted an unusable CA directory")
			}
			if !strings.HasPrefix(err.Error(), "identity: ") || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want it to start with %q and mention %q", err, "identity: ", tt.wantErr)
			}
			if after := snapshot(t, dir); after != before {
				t.Error("a failed load changed the CA directory (silent regeneration)")
			}
		})
	}
}

func TestLoadOrCreateCARefusesZeroTrustDomain(t *testing.T) {
	if _, err := identity.LoadOrCreateCA(t.TempDir(), spiffeid.TrustDomain{}); err == nil {
		t.Fatal("accepted an empty trust domain")
	}
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// snapshot renders a directory's names, modes and contents.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b.WriteString(e.Name() + " " + info.Mode().String() + "\n" + string(data) + "\n")
	}
	return b.String()
}

func parseChain(t *testing.T, chainPEM []byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	rest := chainPEM
	for {
		var der []byte
		der, rest = nextPEM(rest)
		if der == nil {
			break
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		t.Fatal("no certificates in chain PEM")
	}
	return certs
}
