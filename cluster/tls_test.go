package cluster_test

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/testcluster"
	"github.com/ztgate/ztgate/internal/testpki"
)

const nodeID = "spiffe://cluster.test/ztgate/gateway"

// routeTLS is a node's route TLS with cert as its SVID, trusting ca and
// admitting peers that show nodeID.
func routeTLS(t *testing.T, cert tls.Certificate, ca *testpki.CA) *tls.Config {
	t.Helper()
	chainPEM, keyPEM := testpki.CertPEM(t, cert)
	svid, err := x509svid.Parse(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.test")
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert})
	return cluster.RouteTLS(svid, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString(nodeID)))
}

// Routes carry the replicated state, so a node is admitted by its SVID: a
// node whose certificate another CA signed, or that shows a device's ID
// from the right CA, gets no route; the same node with the gateway's SVID
// from the cluster's CA does (the positive control).
func TestRouteTLSAdmitsOnlyClusterNodes(t *testing.T) {
	ca := testpki.NewCA(t, "cluster.test")
	rogueCA := testpki.NewCA(t, "cluster.test")
	tests := []struct {
		name   string
		third  func() tls.Certificate
		joined bool
	}{
		{"node SVID of the cluster CA", func() tls.Certificate { return ca.Issue(t, nodeID) }, true},
		{"node ID signed by another CA", func() tls.Certificate { return rogueCA.Issue(t, nodeID) }, false},
		{"device SVID of the cluster CA", func() tls.Certificate { return ca.Issue(t, "spiffe://cluster.test/device/d1") }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := testcluster.StartWith(t, 3, func(i int, cfg *cluster.NodeConfig) {
				cert := ca.Issue(t, nodeID)
				if i == 2 {
					cert = tt.third()
				}
				cfg.TLS = routeTLS(t, cert, ca)
			})
			// Two good nodes make a quorum of three whatever the third does.
			tc.WaitJetStream(testcluster.FormTimeout, 0, 1)
			want := []string{"n1"}
			if tt.joined {
				want = []string{"n1", "n2"}
			}
			// A refused node keeps redialling: watch long enough for
			// several attempts before concluding it never got in.
			deadline := time.Now().Add(5 * time.Second)
			got := tc.Nodes[0].Peers()
			for time.Now().Before(deadline) && !(tt.joined && slices.Equal(got, want)) {
				if slices.Contains(got, "n2") && !tt.joined {
					break
				}
				time.Sleep(200 * time.Millisecond)
				got = tc.Nodes[0].Peers()
			}
			if !slices.Equal(got, want) {
				t.Fatalf("node n0 has routes to %v, want %v", got, want)
			}
			if slices.Contains(tc.Nodes[2].Peers(), "n0") != tt.joined {
				t.Fatalf("node n2 routes %v, joined want %v", tc.Nodes[2].Peers(), tt.joined)
			}
		})
	}
}
