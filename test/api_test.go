package test

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
)

type apiCall struct {
	method, path string
	body         any
}

// adminCalls are every admin route, in an order the admin can run them
// successfully (the positive control), with the status it must get.
func adminCalls(t *testing.T) ([]apiCall, []int) {
	t.Helper()
	_, csr, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	calls := []apiCall{
		{"GET", "/v1/devices", nil},
		{"POST", "/v1/devices", map[string]any{"name": "newcomer", "labels": map[string]string{"role": "admin"}}},
		{"GET", "/v1/devices/sensor-1", nil},
		{"POST", "/v1/devices/sensor-1/svid", map[string]string{"csr": string(csr)}},
		{"POST", "/v1/devices/sensor-2/suspend", nil},
		{"POST", "/v1/devices/sensor-2/resume", nil},
		{"GET", "/v1/sessions", nil},
		{"GET", "/metrics", nil},
		{"POST", "/v1/devices/sensor-2/revoke", nil},
	}
	return calls, []int{200, 201, 200, 200, 200, 200, 200, 200, 200}
}

// Rule: the admin API is for role=admin only. A device, a controller and a
// valid but unenrolled SVID get 403 with a JSON error on every admin route,
// and their requests change nothing; the admin then runs the same calls
// successfully (positive control).
func TestAPI_NonAdminIdentitiesForbidden(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	env := f.env
	stranger := env.Issue(t, env.DeviceID("stranger"))
	calls, want := adminCalls(t)

	for _, who := range []struct {
		name string
		dev  *testutil.Device
	}{{"device", f.s1}, {"controller", f.ctl}, {"unenrolled", stranger}} {
		for _, c := range calls {
			res := env.API(t, who.dev, c.method, c.path, c.body)
			if res.Status != 403 {
				t.Errorf("%s: %s %s: %d %s; want 403", who.name, c.method, c.path, res.Status, res.Body)
				continue
			}
			res.ErrorMessage(t)
		}
	}

	// Nothing the refused calls asked for happened.
	if res := env.API(t, env.Admin, "GET", "/v1/devices/newcomer", nil); res.Status != 404 {
		t.Errorf("device created by a refused request: GET newcomer: %d %s", res.Status, res.Body)
	}
	var d struct {
		Status string `json:"status"`
	}
	env.API(t, env.Admin, "GET", "/v1/devices/sensor-2", nil).Decode(t, &d)
	if d.Status != "active" {
		t.Errorf("sensor-2 is %q after refused suspend/revoke; want active", d.Status)
	}

	for i, c := range calls {
		res := env.API(t, env.Admin, c.method, c.path, c.body)
		if res.Status != want[i] {
			t.Errorf("admin: %s %s: %d %s; want %d", c.method, c.path, res.Status, res.Body, want[i])
		}
	}
	env.API(t, env.Admin, "GET", "/v1/devices/sensor-2", nil).Decode(t, &d)
	if d.Status != "revoked" {
		t.Errorf("sensor-2 is %q after the admin revoked it", d.Status)
	}
}

// The API's TLS layer refuses a client without a certificate and one from
// another CA; the admin's request on the same route is the control.
func TestAPI_UntrustedClientsRefused(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	if res := env.API(t, env.Admin, "GET", "/v1/devices", nil); res.Status != 200 {
		t.Fatalf("admin control: %d %s", res.Status, res.Body)
	}
	foreign := testutil.ForeignCert(t, "spiffe://example.org/admin/dev")
	expired := env.CertWith(t, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	})
	for name, dev := range map[string]*testutil.Device{
		"no certificate":  env.WithCert(t, nil),
		"another CA":      env.WithCert(t, &foreign),
		"expired, our CA": env.WithCert(t, &expired),
	} {
		res, err := env.APIRaw(dev, "GET", "/v1/devices", "", nil)
		switch {
		case err != nil:
			t.Logf("%s: refused: %v", name, err)
		case res.Status == 401 || res.Status == 403:
			res.ErrorMessage(t)
		default:
			t.Errorf("%s: GET /v1/devices: %d %s; want the TLS handshake or a 401/403 to refuse it", name, res.Status, res.Body)
		}
	}
}

