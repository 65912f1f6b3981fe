package api

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

func TestAdminDeviceLifecycle(t *testing.T) {
	e := newEnv(t)

	// Create: the SPIFFE ID defaults to spiffe://TD/device/NAME.
	r := e.postJSON(e.admin, "/v1/devices", CreateDeviceRequest{Name: "sensor-1", Labels: map[string]string{"role": "sensor"}})
	if r.Status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	if loc := r.Header.Get("Location"); loc != "/v1/devices/sensor-1" {
		t.Errorf("Location %q", loc)
	}
	var d Device
	r.DecodeJSON(t, &d)
	if d.Name != "sensor-1" || d.SPIFFEID != "spiffe://example.org/device/sensor-1" ||
		d.Status != "active" || d.Labels["role"] != "sensor" || d.CreatedAt.IsZero() {
		t.Fatalf("created device %+v", d)
	}

	// An explicit SPIFFE ID outside the device namespace is kept.
	r = e.postJSON(e.admin, "/v1/devices", CreateDeviceRequest{Name: "ctl-1",
		SPIFFEID: "spiffe://example.org/workload/controller", Labels: map[string]string{"role": "controller"}})
	if r.Status != http.StatusCreated {
		t.Fatalf("create with spiffe_id: %d %s", r.Status, r.Body)
	}
	r.DecodeJSON(t, &d)
	if d.SPIFFEID != "spiffe://example.org/workload/controller" {
		t.Fatalf("spiffe_id %q", d.SPIFFEID)
	}

	// List: sorted by name, the fixtures included, on one page.
	r = e.do(e.admin, http.MethodGet, "/v1/devices", "", nil)
	var list DeviceList
	r.DecodeJSON(t, &list)
	var names []string
	for _, d := range list.Devices {
		names = append(names, d.Name)
	}
	if list.Next != "" {
		t.Fatalf("next %q on the only page", list.Next)
	}
	if want := []string{"admin-dev", "ctl-1", "sensor-0", "sensor-1"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("list names %v, want %v", names, want)
	}

	r = e.do(e.admin, http.MethodGet, "/v1/devices/sensor-1", "", nil)
	r.DecodeJSON(t, &d)
	if r.Status != http.StatusOK || d.Name != "sensor-1" {
		t.Fatalf("get: %d %s", r.Status, r.Body)
	}

	steps := []struct {
		path   string
		status int
		want   string // device status after the step, for 200
	}{
		{"/v1/devices/sensor-1/suspend", http.StatusOK, "suspended"},
		{"/v1/devices/sensor-1/suspend", http.StatusOK, "suspended"}, // no-op
		{"/v1/devices/sensor-1/resume", http.StatusOK, "active"},
		{"/v1/devices/sensor-1/revoke", http.StatusOK, "revoked"},
		{"/v1/devices/sensor-1/revoke", http.StatusOK, "revoked"}, // no-op
		{"/v1/devices/sensor-1/resume", http.StatusConflict, ""},  // revocation is final
		{"/v1/devices/sensor-1/suspend", http.StatusConflict, ""},
		{"/v1/devices/nope/suspend", http.StatusNotFound, ""},
	}
	for _, st := range steps {
		r := e.do(e.admin, http.MethodPost, st.path, "", nil)
		if r.Status != st.status {
			t.Fatalf("POST %s: %d %s, want %d", st.path, r.Status, r.Body, st.status)
		}
		if st.status != http.StatusOK {
			r.StrictError(t)
			continue
		}
		r.DecodeJSON(t, &d)
		if d.Status != st.want {
			t.Fatalf("POST %s: status %q, want %q", st.path, d.Status, st.want)
		}
	}

	// The change is visible in the registry (the API adds no state of its own).
	got, err := e.reg.Get("sensor-1")
	if err != nil || got.Status != registry.StatusRevoked {
		t.Fatalf("registry: %+v %v", got, err)
	}

	// Duplicates: the same name, a revoked name, the same SPIFFE ID.
	dups := []CreateDeviceRequest{
		{Name: "ctl-1"},
		{Name: "sensor-1"},
		{Name: "ctl-2", SPIFFEID: "spiffe://example.org/workload/controller"},
	}
	for _, req := range dups {
		r := e.postJSON(e.admin, "/v1/devices", req)
		if r.Status != http.StatusConflict {
			t.Errorf("duplicate %+v: %d %s, want 409", req, r.Status, r.Body)
		} else {
			r.StrictError(t)
		}
	}
}

// Writes are durable before the API answers: a store reopened from the same
// file holds what was acknowledged.
func TestAcknowledgedWritesAreDurable(t *testing.T) {
	dir := t.TempDir()
	var path string
	e := newEnv(t, func(c *Config) {
		path = dir + "/durable.db"
		reg, err := registry.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		c.Registry = reg
		t.Cleanup(func() { _ = reg.Close() })
	})
	e.createDevice("sensor-9", nil)
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/sensor-9/suspend", "", nil); r.Status != http.StatusOK {
		t.Fatalf("suspend: %d %s", r.Status, r.Body)
	}
	if err := e.reg.Close(); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	d, err := reg.Get("sensor-9")
	if err != nil || d.Status != registry.StatusSuspended {
		t.Fatalf("after reopen: %+v %v", d, err)
	}
}

