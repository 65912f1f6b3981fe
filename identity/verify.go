package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrNoCertificate is returned (wrapped) when the peer presented no certificate.
var ErrNoCertificate = errors.New("identity: no client certificate")

// Verifier checks peer chains against trust bundles of the trust domains we serve.
// It is safe for concurrent use; bundles may be set or removed at any time
// and apply to the next verification.
type Verifier struct {
	bundles *x509bundle.Set
}

// NewVerifier returns a verifier serving exactly the trust domains of the
// given bundles. Nil bundles and bundles without a trust domain or
// authorities are skipped, which leaves their trust domain unserved.
func NewVerifier(bundles ...*x509bundle.Bundle) *Verifier {
	v := &Verifier{bundles: x509bundle.NewSet()}
	for _, b := range bundles {
		_ = v.SetBundle(b)
	}
	return v
}

// SetBundle serves b's trust domain with b's authorities, replacing any
// bundle held for it. The verifier keeps a copy: later changes to b do not
// change what it trusts.
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
	v.bundles.Add(b.Clone())
	return nil
}

// RemoveBundle stops serving td.
func (v *Verifier) RemoveBundle(td spiffeid.TrustDomain) {
	if v != nil {
		v.bundles.Remove(td)
	}
}

// TrustDomains lists the served trust domains, sorted.
func (v *Verifier) TrustDomains() []spiffeid.TrustDomain {
	if v == nil {
		return nil
	}
	bs := v.bundles.Bundles()
	tds := make([]spiffeid.TrustDomain, len(bs))
	for i, b := range bs {
		tds[i] = b.TrustDomain()
	}
	return tds
}

// Verify applies go-spiffe's x509svid rules plus ztgate's: digitalSignature
// key usage, non-empty path, served trust domain.
//
// chain is the peer's chain as sent, leaf first. The returned error wraps
// the cause and starts with "identity:".
func (v *Verifier) Verify(chain []*x509.Certificate) (spiffeid.ID, error) {
	if v == nil {
		return spiffeid.ID{}, errors.New("identity: no verifier configured")
	}
	if len(chain) == 0 {
		return spiffeid.ID{}, ErrNoCertificate
	}
	for _, c := range chain {
		if c == nil {
			return spiffeid.ID{}, errors.New("identity: nil certificate in chain")
		}
	}
	// Cheap checks first, so an unserved trust domain is named as such
	// instead of as a missing bundle deep in a chain error.
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: leaf SPIFFE ID: %w", err)
	}
	if !v.bundles.Has(id.TrustDomain()) {
		return spiffeid.ID{}, fmt.Errorf("identity: trust domain %q of %s is not served", id.TrustDomain(), id)
	}
	id, _, err = x509svid.Verify(chain, v.bundles)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: %w", err)
	}
	if err := checkLeaf(chain[0], id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// PeerID returns the verified SPIFFE ID of the peer of a completed handshake,
// re-verifying the chain.
//
// Re-verifying (one signature check per certificate) rather than trusting
// state saved at handshake time means a bundle removed or replaced since
// then is honoured at the next CONNECT.
func (v *Verifier) PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, errors.New("identity: TLS handshake not complete")
	}
	return v.Verify(cs.PeerCertificates)
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
