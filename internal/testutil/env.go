// Package testutil starts real ztgate gateways for end-to-end tests and
// connects real clients to them: paho MQTT 5 clients and the mosquitto
// command line clients over mutual TLS, with X.509-SVIDs signed by the
// gateway's own CA (or deliberately broken ones), and HTTPS clients of the
// admin API. Nothing is mocked: a test talks to the same wiring the ztgate
// command runs.
//
// It is the top layer of the test helpers. internal/testpki mints
// certificates, internal/testclient talks to a gateway from outside given
// its address; testutil starts the whole app (internal/app) and binds
// those clients to it. Packages below internal/app (gateway, api) use the
// two lower layers directly.
package testutil

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// TrustDomain is the trust domain every test gateway serves.
const TrustDomain = "example.org"

// Wait and Quiet are testclient's: how long a test waits for what must
// happen, and watches for what must not.
const (
	Wait  = testclient.Wait
	Quiet = testclient.Quiet
)

// Option changes how Start builds a gateway.
type Option func(*options)

type options struct {
	policyDir string
	extra     map[string]string
	configure []func(*app.Config)
}

// WithConfig changes the gateway's configuration after Start's own
// settings, for example its SVID lifetime.
func WithConfig(mods ...func(*app.Config)) Option {
	return func(o *options) { o.configure = append(o.configure, mods...) }
}

// WithPolicyDir serves the Rego files of dir instead of the embedded
// default policy.
func WithPolicyDir(dir string) Option { return func(o *options) { o.policyDir = dir } }

// WithExtraPolicy serves the embedded default policy plus one more Rego
// file (name, source) in the same directory, for example an observer role
// that lets a test see messages that must not exist.
func WithExtraPolicy(name, src string) Option {
	return func(o *options) {
		if o.extra == nil {
			o.extra = map[string]string{}
		}
		o.extra[name] = src
	}
}

// SpyPolicy is an extra policy file for WithExtraPolicy: an enrolled,
// active identity labelled role=spy may connect, subscribe to anything and
// receive everything. A spy subscribed to "#" sees every message the
// gateway routes outside "$" topics, so a test can assert that a refused
// message was not routed to anyone. It grants nothing to any other
// identity and never grants publish.
const SpyPolicy = `package ztgate.authz

allow if {
	input.device.labels.role == "spy"
	input.device.status == "active"
	input.action in {"connect", "subscribe", "receive"}
}
`

// Env is one running gateway and what a test needs to reach it.
type Env struct {
	App      *app.App
	TD       spiffeid.TrustDomain
	DataDir  string
	MQTTAddr string // host:port of the MQTT listener
	APIURL   string // https://host:port of the admin API
	// Admin is the dev admin identity (spiffe://TD/admin/dev, role=admin)
	// that the app enrolls on start; nil unless the identity source is
	// builtin (see ExternalDevice for an admin of another PKI).
	Admin *Device

	bundlePEM []byte
	roots     *x509.CertPool
	caCert    *x509.Certificate
	caKey     crypto.Signer
}

// Start runs a gateway on 127.0.0.1 ports chosen by the kernel, with its
// data in a fresh temporary directory. The gateway is closed when the test
// ends; its log is printed only if the test failed.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	e, _ := start(t, &testpki.LogBuffer{}, nil, opts)
	return e
}

// start runs a gateway on 127.0.0.1 in a temporary directory, logging to
// logs; configure, if not nil, changes the configuration last.
func start(t testing.TB, logs *testpki.LogBuffer, configure func(*app.Config), opts []Option) (*Env, app.Config) {
	t.Helper()
	cfg := configFor(t, logs, configure, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := app.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start gateway: %v", err)
	}
	return envOf(t, a, cfg, logs), cfg
}

// configFor is the configuration of a test gateway in a fresh temporary
// directory, logging to logs; configure, if not nil, changes it last.
func configFor(t testing.TB, logs *testpki.LogBuffer, configure func(*app.Config), opts []Option) app.Config {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir := t.TempDir()

	cfg := app.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.APIAddr = "127.0.0.1:0"
	cfg.TrustDomain = TrustDomain
	// The tests run many gateways at once on few cores: a policy
	// evaluation starved of CPU for the engine's default deadline would
	// fail closed and turn a positive control into a flake. Decisions are
	// what is tested here, not their latency.
	cfg.PolicyTimeout = 5 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	switch {
	case o.policyDir != "":
		cfg.PolicyDir = o.policyDir
	case len(o.extra) > 0:
		cfg.PolicyDir = writePolicyDir(t, filepath.Join(dir, "policy"), o.extra)
	}
	for _, mod := range o.configure {
		mod(&cfg)
	}
	if configure != nil {
		configure(&cfg)
	}
	return cfg
}

