package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/clusterstart"
	"github.com/ztgate/ztgate/internal/freeport"
)

// PlacementMode puts the clients of a bench on the nodes of its cluster.
type PlacementMode string

const (
	// PlacementSpread puts publisher i on node i mod N and subscriber j on
	// node (j+1) mod N: the clients share the nodes, and most deliveries
	// cross from one node to another.
	PlacementSpread PlacementMode = "spread"
	// PlacementSame puts every client on the first node: no delivery
	// crosses nodes, though every QoS 1 message is still stored by a
	// quorum before its PUBACK.
	PlacementSame PlacementMode = "same"
	// PlacementCross puts every publisher on the first node and the
	// subscribers round-robin on the others: every delivery crosses.
	PlacementCross PlacementMode = "cross"
	// PlacementBoth runs PlacementSame, then PlacementCross, and
	// compares: the cost of delivering across nodes.
	PlacementBoth PlacementMode = "both"
)

// clusterName names the bench's cluster; it never leaves the process.
const clusterName = "ztgate-bench"

// ParsePlacementMode reads a placement as `ztgate bench --placement` takes it.
func ParsePlacementMode(s string) (PlacementMode, error) {
	switch m := PlacementMode(s); m {
	case PlacementSpread, PlacementSame, PlacementCross, PlacementBoth:
		return m, nil
	}
	return "", fmt.Errorf("bench: --placement %q: want spread, same, cross or both", s)
}

func (c Config) validateCluster() error {
	if c.Nodes < 1 || c.Nodes > MaxNodes {
		return fmt.Errorf("bench: --nodes must be between 1 and %d, got %d", MaxNodes, c.Nodes)
	}
	if _, err := ParsePlacementMode(string(c.Placement)); err != nil {
		return err
	}
	switch {
	case c.NodesCompare && c.Nodes < 2:
		return fmt.Errorf("bench: --nodes-compare compares a single node with a cluster: set --nodes 2 or more, got %d", c.Nodes)
	case (c.Placement == PlacementCross || c.Placement == PlacementBoth) && c.Nodes < 2:
		return fmt.Errorf("bench: --placement %s needs a cluster: set --nodes 2 or more, got %d", c.Placement, c.Nodes)
	}
	// Each comparison is a pair of runs and one ratio; two at once would
	// be four runs with no single ratio to show.
	compares := 0
	for _, on := range []bool{c.Policy == PolicyBoth, c.NodesCompare, c.Placement == PlacementBoth} {
		if on {
			compares++
		}
	}
	if compares > 1 {
		return fmt.Errorf("bench: --policy both, --nodes-compare and --placement both each compare two runs: use one at a time")
	}
	return nil
}

// variant is one run of a bench: its policy, its nodes and the clients'
// placement on them.
type variant struct {
	policy    PolicyMode
	nodes     int
	placement PlacementMode // "" on a single node
	// name heads the run's column: what differs from the other run.
	name string
}

// variants are the runs of the bench, in order; when there are two, the
// second is compared with the first.
func (c Config) variants() []variant {
	one := func(p PolicyMode, nodes int, pl PlacementMode) variant {
		if nodes == 1 {
			pl = ""
		}
		return variant{policy: p, nodes: nodes, placement: pl, name: string(p)}
	}
	switch {
	case c.Policy == PolicyBoth:
		return []variant{one(PolicyAllowAll, c.Nodes, c.Placement), one(PolicyDefault, c.Nodes, c.Placement)}
	case c.NodesCompare:
		single, multi := one(c.Policy, 1, c.Placement), one(c.Policy, c.Nodes, c.Placement)
		single.name, multi.name = "1 node", fmt.Sprintf("%d nodes", c.Nodes)
		return []variant{single, multi}
	case c.Placement == PlacementBoth:
		same, cross := one(c.Policy, c.Nodes, PlacementSame), one(c.Policy, c.Nodes, PlacementCross)
		same.name, cross.name = string(PlacementSame), string(PlacementCross)
		return []variant{same, cross}
	}
	return []variant{one(c.Policy, c.Nodes, c.Placement)}
}

// describe is the variant as the progress line names it.
func (v variant) describe() string {
	if v.nodes == 1 {
		return fmt.Sprintf("%s policy", v.policy)
	}
	return fmt.Sprintf("%s policy, %d-node cluster, %s placement", v.policy, v.nodes, v.placement)
}

// replicas is the JetStream replication of a cluster of n nodes: the
// product's default (3, or every node of a smaller cluster), except that
// two nodes can only have one, as the configuration allows 1, 3 or 5.
func replicas(n int) int {
	if n == 2 {
		return 1
	}
	return min(n, 3)
}

