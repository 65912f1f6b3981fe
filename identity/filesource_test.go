package identity_test

import (
	"bufio"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/atomicfile"
	"github.com/ztgate/ztgate/internal/testpki"
)

// waitFor bounds every wait on the watcher: the debounce is a fraction
// of a second, so reaching this means the event was lost.
const waitFor = 10 * time.Second

// filePKI is an operator's PKI as the files source sees it: a CA and the
// three files of the gateway, in one directory.
type filePKI struct {
	ca                *testpki.CA
	dir               string
	cert, key, bundle string
	logs              *testpki.LogBuffer
	log               *slog.Logger
	// What newFilePKI wrote.
	certPEM, keyPEM, bundlePEM []byte
}

func newFilePKI(t *testing.T) *filePKI {
	t.Helper()
	dir := t.TempDir()
	p := &filePKI{
		ca:     testpki.NewCA(t, td.Name()),
		dir:    dir,
		cert:   filepath.Join(dir, "gateway.pem"),
		key:    filepath.Join(dir, "gateway.key"),
		bundle: filepath.Join(dir, "bundle.pem"),
		logs:   &testpki.LogBuffer{},
	}
	p.log = slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p.certPEM, p.keyPEM = p.issue(t, nil)
	p.bundlePEM = p.ca.BundlePEM()
	p.write(t, p.cert, p.certPEM)
	p.write(t, p.key, p.keyPEM)
	p.write(t, p.bundle, p.bundlePEM)
	return p
}

// gatewayTemplate is a serving X.509-SVID as an operator's CA would issue
// it: the SPIFFE ID plus the names MQTT clients check.
func gatewayTemplate(t *testing.T) *x509.Certificate {
	tmpl := testpki.LeafTemplate(t, gatewayID.String())
	tmpl.DNSNames = []string{"localhost"}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return tmpl
}

// issue signs a gateway certificate (tweaked, when tweak is not nil) and
// returns the chain (leaf, CA) and its PKCS#8 key in PEM.
func (p *filePKI) issue(t *testing.T, tweak func(*x509.Certificate)) (chainPEM, keyPEM []byte) {
	t.Helper()
	tmpl := gatewayTemplate(t)
	if tweak != nil {
		tweak(tmpl)
	}
	cert := testpki.SignLeaf(t, tmpl, p.ca.Cert, p.ca.Key)
	return chainToPEM(cert.Certificate), pkcs8PEM(t, cert.PrivateKey.(crypto.Signer))
}

func chainToPEM(chain [][]byte) []byte {
	var out []byte
	for _, der := range chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}