// adminRequest is a well-formed request for an admin route, acting on
// device name where the route takes one.
func adminRequest(t *testing.T, rt route, name string) (path, contentType string, body []byte) {
	t.Helper()
	path = strings.ReplaceAll(rt.path, "{name}", name)
	switch rt.pattern() {
	case "POST /v1/devices":
		return path, "application/json", []byte(`{"name":"` + name + `"}`)
	case "POST /v1/devices/{name}/svid":
		_, csrPEM := newCSR(t, nil)
		return path, "application/x-pem-file", csrPEM
	case "POST /v1/devices/import":
		return path, "application/json", []byte(`{"devices":[{"name":"` + name + `-imported"}]}`)
	case "POST /v1/tokens":
		return path, "application/json", []byte(`{"name":"` + name + `-token"}`)
	case "PUT /v1/policy/modules/{name}":
		return "/v1/policy/modules/extra.rego", "text/plain", []byte("package ztgate.extra\n\nhello := true\n")
	case "POST /v1/policy/eval":
		return path, "application/json", []byte(`{"action":"admin"}`)
	case "DELETE /v1/retained":
		return path + "?topic=devices/" + name + "/state", "", nil
	case "PATCH /v1/devices/{name}/labels":
		return path, "application/json", []byte(`{"set":{"zone":"a"},"remove":["old"]}`)
	case "DELETE /v1/policy/modules/{name}":
		// The module the PUT above uploads (the table lists PUT first).
		return "/v1/policy/modules/extra.rego", "", nil
	}
	return path, "", nil
}

// Every admin route is decided by policy: an enrolled device without the
// admin role and an unenrolled identity are refused on each, while the
// admin (the positive control) is not.
func TestNonAdminIdentitiesForbiddenOnEveryAdminRoute(t *testing.T) {
	var dir string
	e := newEnv(t, withPolicyDir(t, &dir))
	e.createDevice("target", nil)
	rev := e.engine.Status().Revision

	for _, rt := range routes {
		if rt.access != adminAccess {
			continue
		}
		for _, who := range []struct {
			name string
			c    *http.Client
		}{{"device", e.device}, {"unenrolled", e.stranger}} {
			path, ct, body := adminRequest(t, rt, "intruder")
			if strings.Contains(rt.path, "{name}") && !strings.HasPrefix(rt.path, "/v1/policy") {
				path, ct, body = adminRequest(t, rt, "target")
			}
			r := e.do(who.c, rt.method, path, ct, body)
			if r.Status != http.StatusForbidden {
				t.Errorf("%s %s as %s: %d %s, want 403", rt.method, path, who.name, r.Status, r.Body)
				continue
			}
			r.StrictError(t)
		}
	}
	// Nothing the refused requests asked for happened.
	for _, name := range []string{"intruder", "intruder-imported", "intruder-token"} {
		if _, err := e.reg.Get(name); err == nil {
			t.Fatalf("a refused request enrolled %s", name)
		}
	}
	if d, _ := e.reg.Get("target"); d.Status != registry.StatusActive {
		t.Fatalf("a refused request changed target to %s", d.Status)
	}
	if got := e.engine.Status().Revision; got != rev {
		t.Fatal("a refused request changed the policy")
	}

	// Positive control, in an order that leaves every route meaningful.
	e.retained.put("devices/allowed/state", 1)
	for _, rt := range routes {
		if rt.access != adminAccess {
			continue
		}
		path, ct, body := adminRequest(t, rt, "allowed")
		switch {
		case strings.HasSuffix(rt.path, "/revoke"):
			path = "/v1/devices/allowed/revoke"
		case strings.Contains(rt.path, "{name}") && !strings.HasPrefix(rt.path, "/v1/policy"):
			path, ct, body = adminRequest(t, rt, "target")
		}
		switch rt.pattern() {
		case "GET /v1/denials/stream":
			// A stream that does not end; console_stream_test.go
			// reads it.
			continue
		case "GET /v1/console/session":
			// Admitted, but a certificate holder has no console
			// session.
			if r := e.do(e.admin, rt.method, path, ct, body); r.Status != http.StatusNotFound {
				t.Errorf("%s %s as admin: %d %s, want 404", rt.method, path, r.Status, r.Body)
			}
			continue
		}
		if r := e.do(e.admin, rt.method, path, ct, body); r.Status/100 != 2 {
			t.Errorf("%s %s as admin: %d %s, want 2xx", rt.method, path, r.Status, r.Body)
		}
	}
}

