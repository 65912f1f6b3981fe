package bridge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/ztgate/ztgate/policy"
)

// Reconnect backoff: exponential from backoffBase to backoffCap, full
// jitter (a uniformly random wait up to the current bound), so many
// gateways that lost the same upstream do not come back in step.
const (
	backoffBase = time.Second
	backoffCap  = 60 * time.Second
	// offerBuffer is how many allowed messages may wait for the queue's
	// next group commit; beyond it Offer drops rather than blocking the
	// publisher's goroutine.
	offerBuffer = 4096
)

// Direction label values of ztgate_bridge_denied_total.
const (
	dirOut = "out"
	dirIn  = "in"
)

// bridge is one configured upstream and its queue.
type bridge struct {
	cfg        Config
	addr       string // host:port, the only address it dials
	serverName string
	deps       *Deps
	ctx        context.Context // ends at Close
	log        *slog.Logger
	q          *queue
	outF, inF  []filter // the out and in rules' filters, compiled

	id      spiffeid.ID
	subject *policy.Subject // bridge_in subject: the bridge's own identity

	pending  chan *message // allowed messages waiting for the group commit
	notify   chan struct{} // the queue grew
	echo     *echoRing     // without No Local (3.1.1, or shared): what was forwarded recently
	share    string        // in a cluster, the shared subscription group of the in filters
	logLimit *rate.Limiter // deny and drop lines: the counters count them all

	forwarded, deniedOut, deniedIn, dropped, received atomic.Uint64

	mu        sync.Mutex
	connected bool
	since     time.Time
	lastErr   string
}

func newBridge(ctx context.Context, cfg Config, deps *Deps, q *queue) (*bridge, error) {
	addr, err := parseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", cfg.Name, err)
	}
	host, _, _ := net.SplitHostPort(addr)
	id, err := spiffeid.FromSegments(deps.TrustDomain, "bridge", cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: identity: %w", cfg.Name, err)
	}
	b := &bridge{
		cfg: cfg, addr: addr, serverName: host, deps: deps, ctx: ctx, q: q, id: id,
		log:      deps.Logger.With("bridge", cfg.Name),
		pending:  make(chan *message, offerBuffer),
		notify:   make(chan struct{}, 1),
		logLimit: rate.NewLimiter(10, 20),
		since:    time.Now(),
	}
	for _, r := range cfg.Out {
		b.outF = append(b.outF, compileFilter(r.Filter))
	}
	for _, r := range cfg.In {
		b.inF = append(b.inF, compileFilter(r.Filter))
	}
	if deps.Node != "" {
		b.cfg.ClientID += "-" + deps.Node
		b.share = "ztgate-" + cfg.Name
	}
	cfg = b.cfg
	b.subject = policy.NewSubject(id, nil, policy.Client{ID: cfg.ClientID, RemoteAddr: addr, ProtocolVersion: byte(cfg.ProtocolVersion)})
	if (cfg.ProtocolVersion == 4 || b.share != "") && len(cfg.In) > 0 {
		// Without No Local: MQTT 3.1.1 has none, and MQTT 5 forbids it on
		// a shared subscription.
		b.echo = newEchoRing(4096, time.Minute)
	}
	if _, err := b.tlsConfig(); err != nil {
		return nil, err
	}
	return b, nil
}

// tlsConfig is read at every dial, so a renewed CA or client certificate
// file is used from the next connection on.
func (b *bridge) tlsConfig() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: b.serverName}
	if b.cfg.CAFile != "" {
		pem, err := os.ReadFile(b.cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bridge %s: ca_file: %w", b.cfg.Name, err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bridge %s: ca_file %s: no PEM certificate", b.cfg.Name, b.cfg.CAFile)
		}
	}
	switch {
	case b.cfg.CertFile != "":
		cert, err := tls.LoadX509KeyPair(b.cfg.CertFile, b.cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("bridge %s: client certificate: %w", b.cfg.Name, err)
		}
		c.Certificates = []tls.Certificate{cert}
	case b.deps.ClientCertificate != nil:
		c.GetClientCertificate = b.deps.ClientCertificate
	default:
		return nil, fmt.Errorf("bridge %s: no client certificate: set cert_file and key_file, or run with an identity source", b.cfg.Name)
	}
	return c, nil
}

