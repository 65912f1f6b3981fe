package api

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/registry"
)

func TestCreateToken(t *testing.T) {
	e := newEnv(t)

	// Only an admin mints tokens; nothing is registered by a refused call.
	for _, who := range []struct {
		name   string
		c      *http.Client
		status int
	}{{"device", e.device, 403}, {"unenrolled", e.stranger, 403}, {"anonymous", e.anon, 401}} {
		r := e.postJSON(who.c, "/v1/tokens", TokenRequest{Name: "meter-1"})
		if r.Status != who.status {
			t.Errorf("%s: %d %s, want %d", who.name, r.Status, r.Body, who.status)
		}
		r.StrictError(t)
	}
	if _, err := e.reg.Get("meter-1"); err == nil {
		t.Fatal("a refused token request registered the device")
	}

	before := time.Now()
	r := e.postJSON(e.admin, "/v1/tokens", TokenRequest{Name: "meter-1", TTL: "30m", Labels: map[string]string{"site": "a"}})
	if r.Status != http.StatusCreated {
		t.Fatalf("admin: %d %s", r.Status, r.Body)
	}
	var tr TokenResponse
	r.DecodeJSON(t, &tr)
	if loc := r.Header.Get("Location"); loc != "/v1/devices/meter-1" {
		t.Errorf("Location %q", loc)
	}
	if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q: a token must not be cached", cc)
	}
	if tr.Token == "" || registry.TokenID(tr.Token) == "" {
		t.Fatalf("token %q", tr.Token)
	}
	if want := identity.CAPin(e.ca.Certificate()); tr.CAPin != want {
		t.Errorf("ca_pin %q, want %q", tr.CAPin, want)
	}
	if tr.SPIFFEID != "spiffe://example.org/device/meter-1" || tr.Device.SPIFFEID != tr.SPIFFEID {
		t.Errorf("spiffe_id %q / %q", tr.SPIFFEID, tr.Device.SPIFFEID)
	}
	if tr.Device.Status != "pending" || tr.Device.Labels["site"] != "a" {
		t.Errorf("device %+v", tr.Device)
	}
	if tr.ExpiresAt.Before(before.Add(30*time.Minute-time.Second)) || tr.ExpiresAt.After(time.Now().Add(30*time.Minute)) {
		t.Errorf("expires_at %s, want 30m from now", tr.ExpiresAt)
	}
	// The secret is in the answer only, never in the log.
	secret := tr.Token[strings.Index(tr.Token, ".")+1:]
	if strings.Contains(e.logs.String(), secret) {
		t.Fatal("the token secret is in the log")
	}
	if !strings.Contains(e.logs.String(), registry.TokenID(tr.Token)) {
		t.Error("the token ID is not in the log")
	}

	// Defaults and refusals.
	if tr := e.createToken("meter-2", "", nil); tr.ExpiresAt.After(time.Now().Add(DefaultTokenTTL)) ||
		tr.ExpiresAt.Before(time.Now().Add(DefaultTokenTTL-time.Minute)) {
		t.Errorf("default ttl: expires_at %s", tr.ExpiresAt)
	}
	for _, tc := range []struct {
		req    TokenRequest
		status int
	}{
		{TokenRequest{Name: "m", TTL: "forever"}, 400},
		{TokenRequest{Name: "m", TTL: "0s"}, 400},
		{TokenRequest{Name: "m", TTL: "-1h"}, 400},
		{TokenRequest{Name: "m", TTL: "169h"}, 400}, // over registry.MaxTokenTTL
		{TokenRequest{Name: "M"}, 400},
		{TokenRequest{Name: "a/b"}, 400},
		{TokenRequest{Name: "m", Labels: map[string]string{"bad key": "v"}}, 400},
		{TokenRequest{Name: "sensor-0"}, 409}, // active already
	} {
		if r := e.postJSON(e.admin, "/v1/tokens", tc.req); r.Status != tc.status {
			t.Errorf("%+v: %d %s, want %d", tc.req, r.Status, r.Body, tc.status)
		}
	}
	// Asking again for a pending device replaces its token.
	again := e.createToken("meter-1", "1h", nil)
	if r, _ := e.enroll(e.anon, tr.Token); r.Status != http.StatusUnauthorized {
		t.Fatalf("replaced token: %d %s, want 401", r.Status, r.Body)
	}
	if r, _ := e.enroll(e.anon, again.Token); r.Status != http.StatusOK {
		t.Fatalf("new token: %d %s", r.Status, r.Body)
	}
}