// Bad input is a 4xx with a JSON error, never a 500 or a crash: broken
// JSON, unknown fields, trailing data, the wrong type, a wrong content
// type, an oversized body, a CSR that asks for its own SAN. A valid
// request afterwards is the positive control.
func TestAPI_BadInputIs4xx(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	env.Enroll(t, "sensor-1", nil)
	big := `{"name":"` + strings.Repeat("a", 1<<20) + `"}`

	for _, c := range []struct {
		name, method, path, ctype string
		body                      string
		want                      int // 0: any 4xx
	}{
		{"truncated JSON", "POST", "/v1/devices", "application/json", `{"name":`, 400},
		{"not JSON", "POST", "/v1/devices", "application/json", `hello`, 400},
		{"empty body", "POST", "/v1/devices", "application/json", ``, 400},
		{"unknown field", "POST", "/v1/devices", "application/json", `{"name":"x1","admin":true}`, 400},
		{"wrong type", "POST", "/v1/devices", "application/json", `{"name":5}`, 400},
		{"labels wrong type", "POST", "/v1/devices", "application/json", `{"name":"x2","labels":["role","admin"]}`, 400},
		{"array", "POST", "/v1/devices", "application/json", `[]`, 400},
		{"trailing data", "POST", "/v1/devices", "application/json", `{"name":"x3"} {"name":"x4"}`, 400},
		{"duplicate", "POST", "/v1/devices", "application/json", `{"name":"sensor-1"}`, 0},
		{"wrong content type", "POST", "/v1/devices", "text/plain", `{"name":"x5"}`, 415},
		{"oversized body", "POST", "/v1/devices", "application/json", big, 413},
		{"oversized CSR", "POST", "/v1/devices/sensor-1/svid", "application/x-pem-file", big, 413},
		{"garbage CSR", "POST", "/v1/devices/sensor-1/svid", "application/json", `{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}`, 400},
		{"CSR asking for a SAN", "POST", "/v1/devices/sensor-1/svid", "application/x-pem-file", csrWithSAN(t), 400},
		{"SVID for unknown device", "POST", "/v1/devices/nobody/svid", "application/x-pem-file", plainCSR(t), 404},
		{"bad name in path", "GET", "/v1/devices/UPPER", "", "", 400},
		{"unknown device", "GET", "/v1/devices/nobody", "", "", 404},
		{"unknown route", "GET", "/v1/nothing-here", "", "", 404},
		{"wrong method", "DELETE", "/v1/sessions", "", "", 405},
	} {
		var body any
		if c.ctype != "" {
			body = []byte(c.body)
		}
		res, err := env.APIRaw(env.Admin, c.method, c.path, c.ctype, body)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if res.Status < 400 || res.Status >= 500 || (c.want != 0 && res.Status != c.want) {
			t.Errorf("%s: %s %s: %d %s; want %d", c.name, c.method, c.path, res.Status, truncate(res.Body), c.want)
			continue
		}
		if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s: Content-Type %q; want application/json", c.name, ct)
		}
		res.ErrorMessage(t)
	}

	// The server is still healthy and serves a valid request.
	if res := env.API(t, env.Admin, "POST", "/v1/devices", map[string]any{"name": "x6"}); res.Status != 201 {
		t.Fatalf("valid request after bad ones: %d %s", res.Status, res.Body)
	}
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// plainCSR is a CSR that requests nothing but its key.
func plainCSR(t *testing.T) string {
	t.Helper()
	_, csr, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	return string(csr)
}

// csrWithSAN is a CSR that asks for a SPIFFE ID of its choosing.
func csrWithSAN(t *testing.T) string {
	t.Helper()
	return string(testpki.CSRPEM(t, testpki.NewKey(t), &x509.CertificateRequest{
		URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/admin/dev"}},
	}))
}

// operation is one operation of api/openapi.yaml.
type operation struct {
	method, path string
	id           string
	public       bool // security: [] (no client certificate needed)
}

// specOperations reads every operation of the API's OpenAPI document, the
// spec the API is tested against, so that a route added there is covered
// here without anyone remembering to.
func specOperations(t *testing.T) []operation {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "api", "openapi.yaml"))
	if err != nil {
		t.Fatalf("read the OpenAPI spec: %v", err)
	}
	var doc struct {
		Paths map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("parse the OpenAPI spec: %v", err)
	}
	var ops []operation
	for path, items := range doc.Paths {
		for method, node := range items {
			switch method {
			case "get", "put", "post", "delete", "patch":
			default:
				continue // parameters, summary, ...
			}
			var op struct {
				OperationID string `yaml:"operationId"`
				Security    *[]any `yaml:"security"`
			}
			if err := node.Decode(&op); err != nil {
				t.Fatalf("parse %s %s: %v", method, path, err)
			}
			ops = append(ops, operation{
				method: strings.ToUpper(method),
				path:   path,
				id:     op.OperationID,
				public: op.Security != nil && len(*op.Security) == 0,
			})
		}
	}
	if len(ops) < 10 {
		t.Fatalf("the OpenAPI spec lists %d operations; the parse is wrong", len(ops))
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].path+ops[i].method < ops[j].path+ops[j].method })
	return ops
}