func pkcs8PEM(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// write replaces path atomically (temporary file and rename), as most
// certificate tools and cert-manager do.
func (p *filePKI) write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeInPlace truncates and rewrites path, as `cp` or a shell redirect do.
func writeInPlace(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func (p *filePKI) options() identity.FileSourceOptions {
	return identity.FileSourceOptions{CertFile: p.cert, KeyFile: p.key, BundleFile: p.bundle, TrustDomain: td, Logger: p.log}
}

func (p *filePKI) open(t *testing.T) *identity.FileSource {
	t.Helper()
	src, err := identity.NewFileSource(p.options())
	if err != nil {
		t.Fatalf("NewFileSource: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// waitUpdated fails the test unless ch has a value within waitFor.
func waitUpdated(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatalf("no update after %s", what)
	}
}

// noUpdate fails the test if ch holds a value now. Callers first wait for
// the reload to be over (a log line), so nothing is in flight.
func noUpdate(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("update after %s", what)
	default:
	}
}

// waitLog waits for the n-th log line containing all of parts and
// returns it.
func (p *filePKI) waitLog(t *testing.T, n int, parts ...string) string {
	t.Helper()
	return waitLog(t, p.logs, n, parts...)
}

func waitLog(t *testing.T, logs *testpki.LogBuffer, n int, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		var hits []string
		for _, line := range strings.Split(logs.String(), "\n") {
			if containsAll(line, parts) {
				hits = append(hits, line)
			}
		}
		if len(hits) >= n {
			return hits[n-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %d with %q; logs:\n%s", n, parts, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func servedLeaf(t *testing.T, src *identity.FileSource) *x509.Certificate {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if !svid.Certificates[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(svid.PrivateKey.Public()) {
		t.Fatal("the source serves a key that does not match its certificate")
	}
	return svid.Certificates[0]
}

func leafOf(t *testing.T, chainPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(chainPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var (
	_ identity.Source = (*identity.FileSource)(nil)
	_ identity.Source = (*identity.WorkloadSource)(nil)
	_ identity.Source = (*identity.BuiltinSource)(nil)
)

func TestFileSourceLoads(t *testing.T) {
	p := newFilePKI(t)
	src := p.open(t)

	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != gatewayID || len(svid.Certificates) != 2 || !svid.Certificates[0].Equal(leafOf(t, p.certPEM)) {
		t.Fatalf("SVID %s with %d certificates; want %s, the file's leaf and CA", svid.ID, len(svid.Certificates), gatewayID)
	}
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.X509Authorities(); len(got) != 1 || !got[0].Equal(p.ca.Cert) {
		t.Errorf("bundle holds %d authorities, want the CA", len(got))
	}
	// A caller changing what it got must not change what is trusted.
	b.AddX509Authority(testpki.NewCA(t, td.Name()).Cert)
	if again, _ := src.GetX509BundleForTrustDomain(td); len(again.X509Authorities()) != 1 {
		t.Error("a change to a returned bundle reached the source")
	}
	if _, err := src.GetX509BundleForTrustDomain(otherTD); err == nil || !strings.HasPrefix(err.Error(), "identity: ") {
		t.Errorf("bundle for another trust domain: %v, want an identity: error", err)
	}
	if src.Updated() == nil {
		t.Error("Updated is nil for a watched source")
	}
	noUpdate(t, src.Updated(), "the initial load")
	if strings.Contains(p.logs.String(), "does not verify") {
		t.Errorf("a serving certificate signed by the bundle's CA was reported unverifiable:\n%s", p.logs)
	}
}

// The key forms openssl writes: PKCS#8, SEC 1 and PKCS#1.
func TestFileSourceKeyForms(t *testing.T) {
	p := newFilePKI(t)
	ecKey := testpki.NewKey(t)
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		key    crypto.Signer
		keyPEM []byte
	}{
		"PKCS#8 EC":  {ecKey, pkcs8PEM(t, ecKey)},
		"SEC 1 EC":   {ecKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})},
		"PKCS#1 RSA": {rsaKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
	} {
		t.Run(name, func(t *testing.T) {
			tmpl := gatewayTemplate(t)
			if _, ok := tc.key.(*rsa.PrivateKey); ok {
				tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca.Cert, tc.key.Public(), p.ca.Key)
			if err != nil {
				t.Fatal(err)
			}
			p.write(t, p.cert, chainToPEM([][]byte{der, p.ca.Cert.Raw}))
			p.write(t, p.key, tc.keyPEM)
			src, err := identity.NewFileSource(p.options())
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			defer src.Close()
			if svid, err := src.GetX509SVID(); err != nil || svid.ID != gatewayID {
				t.Errorf("GetX509SVID: %v, %v", svid, err)
			}
		})
	}
}

// Each unusable file is refused at start with an error naming the file
// and the reason, and no source is returned.
func TestFileSourceRejects(t *testing.T) {
	p := newFilePKI(t)
	other := testpki.NewCA(t, td.Name())
	otherLeaf := testpki.SignLeaf(t, gatewayTemplate(t), other.Cert, other.Key)
	missing := filepath.Join(p.dir, "missing.pem")
	write := func(name string, data []byte) string {
		path := filepath.Join(p.dir, name)
		p.write(t, path, data)
		return path
	}
	keyOnly := write("key-as-cert.pem", p.keyPEM)
	empty := write("empty.pem", []byte("\n"))
	half := write("half.pem", p.certPEM[:len(p.certPEM)/2])
	certAsKey := write("cert-as-key.pem", chainToPEM(otherLeaf.Certificate[:1]))
	leafOnlyBundle := write("leaf-bundle.pem", chainToPEM(otherLeaf.Certificate[:1]))

	for _, tc := range []struct {
		name              string
		cert, key, bundle string
		tweak             func(*x509.Certificate)
		wantFile, wantWhy string
	}{
		{name: "positive control"},
		{name: "missing cert file", cert: missing, wantFile: missing, wantWhy: "no such file"},
		{name: "missing key file", key: missing, wantFile: missing, wantWhy: "no such file"},
		{name: "missing bundle file", bundle: missing, wantFile: missing, wantWhy: "no such file"},
		{name: "no certificate in cert file", cert: keyOnly, wantFile: keyOnly, wantWhy: `want "CERTIFICATE"`},
		{name: "empty cert file", cert: empty, wantFile: empty, wantWhy: "empty"},
		{name: "half-written cert file", cert: half, wantFile: half, wantWhy: "PEM"},
		{name: "no key in key file", key: certAsKey, wantFile: certAsKey, wantWhy: `want "PRIVATE KEY"`},
		{name: "key does not match", cert: write("other.pem", chainToPEM(otherLeaf.Certificate)), wantFile: p.key, wantWhy: "does not match"},
		{name: "cert outside the trust domain", tweak: func(c *x509.Certificate) {
			c.URIs = []*url.URL{mustURL(t, "spiffe://other.example/gateway")}
		}, wantFile: "tweaked.pem", wantWhy: `not in trust domain "example.org"`},
		{name: "no SPIFFE ID", tweak: func(c *x509.Certificate) { c.URIs = nil }, wantFile: "tweaked.pem", wantWhy: "SPIFFE ID"},
		{name: "CA leaf", tweak: func(c *x509.Certificate) {
			c.IsCA = true
			c.KeyUsage |= x509.KeyUsageCertSign
		}, wantFile: "tweaked.pem", wantWhy: "is a CA certificate"},
		{name: "no digitalSignature", tweak: func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }, wantFile: "tweaked.pem", wantWhy: "digitalSignature"},
		{name: "expired cert", tweak: func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}, wantFile: "tweaked.pem", wantWhy: "expired"},
		{name: "cert not yet valid", tweak: func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
		}, wantFile: "tweaked.pem", wantWhy: "not valid before"},
		{name: "empty bundle", bundle: empty, wantFile: empty, wantWhy: "at least one CA certificate"},
		{name: "bundle holding a leaf", bundle: leafOnlyBundle, wantFile: leafOnlyBundle, wantWhy: "not a CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := p.options()
			// A tweaked certificate comes with its own key, so that a key
			// mismatch cannot hide the rule under test.
			if tc.tweak != nil {
				tmpl := gatewayTemplate(t)
				tc.tweak(tmpl)
				cert := testpki.SignLeaf(t, tmpl, p.ca.Cert, p.ca.Key)
				opts.CertFile = write("tweaked.pem", chainToPEM(cert.Certificate))
				opts.KeyFile = write("tweaked.key", pkcs8PEM(t, cert.PrivateKey.(crypto.Signer)))
			}
			for _, f := range []struct {
				dst *string
				v   string
			}{{&opts.CertFile, tc.cert}, {&opts.KeyFile, tc.key}, {&opts.BundleFile, tc.bundle}} {
				if f.v != "" {
					*f.dst = f.v
				}
			}
			src, err := identity.NewFileSource(opts)
			if tc.wantWhy == "" {
				if err != nil {
					t.Fatalf("refused valid files: %v", err)
				}
				_ = src.Close()
				return
			}
			if err == nil {
				_ = src.Close()
				t.Fatal("accepted")
			}
			if src != nil {
				t.Error("returned a source with an error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "identity: ") || !strings.Contains(msg, tc.wantFile) || !strings.Contains(msg, tc.wantWhy) {
				t.Errorf("err = %v\nwant an identity: error naming %s and %q", err, tc.wantFile, tc.wantWhy)
			}
		})
	}
}

func TestFileSourceBadOptions(t *testing.T) {
	p := newFilePKI(t)
	for name, mutate := range map[string]func(*identity.FileSourceOptions){
		"no trust domain": func(o *identity.FileSourceOptions) { o.TrustDomain = spiffeid.TrustDomain{} },
		"no cert file":    func(o *identity.FileSourceOptions) { o.CertFile = "" },
		"no key file":     func(o *identity.FileSourceOptions) { o.KeyFile = "" },
		"no bundle file":  func(o *identity.FileSourceOptions) { o.BundleFile = "" },
	} {
		opts := p.options()
		mutate(&opts)
		if src, err := identity.NewFileSource(opts); err == nil || src != nil || !strings.HasPrefix(err.Error(), "identity: ") {
			t.Errorf("%s: %v, %v; want an identity: error", name, src, err)
		}
	}
}

// A new certificate and key written the way tools do (temporary file and
// rename) is served from the next handshake.
func TestFileSourceReloadsOnAtomicRename(t *testing.T) {
	p := newFilePKI(t)
	src := p.open(t)
	old := servedLeaf(t, src)

	chain, key := p.issue(t, nil)
	p.write(t, p.key, key)
	p.write(t, p.cert, chain)
	waitUpdated(t, src.Updated(), "an atomic rename")
	if got := servedLeaf(t, src); got.Equal(old) || !got.Equal(leafOf(t, chain)) {
		t.Error("the source does not serve the renamed-in certificate")
	}
}

// Files rewritten in place (cp, shell redirects) are reloaded too.
func TestFileSourceReloadsOnInPlaceWrite(t *testing.T) {
	p := newFilePKI(t)
	src := p.open(t)

	second := testpki.NewCA(t, td.Name())
	writeInPlace(t, p.bundle, append(p.ca.BundlePEM(), second.BundlePEM()...))
	waitUpdated(t, src.Updated(), "an in-place write of the bundle")
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || len(b.X509Authorities()) != 2 {
		t.Fatalf("bundle after the write: %v, %v; want two authorities", b, err)
	}

	chain, key := p.issue(t, nil)
	writeInPlace(t, p.key, key)
	writeInPlace(t, p.cert, chain)
	waitUpdated(t, src.Updated(), "an in-place write of cert and key")
	if !servedLeaf(t, src).Equal(leafOf(t, chain)) {
		t.Error("the source does not serve the rewritten certificate")
	}
}

// Kubernetes Secret and ConfigMap volumes change by swapping the ..data
// symlink the visible names point through.
func TestFileSourceFollowsSymlinkSwap(t *testing.T) {
	p := newFilePKI(t)
	vol := t.TempDir()
	version := func(name string, chain, key []byte) {
		d := filepath.Join(vol, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		p.write(t, filepath.Join(d, "tls.crt"), chain)
		p.write(t, filepath.Join(d, "tls.key"), key)
		p.write(t, filepath.Join(d, "ca.crt"), p.ca.BundlePEM())
		if err := os.Symlink(name, filepath.Join(vol, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2025_01_01_00_00_00.1", p.certPEM, p.keyPEM)
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(vol, f)); err != nil {
			t.Fatal(err)
		}
	}
	src, err := identity.NewFileSource(identity.FileSourceOptions{
		CertFile: filepath.Join(vol, "tls.crt"), KeyFile: filepath.Join(vol, "tls.key"),
		BundleFile: filepath.Join(vol, "ca.crt"), TrustDomain: td, Logger: p.log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	chain, key := p.issue(t, nil)
	version("..2025_01_01_00_00_00.2", chain, key)
	waitUpdated(t, src.Updated(), "a ..data symlink swap")
	if !servedLeaf(t, src).Equal(leafOf(t, chain)) {
		t.Error("the source does not serve the swapped-in certificate")
	}
}

// A reload that fails keeps what was served and trusted, logs one line
// naming the file, and the next good write is picked up.
func TestFileSourceKeepsLastGoodState(t *testing.T) {
	p := newFilePKI(t)
	src := p.open(t)
	good := servedLeaf(t, src)
	goodBundle, _ := src.GetX509BundleForTrustDomain(td)
	kept := func(what string) {
		t.Helper()
		noUpdate(t, src.Updated(), what)
		if !servedLeaf(t, src).Equal(good) {
			t.Fatalf("%s: the source stopped serving the last good certificate", what)
		}
		if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(goodBundle) {
			t.Fatalf("%s: the bundle changed: %v", what, err)
		}
	}
	newChain, newKey := p.issue(t, nil)

	// Each broken file alone, put back after.
	for i, s := range []struct {
		name, path string
		bad, good  []byte
		why        string
	}{
		{"empty bundle", p.bundle, nil, p.bundlePEM, "at least one CA certificate"},
		{"half-written certificate", p.cert, newChain[:len(newChain)/3], p.certPEM, "PEM"},
	} {
		writeInPlace(t, s.path, s.bad)
		line := p.waitLog(t, 1, "level=ERROR", s.path, s.why)
		if !strings.Contains(line, "last good") {
			t.Errorf("%s: the error line does not say the last good state stays: %s", s.name, line)
		}
		kept(s.name)
		writeInPlace(t, s.path, s.good)
		p.waitLog(t, i+1, "unchanged")
		kept(s.name + " put back")
	}

	// A new key before its certificate: serving the pair would fail every
	// handshake, so the old pair stays until the certificate follows.
	p.write(t, p.key, newKey)
	p.waitLog(t, 1, "level=ERROR", p.key, "does not match")
	kept("a key not matching the certificate yet")
	if err := src.Reload(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("Reload with a mismatched key: %v", err)
	}
	p.write(t, p.cert, newChain)
	waitUpdated(t, src.Updated(), "the certificate followed the key")
	if !servedLeaf(t, src).Equal(leafOf(t, newChain)) {
		t.Error("the source did not recover with the matching certificate")
	}
	if err := src.Reload(); err != nil {
		t.Errorf("Reload with good files: %v", err)
	}
}

// A certificate issued a moment ahead of this host's clock is refused
// while not yet valid, then taken at its NotBefore without waiting for
// another change to the files.
func TestFileSourceTakesNotYetValidCertWhenValid(t *testing.T) {
	p := newFilePKI(t)
	src := p.open(t)
	// Three seconds ahead: the first reload (after the debounce, on a
	// loaded machine) must still fall before NotBefore.
	chain, key := p.issue(t, func(c *x509.Certificate) { c.NotBefore = time.Now().Add(3 * time.Second) })
	p.write(t, p.key, key)
	p.write(t, p.cert, chain)
	p.waitLog(t, 1, "level=ERROR", p.cert, "not valid before")
	waitUpdated(t, src.Updated(), "the certificate became valid")
	if !servedLeaf(t, src).Equal(leafOf(t, chain)) {
		t.Error("the source does not serve the certificate once valid")
	}
}

// Rewriting identical contents is no change: nothing is re-verified for it.
func TestFileSourceIdenticalRewrite(t *testing.T) {
	p := newFilePKI(t)
	src := p.open(t)

	p.write(t, p.cert, p.certPEM)
	p.write(t, p.bundle, p.bundlePEM)
	p.waitLog(t, 1, "unchanged")
	noUpdate(t, src.Updated(), "an identical rewrite")

	// Positive control: a different bundle is an update.
	p.write(t, p.bundle, append(p.ca.BundlePEM(), testpki.NewCA(t, td.Name()).BundlePEM()...))
	waitUpdated(t, src.Updated(), "a changed bundle")
}

// A serving certificate the bundle does not sign is served (the operator
// may be mid-rotation) but reported.
func TestFileSourceWarnsUnverifiedServingCert(t *testing.T) {
	p := newFilePKI(t)
	p.write(t, p.bundle, testpki.NewCA(t, td.Name()).BundlePEM())
	src := p.open(t)
	servedLeaf(t, src)
	p.waitLog(t, 1, "level=WARN", "does not verify", p.bundle)
}

func TestFileSourceClose(t *testing.T) {
	p := newFilePKI(t)
	before := runtime.NumGoroutine()
	src, err := identity.NewFileSource(p.options())
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	waitGoroutines(t, before)
	if _, err := src.GetX509SVID(); err == nil {
		t.Error("a closed source served an SVID")
	}
	// Writes after Close reach nobody and break nothing.
	p.write(t, p.bundle, append(p.ca.BundlePEM(), testpki.NewCA(t, td.Name()).BundlePEM()...))
}

// echoServer accepts TLS connections with cfg and echoes lines back,
// keeping each connection open until the client closes it.
func echoServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	conns := make(chan net.Conn, 16)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		close(conns)
		for c := range conns {
			_ = c.Close()
		}
		wg.Wait()
	})
	return ln.Addr().String()
}

func echo(t *testing.T, conn *tls.Conn, r *bufio.Reader, msg string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("echo of %q: %q, %v", msg, got, err)
	}
}

// A real TLS server on the files source: a client connected before the
// serving certificate rotates keeps its connection, a client connecting
// after gets the new certificate.
func TestFileSourceRotationKeepsConnections(t *testing.T) {
	p := newFilePKI(t)
	src := p.open(t)
	v, err := identity.NewVerifierFromSource(src, td)
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, identity.ServerTLSConfigFromSource(src, v))
	client := p.ca.Issue(t, sensor.String())
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	dial := func() (*tls.Conn, *bufio.Reader) {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{
			MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: "localhost",
			Certificates: []tls.Certificate{client},
		})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn, bufio.NewReader(conn)
	}

	before, beforeR := dial()
	echo(t, before, beforeR, "before")
	oldLeaf := before.ConnectionState().PeerCertificates[0]

	chain, key := p.issue(t, nil)
	p.write(t, p.key, key)
	p.write(t, p.cert, chain)
	waitUpdated(t, src.Updated(), "the serving certificate rotated")

	echo(t, before, beforeR, "still here")
	after, afterR := dial()
	echo(t, after, afterR, "after")
	if got := after.ConnectionState().PeerCertificates[0]; !got.Equal(leafOf(t, chain)) || got.Equal(oldLeaf) {
		t.Error("a new client was not served the rotated certificate")
	}
	if !before.ConnectionState().PeerCertificates[0].Equal(oldLeaf) {
		t.Error("the old connection's certificate changed")
	}
}

