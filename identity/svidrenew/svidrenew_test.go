package svidrenew

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
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
		// ztgate's CA backdates NotBefore by a minute: a 20 s SVID is
		// renewed 10 s after it arrives, not at once.
		{name: "backdated NotBefore", notBefore: t0.Add(-time.Minute), notAfter: t0.Add(20 * time.Second),
			obtained: t0, want: t0.Add(10 * time.Second)},
		{name: "largest jitter is a tenth of the half earlier", notBefore: t0, notAfter: t0.Add(20 * time.Hour),
			obtained: t0, jitter: 0.999999999, want: t0.Add(9 * time.Hour)},
		{name: "obtained after expiry: at once", notBefore: t0, notAfter: t0.Add(time.Hour),
			obtained: t0.Add(2 * time.Hour), want: t0.Add(2 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RenewalTime(tt.notBefore, tt.notAfter, tt.obtained, tt.jitter)
			if d := got.Sub(tt.want); d < -time.Millisecond || d > time.Millisecond {
				t.Fatalf("RenewalTime = %s, want %s", got, tt.want)
			}
		})
	}
	// Whatever the jitter, a renewal is scheduled before expiry and not
	// before the SVID arrived.
	for _, j := range []float64{0, 0.25, 0.5, 0.999} {
		got := RenewalTime(t0.Add(-time.Minute), t0.Add(4*time.Second), t0, j)
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
		{name: "never below the minimum", backoff: 5 * time.Minute, left: 500 * time.Millisecond, want: MinRetry},
		{name: "expired: plain backoff", backoff: 16 * time.Second, left: -time.Minute, want: 16 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RetryDelay(tt.backoff, tt.left, tt.jitter); got != tt.want {
				t.Fatalf("RetryDelay(%s, %s, %v) = %s, want %s", tt.backoff, tt.left, tt.jitter, got, tt.want)
			}
		})
	}
}

func TestNextBackoff(t *testing.T) {
	var got []time.Duration
	b := time.Duration(0)
	for range 11 {
		b = NextBackoff(b)
		got = append(got, b)
	}
	want := []time.Duration{2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoffs %v, want 1 s doubling up to 5 min", got)
		}
	}
}

