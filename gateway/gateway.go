package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/metrics"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

const (
	// listenerID names the one listener of the broker.
	listenerID = "mtls"

	// connectTimeout bounds the TLS handshake plus the CONNECT packet of a
	// new connection. mochi sets no deadline of its own before CONNECT, so
	// without one a peer could hold a connection (and a goroutine) open
	// without ever presenting a certificate.
	connectTimeout = 10 * time.Second

	// sysTopicInterval is how often (in seconds) mochi refreshes its $SYS
	// topics. Devices never receive them, so a day keeps mochi from stopping
	// the world for runtime.ReadMemStats every second.
	sysTopicInterval = 24 * 60 * 60

	// disconnectTimeout bounds the writing of a server DISCONNECT. A peer
	// that stops reading could otherwise hold the write, and mochi's lock on
	// its connection, for good; when the time is up the connection is
	// closed without it.
	disconnectTimeout = 5 * time.Second
)

// Config configures a Gateway. Every field but Now, Logger and Metrics is
// required.
type Config struct {
	Addr     string      // listen address, e.g. "127.0.0.1:8883" or "127.0.0.1:0"
	TLS      *tls.Config // from identity.ServerTLSConfig: must require client certificates
	Verifier *identity.Verifier
	Registry *registry.Store
	Decider  policy.Decider
	Logger   *slog.Logger     // nil means slog.Default()
	Now      func() time.Time // clock for policy input time; nil means time.Now
	// Metrics counts sessions, connections, revocations and the
	// disconnects the gateway makes; nil counts nothing. Decisions are
	// counted by wrapping the Decider (metrics.Wrap), not here.
	Metrics *metrics.Metrics
	// MaxPacketSize bounds, in bytes, every MQTT packet a client sends;
	// MQTT 5 clients are told it in the CONNACK. 0 means
	// DefaultMaxPacketSize; it is never unlimited.
	MaxPacketSize int
	// MaxConnectPacketSize bounds the first packet of a connection, read
	// before anything of the client is known at the MQTT level. 0 means
	// DefaultMaxConnectPacketSize, or MaxPacketSize when that is smaller.
	MaxConnectPacketSize int
	// Limits are the guardrails beyond the packet sizes (limits.go); the
	// zero value leaves the per-identity and per-address ones off.
	Limits Limits
	// LimitsPolicy gives identities their own limits at CONNECT (the
	// policy's limits rule); nil: the configured limits apply to all.
	LimitsPolicy LimitsSource
	// KeepRetainedOnRevoke keeps the retained messages of a device that is
	// revoked or deleted. By default (false) they are cleared, so that
	// nothing the device said is handed to new subscribers after it lost
	// its identity. A suspension never clears them.
	KeepRetainedOnRevoke bool
	// Store keeps the broker state (sessions, retained messages, delayed
	// wills) across restarts; nil keeps it in memory only. Start restores
	// it, deciding again what comes back (restore.go). The caller closes
	// it after Close.
	Store *brokerstore.Store
	// Sessions is the cluster's session directory: sessions move between
	// nodes and a client ID is taken over across them
	// (clustersession.go). nil: a single node.
	Sessions SessionDirectory
	// Cluster links the gateway to the other nodes of its cluster
	// (cluster.go): accepted messages are forwarded to them, theirs come
	// back through DeliverRemote, and the retained messages are the
	// cluster's. nil: a single node.
	Cluster ClusterLink
	// Egress takes every allowed PUBLISH and Last Will that may leave
	// the gateway (the bridges); nil: none.
	Egress Egress
}

// Gateway is the MQTT broker of ztgate.
type Gateway struct {
	tls      *tls.Config
	addr     string
	verifier *identity.Verifier
	reg      *registry.Store
	decider  policy.Decider
	log      *slog.Logger
	now      func() time.Time
	metrics  *metrics.Metrics

	server *mqtt.Server
	hook   *hook

	// ctx is the context of every decision; Close cancels it, so decisions
	// still running then deny.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// sessions maps *mqtt.Client to *session, for every client mochi knows:
	// connected ones and disconnected persistent sessions.
	sessions sync.Map

	// inputs recycles policy inputs: the hot path builds one per decision
	// and a Decider receives it through an interface, so without the pool
	// every message would allocate one.
	inputs sync.Pool

	wills delayedWills
	// cluster is the link to the other nodes (cluster.go).
	cluster clusterState
	// egress takes the allowed messages that may leave (nil: none);
	// bridgeClient publishes what comes in through the bridges.
	egress       Egress
	bridgeClient *mqtt.Client
	// store is Config.Store; nil-safe to call.
	store *brokerstore.Store
	// dir is the session directory's side here; nil on a single node.
	dir *directory

	// reeval runs the re-evaluations Reevaluate asks for; watch is the
	// state of the registry watcher.
	reeval reevaluator
	watch  watchState

	// retained knows who published the retained messages (retained.go);
	// denials aggregates the log lines of repeated denials (denylog.go).
	retained retainedIndex
	denials  denyFlusher

	// connectTimeout bounds the TLS handshake plus the CONNECT
	// (Limits.HandshakeTimeout).
	connectTimeout time.Duration
	// maxConnect bounds the first packet of a connection, maxPacket every
	// later one unless the identity's limits say otherwise (see
	// packetConn).
	maxConnect int
	maxPacket  uint32
	// limits is the state of the guardrails (limits.go).
	limits limitState

	mu         sync.Mutex
	started    bool
	closed     bool
	listenAddr net.Addr
}

