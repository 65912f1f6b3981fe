package identity

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BundleHandler serves td's bundle as a SPIFFE bundle endpoint does: the
// JWKS document of the SPIFFE Trust Domain and Bundle specification, one
// x509-svid key per X.509 authority, with refreshHint (whole seconds; 0:
// none) as spiffe_refresh_hint. The bundle is asked of src at each request,
// so a rotated CA is served from the next fetch on. Only GET is answered.
//
// The handler serves whatever src holds for td: it must be the gateway's
// own trust domain (a bundle endpoint serving a partner's bundle would
// make every client that federates with it trust that partner through us).
func BundleHandler(td spiffeid.TrustDomain, src x509bundle.Source, refreshHint time.Duration) (http.Handler, error) {
	switch {
	case td.IsZero():
		return nil, errors.New("identity: bundle endpoint: no trust domain")
	case src == nil:
		return nil, errors.New("identity: bundle endpoint: nil bundle source")
	case refreshHint < 0 || refreshHint > 0 && refreshHint < time.Second:
		return nil, fmt.Errorf("identity: bundle endpoint: refresh hint %s: want 0 or at least 1s", refreshHint)
	}
	h, err := federation.NewHandler(td, &spiffeBundleSource{td: td, src: src, hint: refreshHint})
	if err != nil {
		return nil, fmt.Errorf("identity: bundle endpoint: %w", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "method is not allowed", http.StatusMethodNotAllowed)
			return
		}
		// A partner polls for changes; a cache in between must not hand
		// it a bundle from before a CA was removed.
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	}), nil
}

// spiffeBundleSource adapts an x509bundle.Source to the spiffebundle.Source
// go-spiffe's handler asks at each request.
type spiffeBundleSource struct {
	td   spiffeid.TrustDomain
	src  x509bundle.Source
	hint time.Duration
}

func (s *spiffeBundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != s.td {
		return nil, fmt.Errorf("identity: bundle endpoint serves trust domain %q, not %q", s.td, td)
	}
	xb, err := s.src.GetX509BundleForTrustDomain(td)
	switch {
	case err != nil:
		return nil, fmt.Errorf("identity: bundle endpoint: %w", err)
	case xb == nil || xb.TrustDomain() != td:
		return nil, fmt.Errorf("identity: bundle endpoint: the source returned no bundle for trust domain %q", td)
	case xb.Empty():
		// An empty key set would tell every partner to trust nobody of
		// ours; better an error they retry than a bundle they act on.
		return nil, fmt.Errorf("identity: bundle endpoint: the bundle of trust domain %q has no authorities", td)
	}
	b := spiffebundle.FromX509Authorities(td, xb.X509Authorities())
	if s.hint > 0 {
		b.SetRefreshHint(s.hint)
	}
	return b, nil
}
