package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrNoCertificate is returned (wrapped) when the peer presented no certificate.
var ErrNoCertificate = errors.New("identity: no client certificate")

// Verifier checks peer chains against the trust bundles of the trust
// domains it serves. It is safe for concurrent use.
//
// The bundles come from an x509bundle.Source, asked for the peer's trust
// domain at every verification, so a bundle the source changes applies to
// the next handshake. Bundles set with SetBundle are held by the verifier
// and take precedence over the source for their trust domain.
type Verifier struct {
	source x509bundle.Source // nil: only the bundles set with SetBundle

	mu     sync.RWMutex
	served map[spiffeid.TrustDomain]bool
	pinned *x509bundle.Set
}

// NewVerifier returns a verifier serving exactly the trust domains of the
// given bundles, which it holds itself. Nil bundles and bundles without a
// trust domain or authorities are skipped, which leaves their trust domain
// unserved.
func NewVerifier(bundles ...*x509bundle.Bundle) *Verifier {
	v := newVerifier(nil)
	for _, b := range bundles {
		_ = v.SetBundle(b)
	}
	return v
}

// NewVerifierFromSource returns a verifier serving the trust domains tds
// with the bundles src holds for them at each verification. The built-in
// CA is such a source.
func NewVerifierFromSource(src x509bundle.Source, tds ...spiffeid.TrustDomain) (*Verifier, error) {
	if src == nil {
		return nil, errors.New("identity: verifier: nil bundle source")
	}
	if len(tds) == 0 {
		return nil, errors.New("identity: verifier: no trust domain to serve")
	}
	v := newVerifier(src)
	for _, td := range tds {
		if td.IsZero() {
			return nil, errors.New("identity: verifier: empty trust domain")
		}
		v.served[td] = true
	}
	return v, nil
}

func newVerifier(src x509bundle.Source) *Verifier {
	return &Verifier{source: src, served: map[spiffeid.TrustDomain]bool{}, pinned: x509bundle.NewSet()}
}

// SetBundle serves b's trust domain with b's authorities, replacing any
// bundle held for it and, for that trust domain, the source. The verifier
// keeps a copy: later changes to b do not change what it trusts.
func (v *Verifier) SetBundle(b *x509bundle.Bundle) error {
	switch {
	case v == nil:
		return errors.New("identity: nil verifier")
	case b == nil:
		return errors.New("identity: nil bundle")
	case b.TrustDomain().IsZero():
		return errors.New("identity: bundle has no trust domain")
	case b.Empty():
		return fmt.Errorf("identity: bundle for %q has no authorities", b.TrustDomain())
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pinned.Add(b.Clone())
	v.served[b.TrustDomain()] = true
	return nil
}

// RemoveBundle stops serving td, whatever the source holds for it.
func (v *Verifier) RemoveBundle(td spiffeid.TrustDomain) {
	if v == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.served, td)
	v.pinned.Remove(td)
}

// TrustDomains lists the served trust domains, sorted.
func (v *Verifier) TrustDomains() []spiffeid.TrustDomain {
	if v == nil {
		return nil
	}
	v.mu.RLock()
	tds := make([]spiffeid.TrustDomain, 0, len(v.served))
	for td := range v.served {
		tds = append(tds, td)
	}
	v.mu.RUnlock()
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.String(), b.String()) })
	return tds
}

// bundleFor is the bundle to verify a peer of td against at this moment.
// A bundle from the source is checked to be td's and to hold authorities,
// so a faulty source fails closed with a clear error.
func (v *Verifier) bundleFor(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	v.mu.RLock()
	served := v.served[td]
	pinned, hasPinned := v.pinned.Get(td)
	v.mu.RUnlock()
	switch {
	case !served:
		return nil, errNotServed
	case hasPinned:
		return pinned, nil
	case v.source == nil:
		return nil, fmt.Errorf("identity: no bundle for trust domain %q", td)
	}
	// Asked outside the lock: a source may block (the Workload API).
	b, err := v.source.GetX509BundleForTrustDomain(td)
	switch {
	case err != nil:
		return nil, fmt.Errorf("identity: bundle for trust domain %q: %w", td, err)
	case b == nil || b.TrustDomain() != td:
		return nil, fmt.Errorf("identity: bundle source returned no bundle for trust domain %q", td)
	case b.Empty():
		return nil, fmt.Errorf("identity: bundle for trust domain %q has no authorities", td)
	}
	return b, nil
}

