package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/testpki"
)

func TestRenewalTime(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name                string
		notBefore, notAfter time.Time
		obtained            time.Time
		jitter              float64
		want                time.Time
	}{
		{name: "half-life", notBefore: t0, notAfter: t0.Add(24 * time.Hour), obtained: t0,
			want: t0.Add(12 * time.Hour)},
		{name: "obtained before NotBefore counts from NotBefore", notBefore: t0, notAfter: t0.Add(24 * time.Hour),
			obtained: t0.Add(-time.Hour), want: t0.Add(12 * time.Hour)},
		// ztgate's CA backdates NotBefore by a minute: a 6 s SVID is
		// renewed 3 s after it arrives, not at once.
		{name: "backdated NotBefore", notBefore: t0.Add(-time.Minute), notAfter: t0.Add(6 * time.Second),
			obtained: t0, want: t0.Add(3 * time.Second)},
		{name: "largest jitter is a tenth of the half earlier", notBefore: t0, notAfter: t0.Add(20 * time.Hour),
			obtained: t0, jitter: 0.999999999, want: t0.Add(9 * time.Hour)},
		{name: "obtained after expiry: at once", notBefore: t0, notAfter: t0.Add(time.Hour),
			obtained: t0.Add(2 * time.Hour), want: t0.Add(2 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := renewalTime(tt.notBefore, tt.notAfter, tt.obtained, tt.jitter)
			if d := got.Sub(tt.want); d < -time.Millisecond || d > time.Millisecond {
				t.Fatalf("renewalTime = %s, want %s", got, tt.want)
			}
		})
	}
	// Whatever the jitter, a renewal is scheduled before expiry and not
	// before the SVID arrived.
	for _, j := range []float64{0, 0.25, 0.5, 0.999} {
		got := renewalTime(t0.Add(-time.Minute), t0.Add(4*time.Second), t0, j)
		if !got.After(t0) || !got.Before(t0.Add(4*time.Second)) {
			t.Errorf("jitter %v: renewal at %s, outside the SVID's remaining life", j, got)
		}
	}
}

func TestRetryDelay(t *testing.T) {
	tests := []struct {
		name          string
		backoff, left time.Duration
		jitter        float64
		want          time.Duration
	}{
		{name: "backoff", backoff: 8 * time.Second, left: time.Hour, want: 8 * time.Second},
		{name: "jitter shortens by up to a fifth", backoff: 10 * time.Second, left: time.Hour, jitter: 0.5, want: 9 * time.Second},
		{name: "at most half the life left", backoff: 5 * time.Minute, left: 4 * time.Minute, want: 2 * time.Minute},
		{name: "never below the minimum", backoff: 5 * time.Minute, left: 500 * time.Millisecond, want: minRetry},
		{name: "expired: plain backoff", backoff: 16 * time.Second, left: -time.Minute, want: 16 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retryDelay(tt.backoff, tt.left, tt.jitter); got != tt.want {
				t.Fatalf("retryDelay(%s, %s, %v) = %s, want %s", tt.backoff, tt.left, tt.jitter, got, tt.want)
			}
		})
	}
}

func TestParseAPIURL(t *testing.T) {
	for _, ok := range []string{"https://localhost:8443", "https://localhost:8443/", "https://gw.example.org"} {
		if _, err := parseAPIURL(ok); err != nil {
			t.Errorf("parseAPIURL(%q) = %v, want nil", ok, err)
		}
	}
	// Renewal sends the SVID's CSR and trusts the answer only over TLS
	// to the named host; nothing else is accepted.
	for _, bad := range []string{"http://localhost:8443", "localhost:8443", "https://", "https://h/v1",
		"https://u:p@h", "https://h?x=1", "ftp://h", "::"} {
		if _, err := parseAPIURL(bad); err == nil {
			t.Errorf("parseAPIURL(%q) = nil, want an error", bad)
		}
	}
}

// testCA is a throwaway CA for tests that need no gateway.
type testCA struct {
	t    *testing.T
	key  crypto.Signer
	cert *x509.Certificate
}

func newTestCA(t *testing.T, td string) *testCA {
	t.Helper()
	ca := testpki.NewCA(t, td)
	return &testCA{t: t, key: ca.Key, cert: ca.Cert}
}

// issue returns the PEM chain (leaf, CA) of an SVID for id and key, and
// the key in PEM; a nil key means a fresh one.
func (ca *testCA) issue(id string, key *ecdsa.PrivateKey) (chainPEM, keyPEM []byte) {
	ca.t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			ca.t.Fatal(err)
		}
	}
	u, err := url.Parse(id)
	if err != nil {
		ca.t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		ca.t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(2)),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	chainPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	return chainPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func (ca *testCA) bundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// A renewal writes the new pair so that a crash at any point leaves a