// New validates cfg and prepares a gateway. Nothing listens until Start.
func New(cfg Config) (*Gateway, error) {
	switch {
	case cfg.Addr == "":
		return nil, errors.New("gateway: no listen address")
	case cfg.TLS == nil:
		return nil, errors.New("gateway: no TLS config: ztgate has no plaintext listener")
	case cfg.TLS.ClientAuth != tls.RequireAnyClientCert && cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert:
		return nil, errors.New("gateway: the TLS config must require a client certificate")
	case cfg.Verifier == nil:
		return nil, errors.New("gateway: no identity verifier")
	case cfg.Registry == nil:
		return nil, errors.New("gateway: no device registry")
	case cfg.Decider == nil:
		return nil, errors.New("gateway: no policy decider")
	}
	maxPacket, maxConnect, err := packetLimits(cfg.MaxPacketSize, cfg.MaxConnectPacketSize)
	if err != nil {
		return nil, err
	}
	limits, err := cfg.Limits.resolve()
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		tls:      cfg.TLS.Clone(),
		addr:     cfg.Addr,
		verifier: cfg.Verifier,
		reg:      cfg.Registry,
		decider:  cfg.Decider,
		log:      cfg.Logger,
		now:      cfg.Now,
		metrics:  cfg.Metrics,
		store:    cfg.Store,

		connectTimeout: limits.HandshakeTimeout,
		maxConnect:     maxConnect,
		maxPacket:      uint32(maxPacket),
		limits:         limitState{cfg: limits, source: cfg.LimitsPolicy, conns: newIPLimiter(limits.ConnRatePerIP, limits.ConnBurstPerIP)},
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	if g.now == nil {
		g.now = time.Now
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.inputs.New = func() any { return new(policy.Input) }
	g.reeval.wake = make(chan struct{}, 1)
	g.retained.keep = cfg.KeepRetainedOnRevoke
	g.denials.interval.Store(int64(denyInterval))

	caps := mqtt.NewDefaultServerCapabilities()
	// The policy contract knows MQTT 3.1.1 (4) and 5 only; mochi would also
	// take 3.1 (MQIsdp) by default.
	caps.MinimumProtocolVersion = 4
	// The gateway's reader (packetConn) bounds every packet, with the
	// maximum of the identity that sent it, before mochi reads its header:
	// mochi's own bound is one for all, and it closes without telling.
	caps.MaximumPacketSize = 0
	// mochi allocates the outbound queue whole, at the client's first
	// delivery (LazyOutboundQueue below).
	caps.MaximumClientWritesPending = int32(limits.MaxOutboundQueue)
	caps.MaximumInflight = uint16(limits.MaxInflight)
	// mochi logs whole packets (payloads, passwords) when it refuses one;
	// its log keeps only what they are.
	mochiLog := slog.New(newRedactHandler(g.log.Handler())).With("component", "mqtt")
	g.server = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       mochiLog,
		// No inline client: it bypasses every ACL check.
		InlineClient:           false,
		SysTopicResendInterval: sysTopicInterval,
		// An idle device holds no outbound queue (8 KiB at 1,024 slots).
		LazyOutboundQueue: true,
	})
	g.wills.init(g)
	g.cluster.init(g, cfg.Cluster)
	g.egress = cfg.Egress
	g.bridgeClient = g.newBridgeClient()
	g.hook = &hook{g: g}
	if err := g.server.AddHook(g.hook, nil); err != nil {
		g.cancel()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	// After the gateway's hook: see brokerstore.Store.Hook.
	if g.store != nil {
		if err := g.server.AddHook(g.store.Hook(), nil); err != nil {
			g.cancel()
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	// After the store's hook: the record follows the stored session.
	if cfg.Sessions != nil {
		g.initDirectory(cfg.Sessions)
		if err := g.server.AddHook(&dirHook{g: g}, nil); err != nil {
			g.cancel()
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	g.metrics.SetBrokerStats(g.brokerStats) // brokerstats.go
	return g, nil
}

// Start opens the mTLS listener and starts serving. The gateway is listening
// when Start returns.
func (g *Gateway) Start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed:
		return errors.New("gateway: closed")
	case g.started:
		return errors.New("gateway: already started")
	}
	if err := g.restore(); err != nil {
		return err
	}
	if err := g.loadClusterRetained(); err != nil {
		return err
	}
	if err := g.serveTakeovers(); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	tcp, err := net.Listen("tcp", g.addr)
	if err != nil {
		return fmt.Errorf("gateway: listen: %w", err)
	}
	l := newListener(listenerID, tcp, g.tls, g.connectTimeout, g.metrics.ConnectionRefused)
	l.maxConnect = g.maxConnect
	l.maxPacket = int(g.maxPacket)
	l.disconnectClients = g.disconnectClients
	g.startLimits(l)
	if err := g.server.AddListener(l); err != nil {
		_ = tcp.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	if err := g.server.Serve(); err != nil {
		_ = tcp.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	g.listenAddr = tcp.Addr()
	g.started = true
	g.wg.Add(2)
	go g.watchRegistry()
	go g.runReevaluations()
	g.log.Info("gateway: listening", "addr", g.listenAddr.String())
	return nil
}

// Addr returns the listening address, or nil before Start.
func (g *Gateway) Addr() net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.listenAddr
}

// Sessions lists the live connections, oldest first.
func (g *Gateway) Sessions() []brokerview.Session {
	var out []brokerview.Session
	g.sessions.Range(func(_, v any) bool {
		s := v.(*session)
		if !s.life.load().connected() || s.cl.Closed() {
			return true
		}
		name := ""
		if d := s.device.Load(); d != nil {
			name = d.Name
		}
		out = append(out, brokerview.Session{
			ClientID:        s.clientID,
			SPIFFEID:        s.spiffeID,
			Device:          name,
			RemoteAddr:      s.remote,
			ProtocolVersion: s.version,
			ConnectedAt:     s.connectedAt,
			Subscriptions:   subscriptionsView(s.cl),
			QueueDepth:      s.cl.State.Inflight.Len(),
		})
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].ConnectedAt.Equal(out[j].ConnectedAt) {
			return out[i].ConnectedAt.Before(out[j].ConnectedAt)
		}
		if out[i].SPIFFEID != out[j].SPIFFEID {
			return out[i].SPIFFEID < out[j].SPIFFEID
		}
		return out[i].ClientID < out[j].ClientID
	})
	return out
}

// Close disconnects every client, stops listening and waits for the
// connection handlers to finish. Decisions still running deny.
func (g *Gateway) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	started := g.started
	g.mu.Unlock()

	g.stopTakeovers()
	g.cancel()
	g.wills.stopAll()
	g.stopDenials()
	// No SVID expiry fires once the gateway closes: mochi ends every
	// connection itself.
	g.sessions.Range(func(_, v any) bool {
		v.(*session).stopExpiry()
		return true
	})
	var err error
	if started {
		// mochi's Close closes the listener, disconnects every client and
		// waits for their handlers to return.
		err = g.server.Close()
	}
	g.wg.Wait()
	g.closeDirectory()
	if err != nil {
		return fmt.Errorf("gateway: close: %w", err)
	}
	return nil
}

// watchState is what the registry watcher shows of itself.
type watchState struct {
	// waiting is the registry watch channel the watcher waits on between
	// passes (a chan struct{} in an atomic.Value): when it is the store's
	// current channel, every change so far has been applied.
	waiting atomic.Value
	// lastPass is the duration of the last pass, in nanoseconds.
	lastPass atomic.Int64
}

// watchRegistry applies every registry change to the sessions mochi holds.
func (g *Gateway) watchRegistry() {
	defer g.wg.Done()
	var prev <-chan struct{}
	for {
		// Take the channel before reading the registry, so a change made
		// while the sessions are checked wakes the loop again.
		ch := g.reg.Watch()
		// A closed store hands out one closed channel for good. It closes
		// no record channel, so the pass looks every session up: lookups
		// now fail, which cuts every session. New CONNECTs are refused,
		// so there is nothing left to watch.
		closed := ch != nil && ch == prev
		start := time.Now()
		// Retained messages first: a device's sessions are cut after its
		// retained messages are gone, so whoever sees the cut sees both.
		g.recheckRetained()
		checked, cut := g.recheckAll(closed)
		took := time.Since(start)
		g.watch.lastPass.Store(int64(took))
		if checked > 0 {
			g.log.Debug("gateway: registry change applied", "sessions_checked", checked, "disconnected", cut,
				"took", took.String())
		}
		if closed {
			return
		}
		prev = ch
		g.watch.waiting.Store(ch)
		select {
		case <-ch:
		case <-g.ctx.Done():
			return
		}
	}
}

// recheckAll re-reads the registry record of every session whose record
// changed (of every session when all is set). A session that may no longer
// be connected is cut; one whose record changed in a way the policy may
// care about (labels, a new enrollment) keeps only the subscriptions and
// queued messages its new subject may have.
//
// The pass takes no lock across sessions, and a session whose record is
// unchanged costs a look at its record channel: no lookup, no policy. It
// returns how many sessions were looked up and how many connections cut.
func (g *Gateway) recheckAll(all bool) (checked, cut int) {
	var revoked map[string]struct{} // identities whose sessions this pass cut
	g.sessions.Range(func(_, v any) bool {
		s := v.(*session)
		if st := s.life.load(); st.denied() && st.phase() != phaseDetached || st.takenOver() || st.phase() == phaseGone {
			// A replaced session is the new connection's to check. A
			// detached one may still have to end (see refresh).
			return true
		}
		if !all && !s.recordChanged() {
			return true
		}
		checked++
		why, changed := g.refresh(s)
		switch {
		case why != "":
			// Kicked first, so that the client hears why; out of the
			// routing at once, connected or not (see cutSession).
			kicked := g.kick(s, packets.ErrNotAuthorized, why)
			g.cutSession(s, why)
			if kicked {
				cut++
				if _, seen := revoked[s.spiffeID]; !seen {
					if revoked == nil {
						revoked = make(map[string]struct{})
					}
					revoked[s.spiffeID] = struct{}{}
					g.metrics.Revoked()
				}
			}
		case changed:
			g.prune(s)
		}
		return true
	})
	return checked, cut
}

// Disconnect reasons: the reason label of metrics.Disconnected and of the
// log line of every connection the gateway ends. A fixed set, so the label
// cannot grow.
const (
	reasonRevoked       = "revoked"        // device revoked
	reasonSuspended     = "suspended"      // device suspended
	reasonInactive      = "inactive"       // device in another non-active state (pending)
	reasonDeleted       = "deleted"        // device removed from the registry
	reasonRegistryError = "registry_error" // the registry could not answer
	reasonPolicy        = "policy"         // the policy no longer admits the session
	reasonSVIDExpired   = "svid_expired"   // the peer's certificate chain expired
	reasonUnverified    = "unverified"     // the peer's chain no longer verifies against the bundles
	reasonTakeover      = "takeover"       // a new connection took the session over
	reasonPublishDenied = "publish_denied" // MQTT 3.1.1 QoS>0 PUBLISH denied
	reasonKicked        = "kicked"         // an admin ended the device's sessions (KickSessions)
)

// statusReason is the disconnect reason for a device in status st.
func statusReason(st registry.Status) string {
	switch st {
	case registry.StatusRevoked:
		return reasonRevoked
	case registry.StatusSuspended:
		return reasonSuspended
	}
	return reasonInactive
}

// codeSVIDExpired is the DISCONNECT reason of a connection whose SVID
// expired: 0xA0 "Maximum connect time" says the connection lasted as long as
// it may, not that the identity lost its rights (0x87), so a client renews
// its SVID and reconnects rather than giving up.
var codeSVIDExpired = packets.Code{Code: packets.ErrMaxConnectTime.Code, Reason: "SVID expired"}

// kick ends the connection of s, once, and reports whether it did (false
// when the connection had already ended or was being ended). MQTT 5 clients
// are told why with a DISCONNECT carrying code; MQTT 3.1.1 has no server
// DISCONNECT, so the connection is just closed.
//
// The caller marks the session denied first when it may no longer decide
// anything. The DISCONNECT is written on a goroutine of its own: a peer that
// does not read stalls neither the caller's pass over the other sessions
// nor anything else.
func (g *Gateway) kick(s *session, code packets.Code, reason string) bool {
	if !g.startEnding(s) {
		return false
	}
	g.log.Info("gateway: disconnecting session", "reason", reason, "code", code.Code,
		"spiffe_id", s.spiffeID, "client_id", s.clientID, "remote_addr", s.remote)
	g.metrics.Disconnected(reason)
	go g.disconnect(s, code)
	return true
}

func (g *Gateway) disconnect(s *session, code packets.Code) {
	if s.version == 5 {
		t := time.AfterFunc(disconnectTimeout, func() { s.cl.Stop(code) })
		_ = g.server.DisconnectClient(s.cl, code) // writes, then stops
		t.Stop()
	}
	s.cl.Stop(code)
}

// disconnectClients tells every connected client that the server is going
// away. It replaces mochi's own closer, whose Clients.GetByListener takes the
// clients' read lock twice and so deadlocks against a Delete queued between
// the two (mochi issue #488); GetAll takes it once.
func (g *Gateway) disconnectClients() {
	for _, cl := range g.server.Clients.GetAll() {
		if !cl.Closed() {
			_ = g.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}
