package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/gateway"
	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/registry"
)

// ClusterSubdir is the directory under the data directory of a cluster
// node: the embedded NATS server's JetStream store (nats/) and the node's
// checkpoint of the replicated registry (registry.db). A single-node
// registry.db is never read in cluster mode: its devices go into the
// cluster through `ztgate device import`.
const ClusterSubdir = "cluster"

// openCluster starts (or connects to) this node's NATS and waits, within
// cluster.start_timeout, until JetStream has a quorum: the registry and the
// policy of a cluster node come from it, so without one there is nothing
// safe to serve.
func (a *App) openCluster(ctx context.Context) error {
	cc := a.cfg.Cluster
	svid, err := a.src.GetX509SVID()
	if err != nil {
		return fmt.Errorf("app: cluster: serving SVID: %w", err)
	}
	if cc.Embedded() {
		peers, err := peerIDs(cc, svid.ID)
		if err != nil {
			return err
		}
		a.node, err = cluster.StartNode(ctx, cluster.NodeConfig{
			Name:    cc.Name,
			Node:    cc.Node,
			Listen:  cc.Listen,
			Peers:   cc.Peers,
			DataDir: filepath.Join(a.cfg.DataDir, ClusterSubdir, "nats"),
			TLS:     cluster.RouteTLS(a.src, a.src, tlsconfig.AuthorizeOneOf(peers...)),
			Logger:  a.log.With("component", "nats"),
		})
		if err != nil {
			return fmt.Errorf("app: %w", err)
		}
	} else {
		tc, err := natsClientTLS(a, cc)
		if err != nil {
			return err
		}
		if a.node, err = cluster.Dial(ctx, cluster.DialConfig{URL: cc.NATSURL, Node: cc.Node, TLS: tc}); err != nil {
			return fmt.Errorf("app: %w", err)
		}
	}
	start := time.Now()
	a.log.Info("cluster: waiting for a JetStream quorum", "cluster", cc.Name, "node", cc.Node, "timeout", cc.EffectiveStartTimeout().String())
	if err := a.node.WaitJetStream(ctx); err != nil {
		return fmt.Errorf("app: cluster %s: no quorum within %s (are the other nodes up and reachable?): %w", cc.Name, cc.EffectiveStartTimeout(), err)
	}
	a.log.Info("cluster: JetStream ready", "node", cc.Node, "peers", a.node.Peers(), "took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// peerIDs are the SPIFFE IDs admitted at the other end of a route:
// cluster.peer_ids, else this node's own serving ID (with one CA every
// node's serving SVID has it; a device SVID of that CA never does).
func peerIDs(cc *ClusterConfig, own spiffeid.ID) ([]spiffeid.ID, error) {
	if len(cc.PeerIDs) == 0 {
		return []spiffeid.ID{own}, nil
	}
	ids := make([]spiffeid.ID, 0, len(cc.PeerIDs))
	for _, s := range cc.PeerIDs {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("app: cluster.peer_ids: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// natsClientTLS is the client TLS to an external NATS: the serving SVID as
// client certificate (so the NATS operator can admit the gateway by it) and
// the servers verified by nats_ca_file or the system roots. nil for a
// nats:// URL, which the cluster package allows only to loopback.
func natsClientTLS(a *App, cc *ClusterConfig) (*tls.Config, error) {
	if !strings.HasPrefix(cc.NATSURL, "tls://") {
		return nil, nil
	}
	tc := &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: tlsconfig.GetClientCertificate(a.src),
	}
	if cc.NATSCAFile != "" {
		raw, err := os.ReadFile(cc.NATSCAFile)
		if err != nil {
			return nil, fmt.Errorf("app: cluster.nats_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(raw) {
			return nil, errors.New("app: cluster.nats_ca_file: no PEM certificate in it")
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// openReplicatedRegistry opens the registry as this node's copy of the
// cluster's log, DATA_DIR/cluster/registry.db its checkpoint.
func (a *App) openReplicatedRegistry(ctx context.Context) error {
	rl, err := cluster.NewRegistryLog(ctx, a.node.JetStream(), a.cfg.Cluster.EffectiveReplicas())
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	a.reg, err = registry.OpenReplicated(filepath.Join(a.cfg.DataDir, ClusterSubdir, "registry.db"), rl,
		registry.ReplicaOptions{Logger: a.log.With("component", "registry")})
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	return nil
}

// syncPolicy makes the policy the cluster's: its revision replaces this
// node's at start, and from then on every change on any node goes through
// the cluster before it takes effect anywhere (cluster.PolicySync).
func (a *App) syncPolicy(ctx, bg context.Context) error {
	ps, err := cluster.NewPolicySync(ctx, a.node.JetStream(), a.cfg.Cluster.Node, a.cfg.Cluster.EffectiveReplicas(),
		a.engine, a.log.With("component", "policysync"))
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	if err := ps.Start(bg); err != nil {
		return fmt.Errorf("app: %w", err)
	}
	if st := ps.Status(); st.RefusedRevision != "" {
		return fmt.Errorf("app: the cluster's policy revision %s is refused here: %s", shortRev(st.RefusedRevision), st.LastError)
	}
	a.psync = ps
	return nil
}

// openSessionDirectory opens the cluster's directory of sessions: which
// node holds each client's session, so that a client resumes it, or takes
// it over, on any node.
func (a *App) openSessionDirectory(ctx context.Context) error {
	dir, err := cluster.NewSessionDirectory(ctx, a.node.JetStream(), a.node.Conn(), a.cfg.Cluster.Node,
		cluster.SessionDirectoryOptions{Replicas: a.cfg.Cluster.EffectiveReplicas(), Logger: a.log.With("component", "sessions")})
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	a.sessions = dir
	return nil
}

// openFabric opens the cluster's message streams: what a device publishes
// here reaches subscribers on every node, and the retained messages are
// the cluster's.
func (a *App) openFabric(ctx context.Context) error {
	f, err := cluster.NewFabric(ctx, a.node.JetStream(), a.node.Conn(), a.cfg.Cluster.Node, cluster.FabricOptions{
		Replicas: a.cfg.Cluster.EffectiveReplicas(),
		Logger:   a.log.With("component", "fabric"),
	})
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	a.fabric, a.link = f, newClusterLink(f)
	return nil
}

// serveAdmin answers this node's part of the cluster's session list and
// kick, and returns the API's functions for both: the whole cluster's
// sessions, each with its node, and a kick on every node. Without a
// cluster, they are the gateway's own.
func (a *App) serveAdmin(gw *gateway.Gateway) (
	sessions func(context.Context, string) ([]brokerview.Session, error),
	kick func(context.Context, string) (int, error), err error,
) {
	if a.node == nil {
		sessions = func(context.Context, string) ([]brokerview.Session, error) { return gw.Sessions(), nil }
		kick = func(_ context.Context, id string) (int, error) { return gw.KickSessions(id) }
		return sessions, kick, nil
	}
	nodes := 0 // an external NATS cluster: how many gateways use it is not known here
	if cc := a.cfg.Cluster; cc.Embedded() {
		nodes = 1 + len(cc.Peers)
	}
	adm, err := cluster.ServeAdmin(a.node.Conn(), a.cfg.Cluster.Node, cluster.AdminOptions{
		Nodes:  nodes,
		Logger: a.log.With("component", "cluster-admin"),
	}, gw.Sessions, gw.KickSessions)
	if err != nil {
		return nil, nil, fmt.Errorf("app: %w", err)
	}
	a.admin = adm
	unavailable := func(err error) error {
		if errors.Is(err, cluster.ErrNodesUnanswered) {
			return fmt.Errorf("%w: %w", api.ErrUnavailable, err)
		}
		return err
	}
	sessions = func(ctx context.Context, id string) ([]brokerview.Session, error) {
		out, err := adm.Sessions(ctx, id)
		return out, unavailable(err)
	}
	kick = func(ctx context.Context, id string) (int, error) {
		n, err := adm.Kick(ctx, id)
		return n, unavailable(err)
	}
	return sessions, kick, nil
}