// A suspended or revoked admin loses the API at once.
func TestAdminLosesAccessWhenNotActive(t *testing.T) {
	e := newEnv(t)
	if r := e.do(e.admin, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusOK {
		t.Fatalf("control: %d", r.Status)
	}
	if _, err := e.reg.SetStatus("admin-dev", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if r := e.do(e.admin, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("suspended admin: %d %s, want 403", r.Status, r.Body)
	}
}

func TestTransportRefusesInvalidClientCertificates(t *testing.T) {
	e := newEnv(t)

	otherTD := spiffeid.RequireTrustDomainFromString("other.org")
	otherCA, err := identity.LoadOrCreateCA(t.TempDir(), otherTD)
	if err != nil {
		t.Fatal(err)
	}
	foreignPEM, foreignKey, err := otherCA.IssueSVID(spiffeid.RequireFromPath(otherTD, "/admin/dev"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.X509KeyPair(foreignPEM, foreignKey)
	if err != nil {
		t.Fatal(err)
	}
	rogueCA, err := identity.LoadOrCreateCA(t.TempDir(), td) // our trust domain's name, another key
	if err != nil {
		t.Fatal(err)
	}
	roguePEM, rogueKey, err := rogueCA.IssueSVID(spiffeid.RequireFromPath(td, "/admin/dev"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := tls.X509KeyPair(roguePEM, rogueKey)
	if err != nil {
		t.Fatal(err)
	}

	// A certificate that is presented must verify, even on the routes
	// that need none: a bad one fails the handshake, it is not ignored.
	for name, cert := range map[string]*tls.Certificate{
		"SVID of a trust domain we do not serve": &foreign,
		"SVID of a CA we do not trust":           &rogue,
	} {
		t.Run(name, func(t *testing.T) {
			c := testclient.HTTPClient(t, presenting(e.ca, cert))
			for _, path := range []string{"/healthz", "/v1/devices"} {
				r, err := e.try(c, http.MethodGet, path, "", nil, nil)
				if err == nil {
					t.Fatalf("GET %s answered %d %s; want the handshake refused", path, r.Status, r.Body)
				}
			}
		})
	}
	// Positive controls: the same client config with a trusted SVID, and
	// no certificate at all on a route that needs none.
	if r := e.do(e.admin, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusOK {
		t.Fatalf("control: %d", r.Status)
	}
	if r := e.do(e.anon, http.MethodGet, "/healthz", "", nil); r.Status != http.StatusOK {
		t.Fatalf("anonymous healthz: %d", r.Status)
	}
}

// presenting is clientTLS that presents cert whatever the server asks for,
// so the server's verification is what is tested.
func presenting(ca *identity.CA, cert *tls.Certificate) *tls.Config {
	c := clientTLS(ca, nil)
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	return c
}

// Without a client certificate only the public routes answer; every other
// route is a 401, before any policy decision.
func TestAnonymousCallers(t *testing.T) {
	var decisions atomic.Int32
	e := newEnv(t, func(c *Config) {
		next := c.Decider
		c.Decider = policy.DeciderFunc(func(ctx context.Context, in *policy.Input) policy.Decision {
			decisions.Add(1)
			return next.Decide(ctx, in)
		})
	})
	for _, rt := range routes {
		path, ct, body := adminRequest(t, rt, "sensor-0")
		if rt.pattern() == "POST /v1/svid/renew" {
			_, csrPEM := newCSR(t, nil)
			ct, body = "application/x-pem-file", csrPEM
		}
		if rt.pattern() == "POST /v1/enroll" {
			ct, body = "application/json", []byte(`{"token":"ztb_nope","csr":""}`)
		}
		r := e.do(e.anon, rt.method, path, ct, body)
		switch {
		case rt.access != publicAccess:
			if r.Status != http.StatusUnauthorized {
				t.Errorf("%s %s without a certificate: %d %s, want 401", rt.method, path, r.Status, r.Body)
				continue
			}
			r.StrictError(t)
		case rt.path == "/v1/enroll":
			// Reached the handler: a bad request, not a transport error.
			if r.Status != http.StatusBadRequest {
				t.Errorf("enroll without a certificate: %d %s, want 400 (CSR)", r.Status, r.Body)
			}
		case rt.path == "/v1/bundle":
			// Reached the handler, which has no bundle to serve here.
			if r.Status != http.StatusNotFound {
				t.Errorf("bundle without a certificate: %d %s, want 404 (endpoint off)", r.Status, r.Body)
			}
		case rt.pattern() == "GET /ui/login", rt.pattern() == "POST /ui/logout":
			// Reached the handler: no login token, no console session.
			if r.Status != http.StatusUnauthorized {
				t.Errorf("%s without a certificate: %d %s, want 401", rt.pattern(), r.Status, r.Body)
			}
		case rt.pattern() == "POST /ui/login":
			// Reached the handler: not a form.
			if r.Status != http.StatusUnsupportedMediaType {
				t.Errorf("%s without a certificate: %d %s, want 415", rt.pattern(), r.Status, r.Body)
			}
		default:
			if r.Status != http.StatusOK {
				t.Errorf("%s %s without a certificate: %d %s, want 200", rt.method, path, r.Status, r.Body)
			}
		}
	}
	if n := decisions.Load(); n != 0 {
		t.Fatalf("%d policy decisions for anonymous callers, want none", n)
	}
	// Control: the admin gets through, through the policy.
	if r := e.do(e.admin, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusOK || decisions.Load() != 1 {
		t.Fatalf("control: %d, %d decisions", r.Status, decisions.Load())
	}
}

// The handler itself refuses a request without a verified peer, whatever
// the listener in front of it did.
func TestHandlerRefusesRequestsWithoutVerifiedPeer(t *testing.T) {
	e := newEnv(t)

	untrusted := spiffeid.RequireTrustDomainFromString("example.org")
	rogueCA, err := identity.LoadOrCreateCA(t.TempDir(), untrusted) // same name, other key
	if err != nil {
		t.Fatal(err)
	}
	roguePEM, _, err := rogueCA.IssueSVID(spiffeid.RequireFromPath(untrusted, "/admin/dev"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogue := parseChain(t, roguePEM)
	goodPEM, _, err := e.ca.IssueSVID(spiffeid.RequireFromPath(td, "/admin/dev"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good := parseChain(t, goodPEM)

	cases := []struct {
		name   string
		tls    *tls.ConnectionState
		status int
	}{
		{"plain HTTP", nil, http.StatusUnauthorized},
		{"TLS without a certificate", &tls.ConnectionState{HandshakeComplete: true}, http.StatusUnauthorized},
		{"chain from a CA we do not trust", &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: rogue}, http.StatusUnauthorized},
		{"handshake not complete", &tls.ConnectionState{PeerCertificates: good}, http.StatusUnauthorized},
		{"verified admin (control)", &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: good}, http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/v1/devices", nil)
			req.TLS = tc.tls
			rec := httptest.NewRecorder()
			e.srv.Handler().ServeHTTP(rec, req)
			r := response{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}
			if r.Status != tc.status {
				t.Fatalf("%d %s, want %d", r.Status, r.Body, tc.status)
			}
			if tc.status != http.StatusOK {
				r.StrictError(t)
			}
		})
	}
}

func parseChain(t *testing.T, chainPEM []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := chainPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("no certificates in %q", chainPEM)
	}
	return out
}

func TestBadInputIsA4xxWithJSONError(t *testing.T) {
	e := newEnv(t)
	e.createDevice("present", nil)
	big := `{"name":"big","labels":{"k":"` + strings.Repeat("x", maxBodyBytes) + `"}}`

	cases := []struct {
		name, method, path, ct, body string
		status                       int
	}{
		{"malformed JSON", "POST", "/v1/devices", "application/json", `{"name":`, 400},
		{"not an object", "POST", "/v1/devices", "application/json", `["a"]`, 400},
		{"wrong field type", "POST", "/v1/devices", "application/json", `{"name":1}`, 400},
		{"unknown field", "POST", "/v1/devices", "application/json", `{"name":"a","status":"active"}`, 400},
		{"trailing data", "POST", "/v1/devices", "application/json", `{"name":"a"}{"name":"b"}`, 400},
		{"empty body", "POST", "/v1/devices", "application/json", ``, 400},
		{"missing name", "POST", "/v1/devices", "application/json", `{}`, 400},
		{"name with slash", "POST", "/v1/devices", "application/json", `{"name":"a/b"}`, 400},
		{"name with plus", "POST", "/v1/devices", "application/json", `{"name":"a+b"}`, 400},
		{"name with hash", "POST", "/v1/devices", "application/json", `{"name":"a#"}`, 400},
		{"upper-case name", "POST", "/v1/devices", "application/json", `{"name":"A"}`, 400},
		{"dot-dot name", "POST", "/v1/devices", "application/json", `{"name":".."}`, 400},
		{"dot-dot inside name", "POST", "/v1/devices", "application/json", `{"name":"a..b"}`, 400},
		{"leading dash", "POST", "/v1/devices", "application/json", `{"name":"-a"}`, 400},
		{"64-character name", "POST", "/v1/devices", "application/json", `{"name":"` + strings.Repeat("a", 64) + `"}`, 400},
		{"bad label key", "POST", "/v1/devices", "application/json", `{"name":"a","labels":{"bad key":"v"}}`, 400},
		{"spiffe_id not a SPIFFE ID", "POST", "/v1/devices", "application/json", `{"name":"a","spiffe_id":"https://example.org/x"}`, 400},
		{"spiffe_id of another trust domain", "POST", "/v1/devices", "application/json", `{"name":"a","spiffe_id":"spiffe://other.org/device/a"}`, 400},
		{"spiffe_id with empty path", "POST", "/v1/devices", "application/json", `{"name":"a","spiffe_id":"spiffe://example.org"}`, 400},
		{"spiffe_id naming another device", "POST", "/v1/devices", "application/json", `{"name":"a","spiffe_id":"spiffe://example.org/device/b"}`, 400},
		{"spiffe_id below another device", "POST", "/v1/devices", "application/json", `{"name":"a","spiffe_id":"spiffe://example.org/device/a/x"}`, 400},
		{"form content type", "POST", "/v1/devices", "application/x-www-form-urlencoded", `name=a`, 415},
		{"no content type", "POST", "/v1/devices", "", `{"name":"a"}`, 415},
		{"oversized body", "POST", "/v1/devices", "application/json", big, 413},
		{"invalid name in path", "GET", "/v1/devices/A", "", ``, 400},
		{"escaped slash in path", "GET", "/v1/devices/a%2Fb", "", ``, 400},
		{"escaped plus in path", "POST", "/v1/devices/a%2Bb/revoke", "", ``, 400},
		{"unknown device", "GET", "/v1/devices/missing", "", ``, 404},
		{"revoke unknown device", "POST", "/v1/devices/missing/revoke", "", ``, 404},
		{"unknown route", "GET", "/v1/nothing", "", ``, 404},
		{"method not allowed", "PUT", "/v1/devices/present", "", ``, 405},
		{"method not allowed on healthz", "POST", "/healthz", "", ``, 405},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			r := e.do(e.admin, tc.method, tc.path, tc.ct, body)
			if r.Status != tc.status {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, r.Status, r.Body, tc.status)
			}
			r.StrictError(t)
			if tc.status == http.StatusMethodNotAllowed && r.Header.Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
		})
	}
	// None of the refused creates enrolled anything.
	list, err := e.reg.List()
	if err != nil || len(list) != 3 {
		t.Fatalf("registry holds %d devices (%v), want the 3 fixtures", len(list), err)
	}
	// Positive control: a well-formed create with every optional field.
	r := e.postJSON(e.admin, "/v1/devices", CreateDeviceRequest{Name: "a.b_c-1",
		SPIFFEID: "spiffe://example.org/device/a.b_c-1", Labels: map[string]string{"role": "sensor"}})
	if r.Status != http.StatusCreated {
		t.Fatalf("control: %d %s", r.Status, r.Body)
	}
	for _, l := range e.logs.requestLogs(t) {
		if s, _ := l["status"].(float64); s >= 500 {
			t.Errorf("a request got a 5xx: %v", l)
		}
	}
}

func TestSignSVID(t *testing.T) {
	e := newEnv(t)
	e.createDevice("sensor-1", nil)
	const want = "spiffe://example.org/device/sensor-1"

	check := func(t *testing.T, r response, key any) {
		t.Helper()
		if r.Status != http.StatusOK {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		var sv SVIDResponse
		r.DecodeJSON(t, &sv)
		chain := parseChain(t, []byte(sv.SVIDPEM))
		id, err := e.v.Verify(chain)
		if err != nil {
			t.Fatalf("returned chain does not verify: %v", err)
		}
		if id.String() != want || sv.SPIFFEID != want {
			t.Fatalf("ids %s / %s, want %s", id, sv.SPIFFEID, want)
		}
		if len(chain[0].URIs) != 1 || len(chain[0].DNSNames) != 0 {
			t.Fatalf("leaf SANs: URIs %v DNS %v", chain[0].URIs, chain[0].DNSNames)
		}
		if !chain[0].PublicKey.(interface{ Equal(x crypto.PublicKey) bool }).Equal(key) {
			t.Fatal("leaf does not carry the CSR's key")
		}
		if sv.BundlePEM != string(e.ca.BundlePEM()) {
			t.Fatal("bundle_pem is not the CA bundle")
		}
		if !sv.ExpiresAt.Equal(chain[0].NotAfter) || !sv.ExpiresAt.After(time.Now()) {
			t.Fatalf("expires_at %s, leaf NotAfter %s", sv.ExpiresAt, chain[0].NotAfter)
		}
	}

	t.Run("PEM body", func(t *testing.T) {
		key, csrPEM := newCSR(t, nil)
		r := e.do(e.admin, http.MethodPost, "/v1/devices/sensor-1/svid", "application/x-pem-file", csrPEM)
		check(t, r, key.Public())
	})
	t.Run("JSON body", func(t *testing.T) {
		key, csrPEM := newCSR(t, nil)
		r := e.postJSON(e.admin, "/v1/devices/sensor-1/svid", SVIDRequest{CSR: string(csrPEM)})
		check(t, r, key.Public())
	})
	t.Run("signed SVID authenticates as the device", func(t *testing.T) {
		key, csrPEM := newCSR(t, nil)
		r := e.do(e.admin, http.MethodPost, "/v1/devices/sensor-1/svid", "application/x-pem-file", csrPEM)
		check(t, r, key.Public())
		var sv SVIDResponse
		r.DecodeJSON(t, &sv)
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair([]byte(sv.SVIDPEM), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
		if err != nil {
			t.Fatal(err)
		}
		c := testclient.HTTPClient(t, clientTLS(e.ca, &cert))
		if r := e.do(c, http.MethodGet, "/healthz", "", nil); r.Status != http.StatusOK {
			t.Fatalf("healthz with the new SVID: %d", r.Status)
		}
		// The device is no admin.
		if r := e.do(c, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
			t.Fatalf("admin route with a device SVID: %d, want 403", r.Status)
		}
		logs := e.logs.requestLogs(t)
		if last := logs[len(logs)-1]; last["spiffe_id"] != want || last["status"] != float64(403) {
			t.Fatalf("last request log %v", last)
		}
	})
}

func TestSignSVIDRefusals(t *testing.T) {
	e := newEnv(t)
	e.createDevice("sensor-1", nil)
	e.createDevice("paused", nil)
	e.createDevice("gone", nil)
	for _, step := range []struct{ name, action string }{{"paused", "suspend"}, {"gone", "revoke"}} {
		if r := e.do(e.admin, http.MethodPost, "/v1/devices/"+step.name+"/"+step.action, "", nil); r.Status != http.StatusOK {
			t.Fatalf("%s %s: %d", step.action, step.name, r.Status)
		}
	}

	_, good := newCSR(t, nil)
	_, withDNS := newCSR(t, &x509.CertificateRequest{DNSNames: []string{"gateway.example.org"}})
	adminURI, _ := url.Parse("spiffe://example.org/admin/dev")
	_, withURI := newCSR(t, &x509.CertificateRequest{URIs: []*url.URL{adminURI}})
	block, _ := pem.Decode(good)
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	tamperedPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})
	garbage := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("not DER")})
	twice := append(append([]byte(nil), good...), good...)
	huge := append(append([]byte(nil), good...), []byte(strings.Repeat("#", maxBodyBytes))...)

	cases := []struct {
		name, device, ct string
		body             []byte
		status           int
	}{
		{"not PEM", "sensor-1", "application/x-pem-file", []byte("hello"), 400},
		{"empty", "sensor-1", "application/x-pem-file", nil, 400},
		{"certificate instead of CSR", "sensor-1", "application/x-pem-file", certPEM, 400},
		{"garbage DER", "sensor-1", "application/x-pem-file", garbage, 400},
		{"bad signature", "sensor-1", "application/x-pem-file", tamperedPEM, 400},
		{"two CSRs", "sensor-1", "application/x-pem-file", twice, 400},
		{"requests a DNS SAN", "sensor-1", "application/x-pem-file", withDNS, 400},
		{"requests the admin's SPIFFE ID", "sensor-1", "application/x-pem-file", withURI, 400},
		{"empty JSON csr", "sensor-1", "application/json", []byte(`{"csr":""}`), 400},
		{"unknown JSON field", "sensor-1", "application/json", []byte(`{"csr":"x","ttl":"87600h"}`), 400},
		{"wrong content type", "sensor-1", "text/plain", good, 415},
		{"no content type", "sensor-1", "", good, 415},
		{"oversized", "sensor-1", "application/x-pem-file", huge, 413},
		{"unknown device", "missing", "application/x-pem-file", good, 404},
		{"suspended device", "paused", "application/x-pem-file", good, 409},
		{"revoked device", "gone", "application/x-pem-file", good, 409},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(e.admin, http.MethodPost, "/v1/devices/"+tc.device+"/svid", tc.ct, tc.body)
			if r.Status != tc.status {
				t.Fatalf("%d %s, want %d", r.Status, r.Body, tc.status)
			}
			msg := r.StrictError(t)
			// Refused before signing, not only by the re-check after it.
			if tc.status == http.StatusConflict && !strings.Contains(msg, "only an active device") {
				t.Errorf("409 message %q", msg)
			}
		})
	}
	// Positive control: the good CSR for the active device.
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/sensor-1/svid", "application/x-pem-file", good); r.Status != http.StatusOK {
		t.Fatalf("control: %d %s", r.Status, r.Body)
	}
	// And a resumed device gets its SVID again.
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/paused/resume", "", nil); r.Status != http.StatusOK {
		t.Fatalf("resume: %d", r.Status)
	}
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/paused/svid", "application/x-pem-file", good); r.Status != http.StatusOK {
		t.Fatalf("resumed device: %d %s", r.Status, r.Body)
	}
}

