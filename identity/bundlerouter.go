package identity

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BundleRouter sends each trust domain to its own bundle source: the own
// trust domain to the identity Source, each partner to the Federation (or,
// for a partner SPIRE federates, to the Workload API source). Keeping one
// source per trust domain preserves the <trust domain, bundle> binding: a
// source that holds bundles of several domains is only ever asked for the
// one it is routed.
type BundleRouter map[spiffeid.TrustDomain]x509bundle.Source

var _ x509bundle.Source = BundleRouter(nil)

// GetX509BundleForTrustDomain asks td's source. An unrouted trust domain
// is an error, and so is a bundle the source returns for another trust
// domain or with no authorities: the verifier is then refused rather than
// handed the wrong anchors.
func (r BundleRouter) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	src := r[td]
	if src == nil {
		return nil, fmt.Errorf("identity: trust domain %q is not configured", td)
	}
	b, err := src.GetX509BundleForTrustDomain(td)
	switch {
	case err != nil:
		return nil, err
	case b == nil || b.TrustDomain() != td:
		return nil, fmt.Errorf("identity: the bundle source of trust domain %q returned no bundle for it", td)
	case b.Empty():
		return nil, fmt.Errorf("identity: the bundle of trust domain %q has no authorities", td)
	}
	return b, nil
}
