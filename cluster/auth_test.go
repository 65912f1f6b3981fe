package cluster

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// The client port exists only because nats-server needs it; anyone on the
// host could otherwise read and rewrite the replicated state through it.
// A client without the node's token is refused; the node's own in-process
// connection (the positive control) works.
func TestClientPortTakesOnlyTheNodesToken(t *testing.T) {
	ports := freeLoopbackPorts(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := StartNode(ctx, NodeConfig{Name: "c", Node: "a", Listen: ports[0], Peers: ports[1:], DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	nc, err := nats.Connect(n.srv.ClientURL(), nats.NoReconnect(), nats.Timeout(5*time.Second))
	if err == nil {
		nc.Close()
		t.Fatal("a client without the token connected to the node's client port")
	}
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("err = %v, want an authorization violation", err)
	}
	if err := n.Conn().Flush(); err != nil {
		t.Fatalf("the node's own connection: %v", err)
	}
}

// freeLoopbackPorts returns n loopback addresses free a moment ago (the
// internal tests cannot use internal/testcluster, which imports cluster).
func freeLoopbackPorts(t *testing.T, n int) []string {
	t.Helper()
	ports := make([]string, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().String()
		_ = l.Close()
	}
	return ports
}
