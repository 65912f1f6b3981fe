package testclient

import (
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// tlsServer is an HTTPS server on 127.0.0.1 answering with handler, and
// the count of TLS connections clients opened to it.
func tlsServer(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *atomic.Int64, *x509.CertPool) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	return srv, &conns, roots
}

// Request makes a TLS connection per request (the server always sees the
// certificate of now); HTTPClient keeps one for the next request.
func TestRequestIsAFreshConnection(t *testing.T) {
	srv, conns, roots := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"proto":"`+r.Proto+`"}`)
	})
	cfg := TLSConfig(roots, nil)
	cfg.ServerName = "example.com" // the name in httptest's certificate
	for range 2 {
		res, err := Request(cfg, http.MethodGet, srv.URL, "", nil)
		if err != nil || res.Status != http.StatusOK {
			t.Fatalf("Request: %+v, %v", res, err)
		}
		var got struct{ Proto string }
		res.DecodeJSON(t, &got)
		if got.Proto != "HTTP/1.1" {
			t.Fatalf("Request spoke %s; want HTTP/1.1", got.Proto)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("two Requests opened %d connections; want 2", n)
	}

	c := HTTPClient(t, cfg)
	for range 2 {
		if res, err := Do(c, http.MethodGet, srv.URL, "", nil, nil); err != nil || res.Status != http.StatusOK {
			t.Fatalf("Do: %+v, %v", res, err)
		}
	}
	if n := conns.Load(); n != 3 {
		t.Fatalf("two requests of one HTTPClient opened %d connections; want 1", n-2)
	}
}

// Do sends the content type even without a body (the API's tests check
// how the server takes that), and adds the headers given.
func TestDoSendsWhatItIsGiven(t *testing.T) {
	srv, _, roots := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+"|"+r.Header.Get("Content-Type")+"|"+r.Header.Get("X-Test")+"|"+string(b))
	})
	cfg := TLSConfig(roots, nil)
	cfg.ServerName = "example.com"
	c := HTTPClient(t, cfg)
	for _, tc := range []struct {
		method, ct string
		body       []byte
		hdr        http.Header
		want       string
	}{
		{http.MethodPost, "application/json", []byte(`{}`), nil, "POST|application/json||{}"},
		{http.MethodPost, "text/plain", nil, nil, "POST|text/plain||"},
		{http.MethodGet, "", nil, http.Header{"X-Test": {"1"}}, "GET||1|"},
	} {
		res, err := Do(c, tc.method, srv.URL, tc.ct, tc.body, tc.hdr)
		if err != nil || string(res.Body) != tc.want {
			t.Errorf("Do(%s, %q, %q) = %q, %v; want %q", tc.method, tc.ct, tc.body, res.Body, err, tc.want)
		}
	}
}

func jsonResponse(ct, body string) Response {
	return Response{Status: 400, Header: http.Header{"Content-Type": {ct}}, Body: []byte(body)}
}

// The decoding helpers fail on what they must refuse; the first row of
// each is the positive control.
func TestResponseChecks(t *testing.T) {
	decode := func(r Response) func(testing.TB) {
		return func(tb testing.TB) {
			var v map[string]any
			r.DecodeJSON(tb, &v)
		}
	}
	errorMessage := func(r Response) func(testing.TB) {
		return func(tb testing.TB) { r.ErrorMessage(tb) }
	}
	strictError := func(r Response) func(testing.TB) {
		return func(tb testing.TB) { r.StrictError(tb) }
	}
	for _, tc := range []struct {
		name string
		run  func(testing.TB)
		want string // "" for a pass
	}{
		{"DecodeJSON of JSON", decode(jsonResponse("application/json", `{"a":1}`)), ""},
		{"DecodeJSON of another type", decode(jsonResponse("text/plain", `{"a":1}`)), `Content-Type "text/plain"`},
		{"DecodeJSON of a broken body", decode(jsonResponse("application/json", `{"a":`)), "not the JSON expected"},
		{"ErrorMessage of an error", errorMessage(jsonResponse("application/json", `{"error":"no"}`)), ""},
		{"ErrorMessage with more fields", errorMessage(jsonResponse("application/json", `{"error":"no","x":1}`)), ""},
		{"ErrorMessage of an empty error", errorMessage(jsonResponse("application/json", `{"error":""}`)), `no "error" message`},
		{"StrictError of an error", strictError(jsonResponse("application/json", `{"error":"no"}`)), ""},
		{"StrictError with more fields", strictError(jsonResponse("application/json", `{"error":"no","x":1}`)), "is not {"},
		{"StrictError of another type", strictError(jsonResponse("text/plain", `{"error":"no"}`)), "error Content-Type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := failure(t, tc.run)
			if tc.want == "" && msg != "" || !strings.Contains(msg, tc.want) {
				t.Fatalf("failure %q; want %q", msg, tc.want)
			}
		})
	}
}

// An answer larger than a test reads is an error, not a cut body.
func TestDoRefusesOversizedAnswers(t *testing.T) {
	defer func(n int64) { maxBody = n }(maxBody)
	maxBody = 1 << 10
	srv, _, roots := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Repeat("x", int(maxBody)+1))
	})
	cfg := TLSConfig(roots, nil)
	cfg.ServerName = "example.com"
	if _, err := Do(HTTPClient(t, cfg), http.MethodGet, srv.URL, "", nil, nil); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Do = %v; want an oversized-answer error", err)
	}
}