// envOf binds a started gateway to the test: closed when it ends, its log
// printed if it failed.
func envOf(t testing.TB, a *app.App, cfg app.Config, logs *testpki.LogBuffer) *Env {
	t.Helper()
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("close gateway: %v", err)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})

	e := &Env{
		App:      a,
		TD:       a.TrustDomain(),
		DataDir:  cfg.DataDir,
		MQTTAddr: dialable(t, a.MQTTAddr()),
		APIURL:   "https://" + dialable(t, a.APIAddr()),
	}
	if a.CA() == nil {
		// Files or the Workload API: the gateway is verified against the
		// bundle it started with, and has no CA key or dev admin.
		e.setBundle(t)
		return e
	}
	e.bundlePEM, e.caCert = a.CA().BundlePEM(), a.CA().Certificate()
	e.roots = x509.NewCertPool()
	e.roots.AddCert(e.caCert)
	caDir := cfg.Identity.CADir
	if caDir == "" {
		caDir = filepath.Join(cfg.DataDir, "ca")
	}
	e.caKey = loadCAKey(t, filepath.Join(caDir, identity.CAKeyFile))

	admin, err := tls.LoadX509KeyPair(filepath.Join(a.AdminDir(), identity.SVIDFile), filepath.Join(a.AdminDir(), identity.SVIDKeyFile))
	if err != nil {
		t.Fatalf("load admin SVID: %v", err)
	}
	e.Admin = &Device{
		Name: app.AdminDeviceName,
		ID:   app.AdminID(e.TD).String(),
		Cert: admin,
		Dir:  a.AdminDir(),
		env:  e,
	}
	return e
}

// setBundle takes the roots and bundle.pem of the devices from the
// gateway's identity source.
func (e *Env) setBundle(t testing.TB) {
	t.Helper()
	b, err := e.App.Source().GetX509BundleForTrustDomain(e.TD)
	if err != nil {
		t.Fatalf("bundle of %s: %v", e.TD, err)
	}
	e.roots = x509.NewCertPool()
	for _, c := range b.X509Authorities() {
		e.roots.AddCert(c)
	}
	if e.bundlePEM, err = b.Marshal(); err != nil {
		t.Fatalf("bundle of %s: %v", e.TD, err)
	}
}

// writePolicyDir copies the embedded default policy (without its Rego
// tests) into dir and adds the extra files.
func writePolicyDir(t testing.TB, dir string, extra map[string]string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	err := fs.WalkDir(defaultpolicy.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".rego") || strings.HasSuffix(path, "_test.rego") {
			return err
		}
		b, err := fs.ReadFile(defaultpolicy.FS, path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, strings.ReplaceAll(path, "/", "_")), b, 0o600)
	})
	if err != nil {
		t.Fatalf("copy default policy: %v", err)
	}
	for name, src := range extra {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func dialable(t testing.TB, addr net.Addr) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatalf("listener address %v: %v", addr, err)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// loadCAKey reads the CA's private key from disk: the tests need the real
// signer to craft certificates that are trusted yet break an identity rule.
func loadCAKey(t testing.TB, path string) crypto.Signer {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read CA key: %v", err)
	}
	return testpki.ParseSigner(t, raw)
}

// Device is a client identity: a certificate (possibly none, possibly
// broken) and its key, also written as svid.pem, svid.key and bundle.pem
// in Dir for command line clients.
type Device struct {
	Name string // registry name; empty when not enrolled
	ID   string // SPIFFE ID the certificate claims, if any
	Cert tls.Certificate
	Dir  string
	env  *Env
	// roots, when set, verify the gateway instead of the env's: a device
	// of an external PKI that knows of a CA rotation the env does not.
	roots *x509.CertPool
}

// DeviceID is the SPIFFE ID a device named name gets by default.
func (e *Env) DeviceID(name string) string {
	return "spiffe://" + e.TD.Name() + "/device/" + name
}

// Enroll enrolls a device through the admin API, as `ztgate device enroll`
// does: create it, then have a CSR made with a fresh local key signed.
func (e *Env) Enroll(t testing.TB, name string, labels map[string]string) *Device {
	t.Helper()
	return e.enroll(t, name, "", labels)
}

// EnrollID enrolls a workload that is not a device (a controller, an
// observer) under the SPIFFE ID id, through the admin API.
func (e *Env) EnrollID(t testing.TB, name, id string, labels map[string]string) *Device {
	t.Helper()
	return e.enroll(t, name, id, labels)
}