// The lifetime asked for again is the one the SVID was signed for, not
// the minute the CA backdates NotBefore by, nor what was left of it when
// it arrived (which would shrink it at every renewal).
func TestLifetime(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	now := time.Now().Truncate(time.Second)
	sign := func(notBefore, notAfter time.Time) tls.Certificate {
		tmpl := testpki.LeafTemplate(t, "spiffe://example.org/device/sensor-1")
		tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
		return testpki.SignLeaf(t, tmpl, ca.Cert, ca.Key)
	}
	backdated := sign(now.Add(-identity.NotBeforeBackdate), now.Add(20*time.Second))
	plain := sign(now, now.Add(30*time.Second))
	for _, tc := range []struct {
		name     string
		cert     tls.Certificate
		obtained time.Time
		want     time.Duration
	}{
		{"backdated, obtained when signed", backdated, now, 20 * time.Second},
		{"backdated, obtained a while later", backdated, now.Add(1500 * time.Millisecond), 20 * time.Second},
		{"backdated, read from a file written earlier", backdated, now.Add(-time.Hour), 20 * time.Second},
		{"not backdated: what was left when obtained", plain, now.Add(5 * time.Second), 25 * time.Second},
		{"not backdated, obtained before NotBefore", plain, now.Add(-time.Hour), 30 * time.Second},
		{"not backdated, obtained after expiry", plain, now.Add(time.Minute), 0},
	} {
		sv := &SVID{Cert: tc.cert, Obtained: tc.obtained}
		if got := sv.Lifetime(); got != tc.want {
			t.Errorf("%s: Lifetime = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// pki issues SVIDs for one SPIFFE ID with one CA, for keys a test chooses.
type pki struct {
	t  *testing.T
	ca *testpki.CA
	id string
}

func newPKI(t *testing.T) *pki {
	return &pki{t: t, ca: testpki.NewCA(t, "example.org"), id: "spiffe://example.org/device/sensor-1"}
}

// issue returns the PEM chain (leaf, CA) of an SVID for id and key (nil: a
// fresh one) and the key in PEM.
func (p *pki) issue(id string, key crypto.Signer) (chainPEM, keyPEM []byte) {
	p.t.Helper()
	if key == nil {
		key = testpki.NewKey(p.t)
	}
	der, err := x509.CreateCertificate(rand.Reader, testpki.LeafTemplate(p.t, id), p.ca.Cert, key.Public(), p.ca.Key)
	if err != nil {
		p.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	chainPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ca.Cert.Raw})...)
	return chainPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func serialOf(t *testing.T, chainPEM []byte) string {
	t.Helper()
	b, _ := pem.Decode(chainPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

const (
	svidFile   = identity.SVIDFile
	keyFile    = identity.SVIDKeyFile
	bundleFile = identity.BundleFile
)

// A renewal writes the new pair so that a crash at any point leaves a
// usable one: the old pair before the key is replaced, the new pair after,
// and in between (new key, old certificate, svid.pem.new beside them)
// loading finishes the renewal.
func TestWriteDirSurvivesInterruption(t *testing.T) {
	p := newPKI(t)
	oldChain, oldKey := p.issue(p.id, nil)
	newChain, newKey := p.issue(p.id, nil)
	bundle := p.ca.BundlePEM()

	t.Run("complete", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: oldKey, bundleFile: bundle})
		if err := WriteDir(dir, newChain, newKey, bundle); err != nil {
			t.Fatal(err)
		}
		sv, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if sv.Serial() != serialOf(t, newChain) {
			t.Fatalf("loaded serial %s, want the new one %s", sv.Serial(), serialOf(t, newChain))
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 3 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("directory holds %v, want the three files and nothing left behind", names)
		}
		for name, want := range map[string]os.FileMode{svidFile: 0o644, keyFile: 0o600, bundleFile: 0o644} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != want {
				t.Errorf("%s: mode %v (%v), want %v", name, fi.Mode().Perm(), err, want)
			}
		}
	})
	t.Run("crash before the key is in place", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: oldKey, bundleFile: bundle,
			svidFile + PendingSuffix: newChain})
		sv, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if sv.Serial() != serialOf(t, oldChain) {
			t.Fatalf("loaded serial %s, want the old one %s", sv.Serial(), serialOf(t, oldChain))
		}
	})
	t.Run("crash between the key and the certificate", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: newKey, bundleFile: bundle,
			svidFile + PendingSuffix: newChain})
		sv, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if sv.Serial() != serialOf(t, newChain) {
			t.Fatalf("loaded serial %s, want the new one %s", sv.Serial(), serialOf(t, newChain))
		}
		got, err := os.ReadFile(filepath.Join(dir, svidFile))
		if err != nil || !bytes.Equal(got, newChain) {
			t.Fatalf("svid.pem not completed: %v", err)
		}
	})
	t.Run("mismatched pair without a pending certificate", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: newKey, bundleFile: bundle})
		if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, svidFile)) {
			t.Fatalf("a certificate with someone else's key: err = %v, want one naming the files", err)
		}
	})
	t.Run("pending certificate that does not match either", func(t *testing.T) {
		dir := t.TempDir()
		otherChain, _ := p.issue(p.id, nil)
		writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: newKey, bundleFile: bundle,
			svidFile + PendingSuffix: otherChain})
		if _, err := LoadDir(dir); err == nil {
			t.Fatal("a pending certificate with someone else's key was put in place")
		}
	})
}

// WriteDir never replaces a usable pair with one that is not: it checks
// what it is given before it touches the directory.
func TestWriteDirRefusesBadInput(t *testing.T) {
	p := newPKI(t)
	oldChain, oldKey := p.issue(p.id, nil)
	newChain, newKey := p.issue(p.id, nil)
	_, otherKey := p.issue(p.id, nil)
	bundle := p.ca.BundlePEM()
	leafOnly, _ := pem.Decode(newChain)
	for _, tc := range []struct {
		name               string
		chain, key, bundle []byte
		want               string
	}{
		{"key of another certificate", newChain, otherKey, bundle, "do not belong together"},
		{"no certificate", []byte("garbage"), newKey, bundle, "do not belong together"},
		{"bundle that is not a CA", newChain, newKey, pem.EncodeToMemory(leafOnly), "not a CA"},
		{"bundle that is a key", newChain, newKey, newKey, "want CERTIFICATE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string][]byte{svidFile: oldChain, keyFile: oldKey, bundleFile: bundle}
			writeFiles(t, dir, files)
			err := WriteDir(dir, tc.chain, tc.key, tc.bundle)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			for name, want := range files {
				if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s changed by a refused write (%v)", name, err)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, svidFile+PendingSuffix)); !os.IsNotExist(err) {
				t.Fatalf("a refused write left %s%s (%v)", svidFile, PendingSuffix, err)
			}
		})
	}
	// Positive control: the same directory takes a good pair, and an empty
	// bundle keeps the one there.
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{svidFile: oldChain, keyFile: oldKey, bundleFile: bundle})
	if err := WriteDir(dir, newChain, newKey, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, bundleFile)); err != nil || !bytes.Equal(got, bundle) {
		t.Fatalf("bundle.pem after a renewal without one: %v", err)
	}
}