// errNotServed lets VerifyChain name the peer in the not-served error.
var errNotServed = errors.New("not served")

// Verified is what a successful verification establishes about a peer.
type Verified struct {
	// ID is the peer's SPIFFE ID.
	ID spiffeid.ID
	// Expires is when the verified chain stops being valid: the earliest
	// NotAfter on it, trust anchor included. A connection authenticated
	// with the chain must not outlive it.
	Expires time.Time
}

// Verify is VerifyChain for callers that need only the SPIFFE ID.
func (v *Verifier) Verify(chain []*x509.Certificate) (spiffeid.ID, error) {
	got, err := v.VerifyChain(chain)
	return got.ID, err
}

// VerifyChain applies go-spiffe's x509svid rules plus ztgate's:
// digitalSignature key usage, non-empty path, served trust domain.
//
// chain is the peer's chain as sent, leaf first. The returned error wraps
// the cause and starts with "identity:"; with an error, the Verified is zero.
func (v *Verifier) VerifyChain(chain []*x509.Certificate) (Verified, error) {
	if v == nil {
		return Verified{}, errors.New("identity: no verifier configured")
	}
	if len(chain) == 0 {
		return Verified{}, ErrNoCertificate
	}
	for _, c := range chain {
		if c == nil {
			return Verified{}, errors.New("identity: nil certificate in chain")
		}
	}
	// Cheap checks first, so an unserved trust domain is named as such
	// instead of as a missing bundle deep in a chain error.
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return Verified{}, fmt.Errorf("identity: leaf SPIFFE ID: %w", err)
	}
	bundle, err := v.bundleFor(id.TrustDomain())
	if errors.Is(err, errNotServed) {
		return Verified{}, fmt.Errorf("identity: trust domain %q of %s is not served", id.TrustDomain(), id)
	}
	if err != nil {
		return Verified{}, err
	}
	id, verified, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return Verified{}, fmt.Errorf("identity: %w", err)
	}
	if err := checkLeaf(chain[0], id); err != nil {
		return Verified{}, err
	}
	expires, err := chainsExpire(verified)
	if err != nil {
		return Verified{}, err
	}
	return Verified{ID: id, Expires: expires}, nil
}

// PeerID returns the verified SPIFFE ID of the peer of a completed handshake,
// re-verifying the chain.
func (v *Verifier) PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	got, err := v.VerifyPeer(cs)
	return got.ID, err
}

// VerifyPeer is VerifyChain on the peer chain of a completed handshake.
//
// Re-verifying (one signature check per certificate) rather than trusting
// state saved at handshake time means a bundle removed or replaced since
// then is honoured at the next CONNECT.
func (v *Verifier) VerifyPeer(cs tls.ConnectionState) (Verified, error) {
	if !cs.HandshakeComplete {
		return Verified{}, errors.New("identity: TLS handshake not complete")
	}
	return v.VerifyChain(cs.PeerCertificates)
}

// chainsExpire is when the last of the verified chains expires, each chain
// expiring with its earliest certificate. Certificates the peer sent that
// are on no verified path do not count; the trust anchor, which the peer
// need not send, does. With several paths the peer is authenticated while
// any one of them is valid, as a verification at that moment would find.
func chainsExpire(chains [][]*x509.Certificate) (time.Time, error) {
	var latest time.Time
	for _, chain := range chains {
		var first time.Time
		for i, c := range chain {
			if i == 0 || c.NotAfter.Before(first) {
				first = c.NotAfter
			}
		}
		if first.After(latest) {
			latest = first
		}
	}
	if latest.IsZero() {
		// x509 verification returns at least one non-empty chain on
		// success; should it not, nothing bounds the connection.
		return time.Time{}, errors.New("identity: verification returned no chain")
	}
	return latest, nil
}

// checkLeaf holds the X.509-SVID rules go-spiffe's Verify leaves out.
func checkLeaf(leaf *x509.Certificate, id spiffeid.ID) error {
	if err := checkID(id); err != nil {
		return err
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return fmt.Errorf("identity: certificate of %s lacks the digitalSignature key usage", id)
	}
	return nil
}
