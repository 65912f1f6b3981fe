package identity

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
	s.cert = &cert
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
	if now := s.now(); now.After(s.renewAt) {
		if err := s.issue(); err != nil {
			if now.After(s.expires) {
				return nil, fmt.Errorf("identity: serving certificate expired and renewal failed: %w", err)
			}
			s.log.Error("serving certificate renewal failed", "err", err)
		}
	}
	return s.cert, nil
}

// ServerTLSConfig is ServerTLSConfig with the certificate served through
// the renewing source: the mTLS config of the MQTT listener.
func (s *ServingCertSource) ServerTLSConfig(v *Verifier) *tls.Config {
	return s.serve(ServerTLSConfig(s.current(), v))
}

// APIServerTLSConfig is APIServerTLSConfig with the certificate served
// through the renewing source. The chain served is the leaf and the CA, so
// a device enrolling with a bootstrap token can check the CA against its pin.
func (s *ServingCertSource) APIServerTLSConfig(v *Verifier) *tls.Config {
	return s.serve(APIServerTLSConfig(s.current(), v))
}

func (s *ServingCertSource) current() tls.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.cert
}

// serve swaps cfg's fixed certificate for s: crypto/tls consults
// GetCertificate only when Certificates is empty.
func (s *ServingCertSource) serve(cfg *tls.Config) *tls.Config {
	cfg.Certificates = nil
	cfg.GetCertificate = s.GetCertificate
	return cfg
}
