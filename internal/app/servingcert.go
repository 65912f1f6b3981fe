package app

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

// ServingCertTTL is the lifetime of the gateway's serving certificate. It is
// renewed in place once two thirds of it have passed, so a long-running
// gateway never serves an expired certificate.
const ServingCertTTL = 30 * 24 * time.Hour

// servingCert issues the gateway's serving certificate (its SPIFFE ID plus
// the DNS/IP SANs standard MQTT clients check) and renews it before expiry.
type servingCert struct {
	ca  *identity.CA
	id  spiffeid.ID
	dns []string
	ips []net.IP
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
	expires time.Time
}

func newServingCert(ca *identity.CA, id spiffeid.ID, names []string, log *slog.Logger) (*servingCert, error) {
	s := &servingCert{ca: ca, id: id, log: log, now: time.Now}
	s.dns, s.ips = servingSANs(names)
	if err := s.issue(); err != nil {
		return nil, fmt.Errorf("app: serving certificate: %w", err)
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

func (s *servingCert) issue() error {
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
	s.cert = &cert
	s.expires = leaf.NotAfter
	s.renewAt = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
	return nil
}

// get is tls.Config.GetCertificate. A failed renewal keeps serving the
// current certificate while it is valid and is retried at the next handshake.
func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := s.now(); now.After(s.renewAt) {
		if err := s.issue(); err != nil {
			if now.After(s.expires) {
				return nil, fmt.Errorf("app: serving certificate expired and renewal failed: %w", err)
			}
			s.log.Error("serving certificate renewal failed", "err", err)
		}
	}
	return s.cert, nil
}

// serverTLS is the mTLS config of one listener: identity's server config
// with the certificate served through the renewing source.
func (s *servingCert) serverTLS(v *identity.Verifier) *tls.Config {
	s.mu.Lock()
	cert := *s.cert
	s.mu.Unlock()
	cfg := identity.ServerTLSConfig(cert, v)
	cfg.Certificates = nil
	cfg.GetCertificate = s.get
	return cfg
}

// apiTLS is the config of the API listener: like serverTLS, but a client
// certificate is optional (identity.APIServerTLSConfig), so a device can
// enroll with a bootstrap token; the API itself requires a verified SVID on
// every other route. The chain served is the leaf and the CA, so such a
// device can check the CA against its pin.
func (s *servingCert) apiTLS(v *identity.Verifier) *tls.Config {
	s.mu.Lock()
	cert := *s.cert
	s.mu.Unlock()
	cfg := identity.APIServerTLSConfig(cert, v)
	cfg.Certificates = nil
	cfg.GetCertificate = s.get
	return cfg
}
