package identity

import (
	"crypto/tls"
	"errors"
)

// tls12CipherSuites are the TLS 1.2 suites we offer: forward secret AEADs
// only. TLS 1.3 suites are not configurable in Go and are all modern.
var tls12CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ServerTLSConfig is the mTLS config for the MQTT listener (the API's is
// APIServerTLSConfig): TLS 1.2+, client cert required and verified by v in
// VerifyConnection (which also runs on resumed sessions), session tickets
// disabled.
//
// crypto/tls only collects the client's chain (RequireAnyClientCert); the
// SPIFFE verification is v's, because Go's own client verification knows
// nothing of trust domains and is skipped for resumed sessions, as is
// VerifyPeerCertificate. Tickets are disabled as well, so every connection
// makes a full handshake; should a copy of this config re-enable them,
// VerifyConnection still re-verifies each resumed session against the
// bundles of that moment.
func ServerTLSConfig(cert tls.Certificate, v *Verifier) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS12,
		CipherSuites:           tls12CipherSuites,
		Certificates:           []tls.Certificate{cert},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if v == nil {
				return errors.New("identity: no verifier configured")
			}
			_, err := v.Verify(cs.PeerCertificates)
			return err
		},
	}
}

// APIServerTLSConfig is the config of the admin and enrollment API listener.
// It is ServerTLSConfig except that a client certificate is optional: a
// device enrolling with a bootstrap token has no SVID yet, and load balancer
// probes have none. A chain that IS presented must verify exactly as on the
// MQTT listener, or the handshake fails; a client cannot get past the
// handshake with a bad certificate by hoping it is ignored.
//
// So a completed handshake means "no certificate, or a verified SVID". The
// API server must still require a verified SVID on every route that is not
// meant for anonymous callers (Verifier.PeerID reports ErrNoCertificate).
func APIServerTLSConfig(cert tls.Certificate, v *Verifier) *tls.Config {
	cfg := ServerTLSConfig(cert, v)
	// RequestClientCert: ask, accept none, verify nothing itself; the
	// verification is VerifyConnection's, as in ServerTLSConfig.
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if v == nil {
			return errors.New("identity: no verifier configured")
		}
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		_, err := v.Verify(cs.PeerCertificates)
		return err
	}
	return cfg
}