// match returns the first out rule whose filter matches topic, or nil. It
// does not allocate: most publishes match no rule and must cost nothing.
func (b *bridge) match(topic string) *OutRule {
	for i := range b.outF {
		if b.outF[i].matches(topic) {
			return &b.cfg.Out[i]
		}
	}
	return nil
}

// offer decides a matched message and hands it to the group commit.
func (b *bridge) offer(ctx context.Context, sub *policy.Subject, r *OutRule, topic string, payload []byte, qos byte, retain bool) {
	remote := r.RemotePrefix + topic
	d := b.deps.Decider.Decide(ctx, &policy.Input{
		Action: policy.ActionBridgeOut, Subject: sub, Topic: topic, QoS: qos, Retain: retain,
		PayloadSize: len(payload), Time: time.Now(),
		Bridge: &policy.Bridge{Name: b.cfg.Name, URL: b.cfg.URL, RemoteTopic: remote},
	})
	if !d.Allow {
		b.deniedOut.Add(1)
		b.logDenied(dirOut, topic, d)
		return
	}
	m := &message{Topic: remote, Payload: append([]byte(nil), payload...), QoS: min(qos, r.QoS), Retain: retain}
	select {
	case b.pending <- m:
	default:
		b.dropped.Add(1)
		if b.logLimit.Allow() {
			b.log.Warn("bridge: message dropped: queue writer behind", "topic", topic)
		}
	}
}

func (b *bridge) logDenied(dir, topic string, d policy.Decision) {
	if !b.logLimit.Allow() {
		return // the decision log has every one, the counter counts them
	}
	args := []any{"direction", dir, "topic", topic, "decision_id", d.ID}
	if d.Err != nil {
		args = append(args, "err", d.Err)
	}
	b.log.Info("bridge: message denied", args...)
}

// writer moves allowed messages to disk, as many per transaction (and so
// per fsync) as have arrived since the last one. On stop it writes what
// is still pending and returns.
func (b *bridge) writer(stop <-chan struct{}, done func()) {
	defer done()
	batch := make([]*message, 0, 256)
	for {
		select {
		case m := <-b.pending:
			batch = append(batch, m)
		case <-stop:
			for {
				select {
				case m := <-b.pending:
					batch = append(batch, m)
				default:
					b.commit(batch)
					return
				}
			}
		}
	drain:
		for len(batch) < offerBuffer {
			select {
			case m := <-b.pending:
				batch = append(batch, m)
			default:
				break drain
			}
		}
		b.commit(batch)
		clear(batch)
		batch = batch[:0]
	}
}

