package cluster

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// RouteTLS is the mutual TLS of the routes between nodes: each side shows
// its SVID from svid and accepts the other only when its chain verifies
// against bundles and authorize admits its SPIFFE ID. A route carries the
// replicated registry, policy and messages, so a peer is admitted the way
// a device is: by a verified SPIFFE identity, never by its address.
//
// A route is dialled by one node and accepted by the other, and
// nats-server uses one tls.Config for both ends; so the config is go-spiffe's
// mTLS server config with its client half added. InsecureSkipVerify only
// turns off Go's Web PKI check: the SPIFFE verification of
// VerifyPeerCertificate runs on both ends.
func RouteTLS(svid x509svid.Source, bundles x509bundle.Source, authorize tlsconfig.Authorizer) *tls.Config {
	cfg := tlsconfig.MTLSServerConfig(svid, bundles, authorize)
	client := tlsconfig.MTLSClientConfig(svid, bundles, authorize)
	cfg.GetClientCertificate = client.GetClientCertificate
	cfg.InsecureSkipVerify = true
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}
