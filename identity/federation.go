package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// The bundle endpoint profiles of the SPIFFE Federation specification.
const (
	ProfileHTTPSWeb    = "https_web"
	ProfileHTTPSSPIFFE = "https_spiffe"
)

const (
	// DefaultFederationRefresh is the refresh interval of a domain with
	// none configured whose bundle carries no refresh hint.
	DefaultFederationRefresh = 5 * time.Minute
	// minFederationRefresh and maxFederationRefresh bound the interval,
	// whatever a partner's hint says: a hint of 0 s must not make the
	// gateway hammer the endpoint, one of a year must not leave a removed
	// CA trusted for that long.
	minFederationRefresh = time.Second
	maxFederationRefresh = 24 * time.Hour
	// federationFetchTimeout bounds one fetch, so an endpoint that
	// accepts the connection and then stalls cannot stop the refresher.
	federationFetchTimeout = 30 * time.Second
	// maxBundleBytes bounds a fetched document. A bundle of a few dozen
	// authorities is tens of kilobytes; a hostile or broken endpoint must
	// not make the gateway buffer an unbounded body.
	maxBundleBytes = 1 << 20
	// maxBundleRedirects is the number of redirects followed, as
	// net/http's default client does.
	maxBundleRedirects = 10
)

// FederatedDomain is a partner trust domain whose bundle is fetched from
// its SPIFFE bundle endpoint.
type FederatedDomain struct {
	TrustDomain spiffeid.TrustDomain
	// URL is the bundle endpoint (https). A domain without one takes its
	// bundle from the Workload API and is not the federation's to hold.
	URL string
	// Profile is ProfileHTTPSWeb or ProfileHTTPSSPIFFE.
	Profile string
	// EndpointID is, for https_spiffe, the SPIFFE ID the endpoint server
	// must present; it must be in TrustDomain, whose bundle authenticates it.
	EndpointID spiffeid.ID
	// Bundle is the bundle to start from: for https_spiffe the one that
	// authenticates the first fetch (may be nil when StateDir holds one).
	// A bundle saved in StateDir wins over it, having been fetched later.
	Bundle *x509bundle.Bundle
	// WebRoots verify the endpoint's certificate for https_web; nil: the
	// system roots.
	WebRoots *x509.CertPool
	// RefreshInterval is how often the bundle is fetched; 0: the fetched
	// bundle's refresh hint, else DefaultFederationRefresh. It is kept
	// within [1s, 24h].
	RefreshInterval time.Duration
}

// FederationOptions configures NewFederation.
type FederationOptions struct {
	Domains []FederatedDomain
	// StateDir keeps each fetched bundle as <trust domain>.pem, so that a
	// restart while a partner's endpoint is down still trusts the last
	// bundle fetched. Empty: nothing is kept.
	StateDir string
	// Logger gets fetch failures and bundle changes; nil discards them.
	Logger *slog.Logger
}

