// Package svidrenew keeps an X.509-SVID signed by ztgate's built-in CA
// fresh. It reads and replaces the SVID directory (svid.pem, svid.key,
// bundle.pem, as `ztgate device enroll` and `ztgate enroll` write it) so
// that a crash never leaves a certificate beside a key it does not belong
// to, schedules a renewal at half-life, spaces out retries, and renews
// through POST /v1/svid/renew, authenticated with the current SVID.
//
// `ztgate renew` and the example device (examples/device) both renew with
// it, so a device written in Go and a program kept fresh by `ztgate renew`
// behave the same way.
package svidrenew

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/atomicfile"
)

// PendingSuffix marks a renewed certificate written in full but not yet in
// place: DIR/svid.pem.new.
const PendingSuffix = ".new"

// SVID is one X.509-SVID with its key and the bundle beside it.
type SVID struct {
	Cert tls.Certificate // the chain, leaf first, and its key; Leaf is set
	ID   spiffeid.ID
	// Roots is bundle.pem: the CA that signs the gateway's certificates,
	// which a renewed SVID must chain to as well.
	Roots *x509.CertPool
	// Obtained is when the SVID arrived: when the API answered, or, for
	// one read from a directory, when svid.pem was written.
	Obtained time.Time
}

// Leaf is the SVID's own certificate.
func (s *SVID) Leaf() *x509.Certificate { return s.Cert.Leaf }

// Serial is the leaf's serial number in hex, as logs name a certificate.
func (s *SVID) Serial() string { return s.Cert.Leaf.SerialNumber.Text(16) }

// start is when the SVID's life began for its holder: when it was
// obtained, unless NotBefore is later. ztgate's CA backdates NotBefore by a
// minute to absorb clock skew, so NotBefore alone would add that minute to
// every lifetime.
func (s *SVID) start() time.Time {
	if s.Obtained.After(s.Leaf().NotBefore) {
		return s.Obtained
	}
	return s.Leaf().NotBefore
}

// Lifetime is the lifetime the SVID was signed for: the one to ask for
// again when it is renewed, so that it stays the same renewal after
// renewal. For an SVID of ztgate's CA that is NotAfter - NotBefore less the
// CA's backdating, exactly. Counting from when it was obtained instead
// would lose the time the answer took, and a second of NotAfter's
// precision, at every renewal. Only ztgate's CA renews, so only the first
// SVID can be another's; one shorter than the backdating lives from its
// start (when obtained, unless NotBefore is later) to NotAfter.
func (s *SVID) Lifetime() time.Duration {
	leaf := s.Leaf()
	if signed := leaf.NotAfter.Sub(leaf.NotBefore) - identity.NotBeforeBackdate; signed > 0 {
		return signed
	}
	return max(0, leaf.NotAfter.Sub(s.start()).Truncate(time.Second))
}

// RenewalTime is when the SVID is renewed (see RenewalTime); jitter is in
// [0, 1).
func (s *SVID) RenewalTime(jitter float64) time.Time {
	return RenewalTime(s.Leaf().NotBefore, s.Leaf().NotAfter, s.Obtained, jitter)
}

// LoadDir reads DIR/svid.pem, DIR/svid.key and DIR/bundle.pem. If the
// certificate and the key do not belong together because a renewal stopped
// between putting the new key and the new certificate in place, it puts
// the certificate in place first (see WriteDir). It does not check the
// validity period: an expired SVID is still loaded, so that the caller can
// say so.
func LoadDir(dir string) (*SVID, error) {
	certPath, keyPath := filepath.Join(dir, identity.SVIDFile), filepath.Join(dir, identity.SVIDKeyFile)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		if cert, err = finishRenewal(dir, err); err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("svidrenew: %w", err)
			}
			return nil, fmt.Errorf("svidrenew: %s and %s: %w", certPath, keyPath, err)
		}
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %s: %w", certPath, err)
	}
	cert.Leaf = leaf
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %s: %w", certPath, err)
	}
	fi, err := os.Stat(certPath)
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %w", err)
	}
	bundlePath := filepath.Join(dir, identity.BundleFile)
	bundlePEM, err := os.ReadFile(bundlePath)
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %w", err)
	}
	roots, err := parseBundle(bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("svidrenew: %s: %w", bundlePath, err)
	}
	return &SVID{Cert: cert, ID: id, Roots: roots, Obtained: fi.ModTime()}, nil
}

// finishRenewal completes a renewal that stopped after the new key was put
// in place but before the new certificate was: svid.pem.new pairs with
// svid.key. Anything else returns loadErr, the error of the normal load.
func finishRenewal(dir string, loadErr error) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, identity.SVIDFile), filepath.Join(dir, identity.SVIDKeyFile)
	cert, err := tls.LoadX509KeyPair(certPath+PendingSuffix, keyPath)
	if err != nil {
		return tls.Certificate{}, loadErr
	}
	if err := os.Rename(certPath+PendingSuffix, certPath); err != nil {
		return tls.Certificate{}, errors.Join(loadErr, err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return tls.Certificate{}, errors.Join(loadErr, err)
	}
	return cert, nil
}

// WriteDir replaces the SVID, its key and (unless bundlePEM is empty) the
// bundle in dir, in this order:
//
//  1. the new certificate is written in full as svid.pem.new;
//  2. bundle.pem is replaced;
//  3. svid.key is replaced (mode 0600);
//  4. svid.pem.new is renamed to svid.pem.
//
// Every step that can fail on a full disk or a bad permission comes before
// the current key is touched, so such a failure leaves the current, still
// valid pair as it was. The key goes in before the certificate so that the
// one file a crash can leave behind is a certificate, never a copy of a
// private key: a crash between steps 3 and 4 leaves the new key beside the
// old certificate and svid.pem.new, which LoadDir completes. Each file is
// replaced atomically (internal/atomicfile), so none is ever torn.
//
// A program that reads the two files while a renewal is between steps 3
// and 4 sees a pair that does not match; `ztgate renew --exec` therefore
// runs its command only once all four steps are done.
func WriteDir(dir string, chainPEM, keyPEM, bundlePEM []byte) error {
	if _, err := tls.X509KeyPair(chainPEM, keyPEM); err != nil {
		return fmt.Errorf("svidrenew: refusing to write an SVID and a key that do not belong together: %w", err)
	}
	if len(bundlePEM) > 0 {
		if _, err := parseBundle(bundlePEM); err != nil {
			return fmt.Errorf("svidrenew: refusing to write the bundle: %w", err)
		}
	}
	certPath, keyPath := filepath.Join(dir, identity.SVIDFile), filepath.Join(dir, identity.SVIDKeyFile)
	if err := atomicfile.WriteFile(certPath+PendingSuffix, chainPEM, 0o644); err != nil {
		return fmt.Errorf("svidrenew: %w", err)
	}
	if len(bundlePEM) > 0 {
		if err := atomicfile.WriteFile(filepath.Join(dir, identity.BundleFile), bundlePEM, 0o644); err != nil {
			return fmt.Errorf("svidrenew: %w", err)
		}
	}
	if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("svidrenew: %w", err)
	}
	if err := os.Rename(certPath+PendingSuffix, certPath); err != nil {
		return fmt.Errorf("svidrenew: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("svidrenew: %w", err)
	}
	return nil
}

// parseBundle is identity.ParseBundlePEM as the pool a client verifies the
// gateway with.
func parseBundle(bundlePEM []byte) (*x509.CertPool, error) {
	certs, err := identity.ParseBundlePEM(bundlePEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