// usable one: the old pair before the key is renamed, the new pair after,
// and in between (new key, old certificate, svid.pem.new beside them)
// loading finishes the renewal.
func TestWriteSVIDSurvivesInterruption(t *testing.T) {
	const id = "spiffe://example.org/device/sensor-1"
	ca := newTestCA(t, "example.org")
	oldChain, oldKey := ca.issue(id, nil)
	newChain, newKey := ca.issue(id, nil)
	serialOf := func(chainPEM []byte) string {
		b, _ := pem.Decode(chainPEM)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber.Text(16)
	}

	t.Run("complete", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: oldKey, bundleFile: ca.bundlePEM()})
		if err := writeSVID(dir, newChain, newKey, ca.bundlePEM()); err != nil {
			t.Fatal(err)
		}
		sv, err := loadSVID(dir)
		if err != nil {
			t.Fatal(err)
		}
		if sv.serial() != serialOf(newChain) {
			t.Fatalf("loaded serial %s, want the new one %s", sv.serial(), serialOf(newChain))
		}
		for _, f := range []string{svidFile, keyFile, bundleFile} {
			if _, err := os.Stat(filepath.Join(dir, f+pendingSuffix)); !os.IsNotExist(err) {
				t.Errorf("%s%s left behind (%v)", f, pendingSuffix, err)
			}
		}
		if fi, err := os.Stat(filepath.Join(dir, keyFile)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("key file mode = %v (%v), want 0600", fi.Mode().Perm(), err)
		}
	})
	t.Run("crash before the key is in place", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: oldKey, bundleFile: ca.bundlePEM(),
			svidFile + pendingSuffix: newChain, keyFile + pendingSuffix: newKey})
		sv, err := loadSVID(dir)
		if err != nil {
			t.Fatal(err)
		}
		if sv.serial() != serialOf(oldChain) {
			t.Fatalf("loaded serial %s, want the old one %s", sv.serial(), serialOf(oldChain))
		}
	})
	t.Run("crash between the renames", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: newKey, bundleFile: ca.bundlePEM(),
			svidFile + pendingSuffix: newChain})
		sv, err := loadSVID(dir)
		if err != nil {
			t.Fatal(err)
		}
		if sv.serial() != serialOf(newChain) {
			t.Fatalf("loaded serial %s, want the new one %s", sv.serial(), serialOf(newChain))
		}
		got, err := os.ReadFile(filepath.Join(dir, svidFile))
		if err != nil || !bytes.Equal(got, newChain) {
			t.Fatalf("svid.pem not completed: %v", err)
		}
	})
	t.Run("mismatched pair without a pending certificate", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: newKey, bundleFile: ca.bundlePEM()})
		if _, err := loadSVID(dir); err == nil {
			t.Fatal("a certificate with someone else's key loaded")
		}
	})
	t.Run("pending certificate that does not match either", func(t *testing.T) {
		dir := t.TempDir()
		otherChain, _ := ca.issue(id, nil)
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: newKey, bundleFile: ca.bundlePEM(),
			svidFile + pendingSuffix: otherChain})
		if _, err := loadSVID(dir); err == nil {
			t.Fatal("a pending certificate with someone else's key was put in place")
		}
	})
}

// The device checks what the API answers: an SVID for its own key and
// SPIFFE ID, chaining to its bundle. Anything else is refused and the
// current SVID stays.
func TestRenewCheck(t *testing.T) {
	const id = "spiffe://example.org/device/sensor-1"
	ca := newTestCA(t, "example.org")
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	curChain, curKey := ca.issue(id, nil)
	cur, err := tls.X509KeyPair(curChain, curKey)
	if err != nil {
		t.Fatal(err)
	}
	r := &renewer{roots: roots}
	cursv := &svid{cert: cur, id: spiffeid.RequireFromString(id)}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	goodChain, keyPEM := ca.issue(id, key)
	otherChain, _ := ca.issue("spiffe://example.org/device/sensor-2", key)
	foreign := newTestCA(t, "example.org")
	foreignChain, _ := foreign.issue(id, key)
	wrongKeyChain, _ := ca.issue(id, nil)

	next, err := r.check(cursv, goodChain, keyPEM)
	if err != nil {
		t.Fatalf("valid renewal refused: %v", err)
	}
	if next.id != cursv.id || next.cert.Leaf == nil || next.obtained.IsZero() {
		t.Fatalf("renewed SVID = %+v", next)
	}
	for _, tc := range []struct {
		name, chain, want string
	}{
		{"another SPIFFE ID", string(otherChain), "not spiffe://example.org/device/sensor-1"},
		{"another CA", string(foreignChain), "unknown authority"},
		{"another key", string(wrongKeyChain), "does not match"},
		{"not a certificate", "garbage", "failed to find"},
	} {
		if _, err := r.check(cursv, []byte(tc.chain), keyPEM); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}