// Federation holds the bundles of partner trust domains, fetched from
// their SPIFFE bundle endpoints and refreshed while it runs. It is an
// x509bundle.Source for those trust domains only.
//
// It fails closed: a domain whose first bundle has not arrived yet has no
// bundle, so its peers are refused. It never drops a bundle because the
// endpoint is unreachable or serves something unacceptable: the last good
// one stays in force until a good fetch replaces it.
type Federation struct {
	log      *slog.Logger
	stateDir string
	domains  []*fedDomain // sorted by trust domain
	updated  chan struct{}
	// minWait is the shortest wait between two fetches of a domain
	// (minFederationRefresh; tests shorten it).
	minWait time.Duration

	mu      sync.RWMutex
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
	closed  bool

	life    sync.Mutex
	started bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// fedDomain is one domain and the state of its refresher, which only the
// refresher's goroutine touches after Start.
type fedDomain struct {
	FederatedDomain
	client *http.Client
	saved  bool   // the bundle held is the one in StateDir
	failed string // the last fetch error logged, "" after a success
	fails  int
}

var _ x509bundle.Source = (*Federation)(nil)

// NewFederation checks the domains and loads their starting bundles: the
// one saved in StateDir if any, else the configured one. It fetches
// nothing: Start does.
func NewFederation(opts FederationOptions) (*Federation, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Federation{
		log:      log,
		stateDir: opts.StateDir,
		updated:  make(chan struct{}, 1),
		minWait:  minFederationRefresh,
		bundles:  map[spiffeid.TrustDomain]*x509bundle.Bundle{},
	}
	seen := map[spiffeid.TrustDomain]bool{}
	for i, fd := range opts.Domains {
		if err := checkFederatedDomain(fd); err != nil {
			return nil, fmt.Errorf("identity: federation: domain %d: %w", i+1, err)
		}
		if seen[fd.TrustDomain] {
			return nil, fmt.Errorf("identity: federation: trust domain %q is listed twice", fd.TrustDomain)
		}
		seen[fd.TrustDomain] = true
		d := &fedDomain{FederatedDomain: fd}
		if err := f.loadStart(d); err != nil {
			return nil, err
		}
		d.client = f.httpClient(d)
		f.domains = append(f.domains, d)
	}
	slices.SortFunc(f.domains, func(a, b *fedDomain) int {
		return strings.Compare(a.TrustDomain.Name(), b.TrustDomain.Name())
	})
	return f, nil
}

// checkFederatedDomain refuses a domain the federation cannot fetch
// safely; the error names what is wrong.
func checkFederatedDomain(fd FederatedDomain) error {
	if fd.TrustDomain.IsZero() {
		return errors.New("no trust domain")
	}
	if fd.URL == "" {
		return fmt.Errorf("trust domain %q has no bundle endpoint URL (a bundle from the Workload API is served by that source, not by the federation)", fd.TrustDomain)
	}
	u, err := url.Parse(fd.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("trust domain %q: bundle endpoint URL %q: want an https:// URL", fd.TrustDomain, fd.URL)
	}
	switch fd.Profile {
	case ProfileHTTPSWeb:
		if !fd.EndpointID.IsZero() {
			return fmt.Errorf("trust domain %q: an endpoint SPIFFE ID is for profile %s only", fd.TrustDomain, ProfileHTTPSSPIFFE)
		}
	case ProfileHTTPSSPIFFE:
		if fd.EndpointID.IsZero() {
			return fmt.Errorf("trust domain %q: profile %s needs the endpoint's SPIFFE ID", fd.TrustDomain, ProfileHTTPSSPIFFE)
		}
		if !fd.EndpointID.MemberOf(fd.TrustDomain) {
			return fmt.Errorf("trust domain %q: endpoint SPIFFE ID %s is not in it", fd.TrustDomain, fd.EndpointID)
		}
	default:
		return fmt.Errorf("trust domain %q: profile %q: want %s or %s", fd.TrustDomain, fd.Profile, ProfileHTTPSWeb, ProfileHTTPSSPIFFE)
	}
	if fd.RefreshInterval < 0 {
		return fmt.Errorf("trust domain %q: negative refresh interval %s", fd.TrustDomain, fd.RefreshInterval)
	}
	if fd.Bundle != nil {
		if fd.Bundle.TrustDomain() != fd.TrustDomain {
			return fmt.Errorf("trust domain %q: the starting bundle is for trust domain %q", fd.TrustDomain, fd.Bundle.TrustDomain())
		}
		if err := checkFederatedBundle(fd.TrustDomain, fd.Bundle.X509Authorities()); err != nil {
			return fmt.Errorf("trust domain %q: the starting bundle: %w", fd.TrustDomain, err)
		}
	}
	return nil
}

// checkFederatedBundle refuses authorities that cannot be td's: none at
// all (the domain would trust nobody, which a partner never means), one
// that is no CA, or one naming another trust domain in its URI SAN (as a
// SPIFFE CA does). The bundle document names no trust domain, so the SAN
// is the only sign of an endpoint serving another domain's bundle; an
// authority without one (an operator's root CA) is accepted.
func checkFederatedBundle(td spiffeid.TrustDomain, authorities []*x509.Certificate) error {
	if len(authorities) == 0 {
		return errors.New("no X.509 authorities")
	}
	for i, c := range authorities {
		if !c.BasicConstraintsValid || !c.IsCA {
			return fmt.Errorf("X.509 authority %d (%s) is not a CA certificate", i+1, c.Subject)
		}
		for _, u := range c.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			other, err := spiffeid.TrustDomainFromURI(u)
			if err != nil {
				return fmt.Errorf("X.509 authority %d (%s): URI SAN %q: %w", i+1, c.Subject, u, err)
			}
			if other != td {
				return fmt.Errorf("X.509 authority %d (%s) is a CA of trust domain %q, not %q", i+1, c.Subject, other, td)
			}
		}
	}
	return nil
}

