package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/examples/policies"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// env is a running API server over real mTLS on 127.0.0.1, with a real CA,
// registry and policy decision, and clients holding real SVIDs.
type env struct {
	t    *testing.T
	ca   *identity.CA
	v    *identity.Verifier
	reg  *registry.Store
	srv  *Server
	base string // https://127.0.0.1:PORT
	logs *lockedBuffer

	admin    *http.Client // enrolled, role=admin
	device   *http.Client // enrolled device, no admin role
	stranger *http.Client // valid SVID, not enrolled
}

type envOption func(*Config)

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.LoadOrCreateCA(dir+"/ca", td)
	if err != nil {
		t.Fatalf("CA: %v", err)
	}
	v := identity.NewVerifier(ca.Bundle())
	reg, err := registry.Open(dir + "/r.db")
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	t.Cleanup(func() { _ = reg.Close() })

	serverID := spiffeid.RequireFromPath(td, "/ztgate/api")
	cert, err := ca.IssueServerCert(serverID, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatalf("server cert: %v", err)
	}
	logs := &lockedBuffer{}
	cfg := Config{
		Addr:     "127.0.0.1:0",
		TLS:      identity.ServerTLSConfig(cert, v),
		Registry: reg,
		CA:       ca,
		Verifier: v,
		Decider:  defaultDecider(t),
		Logger:   slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})

	reg = cfg.Registry // an option may bring its own
	e := &env{t: t, ca: ca, v: v, reg: reg, srv: srv, base: "https://" + srv.Addr().String(), logs: logs}

	adminID := spiffeid.RequireFromPath(td, "/admin/dev")
	if _, err := reg.Create(registry.Device{Name: "admin-dev", SPIFFEID: adminID.String(),
		Labels: map[string]string{"role": "admin"}}); err != nil {
		t.Fatalf("enroll admin: %v", err)
	}
	devID := spiffeid.RequireFromPath(td, "/device/sensor-0")
	if _, err := reg.Create(registry.Device{Name: "sensor-0", SPIFFEID: devID.String(),
		Labels: map[string]string{"role": "sensor"}}); err != nil {
		t.Fatalf("enroll device: %v", err)
	}
	e.admin = e.clientFor(adminID)
	e.device = e.clientFor(devID)
	e.stranger = e.clientFor(spiffeid.RequireFromPath(td, "/device/ghost"))
	return e
}

// clientTLS is a client config that trusts ca, with cert (if any) as its SVID.
func clientTLS(ca *identity.CA, cert *tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.BundlePEM())
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

func newHTTPClient(t *testing.T, cfg *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// clientFor returns a client holding a fresh SVID for id.
func (e *env) clientFor(id spiffeid.ID) *http.Client {
	e.t.Helper()
	certPEM, keyPEM, err := e.ca.IssueSVID(id, time.Hour)
	if err != nil {
		e.t.Fatalf("SVID for %s: %v", id, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		e.t.Fatalf("key pair: %v", err)
	}
	return newHTTPClient(e.t, clientTLS(e.ca, &cert))
}

// response is a finished request: status, headers and body.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json; body %s", ct, r.body)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errorMessage asserts the body is the JSON error form and returns its message.
func (r response) errorMessage(t *testing.T) string {
	t.Helper()
	var er ErrorResponse
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q, want application/json; body %s", ct, r.body)
	}
	if err := dec.Decode(&er); err != nil || er.Error == "" {
		t.Fatalf("error body %q is not {\"error\": \"...\"} (%v)", r.body, err)
	}
	return er.Error
}

// do sends a request; contentType "" sends none.
func (e *env) do(c *http.Client, method, path, contentType string, body []byte) response {
	e.t.Helper()
	resp, err := e.try(c, method, path, contentType, body, nil)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

func (e *env) try(c *http.Client, method, path, contentType string, body []byte, hdr http.Header) (response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.base+path, rd)
	if err != nil {
		return response{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func (e *env) postJSON(c *http.Client, path string, v any) response {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(c, http.MethodPost, path, "application/json", b)
}

// createDevice enrolls name through the API as admin.
func (e *env) createDevice(name string, labels map[string]string) Device {
	e.t.Helper()
	r := e.postJSON(e.admin, "/v1/devices", CreateDeviceRequest{Name: name, Labels: labels})
	if r.status != http.StatusCreated {
		e.t.Fatalf("create %s: %d %s", name, r.status, r.body)
	}
	var d Device
	r.json(e.t, &d)
	return d
}

// defaultDecider is the decision the API runs with in production: the
// default policy through the real engine.
func defaultDecider(t *testing.T) policy.Decider {
	t.Helper()
	eng, err := policy.NewEngine(policies.FS, policy.Options{
		Data: map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": td.Name()}}},
	})
	if err != nil {
		t.Fatalf("policy engine: %v", err)
	}
	return eng
}

// newCSR returns a key and a PEM CSR made with tmpl.
func newCSR(t *testing.T, tmpl *x509.CertificateRequest) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// lockedBuffer is an io.Writer safe for the server's concurrent logging.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// requestLogs returns the decoded "api request" log lines.
func (b *lockedBuffer) requestLogs(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "api request" {
			out = append(out, m)
		}
	}
	return out
}