// publisherNode is the node publisher i connects to.
func (v variant) publisherNode(i int) int {
	if v.placement == PlacementSpread {
		return i % v.nodes
	}
	return 0
}

// subscriberNode is the node subscriber j connects to.
func (v variant) subscriberNode(j int) int {
	switch v.placement {
	case PlacementSpread:
		return (j + 1) % v.nodes
	case PlacementCross:
		return 1 + j%(v.nodes-1)
	}
	return 0
}

// startNodes starts the run's gateways: one, or the nodes of a cluster
// sharing one CA, with a new set of route ports if one was taken before
// its node could bind it.
func startNodes(ctx context.Context, dir string, base app.Config, v variant) ([]*app.App, error) {
	if v.nodes == 1 {
		base.DataDir = filepath.Join(dir, "data")
		a, err := app.Start(ctx, base)
		if err != nil {
			return nil, err
		}
		return []*app.App{a}, nil
	}
	caDir := filepath.Join(dir, "ca")
	if _, err := identity.LoadOrCreateCA(caDir, spiffeid.RequireTrustDomainFromString(trustDomain)); err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	base.Identity.CADir = caDir
	base.Logger = slog.New(quietNATS{Handler: base.Logger.Handler()})
	const attempts = 3
	var err error
	for attempt := range attempts {
		var routes []string
		if routes, err = freeport.Loopback(v.nodes); err != nil {
			return nil, err
		}
		cfgs := make([]app.Config, v.nodes)
		for i := range cfgs {
			cfgs[i] = base
			// A data directory per attempt: a node that failed may have
			// left its JetStream state behind.
			cfgs[i].DataDir = filepath.Join(dir, fmt.Sprintf("try%d", attempt), clusterstart.NodeName(i))
			cfgs[i].Cluster = clusterstart.Node(clusterName, i, routes, startTimeout)
			cfgs[i].Cluster.Replicas = replicas(v.nodes)
		}
		var apps []*app.App
		if apps, err = clusterstart.Start(ctx, cfgs); err == nil || !freeport.IsAddrInUse(err) {
			return apps, err
		}
	}
	return nil, err
}

// waitEnrolled waits until every node's registry has the named devices:
// they were enrolled on the first node, and a node refuses a device it has
// not heard of yet.
func waitEnrolled(ctx context.Context, apps []*app.App, names []string) error {
	for i, a := range apps[1:] {
		for _, name := range names {
			for {
				if _, err := a.Registry().Get(name); err == nil {
					break
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("bench: node %s has not seen device %s: %w", clusterstart.NodeName(i+1), name, context.Cause(ctx))
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}
	return nil
}

// quietNATS passes a bench cluster's log on, with the embedded NATS
// servers' errors lowered to warnings: the nodes start at once, and each
// fails to reach the routes of those not listening yet, which is no error
// of the bench's. A cluster that truly fails to form fails the start, and
// one that fails under load fails the run or loses messages: both are
// reported without the servers' log (--log-level warn shows it).
type quietNATS struct {
	slog.Handler
	nats bool
}

func (h quietNATS) level(l slog.Level) slog.Level {
	if h.nats && l > slog.LevelWarn {
		return slog.LevelWarn
	}
	return l
}

func (h quietNATS) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, h.level(l))
}

func (h quietNATS) Handle(ctx context.Context, r slog.Record) error {
	r.Level = h.level(r.Level)
	return h.Handler.Handle(ctx, r)
}

func (h quietNATS) WithAttrs(attrs []slog.Attr) slog.Handler {
	nats := h.nats
	for _, a := range attrs {
		nats = nats || (a.Key == "component" && a.Value.String() == "nats")
	}
	return quietNATS{Handler: h.Handler.WithAttrs(attrs), nats: nats}
}

func (h quietNATS) WithGroup(name string) slog.Handler {
	return quietNATS{Handler: h.Handler.WithGroup(name), nats: h.nats}
}

// mkdirPolicy writes the allow-all policy into dir/policy.
func mkdirPolicy(dir string) (string, error) {
	pdir := filepath.Join(dir, "policy")
	if err := os.Mkdir(pdir, 0o700); err != nil {
		return "", fmt.Errorf("bench: %w", err)
	}
	if err := os.WriteFile(filepath.Join(pdir, "allow_all.rego"), []byte(allowAllPolicy), 0o600); err != nil {
		return "", fmt.Errorf("bench: %w", err)
	}
	return pdir, nil
}
