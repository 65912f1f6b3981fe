package identity

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source is where the gateway's own SVID and its trust domain's bundle come
// from: the built-in CA (BuiltinSource), files an operator's PKI keeps
// up to date (FileSource), or a SPIRE agent's Workload API (WorkloadSource).
//
// Both are asked at every handshake, so a rotated serving certificate is
// served from the next handshake on while established connections keep
// the one they were made with, and a changed bundle applies to the next
// verification.
type Source interface {
	x509svid.Source
	x509bundle.Source
	// Updated has a value after each change of the SVID or of a bundle
	// (buffered 1, coalescing; never closed while the source is open; a
	// nil channel for a source that never changes). The gateway re-verifies
	// its sessions on it, so a removed CA cuts the sessions it signed.
	Updated() <-chan struct{}
	// Close stops watching; a closed source serves nothing.
	Close() error
}

// BuiltinSource is the built-in CA and the serving certificate it issues
// behind the Source interface. The serving certificate renews itself at
// the next handshake after two thirds of its lifetime and the CA never
// changes while the gateway runs, so there is nothing to report: Updated
// is nil.
type BuiltinSource struct {
	ca      *CA
	serving *ServingCertSource
}

var _ Source = (*BuiltinSource)(nil)

// NewBuiltinSource serves serving's certificate and trusts ca.
func NewBuiltinSource(ca *CA, serving *ServingCertSource) *BuiltinSource {
	return &BuiltinSource{ca: ca, serving: serving}
}

// CA is the built-in CA, which also signs the devices' SVIDs.
func (s *BuiltinSource) CA() *CA { return s.ca }

// GetX509SVID is the current serving SVID, renewed when due.
func (s *BuiltinSource) GetX509SVID() (*x509svid.SVID, error) {
	if s == nil || s.serving == nil {
		return nil, errors.New("identity: built-in source has no serving certificate")
	}
	return s.serving.GetX509SVID()
}

// GetX509BundleForTrustDomain is the CA's bundle for its own trust domain
// and an error for any other.
func (s *BuiltinSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if s == nil || s.ca == nil {
		return nil, fmt.Errorf("identity: built-in source has no CA, so no bundle for trust domain %q", td)
	}
	return s.ca.GetX509BundleForTrustDomain(td)
}

// Updated is nil: see BuiltinSource.
func (*BuiltinSource) Updated() <-chan struct{} { return nil }

// Close does nothing: the built-in source holds no watcher.
func (*BuiltinSource) Close() error { return nil }

// ServerTLSConfigFromSource is ServerTLSConfig (the MQTT listener's mTLS
// config) serving src's current SVID at each handshake, the chain ending
// with its trust anchor from src's bundle (see GetCertificate).
func ServerTLSConfigFromSource(src Source, v *Verifier) *tls.Config {
	return serveFrom(ServerTLSConfig(tls.Certificate{}, v), src)
}

// APIServerTLSConfigFromSource is APIServerTLSConfig (the API listener's,
// client certificate optional) serving src's current SVID at each
// handshake.
func APIServerTLSConfigFromSource(src Source, v *Verifier) *tls.Config {
	return serveFrom(APIServerTLSConfig(tls.Certificate{}, v), src)
}

// serveFrom swaps cfg's fixed certificate for src: crypto/tls consults
// GetCertificate only when Certificates is empty.
func serveFrom(cfg *tls.Config, src Source) *tls.Config {
	cfg.Certificates = nil
	if src == nil {
		cfg.GetCertificate = GetCertificate(nil, nil)
		return cfg
	}
	cfg.GetCertificate = GetCertificate(src, src)
	return cfg
}