func (e *Env) enroll(t testing.TB, name, id string, labels map[string]string) *Device {
	t.Helper()
	req := map[string]any{"name": name}
	if id != "" {
		req["spiffe_id"] = id
	}
	if labels != nil {
		req["labels"] = labels
	}
	res := e.API(t, e.Admin, "POST", "/v1/devices", req)
	if res.Status != 201 {
		t.Fatalf("enroll %s: POST /v1/devices: %d %s", name, res.Status, res.Body)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	res = e.API(t, e.Admin, "POST", "/v1/devices/"+name+"/svid", map[string]string{"csr": string(csrPEM)})
	if res.Status != 200 {
		t.Fatalf("enroll %s: POST svid: %d %s", name, res.Status, res.Body)
	}
	var out struct {
		SVIDPEM   string `json:"svid_pem"`
		BundlePEM string `json:"bundle_pem"`
		SPIFFEID  string `json:"spiffe_id"`
	}
	res.Decode(t, &out)
	if id != "" && out.SPIFFEID != id {
		t.Fatalf("enroll %s: SVID is for %s, want %s", name, out.SPIFFEID, id)
	}
	return e.deviceFromPEM(t, name, out.SPIFFEID, []byte(out.SVIDPEM), keyPEM)
}

// Issue signs an SVID for id with the real CA without enrolling anything:
// a certificate the TLS layer accepts for an identity the registry does
// not know.
func (e *Env) Issue(t testing.TB, id string) *Device {
	t.Helper()
	return e.IssueTTL(t, id, time.Hour)
}

func (e *Env) deviceFromPEM(t testing.TB, name, id string, chainPEM, keyPEM []byte) *Device {
	t.Helper()
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatalf("SVID of %s: %v", id, err)
	}
	d := &Device{Name: name, ID: id, Cert: cert, env: e}
	d.Dir = e.writeDir(t, chainPEM, keyPEM)
	return d
}

// WithCert is a client presenting cert (nil: no certificate at all).
func (e *Env) WithCert(t testing.TB, cert *tls.Certificate) *Device {
	t.Helper()
	d := &Device{env: e}
	if cert == nil {
		return d
	}
	d.Cert = *cert
	if cert.Leaf != nil && len(cert.Leaf.URIs) == 1 {
		d.ID = cert.Leaf.URIs[0].String()
	}
	var chain bytes.Buffer
	for _, der := range cert.Certificate {
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	d.Dir = e.writeDir(t, chain.Bytes(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return d
}

func (e *Env) writeDir(t testing.TB, chainPEM, keyPEM []byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		identity.SVIDFile:    chainPEM,
		identity.SVIDKeyFile: keyPEM,
		identity.BundleFile:  e.bundlePEM,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TLSConfig is the client side of mTLS for d: the gateway is verified
// against the CA bundle, d's certificate (if any) is presented.
func (d *Device) TLSConfig() *tls.Config {
	roots := d.env.roots
	if d.roots != nil {
		roots = d.roots
	}
	return testclient.TLSConfig(roots, &d.Cert)
}

// ExternalDevice is a client presenting cert, an SVID of a PKI outside the
// gateway (the files source's, SPIRE's, a partner's), registered as name
// (empty: not registered, or registered otherwise). It verifies the
// gateway against roots (nil: the env's).
func (e *Env) ExternalDevice(t testing.TB, name string, cert tls.Certificate, roots *x509.CertPool) *Device {
	t.Helper()
	d := e.WithCert(t, &cert)
	d.Name, d.roots = name, roots
	return d
}

// CertWith returns a certificate signed by the gateway's real CA. It starts
// from a valid X.509-SVID for spiffe://TD/device/crafted (client auth,
// digitalSignature, valid for an hour) which tweak may break in one way.
func (e *Env) CertWith(t testing.TB, tweak func(*x509.Certificate)) tls.Certificate {
	t.Helper()
	tmpl := testpki.LeafTemplate(t, e.DeviceID("crafted"))
	if tweak != nil {
		tweak(tmpl)
	}
	return testpki.SignLeaf(t, tmpl, e.caCert, e.caKey)
}

// ForeignCert returns a well-formed X.509-SVID for id signed by a CA the
// gateway does not trust.
func ForeignCert(t testing.TB, id string) tls.Certificate {
	t.Helper()
	td := strings.SplitN(strings.TrimPrefix(id, "spiffe://"), "/", 2)[0]
	return testpki.NewCA(t, td).Issue(t, id)
}

// Must fails the test on a non-nil error.
func Must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
