package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// Renewals are limited per identity: a burst beyond the limit is a 429
// with Retry-After, while other identities keep their own budget.
func TestRenewRateLimitedPerIdentity(t *testing.T) {
	const burst = 3
	e := newEnv(t, func(c *Config) { c.RenewRate, c.RenewBurst = rate.Every(time.Minute), burst })
	e.clock.Freeze()
	other := e.enrolledClient("sensor-9", nil)
	renew := func(c *http.Client) response {
		t.Helper()
		_, csrPEM := newCSR(t, nil)
		return e.do(c, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csrPEM)
	}
	before := len(e.auditEntries())

	for i := range burst {
		if r := renew(e.device); r.Status != http.StatusOK {
			t.Fatalf("renewal %d: %d %s, want 200", i+1, r.Status, r.Body)
		}
	}
	for range 5 {
		r := renew(e.device)
		if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") != "60" {
			t.Fatalf("over the burst: %d Retry-After %q %s, want 429 and 60", r.Status, r.Header.Get("Retry-After"), r.Body)
		}
		if msg := r.StrictError(t); !strings.Contains(msg, "renewal") {
			t.Fatalf("message %q", msg)
		}
	}
	// Another identity is not affected.
	if r := renew(other); r.Status != http.StatusOK {
		t.Fatalf("another identity: %d %s, want 200", r.Status, r.Body)
	}
	// The refused renewals wrote nothing: only the successful ones are in
	// the audit log.
	if n := len(e.auditEntries()) - before; n != burst+1 {
		t.Fatalf("%d new audit entries, want %d (the successful renewals)", n, burst+1)
	}
	// The budget refills.
	e.clock.Advance(time.Minute)
	if r := renew(e.device); r.Status != http.StatusOK {
		t.Fatalf("a minute later: %d %s, want 200", r.Status, r.Body)
	}
	if r := renew(e.device); r.Status != http.StatusTooManyRequests {
		t.Fatalf("and one more: %d %s, want 429", r.Status, r.Body)
	}
	m := e.do(e.admin, http.MethodGet, "/metrics", "", nil)
	if !strings.Contains(string(m.Body), "ztgate_api_renewals_rate_limited_total 6") {
		t.Error("metrics lack ztgate_api_renewals_rate_limited_total 6")
	}
}

// The limit is on by default.
func TestRenewRateDefault(t *testing.T) {
	e := newEnv(t)
	cfg := e.srv.cfg
	cfg.RenewRate, cfg.RenewBurst, cfg.Metrics = 0, 0, nil
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.RenewRate != DefaultRenewRate || s.cfg.RenewBurst != DefaultRenewBurst ||
		DefaultRenewRate == rate.Inf || DefaultRenewRate*60 > 10 {
		t.Fatalf("renew limit %v burst %d; want the defaults, a few per minute", s.cfg.RenewRate, s.cfg.RenewBurst)
	}
	for name, mut := range map[string]func(*Config){
		"negative renew rate":  func(c *Config) { c.RenewRate = -1 },
		"negative renew burst": func(c *Config) { c.RenewBurst = -1 },
	} {
		c := cfg
		mut(&c)
		if _, err := New(c); err == nil || !strings.HasPrefix(err.Error(), "api: ") {
			t.Errorf("%s: err %v", name, err)
		}
	}
}