func TestEnrollWithBootstrapToken(t *testing.T) {
	e := newEnv(t)
	tr := e.createToken("meter-1", "1h", map[string]string{"role": "sensor"})

	// The device trusts nothing but the pin: the same client a device
	// builds from `--ca-pin`, checking the name it dials.
	cfg, err := identity.PinnedClientTLSConfig(tr.CAPin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "localhost"
	device := testclient.HTTPClient(t, cfg)

	r, key := e.enroll(device, tr.Token)
	if r.Status != http.StatusOK {
		t.Fatalf("enroll: %d %s", r.Status, r.Body)
	}
	var sv SVIDResponse
	r.DecodeJSON(t, &sv)
	chain := parseChain(t, []byte(sv.SVIDPEM))
	id, err := e.v.Verify(chain)
	if err != nil {
		t.Fatalf("the SVID does not verify: %v", err)
	}
	const want = "spiffe://example.org/device/meter-1"
	if id.String() != want || sv.SPIFFEID != want {
		t.Fatalf("SVID for %s (%s), want %s", id, sv.SPIFFEID, want)
	}
	if !chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Fatal("the SVID does not carry the CSR's key")
	}
	if sv.BundlePEM != string(e.ca.BundlePEM()) || !sv.ExpiresAt.Equal(chain[0].NotAfter) {
		t.Fatalf("bundle or expires_at wrong: %s vs %s", sv.ExpiresAt, chain[0].NotAfter)
	}
	if d, err := e.reg.Get("meter-1"); err != nil || d.Status != registry.StatusActive || d.Labels["role"] != "sensor" {
		t.Fatalf("registry after enrollment: %+v %v", d, err)
	}

	// The SVID works: the device authenticates with it (and is no admin).
	c := e.svidClient(sv, key)
	if r := e.do(c, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("enrolled device on an admin route: %d, want 403", r.Status)
	}
	_, csrPEM := newCSR(t, nil)
	if r := e.do(c, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csrPEM); r.Status != http.StatusOK {
		t.Fatalf("renew with the enrolled SVID: %d %s", r.Status, r.Body)
	}

	// The token is single-use.
	r, _ = e.enroll(device, tr.Token)
	if r.Status != http.StatusUnauthorized || strings.TrimSpace(string(r.Body)) != `{"error":"invalid token"}` {
		t.Fatalf("reused token: %d %s, want 401 invalid token", r.Status, r.Body)
	}
}

// Every way a token can be wrong gets the same 401 and nothing else.
func TestEnrollRefusesBadTokens(t *testing.T) {
	e := newEnv(t)
	good := e.createToken("good", "1h", nil)
	short := e.createToken("short", "1m", nil)
	used := e.createToken("used", "1h", nil)
	if r, _ := e.enroll(e.anon, used.Token); r.Status != http.StatusOK {
		t.Fatalf("first use: %d %s", r.Status, r.Body)
	}
	revoked := e.createToken("gone", "1h", nil)
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/gone/revoke", "", nil); r.Status != http.StatusOK {
		t.Fatalf("revoke: %d", r.Status)
	}
	id := registry.TokenID(good.Token)
	wrongSecret := "ztb_" + id + "." + strings.Repeat("A", 43)
	unknown := "ztb_0123456789abcdef." + strings.Repeat("A", 43)

	cases := []struct {
		name, token string
		advance     time.Duration
	}{
		{"empty", "", 0},
		{"malformed", "not-a-token", 0},
		{"unknown ID", unknown, 0},
		{"right ID, wrong secret", wrongSecret, 0},
		{"used", used.Token, 0},
		{"device revoked since", revoked.Token, 0},
		{"expired", short.Token, 2 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.clock.Advance(tc.advance)
			r, _ := e.enroll(e.anon, tc.token)
			if r.Status != http.StatusUnauthorized {
				t.Fatalf("%d %s, want 401", r.Status, r.Body)
			}
			if got := strings.TrimSpace(string(r.Body)); got != `{"error":"invalid token"}` {
				t.Fatalf("body %s tells more than \"invalid token\"", got)
			}
		})
	}
	// No refusal spent or changed anything: the good token (its secret was
	// guessed wrong above) still works, even after the clock moved.
	if d, _ := e.reg.Get("short"); d.Status != registry.StatusPending {
		t.Fatalf("expired token's device is %s", d.Status)
	}
	if r, _ := e.enroll(e.anon, good.Token); r.Status != http.StatusOK {
		t.Fatalf("control: good token: %d %s", r.Status, r.Body)
	}
	// The log names refused tokens by ID, never by secret.
	logs := e.logs.String()
	if !strings.Contains(logs, `"token_id":"`+id+`"`) {
		t.Error("the refused token's ID is not logged")
	}
	for _, tok := range []string{good.Token, short.Token, used.Token, revoked.Token, wrongSecret} {
		if secret := tok[strings.Index(tok, ".")+1:]; strings.Contains(logs, secret) {
			t.Fatalf("a token secret is in the log")
		}
	}
}

