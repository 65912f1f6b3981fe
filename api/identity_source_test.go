package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/registry"
)

// partnerTD is a federated trust domain the tests' gateway serves besides
// its own.
var partnerTD = spiffeid.RequireTrustDomainFromString("partner.org")

// withoutCA runs the API as a gateway whose identity comes from files: no
// CA, the trust domain given on its own. The env's CA still signs the
// clients' SVIDs, standing in for the external PKI.
func withoutCA(c *Config) {
	c.CA = nil
	c.TrustDomain = td
	c.IdentitySource = "files"
}

// withPartner serves partnerTD as a federated trust domain.
func withPartner(c *Config) {
	c.TrustDomains = func() []spiffeid.TrustDomain { return []spiffeid.TrustDomain{td, partnerTD} }
}

func TestSigningRoutesAnswer409WithoutCA(t *testing.T) {
	e := newEnv(t, withoutCA)
	_, csr := newCSR(t, nil)
	csrJSON, _ := json.Marshal(SVIDRequest{CSR: string(csr)})
	enrollJSON, _ := json.Marshal(EnrollRequest{Token: "ztb_x", CSR: string(csr)})

	// Positive control: what needs no signature works as with a CA.
	e.createDevice("ext-1", nil)
	if r := e.do(e.admin, http.MethodGet, "/v1/devices/ext-1", "", nil); r.Status != http.StatusOK {
		t.Fatalf("GET device without a CA: %d %s", r.Status, r.Body)
	}

	const want = "api: this gateway signs no certificates (identity source files): "
	cases := []struct {
		name         string
		client       *http.Client
		path, ct     string
		body         []byte
		status       int
		wantInternal string
	}{
		{"admin signs", e.admin, "/v1/devices/ext-1/svid", "application/json", csrJSON, 409, want},
		{"admin mints a token", e.admin, "/v1/tokens", "application/json", []byte(`{"name":"t-1"}`), 409, want},
		{"device enrolls", e.anon, "/v1/enroll", "application/json", enrollJSON, 409, want},
		{"device renews", e.device, "/v1/svid/renew", "application/x-pem-file", csr, 409, want},
		// Authentication and the admin decision still come first.
		{"non-admin mints a token", e.device, "/v1/tokens", "application/json", []byte(`{"name":"t-2"}`), 403, ""},
		{"anonymous renews", e.anon, "/v1/svid/renew", "application/x-pem-file", csr, 401, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.client, http.MethodPost, tc.path, tc.ct, tc.body)
			if r.Status != tc.status {
				t.Fatalf("%s: %d %s, want %d", tc.path, r.Status, r.Body, tc.status)
			}
			if msg := r.StrictError(t); tc.wantInternal != "" && !strings.HasPrefix(msg, tc.wantInternal) {
				t.Fatalf("%s: error %q, want it to start with %q", tc.path, msg, tc.wantInternal)
			}
		})
	}
	// Nothing was created on the way: the token route registers no
	// pending device it cannot enroll.
	if _, err := e.reg.Get("t-1"); err == nil {
		t.Error("the refused token request created a device")
	}
	// The admin's refused signing is in the audit log.
	found := false
	for _, a := range e.auditEntries() {
		found = found || a.Action == actionSVIDIssue && strings.Contains(a.Detail, "409")
	}
	if !found {
		t.Error("the refused signing is not audited")
	}
}

// The route table marks the signing routes; every other route is served
// without a CA.
func TestRouteTableMarksTheSigningRoutes(t *testing.T) {
	want := map[string]bool{
		"POST /v1/devices/{name}/svid": true,
		"POST /v1/tokens":              true,
		"POST /v1/enroll":              true,
		"POST /v1/svid/renew":          true,
	}
	for _, rt := range routes {
		if rt.signs != want[rt.pattern()] {
			t.Errorf("%s: signs=%v, want %v", rt.pattern(), rt.signs, want[rt.pattern()])
		}
	}
}

