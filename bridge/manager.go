package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/policy"
)

// Deps is what the bridges need from the rest of the gateway.
type Deps struct {
	// Dir holds one queue file per bridge, NAME.db (DATA_DIR/bridges).
	Dir         string
	TrustDomain spiffeid.TrustDomain
	// ClientCertificate is the gateway's own SVID, used for bridges
	// without cert_file; it is asked at every TLS handshake, so it follows
	// rotation.
	ClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	Decider           policy.Decider
	// PublishLocal publishes an inbound message into the local broker as
	// the bridge's identity.
	PublishLocal func(id spiffeid.ID, clientID, topic string, payload []byte, qos byte, retain bool) error
	Logger       *slog.Logger
	Metrics      prometheus.Registerer
	// Dial opens the TCP connection to an upstream (nil: a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Node is this gateway's cluster node name; empty on a single
	// gateway. In a cluster every node keeps its own link to each
	// upstream: the client ID gets "-NODE" appended, so that the nodes do
	// not take each other's connection over, and the in filters are
	// subscribed as the shared subscription $share/ztgate-NAME/FILTER, so
	// that the upstream hands each message to one node, which publishes
	// it to the whole cluster.
	Node string
}

// Status is one bridge's state: the wire format of GET /v1/bridges.
type Status struct {
	Name      string    `json:"name"`
	URL       string    `json:"url"`
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"` // when it last connected or disconnected
	LastError string    `json:"last_error,omitempty"`
	Queued    uint64    `json:"queued"`
	Forwarded uint64    `json:"forwarded"`
	Denied    uint64    `json:"denied"`
	Dropped   uint64    `json:"dropped"`
	Received  uint64    `json:"received"`
}

// Manager runs the configured bridges. Its Offer is the gateway's Egress.
type Manager struct {
	bridges []*bridge
	deps    Deps
	metrics *collector

	ctx    context.Context // ends at Close: decisions and connections
	cancel context.CancelFunc

	// offerMu orders Offer against Close: after Close no message is
	// accepted that the writers would no longer commit.
	offerMu sync.RWMutex
	closed  bool

	startMu sync.Mutex
	started bool
	stop    chan struct{} // stops the writers
	writers sync.WaitGroup
	runners sync.WaitGroup
}

// New validates cfgs, opens each bridge's queue (creating Deps.Dir) and
// starts the queue writers, so Offer works from here on. Start connects.
func New(cfgs []Config, deps Deps) (*Manager, error) {
	if err := ValidateAll(cfgs); err != nil {
		return nil, err
	}
	switch {
	case deps.Decider == nil:
		return nil, errNoDecider
	case deps.PublishLocal == nil:
		return nil, errors.New("bridge: Deps.PublishLocal is nil")
	case deps.TrustDomain.IsZero():
		return nil, errors.New("bridge: Deps.TrustDomain is empty")
	case deps.Dir == "" && len(cfgs) > 0:
		return nil, errors.New("bridge: Deps.Dir is empty")
	case deps.Node != "" && !validShareName(deps.Node):
		return nil, fmt.Errorf("bridge: node name %q cannot be part of a client ID and a share name", deps.Node)
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{deps: deps, stop: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if len(cfgs) > 0 {
		if err := os.MkdirAll(deps.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("bridge: %w", err)
		}
	}
	for _, c := range cfgs {
		c = c.withDefaults()
		q, err := openQueue(filepath.Join(deps.Dir, c.Name+".db"), c.QueueMaxMessages)
		if err != nil {
			m.closeQueues()
			return nil, err
		}
		b, err := newBridge(m.ctx, c, &m.deps, q)
		if err != nil {
			_ = q.close()
			m.closeQueues()
			return nil, err
		}
		m.bridges = append(m.bridges, b)
	}
	for _, b := range m.bridges {
		m.writers.Add(1)
		go b.writer(m.stop, m.writers.Done)
	}
	m.metrics = registerMetrics(deps.Metrics, m, deps.Logger)
	return m, nil
}

// Start connects every bridge; each keeps reconnecting until Close or
// until ctx ends.
func (m *Manager) Start(ctx context.Context) error {
	m.startMu.Lock()
	defer m.startMu.Unlock()
	if m.started {
		return errors.New("bridge: already started")
	}
	if m.ctx.Err() != nil {
		return errors.New("bridge: closed")
	}
	m.started = true
	run, cancel := context.WithCancel(m.ctx)
	stop := context.AfterFunc(ctx, cancel)
	for _, b := range m.bridges {
		m.runners.Add(1)
		go func() {
			defer m.runners.Done()
			b.run(run)
		}()
	}
	go func() {
		m.runners.Wait()
		stop()
		cancel()
	}()
	return nil
}

// Offer implements gateway.Egress: it forwards a message the policy
// allowed to publish to every bridge with a matching out rule, if the
// policy allows bridge_out. A topic that no rule matches costs a few
// comparisons and no allocation. payload is copied.
func (m *Manager) Offer(sub *policy.Subject, topic string, payload []byte, qos byte, retain bool) {
	for _, b := range m.bridges {
		r := b.match(topic)
		if r == nil {
			continue
		}
		m.offerTo(b, sub, r, topic, payload, qos, retain)
	}
}

func (m *Manager) offerTo(b *bridge, sub *policy.Subject, r *OutRule, topic string, payload []byte, qos byte, retain bool) {
	// Deferred: a panicking Decider must not leave Close waiting forever.
	m.offerMu.RLock()
	defer m.offerMu.RUnlock()
	if !m.closed {
		b.offer(m.ctx, sub, r, topic, payload, qos, retain)
	}
}

// Status is the state of every bridge, in configuration order.
func (m *Manager) Status() []Status {
	out := make([]Status, 0, len(m.bridges))
	for _, b := range m.bridges {
		out = append(out, b.status())
	}
	return out
}

// Close disconnects every bridge, writes what Offer accepted to the queues
// and closes them. Messages not yet acknowledged stay queued for the next
// start.
func (m *Manager) Close() error {
	m.offerMu.Lock()
	if m.closed {
		m.offerMu.Unlock()
		return nil
	}
	m.closed = true
	m.offerMu.Unlock()

	// Under startMu: a Start running now has either added its runners,
	// which Wait sees, or will find the context cancelled.
	m.startMu.Lock()
	m.cancel()
	m.startMu.Unlock()
	m.runners.Wait()
	close(m.stop)
	m.writers.Wait()
	m.metrics.unregister()
	return m.closeQueues()
}

func (m *Manager) closeQueues() error {
	var errs []error
	for _, b := range m.bridges {
		errs = append(errs, b.q.close())
	}
	return errors.Join(errs...)
}
