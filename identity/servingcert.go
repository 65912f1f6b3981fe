package identity

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServingCertTTL is the lifetime of the gateway's serving certificate. It is
// renewed in place once two thirds of it have passed, so a long-running
// gateway never serves an expired certificate.
const ServingCertTTL = 30 * 24 * time.Hour

// ServingCertSource issues the gateway's serving certificate (its SPIFFE ID
// plus the DNS/IP SANs standard MQTT clients check) from the built-in CA and
// renews it before expiry. It is safe for concurrent use.
//
// Renewal happens in GetCertificate, at the first handshake after two thirds
// of the lifetime: a certificate nobody is served needs no renewing, and no
// goroutine has to be started or stopped.
type ServingCertSource struct {
	ca  *CA
	id  spiffeid.ID
	dns []string
	ips []net.IP
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	svid    *x509svid.SVID
	renewAt time.Time
	expires time.Time
}

// NewServingCertSource issues the first certificate for id, with localhost,
// 127.0.0.1 and ::1 plus names (DNS names or IP addresses) as SANs. A nil
// log discards renewal failures.
func NewServingCertSource(ca *CA, id spiffeid.ID, names []string, log *slog.Logger) (*ServingCertSource, error) {
	if ca == nil {
		return nil, errors.New("identity: serving certificate: nil CA")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &ServingCertSource{ca: ca, id: id, log: log, now: time.Now}
	s.dns, s.ips = servingSANs(names)
	if err := s.issue(); err != nil {
		return nil, fmt.Errorf("identity: serving certificate: %w", err)
	}
	return s, nil
}

// servingSANs is localhost, 127.0.0.1 and ::1 plus the configured names,
// split into DNS names and IP addresses, without duplicates.
func servingSANs(names []string) (dns []string, ips []net.IP) {
	seenDNS := map[string]bool{}
	seenIP := map[string]bool{}
	for _, n := range append([]string{"localhost", "127.0.0.1", "::1"}, names...) {
		if ip := net.ParseIP(n); ip != nil {
			if !seenIP[ip.String()] {
				seenIP[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		if !seenDNS[n] {
			seenDNS[n] = true
			dns = append(dns, n)
		}
	}
	return dns, ips
}

// issue replaces the current certificate; the caller holds s.mu or owns s.
func (s *ServingCertSource) issue() error {
	cert, err := s.ca.IssueServerCert(s.id, s.dns, s.ips, ServingCertTTL)
	if err != nil {
		return err
	}
	leaf := cert.Leaf
	if leaf == nil {
		if len(cert.Certificate) == 0 {
			return errors.New("no certificate issued")
		}
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return err
		}
		cert.Leaf = leaf
	}
	// The chain must end with the CA certificate: a device enrolling with
	// a bootstrap token has no bundle yet and checks the CA in the chain
	// against its pin.
	if caRaw := s.ca.Certificate().Raw; len(cert.Certificate) < 2 || !bytes.Equal(cert.Certificate[len(cert.Certificate)-1], caRaw) {
		cert.Certificate = append(cert.Certificate, caRaw)
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("issued key is not a signer")
	}
	certs := make([]*x509.Certificate, len(cert.Certificate))
	certs[0] = leaf
	for i := 1; i < len(cert.Certificate); i++ {
		if certs[i], err = x509.ParseCertificate(cert.Certificate[i]); err != nil {
			return err
		}
	}
	s.cert = &cert
	s.svid = &x509svid.SVID{ID: s.id, Certificates: certs, PrivateKey: signer}
	s.expires = leaf.NotAfter
	s.renewAt = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
	return nil
}

// GetCertificate is tls.Config.GetCertificate. A failed renewal keeps
// serving the current certificate while it is valid and is retried at the
// next handshake.
func (s *ServingCertSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.renew(); err != nil {
		return nil, err
	}
	return s.cert, nil
}

// GetX509SVID makes the source an x509svid.Source: the current serving
// SVID (chain ending with the CA), renewed as GetCertificate renews it.
// The caller gets its own copy of the chain slice.
func (s *ServingCertSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.renew(); err != nil {
		return nil, err
	}
	svid := *s.svid
	svid.Certificates = slices.Clone(s.svid.Certificates)
	return &svid, nil
}

// renew issues a new certificate once the renewal point has passed; the
// caller holds s.mu. Only an expired certificate that cannot be renewed is
// an error.
func (s *ServingCertSource) renew() error {
	now := s.now()
	if !now.After(s.renewAt) {
		return nil
	}
	if err := s.issue(); err != nil {
		if now.After(s.expires) {
			return fmt.Errorf("identity: serving certificate expired and renewal failed: %w", err)
		}
		s.log.Error("serving certificate renewal failed", "err", err)
	}
	return nil
}

// ServerTLSConfig is ServerTLSConfig with the certificate served through
// the renewing source: the mTLS config of the MQTT listener. It is
// ServerTLSConfigFromSource on the built-in source.
func (s *ServingCertSource) ServerTLSConfig(v *Verifier) *tls.Config {
	return ServerTLSConfigFromSource(NewBuiltinSource(s.ca, s), v)
}

// APIServerTLSConfig is APIServerTLSConfig with the certificate served
// through the renewing source. The chain served is the leaf and the CA, so
// a device enrolling with a bootstrap token can check the CA against its pin.
func (s *ServingCertSource) APIServerTLSConfig(v *Verifier) *tls.Config {
	return APIServerTLSConfigFromSource(NewBuiltinSource(s.ca, s), v)
}

// GetCertificate adapts an x509svid.Source to tls.Config.GetCertificate,
// asking svids for the current SVID at every handshake.
//
// The chain served ends with the trust anchor: a device enrolling with a
// bootstrap token has no bundle yet and checks the CA in the chain against
// its pin. A source whose chain stops below the anchor (the Workload API
// sends none) gets it appended from anchors, the bundle of the SVID's trust
// domain; nil anchors serves the chain as the source gives it.
//
// Unlike go-spiffe's tlsconfig.GetCertificate, an SVID without
// certificates or key is an error, not a panic.
func GetCertificate(svids x509svid.Source, anchors x509bundle.Source) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if svids == nil {
			return nil, errors.New("identity: no SVID source")
		}
		svid, err := svids.GetX509SVID()
		if err != nil {
			return nil, fmt.Errorf("identity: serving SVID: %w", err)
		}
		if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
			return nil, errors.New("identity: serving SVID: source returned no certificate or key")
		}
		cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
		for _, c := range svid.Certificates {
			if c == nil {
				return nil, errors.New("identity: serving SVID: nil certificate in chain")
			}
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		if anchor := anchorFor(svid, anchors); anchor != nil {
			cert.Certificate = append(cert.Certificate, anchor.Raw)
		}
		return cert, nil
	}
}

// anchorFor is the authority of anchors that signed the last certificate
// of svid's chain, or nil when that certificate already is one, or none
// matches. The anchor only helps a pinning client; the client's own
// verification decides, so nothing here fails the handshake.
func anchorFor(svid *x509svid.SVID, anchors x509bundle.Source) *x509.Certificate {
	if anchors == nil {
		return nil
	}
	b, err := anchors.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil || b == nil {
		return nil
	}
	last := svid.Certificates[len(svid.Certificates)-1]
	if b.HasX509Authority(last) {
		return nil
	}
	for _, a := range b.X509Authorities() {
		if last.CheckSignatureFrom(a) == nil {
			return a
		}
	}
	return nil
}