func (b *bridge) commit(batch []*message) {
	if len(batch) == 0 {
		return
	}
	n, err := b.q.append(batch)
	if err != nil {
		b.log.Error("bridge: queue write failed: messages dropped", "count", len(batch), "err", err)
	}
	if lost := len(batch) - n; lost > 0 {
		b.dropped.Add(uint64(lost))
		if err == nil {
			b.log.Warn("bridge: queue full: new messages dropped", "count", lost, "queue_max_messages", b.cfg.QueueMaxMessages)
		}
	}
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

// run keeps the bridge connected until ctx ends.
func (b *bridge) run(ctx context.Context) {
	attempt := 0
	for ctx.Err() == nil {
		began := time.Now()
		connected, err := b.session(ctx)
		if ctx.Err() != nil {
			return
		}
		b.setDown(err)
		// Only a link that stayed up a while resets the backoff: an
		// upstream that accepts and then drops every connection at once
		// must not be redialled in a tight loop.
		if connected && time.Since(began) >= backoffCap {
			attempt = 0
		}
		wait := backoff(attempt)
		attempt++
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff is the wait before reconnect attempt n (0 is the first retry):
// uniformly random in [0, min(backoffCap, backoffBase·2^n)) ("full
// jitter").
func backoff(n int) time.Duration {
	return rand.N(maxBackoff(n))
}

func maxBackoff(n int) time.Duration {
	return min(backoffCap, backoffBase<<min(max(n, 0), 6))
}

// session dials, connects, subscribes and sends until the link ends.
func (b *bridge) session(ctx context.Context) (connected bool, err error) {
	l, err := b.connect(ctx)
	if err != nil {
		return false, err
	}
	defer l.close()
	b.setUp()
	return true, b.send(ctx, l)
}

func (b *bridge) connect(ctx context.Context) (*link, error) {
	cfg, err := b.tlsConfig()
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, ioTimeout)
	defer cancel()
	dial := b.deps.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(cctx, "tcp", b.addr)
	if err != nil {
		return nil, fmt.Errorf("bridge: dial %s: %w", b.addr, err)
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(cctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("bridge: TLS with %s: %w", b.addr, err)
	}
	l, err := dialMQTT(cctx, conn, byte(b.cfg.ProtocolVersion), b.cfg.ClientID, b.receive)
	if err != nil {
		return nil, err
	}
	if len(b.cfg.In) > 0 {
		refused, err := l.subscribe(cctx, 1, b.cfg.In, b.share)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("bridge: subscribe: %w", err)
		}
		if len(refused) > 0 {
			b.log.Warn("bridge: upstream refused subscriptions", "filters", refused)
		}
	}
	return l, nil
}

func (b *bridge) setUp() {
	b.mu.Lock()
	b.connected, b.since, b.lastErr = true, time.Now(), ""
	b.mu.Unlock()
	b.log.Info("bridge: connected", "url", b.cfg.URL)
}

// setDown records a failed attempt or a lost connection. It logs a state
// change, and a failure that differs from the last one, at warn; the same
// failure again at debug, so an upstream down for a day is not a log line
// every minute at warn.
func (b *bridge) setDown(err error) {
	msg := "unknown error"
	if err != nil {
		msg = err.Error()
	}
	b.mu.Lock()
	was, same := b.connected, msg == b.lastErr
	if was {
		b.since = time.Now()
	}
	b.connected, b.lastErr = false, msg
	b.mu.Unlock()
	switch {
	case was:
		b.log.Warn("bridge: disconnected", "url", b.cfg.URL, "err", msg)
	case !same:
		b.log.Warn("bridge: cannot connect", "url", b.cfg.URL, "err", msg)
	default:
		b.log.Debug("bridge: cannot connect", "url", b.cfg.URL, "err", msg)
	}
}

// flight is a QoS 1 message written and not yet acknowledged.
type flight struct {
	seq uint64
	id  uint16
}

// send publishes the queue from its head, in order, keeping up to the
// link's window of QoS 1 messages in flight, and removes each message when
// it is acknowledged (QoS 1) or written (QoS 0). A new link starts again
// from the head, so whatever was in flight is sent again.
func (b *bridge) send(ctx context.Context, l *link) error {
	var (
		inflight []flight
		next     uint64
		id       uint16 = 1 // 1 was the SUBSCRIBE's, acknowledged already
	)
	for {
		if room := l.window - len(inflight); room > 0 {
			msgs, bad, err := b.q.read(next, room)
			if err != nil {
				return err
			}
			done := bad
			if len(bad) > 0 {
				b.dropped.Add(uint64(len(bad)))
				b.log.Error("bridge: unreadable queue records dropped", "count", len(bad))
				next = max(next, bad[len(bad)-1]+1)
			}
			for i := range msgs {
				m := &msgs[i]
				next = m.Seq + 1
				if why := unsendable(l, m); why != "" {
					b.dropped.Add(1)
					b.log.Warn("bridge: message dropped", "topic", m.Topic, "reason", why)
					done = append(done, m.Seq)
					continue
				}
				qos := min(m.QoS, l.maxQoS)
				if qos == 1 {
					id = id%65535 + 1
				}
				// Before the write: the upstream's echo can arrive, on the
				// reader's goroutine, before the write call returns.
				if b.echo != nil {
					b.echo.add(m.Topic, m.Payload)
				}
				if err := l.write(encodePublish(l.v, m.Topic, m.Payload, qos, m.Retain && l.retainAvail, id)); err != nil {
					return err
				}
				if qos == 0 {
					done = append(done, m.Seq)
					b.forwarded.Add(1)
				} else {
					inflight = append(inflight, flight{seq: m.Seq, id: id})
				}
			}
			if err := b.q.remove(done); err != nil {
				return err
			}
			if len(msgs)+len(bad) == room {
				continue // more may be waiting and the window has room
			}
		}
		select {
		case <-b.notify:
		case a := <-l.acks:
			var err error
			if inflight, err = b.acked(l, inflight, a); err != nil {
				return err
			}
		case <-l.done:
			return l.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// acked handles a PUBACK and any others already waiting, removing their
// messages from the queue in one transaction.
func (b *bridge) acked(l *link, inflight []flight, a ack) ([]flight, error) {
	var done []uint64
	for {
		for i, f := range inflight {
			if f.id != a.id {
				continue
			}
			done = append(done, f.seq)
			inflight = append(inflight[:i], inflight[i+1:]...)
			if a.reason >= 0x80 {
				// Sending it again would be refused again and hold up
				// the queue behind it.
				b.dropped.Add(1)
				b.log.Warn("bridge: upstream refused a message", "reason", fmt.Sprintf("0x%02x", a.reason))
			} else {
				b.forwarded.Add(1)
			}
			break
		}
		select {
		case a = <-l.acks:
			continue
		default:
		}
		break
	}
	return inflight, b.q.remove(done)
}

// unsendable says why m cannot go on l, or "".
func unsendable(l *link, m *message) string {
	size := 5 + 2 + len(m.Topic) + 2 + 1 + len(m.Payload)
	switch {
	case len(m.Topic) > 65535:
		return "remote topic longer than 65535 bytes"
	case l.maxPacket > 0 && size > l.maxPacket:
		return "larger than the upstream's maximum packet size"
	}
	return ""
}

// receive handles a message from the upstream, on the link's reader: the
// next one is read only after this one is decided and published, so
// inbound order is kept.
func (b *bridge) receive(in inbound) {
	b.received.Add(1)
	if in.Topic == "" {
		b.drop("larger than the bridge accepts", in.Topic)
		return
	}
	r := b.matchIn(in.Topic)
	if r == nil {
		b.drop("matches no in rule", in.Topic)
		return
	}
	if b.echo != nil && b.echo.seen(in.Topic, in.Payload) {
		b.drop("echo of a forwarded message", in.Topic)
		return
	}
	local, ok := strings.CutPrefix(in.Topic, r.StripPrefix)
	if !ok || !policy.ValidTopicName(local) {
		b.drop("outside the strip prefix", in.Topic)
		return
	}
	d := b.deps.Decider.Decide(b.ctx, &policy.Input{
		Action: policy.ActionBridgeIn, Subject: b.subject, Topic: local, QoS: in.QoS, Retain: in.Retain,
		PayloadSize: len(in.Payload), Time: time.Now(),
		Bridge: &policy.Bridge{Name: b.cfg.Name, URL: b.cfg.URL, RemoteTopic: in.Topic},
	})
	if !d.Allow {
		b.deniedIn.Add(1)
		b.logDenied(dirIn, local, d)
		return
	}
	if err := b.deps.PublishLocal(b.id, b.cfg.ClientID, local, in.Payload, in.QoS, in.Retain); err != nil {
		b.dropped.Add(1)
		b.log.Warn("bridge: local publish failed", "topic", local, "err", err)
	}
}

func (b *bridge) drop(why, topic string) {
	b.dropped.Add(1)
	b.log.Debug("bridge: inbound message dropped", "topic", topic, "reason", why)
}

func (b *bridge) matchIn(topic string) *InRule {
	for i := range b.inF {
		if b.inF[i].matches(topic) {
			return &b.cfg.In[i]
		}
	}
	return nil
}

func (b *bridge) status() Status {
	b.mu.Lock()
	s := Status{Name: b.cfg.Name, URL: b.cfg.URL, Connected: b.connected, Since: b.since, LastError: b.lastErr}
	b.mu.Unlock()
	s.Queued = uint64(b.q.len())
	s.Forwarded = b.forwarded.Load()
	s.Denied = b.deniedOut.Load() + b.deniedIn.Load()
	s.Dropped = b.dropped.Load()
	s.Received = b.received.Load()
	return s
}

var errNoDecider = errors.New("bridge: Deps.Decider is nil")