// statePath is where d's fetched bundle is kept. A trust domain name has
// no slash and the suffix keeps it from being "." or "..".
func (f *Federation) statePath(td spiffeid.TrustDomain) string {
	return filepath.Join(f.stateDir, td.Name()+".pem")
}

// loadStart sets d's starting bundle. The saved one wins: it was fetched
// from the partner after the configured one was written down, and the
// configured one may hold an authority the partner has since removed.
func (f *Federation) loadStart(d *fedDomain) error {
	if f.stateDir != "" {
		path := f.statePath(d.TrustDomain)
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			certs, err := parseCertificatesPEM(data)
			if err == nil {
				err = checkFederatedBundle(d.TrustDomain, certs)
			}
			if err != nil {
				return fmt.Errorf("identity: federation: saved bundle %s of trust domain %q: %w (remove the file to start from the configured bundle)", path, d.TrustDomain, err)
			}
			f.bundles[d.TrustDomain] = x509bundle.FromX509Authorities(d.TrustDomain, certs)
			d.saved = true
			f.log.Info("identity: federation: starting from the saved bundle", "trust_domain", d.TrustDomain.Name(),
				"file", path, "authorities", len(certs))
			return nil
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("identity: federation: saved bundle of trust domain %q: %w", d.TrustDomain, err)
		}
	}
	if d.Bundle != nil {
		f.bundles[d.TrustDomain] = d.Bundle.Clone()
		return nil
	}
	if d.Profile == ProfileHTTPSSPIFFE {
		return fmt.Errorf("identity: federation: trust domain %q: profile %s needs a bundle to authenticate the endpoint with the first time, and none is configured or saved", d.TrustDomain, ProfileHTTPSSPIFFE)
	}
	return nil
}

// httpClient is d's client. Every fetch makes a new connection (no
// keep-alive): with https_spiffe the endpoint is then authenticated
// against the bundle held at that moment, which is how the endpoint's own
// CA rotation is followed, and no idle connection outlives Close.
func (f *Federation) httpClient(d *fedDomain) *http.Client {
	var tlsConf *tls.Config
	if d.Profile == ProfileHTTPSSPIFFE {
		// The federation itself is the bundle source: the endpoint's
		// chain is checked against the bundle held for its trust domain.
		tlsConf = tlsconfig.TLSClientConfig(f, tlsconfig.AuthorizeID(d.EndpointID))
	} else {
		tlsConf = &tls.Config{RootCAs: d.WebRoots, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSClientConfig:     tlsConf,
			TLSHandshakeTimeout: 10 * time.Second,
			DisableKeepAlives:   true,
		},
		// Redirects are followed (the specification's default) but only
		// to https: a redirect to http would fetch the trust anchors of a
		// whole domain unauthenticated.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("refused redirect to %s: not https", req.URL.Redacted())
			}
			if len(via) >= maxBundleRedirects {
				return fmt.Errorf("stopped after %d redirects", maxBundleRedirects)
			}
			return nil
		},
	}
}

