package main

import (
	"context"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/ztgate/ztgate/identity/svidrenew"
)

// Renewal. An SVID is short-lived on purpose; the device replaces it at
// half-life with one for a fresh key, so the key of a stolen SVID is worth
// little for long and a device that is cut off (revoked, suspended) cannot
// keep a certificate going. The mechanics (schedule, backoff, the request,
// checking the answer, replacing the files crash-safely) are svidrenew's,
// the same that `ztgate renew` uses; what is the device's own is what it
// does with a new SVID: move its MQTT connection to it.

// renewer renews the SVID of a store through the API.
type renewer struct {
	api   string // the API's base URL
	store *svidStore
	log   *slog.Logger
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
// certificate is the store's current SVID, the server must chain to its
// bundle and name the URL's host.
func newRenewer(apiURL string, store *svidStore, log *slog.Logger) (*renewer, error) {
	u, err := parseAPIURL(apiURL)
	if err != nil {
		return nil, err
	}
	return &renewer{api: u.Scheme + "://" + u.Host, store: store, log: log}, nil
}

// run renews the SVID at each renewal time until ctx ends, calling renewed
// with each new one.
func (r *renewer) run(ctx context.Context, renewed func(*svidrenew.SVID)) {
	for {
		cur := r.store.current()
		at := cur.RenewalTime(mrand.Float64())
		r.log.Info("SVID renewal scheduled", "serial", cur.Serial(),
			"expires_at", cur.Leaf().NotAfter.UTC(), "renew_at", at.UTC())
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
func (r *renewer) renewUntilDone(ctx context.Context) (*svidrenew.SVID, bool) {
	backoff := svidrenew.MinRetry
	for {
		next, err := r.renew(ctx)
		if err == nil {
			return next, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		cur := r.store.current()
		left := time.Until(cur.Leaf().NotAfter)
		delay := svidrenew.RetryDelay(backoff, left, mrand.Float64())
		if left <= 0 {
			r.log.Error("SVID expired and not renewed; the gateway refuses it now; still trying",
				"err", err, "expired_at", cur.Leaf().NotAfter.UTC(), "retry_in", delay.Round(time.Millisecond))
		} else {
			r.log.Warn("SVID renewal failed; retrying", "err", err,
				"expires_in", left.Round(time.Second), "retry_in", delay.Round(time.Millisecond))
		}
		if !sleep(ctx, delay) {
			return nil, false
		}
		backoff = svidrenew.NextBackoff(backoff)
	}
}

// renew has the API sign a new SVID for a fresh key (for the gateway's
// svid_ttl), checked by svidrenew, writes it to the SVID directory and
// makes it current. The key never leaves the device.
func (r *renewer) renew(ctx context.Context) (*svidrenew.SVID, error) {
	ren, err := svidrenew.Renew(ctx, r.api, r.store.current(), 0)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	if err := ren.WriteDir(r.store.dir); err != nil {
		return nil, fmt.Errorf("renew: writing %s: %w", r.store.dir, err)
	}
	r.store.cur.Store(ren.SVID)
	return ren.SVID, nil
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