// selfService are the operations of the spec that are neither public nor
// admin: the caller acts on its own identity only (see the spec).
var selfService = map[string]bool{"renewSVID": true}

// Rule: every admin operation of the API spec, present and future, answers
// 403 with a JSON error to a device, a controller and an unenrolled SVID:
// the request is decided before its body or target is looked at. The admin
// reaching the same operations (any status but 401/403) is the control.
func TestAPI_EveryAdminOperationForbidsNonAdmins(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	env := f.env
	stranger := env.Issue(t, env.DeviceID("stranger"))

	n := 0
	for _, op := range specOperations(t) {
		if op.public || selfService[op.id] {
			continue
		}
		n++
		path := strings.NewReplacer("{name}", "sensor-2").Replace(op.path)
		var body any
		if op.method == "POST" || op.method == "PUT" || op.method == "PATCH" {
			body = []byte(`{}`)
		}
		for _, who := range []struct {
			name string
			dev  *testutil.Device
		}{{"device", f.s1}, {"controller", f.ctl}, {"unenrolled", stranger}} {
			res, err := env.APIRaw(who.dev, op.method, path, "application/json", body)
			if err != nil {
				t.Errorf("%s: %s %s: %v", who.name, op.method, path, err)
				continue
			}
			if res.Status != 403 {
				t.Errorf("%s: %s %s (%s): %d %s; want 403", who.name, op.method, path, op.id, res.Status, truncate(res.Body))
				continue
			}
			res.ErrorMessage(t)
		}
		if op.id == "revokeDevice" {
			continue // the admin control would end sensor-2 for the rest
		}
		res, err := env.APIRaw(env.Admin, op.method, path, "application/json", body)
		if err != nil {
			t.Errorf("admin: %s %s: %v", op.method, path, err)
		} else if res.Status == 401 || res.Status == 403 {
			t.Errorf("admin: %s %s (%s): %d %s; want it past authorization", op.method, path, op.id, res.Status, truncate(res.Body))
		}
	}
	t.Logf("%d admin operations checked", n)

	var d struct {
		Status string `json:"status"`
	}
	env.API(t, env.Admin, "GET", "/v1/devices/sensor-2", nil).Decode(t, &d)
	if d.Status == "revoked" {
		t.Error("sensor-2 was revoked by a refused request")
	}
}

// The self-service renewal mints an SVID for the caller's own identity
// only: an active device gets one for its own SPIFFE ID, which then
// connects as that device (positive control); an unenrolled or suspended
// caller gets 403, and a CSR asking for another identity is refused.
func TestAPI_RenewOnlyOwnIdentity(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	env := f.env
	renew := func(who *testutil.Device, csr string) *testutil.Response {
		t.Helper()
		res, err := env.APIRaw(who, "POST", "/v1/svid/renew", "application/x-pem-file", []byte(csr))
		if err != nil {
			t.Fatalf("renew as %s: %v", who.ID, err)
		}
		return res
	}

	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	res := renew(f.s1, string(csrPEM))
	if res.Status != 200 {
		t.Fatalf("renew as sensor-1: %d %s", res.Status, res.Body)
	}
	var out struct {
		SVIDPEM string `json:"svid_pem"`
	}
	res.Decode(t, &out)
	cert, err := tls.X509KeyPair([]byte(out.SVIDPEM), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != f.s1.ID {
		t.Fatalf("renewed SVID is for %v; want exactly %s", leaf.URIs, f.s1.ID)
	}
	c := env.MustConnect(t, env.WithCert(t, &cert), "renewed", nil)
	c.Pub(t, msg{Topic: "devices/sensor-1/telemetry/renewed", Payload: "ok", QoS: 1})

	if res := renew(f.s1, csrWithSAN(t)); res.Status != 400 {
		t.Errorf("renew with a CSR asking for the admin ID: %d %s; want 400", res.Status, truncate(res.Body))
	}
	if res := renew(env.Issue(t, env.DeviceID("stranger")), plainCSR(t)); res.Status != 403 {
		t.Errorf("renew as an unenrolled SVID: %d %s; want 403", res.Status, truncate(res.Body))
	} else {
		res.ErrorMessage(t)
	}
	env.SetStatus(t, "sensor-2", "suspend")
	if res := renew(f.s2, plainCSR(t)); res.Status != 403 {
		t.Errorf("renew as a suspended device: %d %s; want 403", res.Status, truncate(res.Body))
	} else {
		res.ErrorMessage(t)
	}
}
