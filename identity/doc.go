// Package identity is ztgate's SPIFFE layer: it decides who a peer is.
//
// It holds the built-in certificate authority of one trust domain (an
// ECDSA P-256 key that signs X.509-SVIDs from certificate signing requests,
// so a device's private key never leaves the device), the verifier that turns
// a TLS peer's certificate chain into a SPIFFE ID, and the TLS configurations
// of the gateway's listeners and of clients, including the CA-pinned client a
// device uses for its first contact, before it holds a trust bundle.
//
// Verification follows go-spiffe's x509svid rules (exactly one URI SAN that is
// a SPIFFE ID, a leaf that is not a CA and cannot sign certificates or CRLs, a
// chain to the bundle of the ID's trust domain) and adds the checks go-spiffe
// leaves to the caller: the leaf must carry the digitalSignature key usage,
// the ID must have a non-empty path, and its trust domain must be one the
// verifier serves. Server configurations run that verification in
// tls.Config.VerifyConnection, which Go calls on every handshake including
// resumed ones, and disable session tickets so no handshake is ever resumed.
//
// Files on disk use PEM. Private keys are PKCS#8 ("PRIVATE KEY"), readable by
// Go's crypto/tls, OpenSSL and mosquitto; they are written with mode 0600 in
// directories created 0700, atomically (temporary file, fsync, rename).
package identity
