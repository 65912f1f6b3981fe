package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Renewal. An SVID is short-lived on purpose; the device replaces it at
// half-life with one for a fresh key, so the key of a stolen SVID is worth
// little for long and a device that is cut off (revoked, suspended) cannot
// keep a certificate going.
const (
	// renewPath is the API route that signs a new SVID for the caller's
	// own SPIFFE ID, authenticated with the current one.
	renewPath = "/v1/svid/renew"
	// renewJitter moves a renewal up to this fraction of the half-life
	// earlier, so that a fleet enrolled at once does not renew at once.
	renewJitter = 0.1
	// minRetry and maxRetry bound the wait between failed attempts.
	minRetry = time.Second
	maxRetry = 5 * time.Minute
	// requestTimeout bounds one renewal request.
	requestTimeout = 30 * time.Second
	// maxResponseBytes bounds the API's answer; an SVID chain is far smaller.
	maxResponseBytes = 1 << 20
)

// renewalTime is when an SVID is renewed: half-way through the life it had
// left when the device got it, up to renewJitter of that half earlier
// (jitter is in [0, 1)). Counting from when it was obtained rather than
// from NotBefore matters for short lifetimes: a CA backdates NotBefore to
// absorb clock skew (ztgate's by a minute), which would put the nominal
// half-life of a 5-minute SVID before the moment it arrives.
func renewalTime(notBefore, notAfter, obtained time.Time, jitter float64) time.Time {
	start := notBefore
	if obtained.After(start) {
		start = obtained
	}
	if !start.Before(notAfter) {
		return start
	}
	half := notAfter.Sub(start) / 2
	return start.Add(half - time.Duration(jitter*renewJitter*float64(half)))
}

// retryDelay is the wait after a failed renewal: the backoff, but never
// more than half of the life the SVID has left (so attempts come closer
// together as expiry nears), up to a fifth shorter (jitter in [0, 1)), and
// never below minRetry.
func retryDelay(backoff, left time.Duration, jitter float64) time.Duration {
	d := backoff
	if left > 0 && d > left/2 {
		d = left / 2
	}
	d -= time.Duration(jitter * 0.2 * float64(d))
	return max(d, minRetry)
}

// renewer renews the SVID of a store through the API.
type renewer struct {
	url    string // the renewal endpoint
	client *http.Client
	roots  *x509.CertPool // a new SVID must chain to these
	store  *svidStore
	log    *slog.Logger
}

// parseAPIURL checks an --api value: an https URL with a host and no path.
func parseAPIURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("--api %q: %w", raw, err)
	}
	if u.Scheme != "https" || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("--api %q: want https://HOST:PORT", raw)
	}
	return u, nil
}

// newRenewer renews through the API at apiURL with mutual TLS: the client
// certificate is the store's current SVID, the server must chain to the
// roots of mqttTLS (the bundle) and name the URL's host.
func newRenewer(apiURL string, mqttTLS *tls.Config, store *svidStore, log *slog.Logger) (*renewer, error) {
	u, err := parseAPIURL(apiURL)
	if err != nil {
		return nil, err
	}
	cfg := mqttTLS.Clone()
	cfg.ServerName = "" // the transport checks the API's host name
	return &renewer{
		url: u.Scheme + "://" + u.Host + renewPath,
		client: &http.Client{
			Timeout: requestTimeout,
			Transport: &http.Transport{
				TLSClientConfig: cfg,
				// Renewals are hours apart, and a kept connection would
				// still be authenticated with the previous SVID.
				DisableKeepAlives: true,
			},
		},
		roots: cfg.RootCAs,
		store: store,
		log:   log,
	}, nil
}

// run renews the SVID at each renewal time until ctx ends, calling renewed
// with each new one.
func (r *renewer) run(ctx context.Context, renewed func(*svid)) {
	for {
		cur := r.store.current()
		at := renewalTime(cur.leaf().NotBefore, cur.leaf().NotAfter, cur.obtained, mrand.Float64())
		r.log.Info("SVID renewal scheduled", "serial", cur.serial(),
			"expires_at", cur.leaf().NotAfter.UTC(), "renew_at", at.UTC())
		if !sleep(ctx, time.Until(at)) {
			return
		}
		next, ok := r.renewUntilDone(ctx)
		if !ok {
			return
		}
		renewed(next)
	}
}

