package identity_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/identity"
)

func TestWriteAndLoadSVIDDir(t *testing.T) {
	ca := newCA(t, td)
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, err := ca.SignCSR(csrPEM, sensor, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "sensor-1")
	if err := identity.WriteSVIDDir(dir, chainPEM, keyPEM, ca.BundlePEM()); err != nil {
		t.Fatalf("WriteSVIDDir: %v", err)
	}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{"", 0o700}, {identity.SVIDKeyFile, 0o600}, {identity.SVIDFile, 0o644}, {identity.BundleFile, 0o644}} {
		info, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != f.mode {
			t.Errorf("%q mode = %#o, want %#o", f.name, got, f.mode)
		}
	}
	cfg, err := identity.LoadSVIDDir(dir)
	if err != nil {
		t.Fatalf("LoadSVIDDir: %v", err)
	}
	if cfg.MinVersion != 0x0303 {
		t.Errorf("MinVersion = %#x, want TLS 1.2", cfg.MinVersion)
	}
	if len(cfg.Certificates) != 1 || len(cfg.Certificates[0].Certificate) != 2 {
		t.Fatal("client config does not carry the SVID chain")
	}
	if _, err := cfg.Certificates[0].Leaf.Verify(x509.VerifyOptions{Roots: cfg.RootCAs, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("RootCAs do not hold the bundle: %v", err)
	}

	// Rewriting replaces the files atomically and leaves no temp files.
	chain2, key2 := mustIssue(t, ca, sensor)
	if err := identity.WriteSVIDDir(dir, chain2, key2, ca.BundlePEM()); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, identity.SVIDFile)); string(got) != string(chain2) {
		t.Error("svid.pem was not replaced")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("SVID dir holds %d entries, want 3", len(entries))
	}
}

func TestClientTLSConfigPEMAcceptsSEC1Key(t *testing.T) {
	ca := newCA(t, td)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	csr := makeCSR(t, key, nil)
	chainPEM, err := ca.SignCSR(csr, sensor, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// "EC PRIVATE KEY" is what `openssl ecparam -genkey` writes.
	if _, err := identity.ClientTLSConfigPEM(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), ca.BundlePEM()); err != nil {
		t.Errorf("SEC 1 key refused: %v", err)
	}
}

func TestLoadSVIDDirErrors(t *testing.T) {
	ca := newCA(t, td)
	chainPEM, keyPEM := mustIssue(t, ca, sensor)
	_, otherKey := mustIssue(t, ca, sensor)

	expiredTmpl := leafTemplate(sensor)
	expiredTmpl.NotBefore = time.Now().Add(-2 * time.Hour)
	expiredTmpl.NotAfter = time.Now().Add(-time.Hour)
	_, expired := signLeaf(t, expiredTmpl, ca.Certificate(), ca.SignerForTest())
	expiredChain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: expired.Leaf.Raw})
	expiredKeyDER, err := x509.MarshalPKCS8PrivateKey(expired.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	expiredKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: expiredKeyDER})

	leafOnly := chainPEM[:strings.Index(string(chainPEM), "-----END CERTIFICATE-----")+len("-----END CERTIFICATE-----\n")]

	tests := []struct {
		name                string
		chain, key, bundle  []byte
		missing             string
		wantFile, wantError string
	}{
		{"positive control", chainPEM, keyPEM, ca.BundlePEM(), "", "", ""},
		{"positive control, leaf only", leafOnly, keyPEM, ca.BundlePEM(), "", "", ""},
		{"missing svid.pem", chainPEM, keyPEM, ca.BundlePEM(), identity.SVIDFile, identity.SVIDFile, "no such file"},
		{"missing svid.key", chainPEM, keyPEM, ca.BundlePEM(), identity.SVIDKeyFile, identity.SVIDKeyFile, "no such file"},
		{"missing bundle.pem", chainPEM, keyPEM, ca.BundlePEM(), identity.BundleFile, identity.BundleFile, "no such file"},
		{"garbage svid.pem", []byte("garbage"), keyPEM, ca.BundlePEM(), "", identity.SVIDFile, "PEM"},
		{"key in svid.pem", keyPEM, keyPEM, ca.BundlePEM(), "", identity.SVIDFile, "CERTIFICATE"},
		{"garbage svid.key", chainPEM, []byte("garbage"), ca.BundlePEM(), "", identity.SVIDKeyFile, "PEM"},
		{"certificate in svid.key", chainPEM, chainPEM, ca.BundlePEM(), "", identity.SVIDKeyFile, "private key"},
		{"key of another SVID", chainPEM, otherKey, ca.BundlePEM(), "", identity.SVIDKeyFile, "does not match"},
		{"garbage bundle.pem", chainPEM, keyPEM, []byte("garbage"), "", identity.BundleFile, "PEM"},
		{"empty bundle.pem", chainPEM, keyPEM, []byte{}, "", identity.BundleFile, "PEM"},
		{"leaf in bundle.pem", chainPEM, keyPEM, leafOnly, "", identity.BundleFile, "not a CA"},
		{"expired SVID", expiredChain, expiredKey, ca.BundlePEM(), "", identity.SVIDFile, "expired"},
		{"CA certificate as SVID", ca.BundlePEM(), keyPEM, ca.BundlePEM(), "", identity.SVIDFile, "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range map[string][]byte{identity.SVIDFile: tt.chain, identity.SVIDKeyFile: tt.key, identity.BundleFile: tt.bundle} {
				if name != tt.missing {
					writeFile(t, filepath.Join(dir, name), data, 0o600)
				}
			}
			_, err := identity.LoadSVIDDir(dir)
			if tt.wantError == "" {
				if err != nil {
					t.Fatalf("LoadSVIDDir: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("LoadSVIDDir accepted a bad directory")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "identity: ") || !strings.Contains(msg, filepath.Join(dir, tt.wantFile)) || !strings.Contains(msg, tt.wantError) {
				t.Errorf("error %q, want it to name %s and mention %q", msg, tt.wantFile, tt.wantError)
			}
			if tt.missing == "" {
				// WriteSVIDDir refuses the same contents and writes nothing.
				out := filepath.Join(t.TempDir(), "out")
				if err := identity.WriteSVIDDir(out, tt.chain, tt.key, tt.bundle); err == nil {
					t.Error("WriteSVIDDir accepted it")
				}
				if _, err := os.Stat(out); !os.IsNotExist(err) {
					t.Error("WriteSVIDDir created the directory for contents it refused")
				}
			}
		})
	}
}
