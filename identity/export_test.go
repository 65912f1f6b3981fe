package identity

import (
	"crypto"
	"time"
)

// SignerForTest exposes the CA key so tests can sign certificates that
// break one rule at a time with the real trusted key.
func (ca *CA) SignerForTest() crypto.Signer { return ca.key }

// SetNowForTest replaces the clock GetCertificate renews by, so a test can
// move past the renewal point without waiting for it.
func (s *ServingCertSource) SetNowForTest(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}