// The files an operator makes with the openssl commands of the identity
// documentation load, and a client verifying the gateway by host name
// and the bundle connects.
func TestFileSourceOpenSSLFiles(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if out, err := openssl(t, dir, args...); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	writeExt := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The CA: a self-signed CA certificate with the trust domain's ID.
	run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "ca.key", "-out", "bundle.pem", "-days", "3650", "-subj", "/O=Example/CN=example.org CA",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
		"-addext", "subjectAltName=URI:spiffe://example.org")
	writeExt("gateway.ext", "basicConstraints=critical,CA:FALSE\n"+
		"keyUsage=critical,digitalSignature\n"+
		"extendedKeyUsage=serverAuth,clientAuth\n"+
		"subjectAltName=URI:spiffe://example.org/gateway,DNS:localhost,IP:127.0.0.1\n")
	writeExt("device.ext", "basicConstraints=critical,CA:FALSE\n"+
		"keyUsage=critical,digitalSignature\n"+
		"extendedKeyUsage=clientAuth\n"+
		"subjectAltName=URI:spiffe://example.org/device/sensor-1\n")
	for _, keyCmd := range [][]string{
		{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "gateway.key"},
		{"ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "gateway.key"},
		{"genrsa", "-traditional", "-out", "gateway.key", "2048"},
	} {
		t.Run(keyCmd[0], func(t *testing.T) {
			run(keyCmd...)
			run("req", "-new", "-key", "gateway.key", "-subj", "/CN=gateway", "-out", "gateway.csr")
			run("x509", "-req", "-in", "gateway.csr", "-CA", "bundle.pem", "-CAkey", "ca.key", "-CAcreateserial",
				"-days", "30", "-extfile", "gateway.ext", "-out", "gateway.pem")
			src, err := identity.NewFileSource(identity.FileSourceOptions{
				CertFile: filepath.Join(dir, "gateway.pem"), KeyFile: filepath.Join(dir, "gateway.key"),
				BundleFile: filepath.Join(dir, "bundle.pem"), TrustDomain: td,
			})
			if err != nil {
				t.Fatalf("NewFileSource refused openssl's files: %v", err)
			}
			defer src.Close()
			v, err := identity.NewVerifierFromSource(src, td)
			if err != nil {
				t.Fatal(err)
			}

			run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "device.key")
			run("req", "-new", "-key", "device.key", "-subj", "/CN=sensor-1", "-out", "device.csr")
			run("x509", "-req", "-in", "device.csr", "-CA", "bundle.pem", "-CAkey", "ca.key", "-CAcreateserial",
				"-days", "30", "-extfile", "device.ext", "-out", "device.pem")
			addr := echoServer(t, identity.ServerTLSConfigFromSource(src, v))
			cfg, err := identity.ClientTLSConfigPEM(readFile(t, dir, "device.pem"), readFile(t, dir, "device.key"), readFile(t, dir, "bundle.pem"))
			if err != nil {
				t.Fatalf("the openssl device files: %v", err)
			}
			cfg.ServerName = "localhost"
			conn, err := tls.Dial("tcp", addr, cfg)
			if err != nil {
				t.Fatalf("dial with the openssl device certificate: %v", err)
			}
			defer conn.Close()
			echo(t, conn, bufio.NewReader(conn), "hello")
		})
	}
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
