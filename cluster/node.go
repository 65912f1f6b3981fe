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
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// defaultStartTimeout bounds StartNode when the caller's context has no
// deadline, so a node that can never become ready does not hang startup.
const defaultStartTimeout = 15 * time.Second

// leaderProbeTimeout bounds one request to the meta leader in WaitJetStream.
const leaderProbeTimeout = 2 * time.Second

// pollInterval is how often readiness and meta-leader state are rechecked.
const pollInterval = 50 * time.Millisecond

// NodeConfig describes one embedded NATS node of a ztgate cluster.
type NodeConfig struct {
	Name         string   // cluster name, the same on every node
	Node         string   // this node's name, unique in the cluster and stable across restarts
	Listen       string   // route address host:port of this node
	Peers        []string // route addresses host:port of the other nodes
	DataDir      string   // JetStream store directory; reuse it across restarts to keep state
	ClientListen string   // client address (loopback); none when empty: the gateway uses an in-process connection
	// TLS secures the routes (RouteTLS). Without it the routes carry no
	// authentication, and Listen and Peers must be loopback IPs.
	TLS    *tls.Config
	Logger *slog.Logger // nil discards the server's log
}

// MaxPayload is the largest NATS message of an embedded node: an MQTT
// PUBLISH of up to 3 MiB with its envelope.
const MaxPayload = 4 << 20

// Node is a running embedded NATS server with JetStream and an in-process
// client connection to it.
type Node struct {
	srv       *server.Server // nil when connected to an external NATS (Dial)
	name      string
	token     string // the client port's token (tests dial it)
	size      int    // nodes in the cluster, this one included; 0 when external
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
	token := rand.Text()
	opts, err := cfg.serverOptions(token)
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

	n := &Node{srv: srv, name: cfg.Node, token: token, size: 1 + len(cfg.Peers), log: log}
	if err := n.connect(cfg.Node, token); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, err
	}
	return n, nil
}

func (n *Node) connect(node, token string) error {
	nc, err := nats.Connect("",
		nats.InProcessServer(n.srv),
		nats.Name("ztgate-"+node),
		nats.Token(token),
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
func (n *Node) Name() string { return n.name }

// Peers returns the names of the nodes this node has a route to, sorted.
func (n *Node) Peers() []string {
	if n.srv == nil {
		return nil
	}
	rz, err := n.srv.Routez(nil)
	if err != nil {
		return nil
	}
	var names []string
	for _, r := range rz.Routes {
		if r.RemoteName != "" && !slices.Contains(names, r.RemoteName) {
			names = append(names, r.RemoteName)
		}
	}
	slices.Sort(names)
	return names
}

// ClusterAddr returns the bound route address, useful when Listen had port 0.
func (n *Node) ClusterAddr() *net.TCPAddr {
	if n.srv == nil {
		return nil
	}
	return n.srv.ClusterAddr()
}

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
	if n.srv == nil {
		return true // an external server: only the leader's answer tells
	}
	info, err := n.srv.Jsz(&server.JSzOptions{})
	if err != nil || info == nil || info.Meta == nil {
		return false
	}
	return info.Meta.Leader != "" && n.srv.JetStreamIsCurrent()
}

// CheckQuorum asks the JetStream meta leader for account information: it
// answers only while a majority of the cluster elects it.
//
// A leader cut off from the others keeps answering until its election
// timeout; so an embedded node first counts its routes: without routes to
// a majority it has no quorum, whatever it still believes.
func (n *Node) CheckQuorum(ctx context.Context) error {
	if n.srv != nil {
		if up := 1 + len(n.Peers()); up <= n.size/2 {
			return fmt.Errorf("%w: routes to %d of %d nodes", ErrNoQuorum, up, n.size)
		}
	}
	if _, err := n.js.AccountInfo(ctx); err != nil {
		return classify("quorum check", err)
	}
	return nil
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
		if n.srv == nil {
			return
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
func (cfg NodeConfig) serverOptions(token string) (*server.Options, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	routeHost, routePort, _ := splitHostPort(cfg.Listen)
	// nats-server always opens a client port in a cluster (with DontListen
	// it never starts routing: StartRouting waits for the client listener).
	// So it is on loopback, on a random port unless asked, and takes only
	// the random token of this process: the gateway's own in-process
	// connection is the only client.
	clientListen := cfg.ClientListen
	if clientListen == "" {
		clientListen = "127.0.0.1:0"
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
		ServerName:    cfg.Node,
		Host:          clientHost,
		Port:          clientPort,
		Authorization: token,
		// A peer that vanished without closing its routes (a partition,
		// a dead host) is noticed within about 15 s, not the default 4 min.
		PingInterval: 5 * time.Second,
		MaxPingsOut:  3,
		Cluster: server.ClusterOpts{
			Name:      cfg.Name,
			Host:      routeHost,
			Port:      routePort,
			TLSConfig: cfg.TLS,
			// A handshake verifies a chain and may wait on a busy peer.
			TLSTimeout: 5,
		},
		Routes: routes,
		// A message between nodes is an MQTT payload in an envelope:
		// room for the largest PUBLISH the gateway takes by default (1 MiB).
		MaxPayload: MaxPayload,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		// Embedded in ztgate: the gateway owns signal handling.
		NoSigs: true,
	}, nil
}
