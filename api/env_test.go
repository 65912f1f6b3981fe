package api

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/ztgate/ztgate/console"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
	"github.com/ztgate/ztgate/registry"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// env is a running API server over real mTLS on 127.0.0.1, with a real CA,
// registry and policy decision, and clients holding real SVIDs.
type env struct {
	t      *testing.T
	ca     *identity.CA
	v      *identity.Verifier
	reg    *registry.Store
	engine *policy.Engine
	srv    *Server
	base   string // https://127.0.0.1:PORT
	logs   *lockedBuffer
	clock  *testClock // the server's clock (token expiry, rate limits)
	// retained stands in for the gateway's retained messages (unless an
	// option replaced the functions).
	retained *fakeRetained

	admin    *http.Client // enrolled, role=admin
	device   *http.Client // enrolled device sensor-0, no admin role
	stranger *http.Client // valid SVID, not enrolled
	anon     *http.Client // trusts the CA, presents no certificate
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
	eng := defaultEngine(t)
	retained := newFakeRetained()
	con, err := console.New(console.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		// The console is on as in the gateway; an option may turn it off.
		Console:  con,
		Addr:     "127.0.0.1:0",
		TLS:      identity.APIServerTLSConfig(cert, v),
		Registry: reg,
		CA:       ca,
		Verifier: v,
		Decider:  eng,
		Policy:   eng,
		// Tests that are about the limits set them; the others would
		// otherwise trip over them.
		EnrollRate:     rate.Inf,
		RenewRate:      rate.Inf,
		ListRetained:   retained.list,
		DeleteRetained: retained.delete,
		Logger:         slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	clock := &testClock{}
	srv.now = clock.Now // before Start: no request can see the old clock
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})

	reg = cfg.Registry // an option may bring its own
	e := &env{t: t, ca: ca, v: v, reg: reg, engine: eng, srv: srv, base: "https://" + srv.Addr().String(),
		logs: logs, clock: clock, retained: retained}
	if pe, ok := cfg.Policy.(*policy.Engine); ok {
		e.engine = pe
	}

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
	e.anon = testclient.HTTPClient(t, clientTLS(ca, nil))
	return e
}

