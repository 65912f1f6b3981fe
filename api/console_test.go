package api

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/console"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/registry"
)

// consoleEnv is an env with a console, on a clock of its own.
type consoleEnv struct {
	*env
	con   *console.Console
	clock *testClock
	// browser presents no certificate and follows no redirect, as a
	// browser's fetch with redirect "manual" would.
	browser *http.Client
}

func withConsole(c *console.Console) envOption {
	return func(cfg *Config) { cfg.Console = c }
}

func newConsoleEnv(t *testing.T, opts ...envOption) *consoleEnv {
	t.Helper()
	clock := &testClock{}
	con, err := console.New(console.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, append([]envOption{withConsole(con)}, opts...)...)
	b := testclient.HTTPClient(t, clientTLS(e.ca, nil))
	b.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &consoleEnv{env: e, con: con, clock: clock, browser: b}
}

// mint asks for a login token as the admin, with its certificate.
func (e *consoleEnv) mint() LoginResponse {
	e.t.Helper()
	r := e.do(e.admin, http.MethodPost, "/v1/console/logins", "", nil)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("mint: %d %s", r.Status, r.Body)
	}
	var lr LoginResponse
	r.DecodeJSON(e.t, &lr)
	return lr
}

// signIn posts the sign-in form with token, as the page's button does.
func (e *consoleEnv) signIn(token string) response {
	e.t.Helper()
	resp, err := testclient.Do(e.browser, http.MethodPost, e.base+"/ui/login", "application/x-www-form-urlencoded",
		[]byte(url.Values{"token": {token}}.Encode()), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

// session signs in with a fresh token and returns the cookie's value and
// the session's CSRF token.
func (e *consoleEnv) session() (cookie, csrf string) {
	e.t.Helper()
	r := e.signIn(e.mint().Token)
	if r.Status != http.StatusSeeOther {
		e.t.Fatalf("sign in: %d %s", r.Status, r.Body)
	}
	for _, c := range (&http.Response{Header: r.Header}).Cookies() {
		if c.Name == console.CookieName {
			cookie = c.Value
		}
	}
	if cookie == "" {
		e.t.Fatalf("no session cookie in %q", r.Header.Values("Set-Cookie"))
	}
	s := e.withCookie(cookie, "", http.MethodGet, "/v1/console/session", "", nil)
	if s.Status != http.StatusOK {
		e.t.Fatalf("console session: %d %s", s.Status, s.Body)
	}
	var cs ConsoleSession
	s.DecodeJSON(e.t, &cs)
	return cookie, cs.CSRFToken
}

// withCookie sends a request as the browser: the cookie, no certificate,
// and the CSRF header when csrf is not "".
func (e *consoleEnv) withCookie(cookie, csrf, method, path, ct string, body []byte) response {
	e.t.Helper()
	return e.withCookieFrom(e.browser, cookie, csrf, method, path, ct, body)
}

func (e *consoleEnv) withCookieFrom(c *http.Client, cookie, csrf, method, path, ct string, body []byte) response {
	e.t.Helper()
	hdr := http.Header{}
	if cookie != "" {
		hdr.Set("Cookie", console.CookieName+"="+cookie)
	}
	if csrf != "" {
		hdr.Set(console.CSRFHeader, csrf)
	}
	r, err := e.try(c, method, path, ct, body, hdr)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func TestConsoleLoginMint(t *testing.T) {
	e := newConsoleEnv(t)
	e.clock.Freeze()
	lr := e.mint()
	if len(lr.Token) < 43 || lr.Path != "/ui/login?token="+lr.Token {
		t.Fatalf("login %+v", lr)
	}
	if want := e.clock.Now().Add(5 * time.Minute).UTC(); !lr.ExpiresAt.Equal(want.Truncate(time.Second)) && !lr.ExpiresAt.Equal(want) {
		t.Fatalf("expires_at %s, want %s", lr.ExpiresAt, want)
	}
	// Only an admin mints.
	if r := e.do(e.device, http.MethodPost, "/v1/console/logins", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device mints: %d %s", r.Status, r.Body)
	}
	if r := e.do(e.anon, http.MethodPost, "/v1/console/logins", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous mints: %d %s", r.Status, r.Body)
	}
	// Minting is audited with who asked.
	found := false
	for _, a := range e.auditEntries() {
		if a.Action == "console.login" && a.Result == "ok" && a.Actor == "spiffe://example.org/admin/dev" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no audit entry of the login: %+v", e.auditEntries())
	}
}

func TestConsoleSignInIsOneTime(t *testing.T) {
	e := newConsoleEnv(t)
	lr := e.mint()
	page, err := testclient.Do(e.browser, http.MethodGet, e.base+lr.Path, "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != http.StatusOK || !strings.Contains(string(page.Body), `name="token" value="`+lr.Token+`"`) ||
		!strings.Contains(string(page.Body), "Sign in") {
		t.Fatalf("login page: %d %s", page.Status, page.Body)
	}
	if page.Header.Get("Content-Security-Policy") != console.ContentSecurityPolicy || page.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("login page headers %v", page.Header)
	}

	r := e.signIn(lr.Token)
	if r.Status != http.StatusSeeOther || r.Header.Get("Location") != "/ui/" {
		t.Fatalf("sign in: %d %v %s", r.Status, r.Header, r.Body)
	}
	cookies := r.Header.Values("Set-Cookie")
	if len(cookies) != 1 {
		t.Fatalf("Set-Cookie %q", cookies)
	}
	attrs := strings.Split(cookies[0], "; ")
	name, value, _ := strings.Cut(attrs[0], "=")
	if name != console.CookieName || len(value) < 43 {
		t.Fatalf("cookie %q", cookies[0])
	}
	if got, want := strings.Join(attrs[1:], "; "), "Path=/; Max-Age=28800; HttpOnly; Secure; SameSite=Strict"; got != want {
		t.Fatalf("cookie attributes %q, want %q", got, want)
	}

	// The same token again: refused, with a page saying so.
	again := e.signIn(lr.Token)
	if again.Status != http.StatusUnauthorized || len(again.Header.Values("Set-Cookie")) != 0 ||
		!strings.Contains(again.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("second sign in: %d %v %s", again.Status, again.Header, again.Body)
	}
	if p, _ := testclient.Do(e.browser, http.MethodGet, e.base+lr.Path, "", nil, nil); p.Status != http.StatusUnauthorized {
		t.Fatalf("login page of a used token: %d", p.Status)
	}
	if u := e.signIn("bogus"); u.Status != http.StatusUnauthorized {
		t.Fatalf("unknown token: %d", u.Status)
	}
	found := false
	for _, a := range e.auditEntries() {
		if a.Action == "console.signin" && a.Result == "ok" && a.Actor == "spiffe://example.org/admin/dev" {
			found = true
		}
	}
	if !found {
		t.Fatal("no audit entry of the sign-in")
	}
}

func TestConsoleSignInTokenExpires(t *testing.T) {
	e := newConsoleEnv(t)
	expired, live := e.mint(), e.mint()
	e.clock.Advance(5 * time.Minute)
	if r := e.signIn(expired.Token); r.Status != http.StatusUnauthorized {
		t.Fatalf("expired token: %d %s", r.Status, r.Body)
	}
	e.clock.Advance(-time.Second)
	if r := e.signIn(live.Token); r.Status != http.StatusSeeOther {
		t.Fatalf("token a second before expiry: %d %s", r.Status, r.Body)
	}
}

func TestConsoleCookieAuthenticatesAdminRoutes(t *testing.T) {
	e := newConsoleEnv(t)
	cookie, csrf := e.session()
	if csrf == "" {
		t.Fatal("no CSRF token")
	}

	if r := e.withCookie(cookie, "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusOK {
		t.Fatalf("GET /v1/devices with the cookie: %d %s", r.Status, r.Body)
	}
	if r := e.withCookie("", "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("without the cookie: %d %s", r.Status, r.Body)
	}
	if r := e.withCookie("forged", "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("a forged cookie: %d %s", r.Status, r.Body)
	}
	// Never on a route that acts on the caller's own identity.
	_, csr := newCSR(t, nil)
	if r := e.withCookie(cookie, csrf, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csr); r.Status != http.StatusUnauthorized {
		t.Fatalf("renew with the cookie: %d %s", r.Status, r.Body)
	}

	// State changes need the CSRF header.
	body := []byte(`{"name":"made-by-console"}`)
	for _, tc := range []struct{ name, csrf string }{{"missing", ""}, {"wrong", csrf + "x"}} {
		r := e.withCookie(cookie, tc.csrf, http.MethodPost, "/v1/devices", "application/json", body)
		if r.Status != http.StatusForbidden || r.ErrorMessage(t) != "missing or wrong CSRF token" {
			t.Fatalf("%s CSRF token: %d %s", tc.name, r.Status, r.Body)
		}
	}
	if _, err := e.reg.Get("made-by-console"); err == nil {
		t.Fatal("a refused request created the device")
	}
	r := e.withCookie(cookie, csrf, http.MethodPost, "/v1/devices", "application/json", body)
	if r.Status != http.StatusCreated {
		t.Fatalf("with the CSRF token: %d %s", r.Status, r.Body)
	}
	// Changes made through the console name the admin in the audit log.
	found := false
	for _, a := range e.auditEntries() {
		if a.Action == "device.create" && a.Target == "made-by-console" && a.Actor == "spiffe://example.org/admin/dev" {
			found = true
		}
	}
	if !found {
		t.Fatal("the console's change is not audited as the admin")
	}

	// The session route answers cookie sessions only.
	if r := e.do(e.admin, http.MethodGet, "/v1/console/session", "", nil); r.Status != http.StatusNotFound {
		t.Fatalf("console session with a certificate: %d %s", r.Status, r.Body)
	}
}

func TestConsoleCookieStillDecidedByPolicy(t *testing.T) {
	e := newConsoleEnv(t)
	cookie, _ := e.session()
	if r := e.withCookie(cookie, "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusOK {
		t.Fatalf("before: %d %s", r.Status, r.Body)
	}
	if _, err := e.reg.SetStatus("admin-dev", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if r := e.withCookie(cookie, "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("suspended admin's session: %d %s", r.Status, r.Body)
	}
	if _, err := e.reg.SetStatus("admin-dev", registry.StatusActive); err != nil {
		t.Fatal(err)
	}
	// The policy decides: without the admin label the same session is
	// refused.
	if _, err := e.reg.SetLabels("admin-dev", map[string]string{"role": "sensor"}); err != nil {
		t.Fatal(err)
	}
	if r := e.withCookie(cookie, "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("session of an identity the policy no longer makes admin: %d %s", r.Status, r.Body)
	}
}

func TestConsoleCookieCannotMintLogins(t *testing.T) {
	e := newConsoleEnv(t)
	cookie, csrf := e.session()
	r := e.withCookie(cookie, csrf, http.MethodPost, "/v1/console/logins", "", nil)
	if r.Status != http.StatusForbidden {
		t.Fatalf("cookie mints: %d %s", r.Status, r.Body)
	}
	e.mint() // the certificate still does
}

func TestConsoleCertificateWinsOverCookie(t *testing.T) {
	e := newConsoleEnv(t)
	cookie, _ := e.session()
	// A device's certificate with the admin's cookie: the certificate
	// decides, and the device is no admin.
	if r := e.withCookieFrom(e.device, cookie, "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device certificate + admin cookie: %d %s", r.Status, r.Body)
	}
	// A certificate the API does not trust is refused, not replaced by
	// the cookie.
	other := newEnv(t)
	cfg := other.admin.Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.RootCAs = e.admin.Transport.(*http.Transport).TLSClientConfig.RootCAs
	untrusted := testclient.HTTPClient(t, cfg)
	resp, err := e.try(untrusted, http.MethodGet, "/v1/devices", "", nil, http.Header{"Cookie": {console.CookieName + "=" + cookie}})
	if err == nil && resp.Status != http.StatusUnauthorized {
		t.Fatalf("untrusted certificate + admin cookie: %d %s", resp.Status, resp.Body)
	}
}

func TestConsoleLogout(t *testing.T) {
	e := newConsoleEnv(t)
	cookie, csrf := e.session()
	if r := e.withCookie(cookie, "", http.MethodPost, "/ui/logout", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("logout without CSRF: %d %s", r.Status, r.Body)
	}
	r := e.withCookie(cookie, csrf, http.MethodPost, "/ui/logout", "", nil)
	if r.Status != http.StatusSeeOther {
		t.Fatalf("logout: %d %s", r.Status, r.Body)
	}
	if sc := r.Header.Get("Set-Cookie"); !strings.Contains(sc, "Max-Age=0") {
		t.Fatalf("logout Set-Cookie %q", sc)
	}
	if r := e.withCookie(cookie, "", http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("after logout: %d %s", r.Status, r.Body)
	}
}

func TestConsoleAssets(t *testing.T) {
	e := newConsoleEnv(t)
	for _, tc := range []struct {
		path   string
		status int
	}{{"/ui/", 200}, {"/ui/index.html", 200}, {"/ui/app.js", 200}, {"/ui/nope.js", 404}} {
		r, err := testclient.Do(e.browser, http.MethodGet, e.base+tc.path, "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != tc.status {
			t.Errorf("%s: %d, want %d", tc.path, r.Status, tc.status)
		}
		if r.Header.Get("Content-Security-Policy") != "default-src 'self'; frame-ancestors 'none'" ||
			r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: headers %v", tc.path, r.Header)
		}
	}
	// Without a console nothing is served there.
	plain := newEnv(t, withConsole(nil))
	if r := plain.do(plain.anon, http.MethodGet, "/ui/", "", nil); r.Status != http.StatusNotFound {
		t.Fatalf("/ui/ without a console: %d", r.Status)
	}
	if r := plain.do(plain.admin, http.MethodPost, "/v1/console/logins", "", nil); r.Status != http.StatusNotImplemented {
		t.Fatalf("logins without a console: %d %s", r.Status, r.Body)
	}
}