func TestNewNeedsATrustDomainWithoutCA(t *testing.T) {
	e := newEnv(t)
	base := e.srv.cfg
	base.CA, base.TrustDomain = nil, spiffeid.TrustDomain{}
	if _, err := New(base); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("New without CA or trust domain: %v, want an error naming the trust domain", err)
	}
	other := e.srv.cfg
	other.TrustDomain = partnerTD
	if _, err := New(other); err == nil || !strings.Contains(err.Error(), "partner.org") {
		t.Fatalf("New with a CA of another trust domain: %v, want an error naming both", err)
	}
	base.TrustDomain = td
	if _, err := New(base); err != nil {
		t.Fatalf("New without CA, with a trust domain: %v", err)
	}
}

func TestCreateDeviceOfAFederatedTrustDomain(t *testing.T) {
	e := newEnv(t, withPartner)
	cases := []struct {
		name, id string
		status   int
		errHas   string
	}{
		// A partner's ID follows the partner's naming: the own device
		// namespace rule does not apply to it.
		{"p-1", "spiffe://partner.org/device/pump-7", 201, ""},
		{"p-2", "spiffe://partner.org/workload/x", 201, ""},
		{"p-3", "spiffe://other.org/device/p-3", 400, "other.org"},
		{"p-4", "spiffe://partner.org", 400, "empty path"},
		// The own trust domain keeps its rule.
		{"p-5", "spiffe://example.org/device/someone-else", 400, "device namespace"},
		{"p-6", "spiffe://example.org/device/p-6", 201, ""},
	}
	for _, tc := range cases {
		r := e.postJSON(e.admin, "/v1/devices", CreateDeviceRequest{Name: tc.name, SPIFFEID: tc.id})
		if r.Status != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.name, tc.id, r.Status, r.Body, tc.status)
			continue
		}
		if tc.errHas != "" {
			if msg := r.StrictError(t); !strings.Contains(msg, tc.errHas) {
				t.Errorf("%s: error %q, want it to mention %q", tc.id, msg, tc.errHas)
			}
			continue
		}
		d, err := e.reg.Get(tc.name)
		if err != nil || d.SPIFFEID != tc.id || d.Status != registry.StatusActive {
			t.Errorf("%s: registry has %+v, %v", tc.name, d, err)
		}
	}

	// Without the partner served, its IDs are refused.
	plain := newEnv(t)
	r := plain.postJSON(plain.admin, "/v1/devices", CreateDeviceRequest{Name: "p-1", SPIFFEID: "spiffe://partner.org/device/pump-7"})
	if r.Status != http.StatusBadRequest || !strings.Contains(r.StrictError(t), "partner.org") {
		t.Fatalf("a partner ID without federation: %d %s, want 400 naming partner.org", r.Status, r.Body)
	}

	// The built-in CA signs for its own trust domain only: a partner's
	// device gets its SVID from the partner.
	_, csr := newCSR(t, nil)
	r = e.do(e.admin, http.MethodPost, "/v1/devices/p-1/svid", "application/x-pem-file", csr)
	if r.Status != http.StatusConflict || !strings.Contains(r.StrictError(t), "partner.org") {
		t.Fatalf("signing for a partner device: %d %s, want 409 naming partner.org", r.Status, r.Body)
	}
}

func TestBundleRoute(t *testing.T) {
	const body = `{"keys":[]}`
	served := newEnv(t, func(c *Config) {
		c.BundleEndpoint = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		})
	})
	// Public: a partner fetching the bundle has no SVID of this trust
	// domain.
	r := served.do(served.anon, http.MethodGet, "/v1/bundle", "", nil)
	if r.Status != http.StatusOK || string(r.Body) != body {
		t.Fatalf("GET /v1/bundle: %d %s", r.Status, r.Body)
	}
	off := newEnv(t)
	r = off.do(off.anon, http.MethodGet, "/v1/bundle", "", nil)
	if r.Status != http.StatusNotFound || !strings.Contains(r.StrictError(t), "bundle_endpoint") {
		t.Fatalf("GET /v1/bundle with the endpoint off: %d %s, want 404 naming the setting", r.Status, r.Body)
	}
}