// A token yields the SPIFFE ID it was made for and no other, whatever the
// request asks for.
func TestTokenYieldsOnlyItsOwnID(t *testing.T) {
	e := newEnv(t)
	alpha := e.createToken("alpha", "1h", nil)
	e.createToken("beta", "1h", nil)
	betaURI, _ := url.Parse("spiffe://example.org/device/beta")
	adminURI, _ := url.Parse("spiffe://example.org/admin/dev")

	_, asksBeta := newCSR(t, &x509.CertificateRequest{URIs: []*url.URL{betaURI}})
	_, asksAdmin := newCSR(t, &x509.CertificateRequest{URIs: []*url.URL{adminURI}})
	_, asksDNS := newCSR(t, &x509.CertificateRequest{DNSNames: []string{"localhost"}})
	for name, body := range map[string]string{
		"CSR asking for beta's ID":    mustJSON(t, EnrollRequest{Token: alpha.Token, CSR: string(asksBeta)}),
		"CSR asking for the admin":    mustJSON(t, EnrollRequest{Token: alpha.Token, CSR: string(asksAdmin)}),
		"CSR asking for a DNS name":   mustJSON(t, EnrollRequest{Token: alpha.Token, CSR: string(asksDNS)}),
		"a name field in the request": `{"token":"` + alpha.Token + `","csr":"x","name":"beta"}`,
		"a spiffe_id field":           `{"token":"` + alpha.Token + `","csr":"x","spiffe_id":"spiffe://example.org/device/beta"}`,
	} {
		r := e.do(e.anon, http.MethodPost, "/v1/enroll", "application/json", []byte(body))
		if r.Status != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", name, r.Status, r.Body)
		}
	}
	// None of that spent alpha's token, and a subject naming beta is
	// ignored: the SVID is alpha's.
	_, namesBeta := newCSR(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "beta"}})
	r := e.postJSON(e.anon, "/v1/enroll", EnrollRequest{Token: alpha.Token, CSR: string(namesBeta)})
	if r.Status != http.StatusOK {
		t.Fatalf("alpha: %d %s", r.Status, r.Body)
	}
	var sv SVIDResponse
	r.DecodeJSON(t, &sv)
	id, err := e.v.Verify(parseChain(t, []byte(sv.SVIDPEM)))
	if err != nil || id.String() != "spiffe://example.org/device/alpha" {
		t.Fatalf("alpha's token yielded %s (%v)", id, err)
	}
	if d, _ := e.reg.Get("beta"); d.Status != registry.StatusPending {
		t.Fatalf("beta is %s after alpha enrolled", d.Status)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestEnrollRateLimit(t *testing.T) {
	const burst = 3
	e := newEnv(t, func(c *Config) { c.EnrollRate, c.EnrollBurst = 1, burst })
	e.clock.Freeze()
	tr := e.createToken("meter-1", "1h", nil)

	// The first attempts pass the limiter and reach the token check (the
	// positive control: 401, not 429).
	for i := range burst {
		if r, _ := e.enroll(e.anon, "ztb_guess"); r.Status != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d %s, want 401", i+1, r.Status, r.Body)
		}
	}
	r, _ := e.enroll(e.anon, "ztb_guess")
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") != "1" {
		t.Fatalf("over the burst: %d Retry-After %q %s, want 429", r.Status, r.Header.Get("Retry-After"), r.Body)
	}
	r.StrictError(t)
	// The limit comes before the token is looked at: a good token is
	// refused too, and not spent.
	if r, _ := e.enroll(e.anon, tr.Token); r.Status != http.StatusTooManyRequests {
		t.Fatalf("good token over the limit: %d %s, want 429", r.Status, r.Body)
	}
	if d, _ := e.reg.Get("meter-1"); d.Status != registry.StatusPending {
		t.Fatalf("a rate-limited request enrolled the device: %s", d.Status)
	}

	// Another address has its own budget.
	_, csrPEM := newCSR(t, nil)
	req := httptest.NewRequest(http.MethodPost, "/v1/enroll", strings.NewReader(mustJSON(t, EnrollRequest{Token: "ztb_guess", CSR: string(csrPEM)})))
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = "192.0.2.7:4000"
	req.TLS = &tls.ConnectionState{HandshakeComplete: true}
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("another address: %d %s, want 401", rec.Code, rec.Body)
	}

	// A second later one more attempt is allowed.
	e.clock.Advance(time.Second)
	if r, _ := e.enroll(e.anon, tr.Token); r.Status != http.StatusOK {
		t.Fatalf("after a second: %d %s", r.Status, r.Body)
	}

	m := e.do(e.admin, http.MethodGet, "/metrics", "", nil)
	for _, want := range []string{
		`ztgate_api_enrollments_total{result="rate_limited"} 2`,
		`ztgate_api_enrollments_total{result="invalid_token"} 4`,
		`ztgate_api_enrollments_total{result="ok"} 1`,
	} {
		if !strings.Contains(string(m.Body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestAddrLimiter(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l, err := newAddrLimiter(1, 2, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !l.allow("a", now) || !l.allow("a", now) || l.allow("a", now) {
		t.Fatal("burst of 2 not enforced")
	}
	if !l.allow("b", now) {
		t.Fatal("another key shares the bucket")
	}
	// A flood of addresses never grows the table past its size.
	for i := range 100 {
		l.allow(string(rune('c'+i)), now)
	}
	if n := l.len(); n != 4 {
		t.Fatalf("limiter holds %d addresses, want at most 4", n)
	}
	// Idle entries go: after a full refill none is needed.
	later := now.Add(l.idle)
	l.allow("z", later)
	if n := l.len(); n != 1 {
		t.Fatalf("limiter holds %d addresses after they idled, want 1", n)
	}
}

func TestLimitKey(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.1:443":              "192.0.2.1",
		"[::ffff:192.0.2.1]:443":     "192.0.2.1",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ff::1]:1":     "2001:db8:1:2::/64",
		"[fe80::1%eth0]:1":           "fe80::/64",
		"garbage":                    "unparsed",
		"":                           "unparsed",
		"192.0.2.1":                  "192.0.2.1",
	} {
		if got := limitKey(addr); got != want {
			t.Errorf("limitKey(%q) = %q, want %q", addr, got, want)
		}
	}
}

func TestRenewSVID(t *testing.T) {
	e := newEnv(t)
	devID := spiffeid.RequireFromPath(td, "/device/sensor-0")
	current, _, err := e.ca.IssueSVID(devID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	currentLeaf := parseChain(t, current)[0]

	renew := func(c *http.Client) response {
		t.Helper()
		_, csrPEM := newCSR(t, nil)
		return e.do(c, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csrPEM)
	}

	r := renew(e.device)
	if r.Status != http.StatusOK {
		t.Fatalf("renew: %d %s", r.Status, r.Body)
	}
	var sv SVIDResponse
	r.DecodeJSON(t, &sv)
	chain := parseChain(t, []byte(sv.SVIDPEM))
	id, err := e.v.Verify(chain)
	if err != nil || id != devID || sv.SPIFFEID != devID.String() {
		t.Fatalf("renewed SVID for %s (%v), want %s", id, err, devID)
	}
	if !chain[0].NotAfter.After(currentLeaf.NotAfter) {
		t.Fatalf("renewed NotAfter %s is not after the current one %s", chain[0].NotAfter, currentLeaf.NotAfter)
	}

	// Refusals, each with its positive control.
	if _, err := e.reg.SetStatus("sensor-0", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if r := renew(e.device); r.Status != http.StatusForbidden || !strings.Contains(r.StrictError(t), "suspended") {
		t.Fatalf("suspended device: %d %s, want 403", r.Status, r.Body)
	}
	if _, err := e.reg.SetStatus("sensor-0", registry.StatusActive); err != nil {
		t.Fatal(err)
	}
	if r := renew(e.device); r.Status != http.StatusOK {
		t.Fatalf("resumed device: %d %s", r.Status, r.Body)
	}
	if r := renew(e.stranger); r.Status != http.StatusForbidden {
		t.Fatalf("unenrolled identity: %d %s, want 403", r.Status, r.Body)
	}
	if r := renew(e.anon); r.Status != http.StatusUnauthorized {
		t.Fatalf("no certificate: %d %s, want 401", r.Status, r.Body)
	}
	if _, err := e.reg.SetStatus("sensor-0", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	if r := renew(e.device); r.Status != http.StatusForbidden {
		t.Fatalf("revoked device: %d %s, want 403", r.Status, r.Body)
	}

	// Each refusal is in the audit log, under the caller's identity.
	var denied []string
	for _, a := range e.auditEntries() {
		if a.Action == actionSVIDRenew && a.Result == registry.ResultDenied {
			denied = append(denied, a.Actor+" "+a.Target)
		}
	}
	want := []string{
		devID.String() + " sensor-0",
		"spiffe://example.org/device/ghost spiffe://example.org/device/ghost",
		devID.String() + " sensor-0",
	}
	if strings.Join(denied, "|") != strings.Join(want, "|") {
		t.Fatalf("denied renewals in the audit log:\n%q\nwant\n%q", denied, want)
	}
}

// The renewal budget is the limiter's own: renewals by a device are not
// enrollment attempts.
func TestRenewIsNotRateLimitedAsEnrollment(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EnrollRate, c.EnrollBurst = rate.Limit(1), 1 })
	e.clock.Freeze()
	for i := range 3 {
		_, csrPEM := newCSR(t, nil)
		if r := e.do(e.device, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csrPEM); r.Status != http.StatusOK {
			t.Fatalf("renewal %d: %d %s", i+1, r.Status, r.Body)
		}
	}
}
