package testclient

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// httpTimeout bounds one HTTP request, answer included. Generous: the
// tests run many servers on few cores, and it is only reached when a test
// fails.
const httpTimeout = 30 * time.Second

// maxBody is the most of an answer a test reads; a larger one is an
// error, not a silently cut body. A variable so that its test need not
// send that much.
var maxBody int64 = 64 << 20

// TLSConfig is the client side of mTLS: the server is verified against
// roots as 127.0.0.1 (the tests' servers listen there), and cert, if not
// nil, is presented.
func TLSConfig(roots *x509.CertPool, cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{
		RootCAs:    roots,
		ServerName: "127.0.0.1",
		MinVersion: tls.VersionTLS12,
	}
	if cert != nil && len(cert.Certificate) > 0 {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// HTTPClient is an HTTPS client with cfg's identity that keeps its
// connections (HTTP/2 when the server offers it) until the test ends.
func HTTPClient(t testing.TB, cfg *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: httpTimeout}
}

// Request sends one request on an HTTP/1.1 connection of its own, closed
// afterwards, so that the server sees a fresh TLS handshake with cfg's
// certificate: the certificate a test holds now, not one an earlier
// connection presented.
func Request(cfg *tls.Config, method, url, contentType string, body []byte) (Response, error) {
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	return Do(&http.Client{Transport: tr, Timeout: httpTimeout}, method, url, contentType, body, nil)
}

// Do sends one request through c and reads the whole answer. body nil
// sends none; contentType "" sets no Content-Type; hdr adds headers. The
// error is a transport failure: no answer arrived.
func Do(c *http.Client, method, url, contentType string, body []byte, hdr http.Header) (Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return Response{}, fmt.Errorf("testclient: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return Response{}, fmt.Errorf("testclient: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return Response{}, fmt.Errorf("testclient: reading the answer to %s %s: %w", method, url, err)
	}
	if int64(len(raw)) > maxBody {
		return Response{}, fmt.Errorf("testclient: the answer to %s %s is larger than %d bytes", method, url, maxBody)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: raw}, nil
}

// Response is a finished request: status, headers and body.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Decode unmarshals the body into v, failing the test if it is not the
// JSON expected.
func (r Response) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("response %d is not the JSON expected: %v: %s", r.Status, err, r.Body)
	}
}

// DecodeJSON is Decode that first requires the Content-Type to be
// exactly application/json.
func (r Response) DecodeJSON(t testing.TB, v any) {
	t.Helper()
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json; body %s", ct, r.Body)
	}
	r.Decode(t, v)
}

// ErrorMessage returns the "error" field of a JSON error body, failing the
// test unless the body is a JSON object with a non-empty "error" string.
func (r Response) ErrorMessage(t testing.TB) string {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("error response %d is not JSON: %v: %q", r.Status, err, r.Body)
	}
	msg, ok := e["error"].(string)
	if !ok || msg == "" {
		t.Fatalf("error response %d has no \"error\" message: %s", r.Status, r.Body)
	}
	return msg
}

// StrictError is ErrorMessage for the API's own error form: Content-Type
// exactly application/json and a body of {"error": "..."} with nothing
// else in it.
func (r Response) StrictError(t testing.TB) string {
	t.Helper()
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q, want application/json; body %s", ct, r.Body)
	}
	var er struct {
		Error string `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&er); err != nil || er.Error == "" {
		t.Fatalf("error body %q is not {\"error\": \"...\"} (%v)", r.Body, err)
	}
	return er.Error
}