func TestLoadDirErrors(t *testing.T) {
	p := newPKI(t)
	chain, key := p.issue(p.id, nil)
	bundle := p.ca.BundlePEM()
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"empty directory", map[string][]byte{}, svidFile},
		{"no key", map[string][]byte{svidFile: chain, bundleFile: bundle}, keyFile},
		{"no bundle", map[string][]byte{svidFile: chain, keyFile: key}, bundleFile},
		{"bundle without certificates", map[string][]byte{svidFile: chain, keyFile: key, bundleFile: []byte("x")}, "no CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tc.files)
			_, err := LoadDir(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line naming %q", err, tc.want)
			}
		})
	}
	// Positive control, and the time the SVID was obtained is when its
	// file was written.
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{svidFile: chain, keyFile: key, bundleFile: bundle})
	written := time.Now().Add(-3 * time.Hour).Truncate(time.Second)
	if err := os.Chtimes(filepath.Join(dir, svidFile), written, written); err != nil {
		t.Fatal(err)
	}
	sv, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if sv.ID.String() != p.id || !sv.Obtained.Equal(written) {
		t.Fatalf("loaded %s obtained %s, want %s obtained %s", sv.ID, sv.Obtained, p.id, written)
	}
}

// The holder checks what the API answers: an SVID for its own key and
// SPIFFE ID, chaining to its bundle. Anything else is refused.
func TestCheck(t *testing.T) {
	p := newPKI(t)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	cur := &SVID{Cert: p.ca.Issue(t, p.id), ID: spiffeid.RequireFromString(p.id), Roots: roots}

	key := testpki.NewKey(t)
	goodChain, keyPEM := p.issue(p.id, key)
	otherChain, _ := p.issue("spiffe://example.org/device/sensor-2", key)
	foreign := &pki{t: t, ca: testpki.NewCA(t, "example.org")}
	foreignChain, _ := foreign.issue(p.id, key)
	wrongKeyChain, _ := p.issue(p.id, nil)
	newCA := testpki.NewCA(t, "example.org")

	next, err := check(cur, goodChain, keyPEM, nil)
	if err != nil {
		t.Fatalf("valid renewal refused: %v", err)
	}
	if next.ID != cur.ID || next.Cert.Leaf == nil || next.Obtained.IsZero() || next.Roots != cur.Roots {
		t.Fatalf("renewed SVID = %+v", next)
	}
	// A bundle sent with the renewal becomes its roots.
	next, err = check(cur, goodChain, keyPEM, newCA.BundlePEM())
	if err != nil || next.Roots == cur.Roots {
		t.Fatalf("renewal with a bundle: %v, roots unchanged %v", err, next != nil && next.Roots == cur.Roots)
	}
	for _, tc := range []struct {
		name, chain, bundle, want string
	}{
		{"another SPIFFE ID", string(otherChain), "", "not spiffe://example.org/device/sensor-1"},
		{"another CA", string(foreignChain), "", "unknown authority"},
		{"another key", string(wrongKeyChain), "", "does not match"},
		{"not a certificate", "garbage", "", "failed to find"},
		{"a bundle that is not one", string(goodChain), "junk", "no CA certificate"},
	} {
		if _, err := check(cur, []byte(tc.chain), keyPEM, []byte(tc.bundle)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func TestRenewURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://localhost:8443":        "https://localhost:8443/v1/svid/renew",
		"https://localhost:8443/":       "https://localhost:8443/v1/svid/renew",
		"https://gw.example.org/ztgate": "https://gw.example.org/ztgate/v1/svid/renew",
	} {
		if got, err := renewURL(in); err != nil || got != want {
			t.Errorf("renewURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// The CSR's answer is trusted only over TLS to the named host.
	for _, bad := range []string{"http://localhost:8443", "localhost:8443", "https://", "https://u:p@h",
		"https://h?x=1", "https://h#f", "ftp://h", "::"} {
		if _, err := renewURL(bad); err == nil {
			t.Errorf("renewURL(%q) = nil error, want one", bad)
		}
	}
}
