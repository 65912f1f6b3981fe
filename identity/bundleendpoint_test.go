package identity_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

// get sends one request to h and returns the status, headers and body.
func get(t *testing.T, h http.Handler, method string) (int, http.Header, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/v1/bundle", nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Code, rec.Result().Header, body
}

// The endpoint serves the bundle its source holds at each request, in the
// SPIFFE bundle format (one x509-svid key per CA, the refresh hint), as
// go-spiffe (and so SPIRE) parse it.
func TestBundleHandlerServesSourceBundle(t *testing.T) {
	ca, nextCA := newCA(t, td), newCA(t, td)
	src := &swapSource{bundle: ca.Bundle()}
	h, err := identity.BundleHandler(td, src, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	status, hdr, body := get(t, h, http.MethodGet)
	if status != http.StatusOK || hdr.Get("Content-Type") != "application/json" || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("status %d, headers %v: %s", status, hdr, body)
	}
	var doc struct {
		Keys []struct {
			Use string   `json:"use"`
			X5C []string `json:"x5c"`
		} `json:"keys"`
		RefreshHint int `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, body)
	}
	if len(doc.Keys) != 1 || doc.Keys[0].Use != "x509-svid" || len(doc.Keys[0].X5C) != 1 || doc.RefreshHint != 90 {
		t.Fatalf("bundle document: %s", body)
	}
	parsed, err := spiffebundle.Parse(td, body)
	if err != nil {
		t.Fatal(err)
	}
	if !parsed.X509Bundle().Equal(ca.Bundle()) {
		t.Fatal("the served bundle is not the CA's")
	}

	// A rotation in the source is served at the next request.
	src.set(x509bundle.FromX509Authorities(td, append(ca.Bundle().X509Authorities(), nextCA.Certificate())), nil)
	_, _, body = get(t, h, http.MethodGet)
	if parsed, err = spiffebundle.Parse(td, body); err != nil || len(parsed.X509Authorities()) != 2 {
		t.Fatalf("after the rotation: %v: %s", err, body)
	}

	// No hint configured: none served.
	h0, err := identity.BundleHandler(td, src, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, body := get(t, h0, http.MethodGet); strings.Contains(string(body), "spiffe_refresh_hint") {
		t.Errorf("hint served though none is configured: %s", body)
	}
}

// Only GET is served; a source that fails, or hands over nothing usable,
// gives a 500 rather than a bundle a partner would act on.
func TestBundleHandlerRefuses(t *testing.T) {
	ca := newCA(t, td)
	src := &swapSource{bundle: ca.Bundle()}
	h, err := identity.BundleHandler(td, src, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead} {
		status, hdr, _ := get(t, h, m)
		if status != http.StatusMethodNotAllowed || hdr.Get("Allow") != http.MethodGet {
			t.Errorf("%s: status %d, Allow %q", m, status, hdr.Get("Allow"))
		}
	}
	for _, tc := range []struct {
		name   string
		bundle *x509bundle.Bundle
		err    error
	}{
		{"source error", nil, errors.New("source down")},
		{"nil bundle", nil, nil},
		{"another trust domain", newCA(t, otherTD).Bundle(), nil},
		{"no authorities", x509bundle.New(td), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src.set(tc.bundle, tc.err)
			if status, _, body := get(t, h, http.MethodGet); status != http.StatusInternalServerError || strings.Contains(string(body), "keys") {
				t.Fatalf("status %d: %s", status, body)
			}
		})
	}
	// Positive control: the same handler serves once the source is good.
	src.set(ca.Bundle(), nil)
	if status, _, _ := get(t, h, http.MethodGet); status != http.StatusOK {
		t.Fatalf("good source: status %d", status)
	}
}

func TestBundleHandlerBadInput(t *testing.T) {
	src := &swapSource{}
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"no trust domain", func() error { _, err := identity.BundleHandler(spiffeid.TrustDomain{}, src, 0); return err }, "no trust domain"},
		{"nil source", func() error { _, err := identity.BundleHandler(td, nil, 0); return err }, "nil bundle source"},
		{"negative hint", func() error { _, err := identity.BundleHandler(td, src, -time.Second); return err }, "refresh hint"},
		{"sub-second hint", func() error { _, err := identity.BundleHandler(td, src, time.Millisecond); return err }, "refresh hint"},
	} {
		if err := tc.call(); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "identity: ") {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}
