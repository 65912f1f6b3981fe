package cluster_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/testcluster"
)

const (
	bucket = "ztgate_test"
	// formTimeout bounds cluster formation and leader elections; generous
	// because -race on a shared 2-core machine slows Raft a lot.
	formTimeout = testcluster.FormTimeout
	opTimeout   = 10 * time.Second
)

func TestStartNodeRefusesInvalidConfig(t *testing.T) {
	_, err := cluster.StartNode(context.Background(), cluster.NodeConfig{Name: "c", Node: "a", Listen: "nope", DataDir: t.TempDir()})
	if err == nil || !strings.HasPrefix(err.Error(), "cluster: ") {
		t.Fatalf("StartNode error = %v, want a cluster: validation error", err)
	}
}

// A port already in use must come back as an error, not exit the process
// (nats-server's default Fatalf would) and not hang.
func TestStartNodePortInUse(t *testing.T) {
	tests := []struct {
		name  string
		setup func(cfg *cluster.NodeConfig, busy string)
	}{
		{"route port", func(cfg *cluster.NodeConfig, busy string) { cfg.Listen = busy }},
		{"client port", func(cfg *cluster.NodeConfig, busy string) { cfg.ClientListen = busy }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			addrs := testcluster.FreePorts(t, 2)
			cfg := cluster.NodeConfig{Name: "c", Node: "a", Listen: addrs[0], Peers: addrs[1:], DataDir: t.TempDir()}
			tt.setup(&cfg, l.Addr().String())

			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			n, err := cluster.StartNode(ctx, cfg)
			if err == nil {
				_ = n.Close()
				t.Fatal("StartNode succeeded on a port in use")
			}
			if !strings.HasPrefix(err.Error(), "cluster: ") || !testcluster.IsAddrInUse(err) {
				t.Fatalf("error = %v, want a cluster: error naming the port in use", err)
			}

			// Positive control: the same config starts once the port is free.
			_ = l.Close()
			n, err = cluster.StartNode(ctx, cfg)
			if err != nil {
				t.Fatalf("StartNode after freeing the port: %v", err)
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestClusterReplicatedKV(t *testing.T) {
	start := time.Now()
	tc := testcluster.Start(t, 3)
	t.Logf("3-node cluster formed, JetStream meta leader known on all nodes in %s", time.Since(start))

	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	if _, err := tc.Nodes[0].JetStream().CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, Replicas: 3}); err != nil {
		t.Fatalf("create R3 bucket on node a: %v", err)
	}

	put(t, tc.Nodes[1], "k1", "v1")
	waitValue(t, tc.Nodes[2], "k1", "v1")
	// Negative control of the read helper: a key nobody wrote is absent.
	if _, err := kv(t, tc.Nodes[2]).Get(ctx, "never-written"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("get unwritten key: err = %v, want ErrKeyNotFound", err)
	}

	t.Run("quorum of two keeps working", func(t *testing.T) {
		tc.Stop(2)
		tc.WaitJetStream(formTimeout, 0, 1)
		put(t, tc.Nodes[0], "k2", "while-c-down")
		waitValue(t, tc.Nodes[1], "k2", "while-c-down")
		waitValue(t, tc.Nodes[0], "k1", "v1")
	})

	t.Run("restarted node catches up", func(t *testing.T) {
		restarted := time.Now()
		tc.Restart(2)
		tc.WaitJetStream(formTimeout, 2)
		waitValue(t, tc.Nodes[2], "k2", "while-c-down")
		t.Logf("restarted node caught up in %s", time.Since(restarted))
		put(t, tc.Nodes[2], "k3", "from-c")
		waitValue(t, tc.Nodes[0], "k3", "from-c")
	})

	t.Run("lone node refuses writes", func(t *testing.T) {
		// Positive control: with all three up the write succeeds.
		put(t, tc.Nodes[0], "k4", "before")
		tc.Stop(1)
		tc.Stop(2)
		wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer wcancel()
		err := kvPut(wctx, tc.Nodes[0], "k4", "after")
		if err == nil {
			t.Fatal("a lone node of three accepted a write without quorum")
		}
		t.Logf("lone node write refused: %v", err)
	})
}

func kv(t *testing.T, n *cluster.Node) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	b, err := n.JetStream().KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("node %s: bind bucket: %v", n.Name(), err)
	}
	return b
}

// kvPut binds the bucket and writes; binding asks the meta leader, so both
// steps fail the same way while an election is under way.
func kvPut(ctx context.Context, n *cluster.Node, key, val string) error {
	b, err := n.JetStream().KeyValue(ctx, bucket)
	if err != nil {
		return err
	}
	_, err = b.Put(ctx, key, []byte(val))
	return err
}

func kvGet(ctx context.Context, n *cluster.Node, key string) (string, error) {
	b, err := n.JetStream().KeyValue(ctx, bucket)
	if err != nil {
		return "", err
	}
	e, err := b.Get(ctx, key)
	if err != nil {
		return "", err
	}
	return string(e.Value()), nil
}

// put retries briefly: right after a peer leaves, the stream may still be
// electing a new leader and the first publish can time out.
func put(t *testing.T, n *cluster.Node, key, val string) {
	t.Helper()
	deadline := time.Now().Add(formTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err := kvPut(ctx, n, key, val)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: put %s: %v", n.Name(), key, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitValue polls because reads may be served by a replica that has not
// applied the write yet; replication is asynchronous to the reader.
func waitValue(t *testing.T, n *cluster.Node, key, want string) {
	t.Helper()
	deadline := time.Now().Add(formTimeout)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		got, err := kvGet(ctx, n, key)
		cancel()
		if err == nil && got == want {
			return
		}
		last = "value " + got
		if err != nil {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("node %s: key %s never became %q (last: %s)", n.Name(), key, want, last)
}
