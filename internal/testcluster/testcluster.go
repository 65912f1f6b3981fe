// Package testcluster starts clusters of embedded NATS JetStream nodes on
// loopback for tests of every package that runs on a ztgate cluster.
package testcluster

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/freeport"
)

// FormTimeout bounds cluster formation and leader elections; generous
// because -race on a shared 2-core machine slows Raft a lot.
const FormTimeout = 60 * time.Second

// startAttempts bounds the retries when a freshly picked free port was
// grabbed by someone else before the node could bind it.
const startAttempts = 5

// FreePorts returns n distinct loopback addresses whose ports were free a
// moment ago (freeport.Loopback). Callers must tolerate a port being
// taken in between.
func FreePorts(t testing.TB, n int) []string {
	t.Helper()
	addrs, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

// Others returns addrs without the one at index self: a node's peers.
func Others(addrs []string, self int) []string {
	out := make([]string, 0, len(addrs)-1)
	for i, a := range addrs {
		if i != self {
			out = append(out, a)
		}
	}
	return out
}

// IsAddrInUse reports whether err comes from a port already taken.
func IsAddrInUse(err error) bool { return freeport.IsAddrInUse(err) }

// Cluster is a set of nodes on loopback with their configs kept, so that a
// node can be restarted on the same address and data directory.
type Cluster struct {
	t     testing.TB
	Cfgs  []cluster.NodeConfig
	Nodes []*cluster.Node // nil while a node is stopped
}

// Start starts n nodes (n >= 2) routed to each other, retrying with new
// ports when a port turned out to be in use, and waits until JetStream
// answers on every node. They are closed when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	tc := StartNoWait(t, n)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	tc.WaitJetStream(FormTimeout, idx...)
	return tc
}

// StartNoWait is Start without waiting for JetStream.
func StartNoWait(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, n, nil)
}

// StartWith is StartNoWait with tweak called on each node's config before
// the node starts (nil: none).
func StartWith(t testing.TB, n int, tweak func(i int, cfg *cluster.NodeConfig)) *Cluster {
	t.Helper()
	for attempt := 1; attempt <= startAttempts; attempt++ {
		addrs := FreePorts(t, n)
		tc := &Cluster{t: t, Cfgs: make([]cluster.NodeConfig, n), Nodes: make([]*cluster.Node, n)}
		var err error
		for i := range n {
			tc.Cfgs[i] = cluster.NodeConfig{
				Name:    "ztgate-test",
				Node:    "n" + strconv.Itoa(i),
				Listen:  addrs[i],
				Peers:   Others(addrs, i),
				DataDir: t.TempDir(),
			}
			if tweak != nil {
				tweak(i, &tc.Cfgs[i])
			}
			if tc.Nodes[i], err = cluster.StartNode(context.Background(), tc.Cfgs[i]); err != nil {
				break
			}
		}
		if err == nil {
			t.Cleanup(tc.CloseAll)
			return tc
		}
		tc.CloseAll()
		if !IsAddrInUse(err) {
			t.Fatalf("start cluster: %v", err)
		}
		t.Logf("attempt %d: %v; retrying with new ports", attempt, err)
	}
	t.Fatalf("start cluster: ports kept being taken after %d attempts", startAttempts)
	return nil
}

// CloseAll closes every running node.
func (tc *Cluster) CloseAll() {
	for i, n := range tc.Nodes {
		if n != nil {
			_ = n.Close()
			tc.Nodes[i] = nil
		}
	}
}

// Stop closes node i.
func (tc *Cluster) Stop(i int) {
	tc.t.Helper()
	if err := tc.Nodes[i].Close(); err != nil {
		tc.t.Fatalf("close node %d: %v", i, err)
	}
	tc.Nodes[i] = nil
}

// Restart starts node i again on its old address and data directory; the
// port was ours a moment ago, so only a bounded number of retries is needed.
func (tc *Cluster) Restart(i int) {
	tc.t.Helper()
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		tc.Nodes[i], err = cluster.StartNode(context.Background(), tc.Cfgs[i])
		if err == nil {
			return
		}
		if !IsAddrInUse(err) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	tc.t.Fatalf("restart node %d: %v", i, err)
}

// WaitJetStream waits until JetStream answers on each node of idx.
func (tc *Cluster) WaitJetStream(timeout time.Duration, idx ...int) {
	tc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, i := range idx {
		if err := tc.Nodes[i].WaitJetStream(ctx); err != nil {
			tc.t.Fatalf("node %d: %v", i, err)
		}
	}
}
