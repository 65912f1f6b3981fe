package svidrenew

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/identity"
)

const (
	// Path is the API route that signs a new SVID for the caller's own
	// SPIFFE ID, authenticated with the current one.
	Path = "/v1/svid/renew"
	// requestTimeout bounds one renewal request.
	requestTimeout = 30 * time.Second
	// maxResponse bounds the API's answer; an SVID chain is far smaller.
	maxResponse = 1 << 20
	// MinTTL is the shortest lifetime the API signs on request
	// (api.MinSVIDTTL). A shorter SVID comes from a gateway whose svid_ttl
	// is shorter still; its renewal asks for no lifetime and gets svid_ttl.
	MinTTL = 10 * time.Second
)

// Renewal is a renewed SVID, checked, and what WriteDir needs to put it on
// disk.
type Renewal struct {
	SVID      *SVID
	ChainPEM  []byte
	KeyPEM    []byte
	BundlePEM []byte // empty when the API sent none: the current one stays
}

// WriteDir writes the renewal to dir (see the package's WriteDir).
func (r *Renewal) WriteDir(dir string) error {
	return WriteDir(dir, r.ChainPEM, r.KeyPEM, r.BundlePEM)
}

// APIError is a refusal by the API: its HTTP status and {"error": "..."}.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("svidrenew: the API answered %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

type renewRequest struct {
	CSR string `json:"csr"`
	TTL string `json:"ttl,omitempty"`
}

type renewResponse struct {
	SVIDPEM   string `json:"svid_pem"`
	BundlePEM string `json:"bundle_pem"`
}

// Renew makes a new key and a CSR for it, and has the API at apiURL
// (https://HOST:PORT) sign it, over mutual TLS with cur as the client
// certificate and the gateway verified against cur's bundle and the URL's
// host. ttl is the lifetime asked for (0, or below MinTTL: the gateway's
// svid_ttl; the gateway signs at most its svid_ttl). The answer is checked (see check)
// and nothing is written: the caller puts the renewal in place. The key
// never leaves this process.
func Renew(ctx context.Context, apiURL string, cur *SVID, ttl time.Duration) (*Renewal, error) {
	endpoint, err := renewURL(apiURL)
	if err != nil {
		return nil, err
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %w", err)
	}
	req := renewRequest{CSR: string(csrPEM)}
	if ttl >= MinTTL {
		req.TTL = ttl.String()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %w", err)
	}
	raw, err := post(ctx, endpoint, body, cur)
	if err != nil {
		return nil, err
	}
	var out renewResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("svidrenew: the API's answer is not the JSON expected: %w", err)
	}
	next, err := check(cur, []byte(out.SVIDPEM), keyPEM, []byte(out.BundlePEM))
	if err != nil {
		return nil, err
	}
	return &Renewal{SVID: next, ChainPEM: []byte(out.SVIDPEM), KeyPEM: keyPEM, BundlePEM: []byte(out.BundlePEM)}, nil
}

// renewURL is the renewal endpoint under apiURL, which must be an https
// URL: the CSR's answer is trusted only from the gateway verified by TLS.
func renewURL(apiURL string) (string, error) {
	u, err := url.Parse(strings.TrimRight(apiURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("svidrenew: API URL %q: want https://HOST:PORT", apiURL)
	}
	return u.String() + Path, nil
}

// post sends body to endpoint with cur as the client certificate and
// returns the body of a 200 answer.
func post(ctx context.Context, endpoint string, body []byte, cur *SVID) ([]byte, error) {
	transport := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cur.Cert},
			RootCAs:      cur.Roots,
		},
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		// Renewals are far apart, and a kept connection would still be
		// authenticated with the previous SVID.
		DisableKeepAlives: true,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Timeout:   requestTimeout,
		Transport: transport,
		// The API never redirects; following one would carry the CSR and
		// the client certificate somewhere else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		// url.Error repeats the method and the URL around the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("svidrenew: calling the API at %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("svidrenew: reading the API's answer: %w", err)
	}
	if len(raw) > maxResponse {
		return nil, fmt.Errorf("svidrenew: the API's answer is larger than %d bytes", maxResponse)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &APIError{Status: resp.StatusCode, Message: errorMessage(raw)}
	}
	return raw, nil
}

// check refuses an answer that is not a valid SVID for keyPEM and cur's
// SPIFFE ID, chaining to cur's bundle: whatever the API says, the holder
// never switches to an identity other than its own or to a certificate of
// another CA. A bundle sent with it must be CA certificates; it becomes
// the new SVID's Roots.
func check(cur *SVID, chainPEM, keyPEM, bundlePEM []byte) (*SVID, error) {
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("svidrenew: renewed SVID: %w", err)
	}
	chain := make([]*x509.Certificate, len(cert.Certificate))
	for i, der := range cert.Certificate {
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("svidrenew: renewed SVID: %w", err)
		}
	}
	cert.Leaf = chain[0]
	id, err := x509svid.IDFromCert(cert.Leaf)
	if err != nil {
		return nil, fmt.Errorf("svidrenew: renewed SVID: %w", err)
	}
	if id != cur.ID {
		return nil, fmt.Errorf("svidrenew: renewed SVID is for %s, not %s", id, cur.ID)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{
		Roots:         cur.Roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("svidrenew: renewed SVID: %w", err)
	}
	roots := cur.Roots
	if len(bundlePEM) > 0 {
		if roots, err = parseBundle(bundlePEM); err != nil {
			return nil, fmt.Errorf("svidrenew: bundle of the renewal: %w", err)
		}
	}
	return &SVID{Cert: cert, ID: id, Roots: roots, Obtained: time.Now()}, nil
}

// errorMessage is the "error" of a JSON error answer, or a clipped copy of
// the body.
func errorMessage(raw []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return e.Error
	}
	s := strings.TrimSpace(string(raw))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
