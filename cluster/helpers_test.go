package cluster

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startAttempts bounds the retries when a freshly picked free port was
// grabbed by someone else before the node could bind it.
const startAttempts = 5

// freePorts returns n distinct loopback addresses whose ports were free a
// moment ago. Callers must tolerate a port being taken in between.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, 0, n)
	ls := make([]net.Listener, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return addrs
}

func others(addrs []string, self int) []string {
	out := make([]string, 0, len(addrs)-1)
	for i, a := range addrs {
		if i != self {
			out = append(out, a)
		}
	}
	return out
}

// testCluster is a set of nodes on loopback with their configs kept so a
// node can be restarted on the same address and data directory.
type testCluster struct {
	t     *testing.T
	cfgs  []NodeConfig
	nodes []*Node
}

// startCluster starts n nodes routed to each other, retrying with new ports
// when a port turned out to be in use.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	for attempt := 1; attempt <= startAttempts; attempt++ {
		addrs := freePorts(t, n)
		tc := &testCluster{t: t, cfgs: make([]NodeConfig, n), nodes: make([]*Node, n)}
		var err error
		for i := range n {
			tc.cfgs[i] = NodeConfig{
				Name:    "ztgate-test",
				Node:    "n" + strconv.Itoa(i),
				Listen:  addrs[i],
				Peers:   others(addrs, i),
				DataDir: t.TempDir(),
			}
			if tc.nodes[i], err = StartNode(context.Background(), tc.cfgs[i]); err != nil {
				break
			}
		}
		if err == nil {
			t.Cleanup(tc.closeAll)
			return tc
		}
		tc.closeAll()
		if !isAddrInUse(err) {
			t.Fatalf("start cluster: %v", err)
		}
		t.Logf("attempt %d: %v; retrying with new ports", attempt, err)
	}
	t.Fatalf("start cluster: ports kept being taken after %d attempts", startAttempts)
	return nil
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || (err != nil && strings.Contains(err.Error(), "address already in use"))
}

func (tc *testCluster) closeAll() {
	for i, n := range tc.nodes {
		if n != nil {
			_ = n.Close()
			tc.nodes[i] = nil
		}
	}
}

func (tc *testCluster) stop(i int) {
	tc.t.Helper()
	if err := tc.nodes[i].Close(); err != nil {
		tc.t.Fatalf("close node %d: %v", i, err)
	}
	tc.nodes[i] = nil
}

// restart starts node i again on its old address and data directory; the
// port was ours a moment ago, so only a bounded number of retries is needed.
func (tc *testCluster) restart(i int) {
	tc.t.Helper()
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		tc.nodes[i], err = StartNode(context.Background(), tc.cfgs[i])
		if err == nil {
			return
		}
		if !isAddrInUse(err) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	tc.t.Fatalf("restart node %d: %v", i, err)
}

func (tc *testCluster) waitJetStream(timeout time.Duration, idx ...int) {
	tc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, i := range idx {
		if err := tc.nodes[i].WaitJetStream(ctx); err != nil {
			tc.t.Fatalf("node %d: %v", i, err)
		}
	}
}
