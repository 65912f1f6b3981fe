package testutil

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/clusterstart"
	"github.com/ztgate/ztgate/internal/testcluster"
	"github.com/ztgate/ztgate/internal/testpki"
)

// ClusterStartTimeout bounds the start of a test cluster: the nodes wait
// for each other's quorum, slow under -race on a shared machine.
const ClusterStartTimeout = 90 * time.Second

// Cluster is n gateways that are the nodes of one ztgate cluster on
// loopback, sharing one CA; Nodes[i] is node "n<i>".
type Cluster struct {
	Nodes []*Env
	cfgs  []app.Config
	logs  []*testpki.LogBuffer
}

// StartCluster runs n gateways (n >= 3 for a quorum that survives a node)
// as one cluster: each with its own data directory and ports, the same
// built-in CA, embedded NATS routes to each other. They start at once, as
// they must: each waits for a quorum before it serves.
func StartCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, err := identity.LoadOrCreateCA(caDir, spiffeid.RequireTrustDomainFromString(TrustDomain)); err != nil {
		t.Fatalf("cluster CA: %v", err)
	}
	routes := testcluster.FreePorts(t, n)
	c := &Cluster{cfgs: make([]app.Config, n), logs: make([]*testpki.LogBuffer, n), Nodes: make([]*Env, n)}
	for i := range n {
		c.logs[i] = &testpki.LogBuffer{}
		c.cfgs[i] = configFor(t, c.logs[i], func(cfg *app.Config) {
			cfg.Identity.CADir = caDir
			cfg.Cluster = clusterstart.Node("ztgate-test", i, routes, ClusterStartTimeout)
		}, opts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ClusterStartTimeout+10*time.Second)
	defer cancel()
	apps, err := clusterstart.Start(ctx, c.cfgs)
	if err != nil {
		for j := range n {
			t.Logf("node n%d log:\n%s", j, c.logs[j].String())
		}
		t.Fatalf("start cluster: %v", err)
	}
	for i, a := range apps {
		c.Nodes[i] = envOf(t, a, c.cfgs[i], c.logs[i])
	}
	return c
}

func startApp(cfg app.Config) (*app.App, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ClusterStartTimeout+10*time.Second)
	defer cancel()
	return app.Start(ctx, cfg)
}

// Stop closes node i, as a clean shutdown.
func (c *Cluster) Stop(t testing.TB, i int) {
	t.Helper()
	if err := c.Nodes[i].App.Close(); err != nil {
		t.Fatalf("stop node n%d: %v", i, err)
	}
}

// Restart starts node i again on its data directory and route address
// (its MQTT and API ports are new) and returns its new Env.
func (c *Cluster) Restart(t testing.TB, i int) *Env {
	t.Helper()
	var a *app.App
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		if a, err = startApp(c.cfgs[i]); err == nil || !testcluster.IsAddrInUse(err) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart node n%d: %v\n%s", i, err, c.logs[i].String())
	}
	c.Nodes[i] = envOf(t, a, c.cfgs[i], c.logs[i])
	return c.Nodes[i]
}

// Log is node i's log so far.
func (c *Cluster) Log(i int) string { return c.logs[i].String() }

// String names the nodes and their MQTT addresses, for failure messages.
func (c *Cluster) String() string {
	s := ""
	for i, e := range c.Nodes {
		s += fmt.Sprintf("n%d=%s ", i, e.MQTTAddr)
	}
	return s
}

// Node is one gateway that a test can stop and start again on the same
// data directory (its ports are new after a restart).
type Node struct {
	*Env
	cfg  app.Config
	logs *testpki.LogBuffer
}

// StartNode is Start for a gateway the test restarts.
func StartNode(t testing.TB, opts ...Option) *Node {
	t.Helper()
	n := &Node{logs: &testpki.LogBuffer{}}
	n.Env, n.cfg = start(t, n.logs, nil, opts)
	return n
}

// Stop closes the gateway, as a clean shutdown.
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	if err := n.App.Close(); err != nil {
		t.Fatalf("stop gateway: %v", err)
	}
}

// Restart starts the gateway again on its data directory.
func (n *Node) Restart(t testing.TB) {
	t.Helper()
	a, err := startApp(n.cfg)
	if err != nil {
		t.Fatalf("restart gateway: %v\n%s", err, n.logs.String())
	}
	n.Env = envOf(t, a, n.cfg, n.logs)
}

// Log is the gateway's log so far, across restarts.
func (n *Node) Log() string { return n.logs.String() }