// Start runs one refresher per domain until ctx ends or Close. The first
// fetch is at once. Start after Start or Close does nothing.
func (f *Federation) Start(ctx context.Context) {
	f.life.Lock()
	defer f.life.Unlock()
	f.mu.RLock()
	closed := f.closed
	f.mu.RUnlock()
	if f.started || closed {
		return
	}
	f.started = true
	ctx, f.cancel = context.WithCancel(ctx)
	for _, d := range f.domains {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.refresh(ctx, d)
		}()
	}
}

// refresh fetches d's bundle until ctx ends: at the refresh interval
// after a success, with exponential backoff and jitter after a failure.
func (f *Federation) refresh(ctx context.Context, d *fedDomain) {
	var backoff, hint time.Duration
	for {
		h, err := f.fetchOnce(ctx, d)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			hint = h
		}
		// After a failure the backoff is capped by the interval of the
		// last good bundle's hint, not by the default.
		interval := f.interval(d, hint)
		wait := interval
		if err != nil {
			f.logFailure(d, err)
			backoff = nextBackoff(backoff, f.minWait, interval)
			wait = jitter(backoff, f.minWait)
		} else {
			backoff = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// interval is how long to wait after a good fetch of d: the configured
// interval, else the bundle's hint, else the default, within bounds.
func (f *Federation) interval(d *fedDomain, hint time.Duration) time.Duration {
	i := d.RefreshInterval
	if i == 0 {
		i = hint
	}
	if i == 0 {
		i = DefaultFederationRefresh
	}
	return min(max(i, f.minWait), maxFederationRefresh)
}

// nextBackoff doubles the backoff from 2*floor, up to interval.
func nextBackoff(prev, floor, interval time.Duration) time.Duration {
	next := 2 * floor
	if prev > 0 {
		next = 2 * prev
	}
	return max(min(next, interval), floor)
}

// jitter is a wait in [backoff/2, backoff], at least floor, so that
// gateways that lost a partner together do not retry in step.
func jitter(backoff, floor time.Duration) time.Duration {
	half := backoff / 2
	if half <= 0 {
		return max(backoff, floor)
	}
	return max(half+rand.N(half+1), floor)
}

// logFailure logs err once per distinct error: an endpoint down for a day
// gives one line, not one per retry.
func (f *Federation) logFailure(d *fedDomain, err error) {
	d.fails++
	if msg := err.Error(); msg != d.failed {
		d.failed = msg
		f.log.Warn("identity: federation: bundle fetch failed; keeping the last good bundle",
			"trust_domain", d.TrustDomain.Name(), "url", d.URL, "failures", d.fails,
			"has_bundle", f.has(d.TrustDomain), "err", err)
	}
}

func (f *Federation) has(td spiffeid.TrustDomain) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.bundles[td] != nil
}

// fetchOnce fetches, checks and installs d's bundle, returning the
// bundle's refresh hint (0 if none).
func (f *Federation) fetchOnce(ctx context.Context, d *fedDomain) (time.Duration, error) {
	sb, err := f.fetch(ctx, d)
	if err != nil {
		return 0, err
	}
	authorities := sb.X509Authorities()
	if err := checkFederatedBundle(d.TrustDomain, authorities); err != nil {
		return 0, fmt.Errorf("identity: federation: refused the bundle from %s: %w", d.URL, err)
	}
	if d.failed != "" {
		f.log.Info("identity: federation: bundle fetch succeeded again", "trust_domain", d.TrustDomain.Name(),
			"url", d.URL, "failures", d.fails)
	}
	d.failed, d.fails = "", 0
	f.install(d, x509bundle.FromX509Authorities(d.TrustDomain, authorities))
	hint, _ := sb.RefreshHint()
	return max(hint, 0), nil
}

// fetch GETs the bundle document. It does what go-spiffe's
// federation.FetchBundle does (same TLS authentication, same parser)
// with what a long-running fetcher needs besides: a timeout, a bounded
// body, a non-200 answer as an error, https-only redirects and no idle
// connection left behind.
func (f *Federation) fetch(ctx context.Context, d *fedDomain) (*spiffebundle.Bundle, error) {
	ctx, cancel := context.WithTimeout(ctx, federationFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.URL, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("identity: federation: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("identity: federation: fetching %s: %w", d.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("identity: federation: fetching %s: HTTP status %s", d.URL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBundleBytes+1))
	if err != nil {
		return nil, fmt.Errorf("identity: federation: reading %s: %w", d.URL, err)
	}
	if len(body) > maxBundleBytes {
		return nil, fmt.Errorf("identity: federation: %s: bundle larger than %d bytes", d.URL, maxBundleBytes)
	}
	sb, err := spiffebundle.Parse(d.TrustDomain, body)
	if err != nil {
		return nil, fmt.Errorf("identity: federation: %s: %w", d.URL, err)
	}
	return sb, nil
}

// install makes b d's bundle, saves it, and reports a change.
func (f *Federation) install(d *fedDomain, b *x509bundle.Bundle) {
	f.mu.Lock()
	old := f.bundles[d.TrustDomain]
	changed := old == nil || !old.Equal(b)
	if changed {
		f.bundles[d.TrustDomain] = b
	}
	f.mu.Unlock()
	if changed || !d.saved {
		d.saved = f.save(d.TrustDomain, b)
	}
	if !changed {
		return
	}
	f.log.Info("identity: federation: bundle updated", "trust_domain", d.TrustDomain.Name(), "url", d.URL,
		"authorities", len(b.X509Authorities()), "first", old == nil)
	select {
	case f.updated <- struct{}{}:
	default:
	}
}

// save writes b to StateDir and reports whether it is there. A failure is
// logged, not fatal: the bundle is in force in memory either way.
func (f *Federation) save(td spiffeid.TrustDomain, b *x509bundle.Bundle) bool {
	if f.stateDir == "" {
		return false
	}
	err := makePrivateDir(f.stateDir)
	if err == nil {
		err = writeFileAtomic(f.statePath(td), encodeCertificatesPEM(b.X509Authorities()...), 0o600)
	}
	if err != nil {
		f.log.Error("identity: federation: could not save the fetched bundle; a restart with the endpoint down would start from the configured one",
			"trust_domain", td.Name(), "err", err)
		return false
	}
	return true
}

// GetX509BundleForTrustDomain is the bundle held for td: an error for a
// domain not federated, one whose first bundle has not arrived yet, and
// after Close.
func (f *Federation) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, errors.New("identity: federation is closed")
	}
	b := f.bundles[td]
	if b != nil {
		return b.Clone(), nil
	}
	if slices.ContainsFunc(f.domains, func(d *fedDomain) bool { return d.TrustDomain == td }) {
		return nil, fmt.Errorf("identity: federation: no bundle fetched yet for trust domain %q", td)
	}
	return nil, fmt.Errorf("identity: federation: trust domain %q is not federated", td)
}

// Updated has a value after each change of a domain's bundle (buffered 1,
// coalescing, never closed).
func (f *Federation) Updated() <-chan struct{} { return f.updated }

// TrustDomains lists the federated trust domains, sorted, whether or not
// their first bundle has arrived.
func (f *Federation) TrustDomains() []spiffeid.TrustDomain {
	tds := make([]spiffeid.TrustDomain, len(f.domains))
	for i, d := range f.domains {
		tds[i] = d.TrustDomain
	}
	return tds
}

// Close stops the refreshers and waits for them to end. The federation
// serves no bundle after.
func (f *Federation) Close() error {
	f.life.Lock()
	defer f.life.Unlock()
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	for _, d := range f.domains {
		d.client.CloseIdleConnections()
	}
	return nil
}
