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
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/identity"
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
)

// Config configures a Gateway. Every field but Now and Logger is required.
type Config struct {
	Addr     string      // listen address, e.g. "127.0.0.1:8883" or "127.0.0.1:0"
	TLS      *tls.Config // from identity.ServerTLSConfig: must require client certificates
	Verifier *identity.Verifier
	Registry *registry.Store
	Decider  policy.Decider
	Logger   *slog.Logger     // nil means slog.Default()
	Now      func() time.Time // clock for policy input time; nil means time.Now
}

// Session describes one live MQTT connection.
type Session struct {
	ClientID        string // as the client sent it (or as it was assigned), not scoped
	SPIFFEID        string
	Device          string // registry name; empty when the identity is not enrolled
	RemoteAddr      string
	ProtocolVersion byte
	ConnectedAt     time.Time
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

	// connectTimeout is the constant of that name; tests shorten it.
	connectTimeout time.Duration

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
	g := &Gateway{
		tls:      cfg.TLS.Clone(),
		addr:     cfg.Addr,
		verifier: cfg.Verifier,
		reg:      cfg.Registry,
		decider:  cfg.Decider,
		log:      cfg.Logger,
		now:      cfg.Now,

		connectTimeout: connectTimeout,
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	if g.now == nil {
		g.now = time.Now
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.inputs.New = func() any { return new(policy.Input) }

	caps := mqtt.NewDefaultServerCapabilities()
	// The policy contract knows MQTT 3.1.1 (4) and 5 only; mochi would also
	// take 3.1 (MQIsdp) by default.
	caps.MinimumProtocolVersion = 4
	g.server = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       g.log.With("component", "mqtt"),
		// No inline client: it bypasses every ACL check.
		InlineClient:           false,
		SysTopicResendInterval: sysTopicInterval,
	})
	g.wills.init(g)
	g.hook = &hook{g: g}
	if err := g.server.AddHook(g.hook, nil); err != nil {
		g.cancel()
		return nil, fmt.Errorf("gateway: %w", err)
	}
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
	tcp, err := net.Listen("tcp", g.addr)
	if err != nil {
		return fmt.Errorf("gateway: listen: %w", err)
	}
	if err := g.server.AddListener(newListener(listenerID, tcp, g.tls, g.connectTimeout)); err != nil {
		_ = tcp.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	if err := g.server.Serve(); err != nil {
		_ = tcp.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	g.listenAddr = tcp.Addr()
	g.started = true
	g.wg.Add(1)
	go g.watchRegistry()
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
func (g *Gateway) Sessions() []Session {
	var out []Session
	g.sessions.Range(func(_, v any) bool {
		s := v.(*session)
		if !s.online.Load() || s.cl.Closed() {
			return true
		}
		name := ""
		if d := s.device.Load(); d != nil {
			name = d.Name
		}
		out = append(out, Session{
			ClientID:        s.clientID,
			SPIFFEID:        s.spiffeID,
			Device:          name,
			RemoteAddr:      s.remote,
			ProtocolVersion: s.version,
			ConnectedAt:     s.connectedAt,
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

	g.cancel()
	g.wills.stopAll()
	var err error
	if started {
		// mochi's Close closes the listener, disconnects every client and
		// waits for their handlers to return.
		err = g.server.Close()
	}
	g.wg.Wait()
	if err != nil {
		return fmt.Errorf("gateway: close: %w", err)
	}
	return nil
}

// watchRegistry applies every registry change to the sessions mochi holds.
func (g *Gateway) watchRegistry() {
	defer g.wg.Done()
	var prev <-chan struct{}
	for {
		// Take the channel before reading the registry, so a change made
		// while the sessions are checked wakes the loop again.
		ch := g.reg.Watch()
		g.recheckAll()
		if ch != nil && ch == prev {
			// A closed store hands out one closed channel for good. The
			// pass above has cut every session (lookups now fail) and new
			// CONNECTs are refused, so there is nothing left to watch.
			return
		}
		prev = ch
		select {
		case <-ch:
		case <-g.ctx.Done():
			return
		}
	}
}

// recheckAll re-reads the registry record of every session and cuts those
// that may no longer be connected.
func (g *Gateway) recheckAll() {
	g.sessions.Range(func(_, v any) bool {
		s := v.(*session)
		if !s.revoked.Load() && !g.refresh(s) {
			g.kick(s)
		}
		return true
	})
}

// kick ends a session's connection at once: MQTT 5 clients are told why
// (DISCONNECT 0x87); MQTT 3.1.1 has no server DISCONNECT, so the connection
// is just closed.
func (g *Gateway) kick(s *session) {
	if s.cl.Closed() {
		return
	}
	g.log.Info("gateway: disconnecting session", "spiffe_id", s.spiffeID, "client_id", s.clientID,
		"remote_addr", s.remote)
	if s.version == 5 {
		_ = g.server.DisconnectClient(s.cl, packets.ErrNotAuthorized)
	}
	s.cl.Stop(packets.ErrNotAuthorized)
}