func TestHealthz(t *testing.T) {
	e := newEnv(t)
	for _, c := range []*http.Client{e.admin, e.device, e.stranger} {
		r := e.do(c, http.MethodGet, "/healthz", "", nil)
		var h Health
		r.DecodeJSON(t, &h)
		if r.Status != http.StatusOK || h.Status != "ok" {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
	}
}

func TestMetricsRequireAdmin(t *testing.T) {
	e := newEnv(t)
	for _, c := range []*http.Client{e.device, e.stranger} {
		if r := e.do(c, http.MethodGet, "/metrics", "", nil); r.Status != http.StatusForbidden {
			t.Fatalf("non-admin: %d, want 403", r.Status)
		}
	}
	e.do(e.admin, http.MethodGet, "/v1/devices", "", nil)
	r := e.do(e.admin, http.MethodGet, "/metrics", "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("admin: %d %s", r.Status, r.Body)
	}
	for _, want := range []string{
		`ztgate_api_requests_total{code="200",method="GET",route="GET /v1/devices"} 1`,
		`ztgate_api_requests_total{code="403",method="GET",route="GET /metrics"} 2`,
		`ztgate_api_policy_denials_total 2`,
		"go_goroutines",
		"process_",
	} {
		if !strings.Contains(string(r.Body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestSessions(t *testing.T) {
	t.Run("no provider", func(t *testing.T) {
		e := newEnv(t)
		r := e.do(e.admin, http.MethodGet, "/v1/sessions", "", nil)
		if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != "[]" {
			t.Fatalf("%d %s, want 200 []", r.Status, r.Body)
		}
	})
	t.Run("provider", func(t *testing.T) {
		at := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
		sessions := []brokerview.Session{{ClientID: "c1", SPIFFEID: "spiffe://example.org/device/sensor-0",
			Device: "sensor-0", RemoteAddr: "127.0.0.1:5000", ProtocolVersion: 5, ConnectedAt: at}}
		e := newEnv(t, func(c *Config) {
			c.Sessions = func(context.Context, string) ([]brokerview.Session, error) { return sessions, nil }
		})
		r := e.do(e.admin, http.MethodGet, "/v1/sessions", "", nil)
		var raw []map[string]any
		r.DecodeJSON(t, &raw)
		want := []map[string]any{{"client_id": "c1", "spiffe_id": "spiffe://example.org/device/sensor-0",
			"device": "sensor-0", "remote_addr": "127.0.0.1:5000", "protocol_version": float64(5),
			"connected_at": "2026-11-28T12:00:00Z", "subscriptions": []any{}, "queue_depth": float64(0)}}
		if !reflect.DeepEqual(raw, want) {
			t.Fatalf("sessions %v, want %v", raw, want)
		}
		if r := e.do(e.device, http.MethodGet, "/v1/sessions", "", nil); r.Status != http.StatusForbidden {
			t.Fatalf("device: %d, want 403", r.Status)
		}
	})
}

// The policy sees exactly the admin input of the contract.
func TestPolicyInput(t *testing.T) {
	var mu sync.Mutex
	var seen []policy.Input
	e := newEnv(t, func(c *Config) {
		next := c.Decider
		c.Decider = policy.DeciderFunc(func(ctx context.Context, in *policy.Input) policy.Decision {
			mu.Lock()
			seen = append(seen, *in)
			mu.Unlock()
			if _, ok := ctx.Deadline(); !ok {
				t.Error("decision without a deadline")
			}
			return next.Decide(ctx, in)
		})
	})
	e.do(e.admin, http.MethodPost, "/v1/devices/sensor-0/suspend", "", nil)
	e.do(e.stranger, http.MethodGet, "/v1/devices", "", nil)
	e.do(e.admin, http.MethodGet, "/healthz", "", nil) // not decided

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("%d decisions, want 2", len(seen))
	}
	a, s := seen[0], seen[1]
	if a.Action != policy.ActionAdmin || a.Request == nil || *a.Request != (policy.Request{Method: "POST", Path: "/v1/devices/sensor-0/suspend", Route: "device.suspend"}) {
		t.Fatalf("admin input %+v %+v", a, a.Request)
	}
	wantID := policy.Identity{SPIFFEID: "spiffe://example.org/admin/dev", TrustDomain: "example.org",
		Path: "/admin/dev", Segments: []string{"admin", "dev"}}
	if !reflect.DeepEqual(a.Subject.Identity, wantID) {
		t.Fatalf("identity %+v", a.Subject.Identity)
	}
	if d := a.Subject.Device; d == nil || d.Name != "admin-dev" || d.Status != "active" || d.Labels["role"] != "admin" {
		t.Fatalf("device %+v", d)
	}
	if a.Subject.Client.RemoteAddr == "" || a.Time.IsZero() || a.Time.Location() != time.UTC {
		t.Fatalf("client %+v time %v", a.Subject.Client, a.Time)
	}
	if a.Topic != "" || a.Filter != "" {
		t.Fatalf("MQTT fields set on an admin input: %+v", a)
	}
	if s.Subject.Device != nil || s.Subject.Identity.SPIFFEID != "spiffe://example.org/device/ghost" {
		t.Fatalf("unenrolled input %+v", s.Subject)
	}
	if *s.Request != (policy.Request{Method: "GET", Path: "/v1/devices", Route: "device.list"}) {
		t.Fatalf("unenrolled request %+v", s.Request)
	}
}

// An evaluation error denies, even with Allow set.
func TestDecisionErrorFailsClosed(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Decider = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
			return policy.Decision{Allow: true, Err: context.DeadlineExceeded}
		})
	})
	if r := e.do(e.admin, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("%d %s, want 403", r.Status, r.Body)
	}
}

