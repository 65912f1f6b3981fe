package app

import (
	"fmt"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/gateway"
)

// bridgesDir holds the bridges' queues on disk, one file per bridge.
const bridgesDir = "bridges"

// openBridges makes the configured bridges (nil without any). Their
// inbound messages go to the gateway made after them, through a.gw; they
// connect only once startBridges runs, after the gateway listens.
func (a *App) openBridges() (*bridge.Manager, error) {
	if len(a.cfg.Bridges) == 0 {
		return nil, nil
	}
	m, err := bridge.New(a.cfg.Bridges, bridge.Deps{
		Dir:               filepath.Join(a.cfg.DataDir, bridgesDir),
		TrustDomain:       a.td,
		ClientCertificate: tlsconfig.GetClientCertificate(a.src),
		Decider:           a.decider,
		PublishLocal: func(id spiffeid.ID, clientID, topic string, payload []byte, qos byte, retain bool) error {
			return a.gw.PublishAs(id, clientID, topic, payload, qos, retain)
		},
		Logger:  a.log,
		Metrics: a.prom,
		Node:    clusterNode(a.cfg.Cluster),
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	return m, nil
}

// egress is the gateway's Egress for m: a nil interface, not a typed nil,
// without bridges.
func egress(m *bridge.Manager) gateway.Egress {
	if m == nil {
		return nil
	}
	return m
}

// bridgeStatus is GET /v1/bridges: nil without bridges.
func (a *App) bridgeStatus() []bridge.Status {
	if a.bridges == nil {
		return nil
	}
	return a.bridges.Status()
}

// clusterNode is the cluster node name of cc; "" without a cluster.
func clusterNode(cc *ClusterConfig) string {
	if cc == nil {
		return ""
	}
	return cc.Node
}
