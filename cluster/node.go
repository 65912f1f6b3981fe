// Package cluster runs the embedded NATS JetStream node that ztgate gateways
// use to share state with each other: every gateway process starts one node,
// the nodes route to each other, and ztgate's replicated state lives in
// JetStream (key-value buckets with a replication factor) on top of them.
//
// Security note: the routes between nodes are neither authenticated nor
// encrypted yet, so every address (route listen, peers, client listen) is
// restricted to loopback. Clients are expected to use the in-process
// connection (Node.Conn), which never touches the network.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultClientListen is used when NodeConfig.ClientListen is empty.
const DefaultClientListen = "127.0.0.1:0"

// defaultStartTimeout bounds StartNode when the caller's context has no
// deadline, so a node that can never become ready does not hang startup.
const defaultStartTimeout = 15 * time.Second

// leaderProbeTimeout bounds one request to the meta leader in WaitJetStream.
const leaderProbeTimeout = 2 * time.Second

// pollInterval is how often readiness and meta-leader state are rechecked.
const pollInterval = 50 * time.Millisecond

// NodeConfig describes one embedded NATS node of a ztgate cluster.
type NodeConfig struct {
	Name         string       // cluster name, the same on every node
	Node         string       // this node's name, unique in the cluster and stable across restarts
	Listen       string       // route address host:port of this node
	Peers        []string     // route addresses host:port of the other nodes
	DataDir      string       // JetStream store directory; reuse it across restarts to keep state
	ClientListen string       // client address; DefaultClientListen when empty
	Logger       *slog.Logger // nil discards the server's log
}

// Node is a running embedded NATS server with JetStream and an in-process
// client connection to it.
type Node struct {
	srv       *server.Server
	nc        *nats.Conn
	js        jetstream.JetStream
	log       *slogAdapter
	closeOnce sync.Once
	closeErr  error
}

// StartNode validates cfg, starts the embedded server and waits until it
// accepts client and route connections. It does not wait for the JetStream
// cluster to elect a meta leader: use WaitJetStream for that, because a
// clustered node cannot serve JetStream before a quorum of peers is up.
func StartNode(ctx context.Context, cfg NodeConfig) (*Node, error) {
	opts, err := cfg.serverOptions()
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster: node %q: new server: %w", cfg.Node, err)
	}
	log := newSlogAdapter(cfg.Logger, cfg.Node)
	// Installing a logger is required, not cosmetic: the server's default
	// Fatalf path would exit the process; ours records the reason instead.
	srv.SetLoggerV2(log, false, false, false)
	srv.Start()

	if err := waitReady(ctx, srv, log); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		if reason := log.fatal(); reason != "" {
			return nil, fmt.Errorf("cluster: node %q: %s: %w", cfg.Node, reason, err)
		}
		return nil, fmt.Errorf("cluster: node %q: %w", cfg.Node, err)
	}

	n := &Node{srv: srv, log: log}
	if err := n.connect(cfg.Node); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, err
	}
	return n, nil
}

func (n *Node) connect(node string) error {
	nc, err := nats.Connect("",
		nats.InProcessServer(n.srv),
		nats.Name("ztgate-"+node),
		// The server is in this process: if it goes away the node is being
		// closed, so reconnect attempts would only delay Close.
		nats.NoReconnect(),
	)
	if err != nil {
		return fmt.Errorf("cluster: node %q: in-process connection: %w", node, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("cluster: node %q: jetstream context: %w", node, err)
	}
	n.nc, n.js = nc, js
	return nil
}

func waitReady(ctx context.Context, srv *server.Server, log *slogAdapter) error {
	ctx, cancel := boundedContext(ctx)
	defer cancel()
	for {
		if srv.ReadyForConnections(pollInterval) {
			return nil
		}
		// A fatal startup error (port in use, JetStream refused) never
		// resolves by waiting, so fail now instead of at the deadline.
		if log.fatal() != "" {
			return errors.New("startup failed")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready for connections: %w", ctx.Err())
		default:
		}
	}
}

func boundedContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultStartTimeout)
}

// Conn returns the in-process client connection to this node.
func (n *Node) Conn() *nats.Conn { return n.nc }

// JetStream returns a JetStream context bound to Conn.
func (n *Node) JetStream() jetstream.JetStream { return n.js }

// Name returns the node's server name.
func (n *Node) Name() string { return n.srv.Name() }

// ClusterAddr returns the bound route address, useful when Listen had port 0.
func (n *Node) ClusterAddr() *net.TCPAddr { return n.srv.ClusterAddr() }

// WaitJetStream blocks until this node knows the JetStream meta leader, its
// copy of the meta state is current and the leader answers an API request,
// or ctx ends. In a cluster of three this needs two nodes up; a lone node
// waits until ctx expires.
func (n *Node) WaitJetStream(ctx context.Context) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if n.jetStreamReady() && n.leaderAnswers(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: node %q: no JetStream meta leader: %w", n.Name(), ctx.Err())
		case <-t.C:
		}
	}
}

func (n *Node) jetStreamReady() bool {
	info, err := n.srv.Jsz(&server.JSzOptions{})
	if err != nil || info == nil || info.Meta == nil {
		return false
	}
	return info.Meta.Leader != "" && n.srv.JetStreamIsCurrent()
}

// leaderAnswers asks the meta leader for account info. Local state alone is
// not enough: right after the leader dies, followers still name it until the
// election timeout, and only the live leader answers this request.
func (n *Node) leaderAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, leaderProbeTimeout)
	defer cancel()
	_, err := n.js.AccountInfo(ctx)
	return err == nil
}

// Close closes the client connection, shuts the server down and waits for
// it to finish. It is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		if n.nc != nil {
			n.nc.Close()
		}
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		if n.srv.Running() {
			n.closeErr = errors.New("cluster: node " + strconv.Quote(n.Name()) + " still running after shutdown")
		}
	})
	return n.closeErr
}

// serverOptions validates cfg and maps it onto nats-server options.
func (cfg NodeConfig) serverOptions() (*server.Options, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	routeHost, routePort, _ := splitHostPort(cfg.Listen)
	clientListen := cfg.ClientListen
	if clientListen == "" {
		clientListen = DefaultClientListen
	}
	clientHost, clientPort, _ := splitHostPort(clientListen)
	if clientPort == 0 {
		// For nats-server port 0 means its default 4222; -1 means "any free".
		clientPort = server.RANDOM_PORT
	}
	routes := make([]*url.URL, 0, len(cfg.Peers))
	for _, p := range cfg.Peers {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: p})
	}
	return &server.Options{
		ServerName: cfg.Node,
		Host:       clientHost,
		Port:       clientPort,
		Cluster: server.ClusterOpts{
			Name: cfg.Name,
			Host: routeHost,
			Port: routePort,
		},
		Routes:    routes,
		JetStream: true,
		StoreDir:  cfg.DataDir,
		// Embedded in ztgate: the gateway owns signal handling.
		NoSigs: true,
	}, nil
}