// withPolicyDir backs the policy engine with a directory holding the
// default policy, so modules can be uploaded; it returns the directory.
func withPolicyDir(t *testing.T, dir *string) envOption {
	return func(c *Config) {
		*dir = t.TempDir()
		entries, err := fs.ReadDir(defaultpolicy.FS, ".")
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range entries {
			if !strings.HasSuffix(de.Name(), ".rego") {
				continue
			}
			b, err := fs.ReadFile(defaultpolicy.FS, de.Name())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(*dir, de.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		eng := defaultEngine(t)
		if err := eng.LoadDir(*dir); err != nil {
			t.Fatalf("LoadDir: %v", err)
		}
		c.Decider, c.Policy = eng, eng
	}
}

// withPolicy runs the API with a policy of its own: modules (file name ->
// Rego source) in a fresh policy directory, so that modules can be uploaded
// as well.
func withPolicy(t *testing.T, modules map[string]string) envOption {
	return func(c *Config) {
		dir := t.TempDir()
		for name, src := range modules {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		fsys, err := policy.LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		eng, err := policy.NewEngine(fsys, policy.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("policy engine: %v", err)
		}
		if err := eng.LoadDir(dir); err != nil {
			t.Fatalf("LoadDir: %v", err)
		}
		c.Decider, c.Policy = eng, eng
	}
}

// enrolledClient enrolls name (an active device with labels, under
// spiffe://TD/device/NAME) in the registry and returns a client holding its
// SVID.
func (e *env) enrolledClient(name string, labels map[string]string) *http.Client {
	e.t.Helper()
	id := spiffeid.RequireFromPath(td, "/device/"+name)
	if _, err := e.reg.Create(registry.Device{Name: name, SPIFFEID: id.String(), Labels: labels}); err != nil {
		e.t.Fatalf("enroll %s: %v", name, err)
	}
	return e.clientFor(id)
}

// raw sends one HTTP/1.1 request with exactly the request target given,
// over TLS with the client certificate of c (nil: none), so that no client
// library cleans or re-escapes the path on the way.
func (e *env) raw(c *http.Client, method, target, contentType string, body []byte) response {
	e.t.Helper()
	cfg := clientTLS(e.ca, nil)
	if c != nil {
		cfg = c.Transport.(*http.Transport).TLSClientConfig.Clone()
	}
	cfg.NextProtos = []string{"http/1.1"}
	addr := strings.TrimPrefix(e.base, "https://")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		e.t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, target, addr)
	if contentType != "" {
		fmt.Fprintf(&req, "Content-Type: %s\r\n", contentType)
	}
	fmt.Fprintf(&req, "Content-Length: %d\r\n\r\n", len(body))
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		e.t.Fatalf("%s %s: write: %v", method, target, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		e.t.Fatalf("%s %s: read: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: body: %v", method, target, err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// testClock is the server's clock in tests: real time moved by an offset,
// or frozen.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
	frozen time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.frozen.IsZero() {
		return c.frozen
	}
	return time.Now().Add(c.offset)
}

// Advance moves the clock forward by d.
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.frozen.IsZero() {
		c.frozen = c.frozen.Add(d)
	}
	c.offset += d
}

// Freeze stops the clock at its current time.
func (c *testClock) Freeze() {
	now := c.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frozen = now
}

// clientTLS is a client config that trusts ca, with cert (if any) as its SVID.
func clientTLS(ca *identity.CA, cert *tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.BundlePEM())
	return testclient.TLSConfig(pool, cert)
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
	return testclient.HTTPClient(e.t, clientTLS(e.ca, &cert))
}

// response is a finished request: status, headers and body. The tests
// read the API's answers with DecodeJSON and its errors with StrictError:
// Content-Type application/json, and nothing but {"error": "..."}.
type response = testclient.Response

// do sends a request; contentType "" sends none.
func (e *env) do(c *http.Client, method, path, contentType string, body []byte) response {
	e.t.Helper()
	resp, err := e.try(c, method, path, contentType, body, nil)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// try is do returning the transport error instead of failing the test.
func (e *env) try(c *http.Client, method, path, contentType string, body []byte, hdr http.Header) (response, error) {
	return testclient.Do(c, method, e.base+path, contentType, body, hdr)
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
	if r.Status != http.StatusCreated {
		e.t.Fatalf("create %s: %d %s", name, r.Status, r.Body)
	}
	var d Device
	r.DecodeJSON(e.t, &d)
	return d
}

// defaultEngine is the decision the API runs with in production: the
// default policy through the real engine.
func defaultEngine(t *testing.T) *policy.Engine {
	t.Helper()
	eng, err := policy.NewEngine(defaultpolicy.FS, policy.Options{
		Logger: slog.New(slog.DiscardHandler),
		Data:   map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": td.Name()}}},
	})
	if err != nil {
		t.Fatalf("policy engine: %v", err)
	}
	return eng
}

// newCSR returns a key and a PEM CSR made with tmpl.
func newCSR(t *testing.T, tmpl *x509.CertificateRequest) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key := testpki.NewKey(t)
	return key, testpki.CSRPEM(t, key, tmpl)
}

// lockedBuffer is the server's log, written concurrently, plus a reader
// of its request lines.
type lockedBuffer struct{ testpki.LogBuffer }

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

// createToken mints a bootstrap token for name through the API as admin.
func (e *env) createToken(name, ttl string, labels map[string]string) TokenResponse {
	e.t.Helper()
	r := e.postJSON(e.admin, "/v1/tokens", TokenRequest{Name: name, TTL: ttl, Labels: labels})
	if r.Status != http.StatusCreated {
		e.t.Fatalf("token for %s: %d %s", name, r.Status, r.Body)
	}
	var tr TokenResponse
	r.DecodeJSON(e.t, &tr)
	return tr
}

// enroll redeems token with a fresh key through c (no client certificate).
func (e *env) enroll(c *http.Client, token string) (response, *ecdsa.PrivateKey) {
	e.t.Helper()
	key, csrPEM := newCSR(e.t, nil)
	return e.postJSON(c, "/v1/enroll", EnrollRequest{Token: token, CSR: string(csrPEM)}), key
}

// svidClient returns a client holding the SVID of an SVID response and key.
func (e *env) svidClient(sv SVIDResponse, key *ecdsa.PrivateKey) *http.Client {
	e.t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(sv.SVIDPEM), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		e.t.Fatal(err)
	}
	return testclient.HTTPClient(e.t, clientTLS(e.ca, &cert))
}

// auditEntries returns the whole audit log through the API.
func (e *env) auditEntries() []AuditEntry {
	e.t.Helper()
	var out []AuditEntry
	var after uint64
	for range 1000 {
		r := e.do(e.admin, http.MethodGet, "/v1/audit?limit=1000&after="+strconv.FormatUint(after, 10), "", nil)
		if r.Status != http.StatusOK {
			e.t.Fatalf("audit: %d %s", r.Status, r.Body)
		}
		var page AuditList
		r.DecodeJSON(e.t, &page)
		out = append(out, page.Entries...)
		if page.Next == 0 {
			return out
		}
		after = page.Next
	}
	e.t.Fatal("audit log does not end")
	return nil
}
