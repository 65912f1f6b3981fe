package app

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ClusterConfig is the cluster: section. Absent, the gateway is one node
// with its state in bbolt files; present, the registry, the policy, the
// messages across nodes, the retained messages and the persistent sessions'
// directory live in NATS JetStream, replicated.
type ClusterConfig struct {
	// Name is the cluster's name, the same on every node.
	Name string `yaml:"name"`
	// Node is this node's name: unique in the cluster and stable across
	// restarts (it names the node's JetStream consumer and its sessions).
	Node string `yaml:"node"`
	// Listen is the route address of the embedded NATS server (host:port).
	Listen string `yaml:"listen"`
	// Peers are the route addresses of the other nodes.
	Peers []string `yaml:"peers"`
	// NATSURL, instead of Listen and Peers, is an existing NATS cluster
	// with JetStream: tls:// (the gateway's SVID as client certificate),
	// or nats:// to a loopback IP only.
	NATSURL string `yaml:"nats_url"`
	// NATSCAFile verifies the servers of a tls:// NATSURL; empty means the
	// system roots.
	NATSCAFile string `yaml:"nats_ca_file"`
	// Replicas is the number of JetStream replicas of the gateway's state:
	// 1, 3 or 5. Zero means 3, or 1 when the cluster is one node.
	Replicas int `yaml:"replicas"`
	// PeerIDs are the SPIFFE IDs a route's other end may show. Empty means
	// this node's own: with one CA every node's serving SVID has the same
	// ID; with SPIRE, list each node's.
	PeerIDs []string `yaml:"peer_ids"`
	// StartTimeout bounds the wait at start for a quorum of the cluster.
	StartTimeout time.Duration `yaml:"start_timeout"`
}

// DefaultClusterStartTimeout is ClusterConfig.StartTimeout when unset: the
// nodes of a cluster are seldom started in the same second.
const DefaultClusterStartTimeout = 2 * time.Minute

// nodeName is what a node may be called: it goes into NATS subjects and
// consumer names, where '.', '*', '>' and spaces have meanings.
var nodeName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Embedded reports whether the node runs its own NATS server.
func (c *ClusterConfig) Embedded() bool { return c.NATSURL == "" }

// EffectiveReplicas is Replicas with its default applied.
func (c *ClusterConfig) EffectiveReplicas() int {
	if c.Replicas != 0 {
		return c.Replicas
	}
	if c.Embedded() && len(c.Peers) < 2 {
		return 1 + len(c.Peers)
	}
	return 3
}

// EffectiveStartTimeout is StartTimeout with its default applied.
func (c *ClusterConfig) EffectiveStartTimeout() time.Duration {
	if c.StartTimeout > 0 {
		return c.StartTimeout
	}
	return DefaultClusterStartTimeout
}

func (c *ClusterConfig) validate(served []spiffeid.TrustDomain) error {
	if c == nil {
		return nil
	}
	if strings.TrimSpace(c.Name) == "" {
		return errors.New("cluster.name is empty")
	}
	if !nodeName.MatchString(c.Name) {
		return fmt.Errorf("cluster.name %q: want lower-case letters, digits, '-' and '_', at most 32", c.Name)
	}
	if !nodeName.MatchString(c.Node) {
		return fmt.Errorf("cluster.node %q: want lower-case letters, digits, '-' and '_', at most 32", c.Node)
	}
	if c.Embedded() {
		if c.Listen == "" {
			return errors.New("cluster: set listen and peers (embedded NATS) or nats_url (an existing NATS cluster)")
		}
		if len(c.Peers) == 0 {
			return errors.New("cluster.peers is empty: a cluster node needs at least one peer")
		}
		if c.NATSCAFile != "" {
			return errors.New("cluster.nats_ca_file is only for nats_url")
		}
	} else {
		if c.Listen != "" || len(c.Peers) > 0 {
			return errors.New("cluster: nats_url excludes listen and peers (the NATS cluster is external)")
		}
		if c.NATSCAFile != "" {
			if _, err := os.Stat(c.NATSCAFile); err != nil {
				return fmt.Errorf("cluster.nats_ca_file: %w", err)
			}
		}
	}
	switch r := c.EffectiveReplicas(); {
	case r != 1 && r != 3 && r != 5:
		return fmt.Errorf("cluster.replicas %d: want 1, 3 or 5 (an even count adds no fault tolerance)", r)
	case c.Embedded() && r > 1+len(c.Peers):
		return fmt.Errorf("cluster.replicas %d: more than the %d nodes of the cluster", r, 1+len(c.Peers))
	}
	if c.StartTimeout < 0 {
		return fmt.Errorf("cluster.start_timeout must not be negative, got %s", c.StartTimeout)
	}
	for i, s := range c.PeerIDs {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return fmt.Errorf("cluster.peer_ids[%d] %q: %w", i, s, err)
		}
		if id.TrustDomain() != served[0] {
			return fmt.Errorf("cluster.peer_ids[%d] %q: not in the gateway's trust domain %s", i, s, served[0].Name())
		}
	}
	return nil
}
