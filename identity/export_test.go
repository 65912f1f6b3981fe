package identity

import "crypto"

// SignerForTest exposes the CA key so tests can sign certificates that
// break one rule at a time with the real trusted key.
func (ca *CA) SignerForTest() crypto.Signer { return ca.key }