// A browser that holds an admin certificate cannot be made to change state
// by another site.
func TestCrossOriginRequestsRefused(t *testing.T) {
	e := newEnv(t)
	body := []byte(`{"name":"csrf"}`)
	for _, h := range []http.Header{
		{"Sec-Fetch-Site": {"cross-site"}},
		{"Origin": {"https://evil.example"}},
	} {
		r, err := e.try(e.admin, http.MethodPost, "/v1/devices", "application/json", body, h)
		if err != nil || r.Status != http.StatusForbidden {
			t.Fatalf("cross-origin %v: %d %v, want 403", h, r.Status, err)
		}
		r.StrictError(t)
	}
	if _, err := e.reg.Get("csrf"); err == nil {
		t.Fatal("cross-origin create succeeded")
	}
	// Control: the same request from a non-browser client.
	if r := e.do(e.admin, http.MethodPost, "/v1/devices", "application/json", body); r.Status != http.StatusCreated {
		t.Fatalf("control: %d %s", r.Status, r.Body)
	}
}

func TestRequestLog(t *testing.T) {
	e := newEnv(t)
	e.do(e.admin, http.MethodGet, "/v1/devices/sensor-0", "", nil)
	logs := e.logs.requestLogs(t)
	if len(logs) == 0 {
		t.Fatal("no request log")
	}
	l := logs[len(logs)-1]
	if l["method"] != "GET" || l["path"] != "/v1/devices/sensor-0" || l["status"] != float64(200) ||
		l["spiffe_id"] != "spiffe://example.org/admin/dev" || l["duration"] == nil {
		t.Fatalf("log %v", l)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	e := newEnv(t)
	full := e.srv.cfg
	full.Metrics = nil
	cases := map[string]func(*Config){
		"no TLS":      func(c *Config) { c.TLS = nil },
		"no registry": func(c *Config) { c.Registry = nil },
		"no CA":       func(c *Config) { c.CA, c.TrustDomain = nil, spiffeid.TrustDomain{} },
		"no verifier": func(c *Config) { c.Verifier = nil },
		"no decider":  func(c *Config) { c.Decider = nil },
		"negative ttl": func(c *Config) {
			c.SVIDTTL = -time.Second
		},
		"negative enroll rate":  func(c *Config) { c.EnrollRate = -1 },
		"negative enroll burst": func(c *Config) { c.EnrollBurst = -1 },
	}
	for name, mut := range cases {
		c := full
		mut(&c)
		if _, err := New(c); err == nil || !strings.HasPrefix(err.Error(), "api: ") {
			t.Errorf("%s: err %v", name, err)
		}
	}
	s, err := New(full)
	if err != nil {
		t.Fatalf("control: %v", err)
	}
	if s.Addr() != nil {
		t.Fatal("Addr before Start")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close before Start: %v", err)
	}
	// A second server on one metrics registry shares the API's series.
	full.Metrics = e.srv.cfg.Metrics
	if _, err := New(full); err != nil {
		t.Fatalf("shared metrics registry: %v", err)
	}
	if err := e.srv.Start(); err == nil {
		t.Fatal("second Start succeeded")
	}
}

// The exported wire types and the spec's schemas name the same fields, so
// the two cannot drift apart silently.
func TestWireTypesMatchSpecFields(t *testing.T) {
	spec := loadSpec(t)
	types := map[string]any{
		"Device":              Device{},
		"DeviceList":          DeviceList{},
		"CreateDeviceRequest": CreateDeviceRequest{},
		"ImportRequest":       ImportRequest{},
		"ImportDevice":        ImportDevice{},
		"ImportResponse":      ImportResponse{},
		"ImportResult":        ImportResult{},
		"SVIDRequest":         SVIDRequest{},
		"SVIDResponse":        SVIDResponse{},
		"TokenRequest":        TokenRequest{},
		"TokenResponse":       TokenResponse{},
		"EnrollRequest":       EnrollRequest{},
		"AuditEntry":          AuditEntry{},
		"AuditList":           AuditList{},
		"PolicyStatus":        PolicyStatus{},
		"EvalResponse":        EvalResponse{},
		"Session":             brokerview.Session{},
		"RetainedMessage":     brokerview.RetainedMessage{},
		"RetainedList":        RetainedList{},
		"Health":              Health{},
		"Readiness":           Readiness{},
		"Error":               ErrorResponse{},
	}
	for name, v := range types {
		schema, ok := spec.Components.Schemas[name]
		if !ok {
			t.Errorf("schema %s missing", name)
			continue
		}
		var specFields []string
		for f := range schema.Properties {
			specFields = append(specFields, f)
		}
		rt := reflect.TypeOf(v)
		var goFields []string
		for i := 0; i < rt.NumField(); i++ {
			goFields = append(goFields, strings.Split(rt.Field(i).Tag.Get("json"), ",")[0])
		}
		if !sameSet(specFields, goFields) {
			t.Errorf("%s: spec fields %v, Go fields %v", name, specFields, goFields)
		}
	}
}
