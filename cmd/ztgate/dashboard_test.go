package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testutil"
)

// browser is a client that trusts the gateway, presents no certificate and
// follows no redirect.
func browser(t *testing.T, e *testutil.Env) *http.Client {
	cfg := e.Admin.TLSConfig().Clone()
	cfg.Certificates = nil
	c := testclient.HTTPClient(t, cfg)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

func TestDashboardCommand(t *testing.T) {
	e := testutil.Start(t)
	flags := apiFlagsOf(e.App)
	out := ok(t, append([]string{"dashboard"}, flags...)...)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	last := lines[len(lines)-1]
	if len(lines) < 2 || !strings.HasPrefix(last, e.APIURL+"/ui/login?token=") {
		t.Fatalf("dashboard output (the URL must be the last line, on --api %s):\n%s", e.APIURL, out)
	}
	u, err := url.Parse(last)
	if err != nil {
		t.Fatal(err)
	}
	tok := u.Query().Get("token")

	// The URL signs a browser in, once.
	b := browser(t, e)
	signIn := func() testclient.Response {
		t.Helper()
		r, err := testclient.Do(b, http.MethodPost, e.APIURL+"/ui/login", "application/x-www-form-urlencoded",
			[]byte(url.Values{"token": {tok}}.Encode()), nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	page, err := testclient.Do(b, http.MethodGet, last, "", nil, nil)
	if err != nil || page.Status != http.StatusOK {
		t.Fatalf("login page: %v %d", err, page.Status)
	}
	r := signIn()
	if r.Status != http.StatusSeeOther {
		t.Fatalf("sign in: %d %s", r.Status, r.Body)
	}
	cookie := strings.SplitN(r.Header.Get("Set-Cookie"), ";", 2)[0]
	devs, err := testclient.Do(b, http.MethodGet, e.APIURL+"/v1/devices", "", nil, http.Header{"Cookie": {cookie}})
	if err != nil || devs.Status != http.StatusOK {
		t.Fatalf("devices with the console cookie: %v %d %s", err, devs.Status, devs.Body)
	}
	if again := signIn(); again.Status != http.StatusUnauthorized {
		t.Fatalf("the URL again: %d", again.Status)
	}

	// --json: the API's answer and the URL.
	var j struct {
		Token, Path, URL string
		ExpiresAt        string `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(ok(t, append([]string{"dashboard", "--json"}, flags...)...)), &j); err != nil {
		t.Fatal(err)
	}
	if j.Token == "" || j.URL != e.APIURL+j.Path || !strings.HasSuffix(j.Path, j.Token) || j.ExpiresAt == "" {
		t.Fatalf("--json %+v", j)
	}
}

func TestDashboardCommandErrors(t *testing.T) {
	e := testutil.Start(t)
	// A device's identity is no admin: the API refuses, the command says so.
	dev := e.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
	failsWith(t, "forbidden by policy", "dashboard", "--api", e.APIURL, "--admin-dir", dev.Dir)
	failsWith(t, "cannot load the admin identity", "dashboard", "--api", e.APIURL, "--admin-dir", t.TempDir())
	failsWith(t, "want an https:// URL", "dashboard", "--api", "http://127.0.0.1:1")
}