// renewUntilDone renews, retrying with backoff until it succeeds or ctx
// ends. Past expiry it keeps trying: the gateway refuses the expired SVID,
// and the API may too, but a renewal that succeeds brings the device back.
func (r *renewer) renewUntilDone(ctx context.Context) (*svid, bool) {
	backoff := minRetry
	for {
		next, err := r.renew(ctx)
		if err == nil {
			return next, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		cur := r.store.current()
		left := time.Until(cur.leaf().NotAfter)
		delay := retryDelay(backoff, left, mrand.Float64())
		if left <= 0 {
			r.log.Error("SVID expired and not renewed; the gateway refuses it now; still trying",
				"err", err, "expired_at", cur.leaf().NotAfter.UTC(), "retry_in", delay.Round(time.Millisecond))
		} else {
			r.log.Warn("SVID renewal failed; retrying", "err", err,
				"expires_in", left.Round(time.Second), "retry_in", delay.Round(time.Millisecond))
		}
		if !sleep(ctx, delay) {
			return nil, false
		}
		backoff = min(2*backoff, maxRetry)
	}
}

type renewRequest struct {
	CSR string `json:"csr"`
}

type renewResponse struct {
	SVIDPEM   string `json:"svid_pem"`
	BundlePEM string `json:"bundle_pem"`
	SPIFFEID  string `json:"spiffe_id"`
}

// renew makes a key and a CSR for it, has the API sign it, checks the new
// SVID (same SPIFFE ID, our key, chains to the bundle), writes it to the
// SVID directory and makes it current. The key never leaves the device.
func (r *renewer) renew(ctx context.Context) (*svid, error) {
	cur := r.store.current()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("renew: key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("renew: CSR: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("renew: key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	body, err := json.Marshal(renewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))})
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("renew: reading answer: %w", err)
	}
	if len(raw) > maxResponseBytes {
		return nil, fmt.Errorf("renew: answer larger than %d bytes", maxResponseBytes)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("renew: %s: %s", resp.Status, apiError(raw))
	}
	var out renewResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("renew: answer is not the JSON expected: %w", err)
	}

	next, err := r.check(cur, []byte(out.SVIDPEM), keyPEM)
	if err != nil {
		return nil, err
	}
	if err := writeSVID(r.store.dir, []byte(out.SVIDPEM), keyPEM, []byte(out.BundlePEM)); err != nil {
		return nil, fmt.Errorf("renew: writing %s: %w", r.store.dir, err)
	}
	r.store.cur.Store(next)
	return next, nil
}

// check refuses an answer that is not a valid SVID for our key and our
// SPIFFE ID, issued by the CA of our bundle: whatever the API says, the
// device never switches to an identity other than its own.
func (r *renewer) check(cur *svid, chainPEM, keyPEM []byte) (*svid, error) {
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("renew: new SVID: %w", err)
	}
	chain := make([]*x509.Certificate, len(cert.Certificate))
	for i, der := range cert.Certificate {
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("renew: new SVID: %w", err)
		}
	}
	cert.Leaf = chain[0]
	id, err := x509svid.IDFromCert(cert.Leaf)
	if err != nil {
		return nil, fmt.Errorf("renew: new SVID: %w", err)
	}
	if id != cur.id {
		return nil, fmt.Errorf("renew: new SVID is for %s, not %s", id, cur.id)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{
		Roots:         r.roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("renew: new SVID: %w", err)
	}
	return &svid{cert: cert, id: id, obtained: time.Now()}, nil
}

// apiError is the "error" message of a JSON error answer, or a clipped
// copy of the body.
func apiError(raw []byte) string {
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

// sleep waits for d or until ctx ends, and reports whether ctx is still
// live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
