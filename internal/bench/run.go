package bench

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/clusterstart"
	"github.com/ztgate/ztgate/internal/mqttconn"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

const (
	// trustDomain is served by the bench's gateway; it never leaves the
	// process.
	trustDomain = "bench.ztgate.test"

	// allowAllPolicy is the baseline: every action of everyone allowed.
	allowAllPolicy = "package ztgate.authz\n\nallow := true\n"

	// window bounds the messages published but not yet delivered to the
	// slowest subscriber. The broker drops QoS 0 messages for a client
	// whose queue (8192 writes) is full; keeping well below it makes a
	// loss a finding, not an artefact of an unpaced publisher.
	window = 1024

	// qos1Workers is how many PUBLISHes each publisher keeps in flight at
	// QoS 1, where a paho Publish waits for its PUBACK.
	qos1Workers = 16

	// startTimeout bounds starting a gateway (compiling and testing the
	// policy included) and connecting the clients.
	startTimeout = 2 * time.Minute
	// drainGrace is how long messages in flight may still arrive after
	// the last send, even past the duration limit.
	drainGrace = 2 * time.Second
	// paceSlack is how far a paced publisher may fall behind its
	// schedule before send slots are skipped.
	paceSlack = 10 * time.Millisecond
	// pollEvery is how often a waiting loop looks again.
	pollEvery = 200 * time.Microsecond
	// closeTimeout bounds waiting for the clients to end after the
	// gateway closed.
	closeTimeout = 5 * time.Second
)

// Run runs the bench cfg describes and returns its report. It fails when a
// gateway cannot start, a client cannot connect or subscribe, a publish is
// refused or a connection ends during the run, or ctx ends (Ctrl-C).
// Everything it started is stopped, and its temporary directories removed,
// before it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	rep := &Report{Settings: settingsOf(cfg)}
	for _, v := range cfg.variants() {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "bench: %s: %d publishers -> %d subscribers, %d messages at QoS %d...\n",
				v.describe(), cfg.Publishers, cfg.Subscribers, cfg.Messages, cfg.QoS)
		}
		res, err := runOnce(ctx, cfg, v)
		if err != nil {
			return nil, err
		}
		rep.Runs = append(rep.Runs, res)
	}
	rep.Ratio = ratioOf(rep.Runs)
	return rep, nil
}

// run is one gateway, or one cluster of them, under one policy, and its
// clients.
type run struct {
	cfg Config
	v   variant
	// apps are the nodes; the clients enroll on the first one.
	apps  []*app.App
	addrs []string // MQTT address of each node
	// base is the zero of every timestamp in a payload: one monotonic
	// clock for senders and receivers.
	base time.Time

	pubs   []*publisher
	subs   []*subscriber
	quotas []int64 // messages each publisher sends, by index

	sent  atomic.Int64 // messages handed to a client to publish
	floor atomic.Int64 // a recent minimum of the subscribers' deliveries

	stopOnce sync.Once
	stopped  chan struct{} // closed: publish no more
	closing  atomic.Bool   // the run is over: client errors are expected

	errMu sync.Mutex
	err   error // the first failure
}

type publisher struct {
	idx    int
	node   int
	name   string
	topic  string
	client *paho.Client
	conn   net.Conn
	quota  int64        // messages this publisher sends
	next   atomic.Int64 // next sequence number to take
	// tokens paces the publisher (nil: unpaced); closed when the pacer
	// has issued the quota.
	tokens chan struct{}
	// missed counts send slots the pacer skipped because the publisher
	// was still busy: the rate was not sustained.
	missed atomic.Int64
}

type subscriber struct {
	node   int
	name   string
	client *paho.Client
	conn   net.Conn
	r      *run

	unique atomic.Int64 // first deliveries
	last   atomic.Int64 // time of the latest first delivery, ns since base

	mu      sync.Mutex
	seen    [][]uint64 // per publisher, one bit per sequence number
	dups    int64
	foreign int64 // payloads that no publisher of this run sent
	cross   int64 // first deliveries from a publisher on another node
	hist    histogram
}

func runOnce(ctx context.Context, cfg Config, v variant) (Result, error) {
	dir, err := os.MkdirTemp("", "ztgate-bench-")
	if err != nil {
		return Result{}, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	acfg := app.DefaultConfig()
	acfg.MQTTAddr = "127.0.0.1:0"
	acfg.APIAddr = "127.0.0.1:0"
	acfg.TrustDomain = trustDomain
	acfg.PolicyWatch = false
	acfg.Logger = cfg.Logger
	// The bench measures what the gateway can carry: its publishers
	// would otherwise be held back at the per-identity publish rate.
	acfg.Limits.PublishRate, acfg.Limits.PublishBytesRate = 0, 0
	acfg.Storage.Enabled = cfg.Storage != StorageOff
	acfg.Storage.Fsync = cfg.Storage == StorageFsync
	if v.policy == PolicyAllowAll {
		if acfg.PolicyDir, err = mkdirPolicy(dir); err != nil {
			return Result{}, err
		}
	}

	setupCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	apps, err := startNodes(setupCtx, dir, acfg, v)
	if err != nil {
		if ctx.Err() != nil {
			return Result{}, interrupted(ctx)
		}
		return Result{}, fmt.Errorf("bench: start gateway: %w", err)
	}
	r := &run{
		cfg:     cfg,
		v:       v,
		apps:    apps,
		base:    time.Now(),
		stopped: make(chan struct{}),
	}
	defer r.shutdown()
	for _, a := range apps {
		_, port, err := net.SplitHostPort(a.MQTTAddr().String())
		if err != nil {
			return Result{}, fmt.Errorf("bench: gateway address: %w", err)
		}
		r.addrs = append(r.addrs, net.JoinHostPort("127.0.0.1", port))
	}
	if err := r.setup(setupCtx); err != nil {
		if ctx.Err() != nil {
			return Result{}, interrupted(ctx)
		}
		return Result{}, err
	}
	res := r.measure(ctx)
	if err := r.failed(); err != nil {
		return Result{}, err
	}
	res.Name, res.Policy, res.Nodes, res.Placement = v.name, string(v.policy), v.nodes, string(v.placement)
	if v.nodes > 1 {
		res.Replicas = replicas(v.nodes)
	}
	res.PolicyRevision = apps[0].Engine().Revision()
	return res, nil
}

func interrupted(ctx context.Context) error {
	return fmt.Errorf("bench: interrupted: %w", context.Cause(ctx))
}

// fail records the first error of the run and stops publishing.
func (r *run) fail(err error) {
	if r.closing.Load() {
		return
	}
	r.errMu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.errMu.Unlock()
	r.stop()
}

// failed is the first failure of the run, if any.
func (r *run) failed() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return r.err
}

func (r *run) stop() { r.stopOnce.Do(func() { close(r.stopped) }) }

func (r *run) isStopped() bool {
	select {
	case <-r.stopped:
		return true
	default:
		return false
	}
}

// setup enrolls every client, issues its SVID and connects it; the
// subscribers subscribe. All before the clock starts.
func (r *run) setup(ctx context.Context) error {
	cfg := r.cfg
	td := r.apps[0].TrustDomain()
	type ident struct {
		name string
		id   spiffeid.ID
	}
	var rows []registry.Device
	var pubIDs, subIDs []ident
	for i := range cfg.Publishers {
		name := fmt.Sprintf("bench-pub-%d", i+1)
		id, err := identity.DeviceID(td, name)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		pubIDs = append(pubIDs, ident{name, id})
		rows = append(rows, registry.Device{Name: name, SPIFFEID: id.String(), Status: registry.StatusActive})
	}
	for i := range cfg.Subscribers {
		name := fmt.Sprintf("bench-sub-%d", i+1)
		id, err := spiffeid.FromSegments(td, "controller", name)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		subIDs = append(subIDs, ident{name, id})
		rows = append(rows, registry.Device{Name: name, SPIFFEID: id.String(), Status: registry.StatusActive,
			Labels: map[string]string{"role": "controller"}})
	}
	results, err := r.apps[0].Registry().Import(rows, "ztgate-bench")
	if err != nil {
		return fmt.Errorf("bench: enroll: %w", err)
	}
	for _, res := range results {
		if res.Result != registry.ImportCreated {
			return fmt.Errorf("bench: enroll %s: %s %s", res.Name, res.Result, res.Error)
		}
	}
	names := make([]string, len(rows))
	for i, d := range rows {
		names[i] = d.Name
	}
	if err := waitEnrolled(ctx, r.apps, names); err != nil {
		return err
	}

	// The SVIDs outlive the longest run the limits allow.
	ttl := cfg.DurationLimit + startTimeout + time.Hour
	tlsFor := func(id spiffeid.ID) (*tls.Config, error) {
		// Every node has the same CA: the first one's issues for all.
		chain, key, err := r.apps[0].CA().IssueSVID(id, ttl)
		if err != nil {
			return nil, fmt.Errorf("bench: SVID for %s: %w", id, err)
		}
		tc, err := identity.ClientTLSConfigPEM(chain, key, r.apps[0].CA().BundlePEM())
		if err != nil {
			return nil, fmt.Errorf("bench: SVID for %s: %w", id, err)
		}
		// The gateway's serving certificate carries 127.0.0.1 as an IP SAN.
		tc.ServerName = "127.0.0.1"
		return tc, nil
	}

	r.quotas = split(int64(cfg.Messages), cfg.Publishers)
	for j, s := range subIDs {
		sub := &subscriber{node: r.v.subscriberNode(j), name: s.name, r: r, seen: make([][]uint64, cfg.Publishers)}
		for p, q := range r.quotas {
			sub.seen[p] = make([]uint64, (q+63)/64)
		}
		r.subs = append(r.subs, sub)
		tc, err := tlsFor(s.id)
		if err != nil {
			return err
		}
		sub.client, sub.conn, err = r.connect(ctx, sub.node, tc, s.name, sub.receive)
		if err != nil {
			return err
		}
		sa, err := sub.client.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
			{Topic: "devices/+/telemetry/#", QoS: byte(cfg.QoS)},
		}})
		if err != nil {
			return fmt.Errorf("bench: subscribe as %s: %w", s.name, err)
		}
		if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
			return fmt.Errorf("bench: subscribe as %s: refused (reason codes %v)", s.name, sa.Reasons)
		}
	}
	for i, p := range pubIDs {
		pub := &publisher{idx: i, node: r.v.publisherNode(i), name: p.name, topic: "devices/" + p.name + "/telemetry/x", quota: r.quotas[i]}
		r.pubs = append(r.pubs, pub)
		tc, err := tlsFor(p.id)
		if err != nil {
			return err
		}
		pub.client, pub.conn, err = r.connect(ctx, pub.node, tc, p.name, nil)
		if err != nil {
			return err
		}
	}
	return nil
}

// split divides n into k shares that differ by at most one.
func split(n int64, k int) []int64 {
	out := make([]int64, k)
	for i := range out {
		out[i] = n / int64(k)
		if int64(i) < n%int64(k) {
			out[i]++
		}
	}
	return out
}

// connect opens an mTLS connection to node's gateway and sends CONNECT as
// clientID. A connection the server or the network ends before the run is
// over fails the run.
// A client refused with 0x88 server unavailable tries again, at most
// connectAttempts times, half a second apart: on a loaded machine the
// first seconds of a cluster's session directory took more than the 2.5 s
// that 5 attempts gave (TestBenchClusterTable, under a parallel load).
const (
	connectAttempts         = 20
	reasonServerUnavailable = 0x88
)

func (r *run) connect(ctx context.Context, node int, tc *tls.Config, clientID string, onPublish func(paho.PublishReceived) (bool, error)) (*paho.Client, net.Conn, error) {
	cp := &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 60}
	if onPublish != nil && r.cfg.Persistent {
		expiry := uint32(3600)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &expiry}
	}
	var c *mqttconn.Conn
	var err error
	for attempt := 1; ; attempt++ {
		c, err = mqttconn.Dial(ctx, r.addrs[node], mqttconn.Options{
			TLS:               tc,
			Connect:           cp,
			OnPublishReceived: onPublish,
			OnClientError: func(err error) {
				r.fail(fmt.Errorf("bench: connection of %s: %w", clientID, err))
			},
			OnServerDisconnect: func(d *paho.Disconnect) {
				r.fail(fmt.Errorf("bench: the gateway disconnected %s (reason %#x)", clientID, d.ReasonCode))
			},
			PacketTimeout: 30 * time.Second,
		})
		// 0x88 server unavailable is what a device is told to come back
		// after: a cluster node refuses CONNECTs while it cannot write
		// the session directory, as in the first moments of a cluster.
		var de *mqttconn.Error
		if err == nil || attempt == connectAttempts || !errors.As(err, &de) || de.Connack == nil ||
			de.Connack.ReasonCode != reasonServerUnavailable || ctx.Err() != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("bench: connect as %s: %w", clientID, err)
	}
	return c.Client, c.TLS, nil
}

// shutdown closes the gateways, then the clients. In that order on
// purpose: mochi v2.7.9 can deadlock closing a listener while a client is
// leaving on its own (Clients.GetByListener takes its read lock twice, and
// a departing client's Delete queued between the two blocks both; upstream
// issue mochi-mqtt/server#488). Idle clients that the gateway disconnects
// itself never race it.
func (r *run) shutdown() {
	r.closing.Store(true)
	r.stop()
	if err := clusterstart.Close(r.apps); err != nil {
		r.cfg.Logger.Warn("bench: closing the gateway", "err", err)
	}
	var clients []*paho.Client
	for _, p := range r.pubs {
		if p.client != nil {
			clients = append(clients, p.client)
			_ = p.conn.Close()
		}
	}
	for _, s := range r.subs {
		if s.client != nil {
			clients = append(clients, s.client)
			_ = s.conn.Close()
		}
	}
	deadline := time.After(closeTimeout)
	for _, c := range clients {
		select {
		case <-c.Done():
		case <-deadline:
			return
		}
	}
}

// receive handles one delivery: first or duplicate, and its latency.
func (s *subscriber) receive(pr paho.PublishReceived) (bool, error) {
	now := int64(time.Since(s.r.base))
	b := pr.Packet.Payload
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(b) < headerSize {
		s.foreign++
		return true, nil
	}
	sentAt := int64(binary.BigEndian.Uint64(b[0:8]))
	p := int(binary.BigEndian.Uint32(b[8:12]))
	seq := binary.BigEndian.Uint64(b[12:20])
	if p >= len(s.r.quotas) || seq >= uint64(s.r.quotas[p]) {
		s.foreign++
		return true, nil
	}
	word, bit := &s.seen[p][seq/64], uint64(1)<<(seq%64)
	if *word&bit != 0 {
		s.dups++
		return true, nil
	}
	*word |= bit
	if s.r.v.publisherNode(p) != s.node {
		s.cross++
	}
	s.hist.record(time.Duration(now - sentAt))
	s.unique.Add(1)
	s.last.Store(now)
	return true, nil
}

// minDelivered is the number of first deliveries of the slowest
// subscriber.
func (r *run) minDelivered() int64 {
	m := int64(-1)
	for _, s := range r.subs {
		if n := s.unique.Load(); m < 0 || n < m {
			m = n
		}
	}
	return m
}

// waitWindow waits until fewer than window messages are on their way to
// the slowest subscriber. It reports false when the run stopped instead.
func (r *run) waitWindow() bool {
	for {
		sent := r.sent.Load()
		if sent-r.floor.Load() < window {
			return true
		}
		m := r.minDelivered()
		r.floor.Store(m)
		if sent-m < window {
			return true
		}
		if r.isStopped() {
			return false
		}
		time.Sleep(pollEvery)
	}
}

// publish sends messages of p until its quota is met or the run stops.
// Several goroutines may run it for one publisher: each takes the next
// sequence number.
func (r *run) publish(ctx context.Context, p *publisher) error {
	buf := make([]byte, r.cfg.Payload)
	for i := headerSize; i < len(buf); i++ {
		buf[i] = byte('a' + i%26)
	}
	binary.BigEndian.PutUint32(buf[8:12], uint32(p.idx))
	msg := &paho.Publish{Topic: p.topic, QoS: byte(r.cfg.QoS), Payload: buf}
	for {
		if p.tokens != nil {
			select {
			case _, ok := <-p.tokens:
				if !ok {
					return nil
				}
			case <-r.stopped:
				return nil
			}
		}
		if r.isStopped() || !r.waitWindow() {
			return nil
		}
		seq := p.next.Add(1) - 1
		if seq >= p.quota {
			return nil
		}
		binary.BigEndian.PutUint64(buf[12:20], uint64(seq))
		binary.BigEndian.PutUint64(buf[0:8], uint64(time.Since(r.base)))
		r.sent.Add(1)
		if _, err := p.client.Publish(ctx, msg); err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: Run reports it
			}
			return fmt.Errorf("bench: publish as %s: %w", p.name, err)
		}
	}
}

// pace issues p's send slots at rate messages per second on a ticker. A
// slot the publisher is too busy to take is skipped, not saved up: the
// schedule stays fixed, so latency is measured at the rate asked for, and
// a rate the gateway cannot sustain shows as fewer messages sent.
func (r *run) pace(p *publisher, rate float64) {
	defer close(p.tokens)
	period := time.Millisecond
	if d := time.Duration(float64(time.Second) / rate); d > period {
		period = d
	}
	t := time.NewTicker(period)
	defer t.Stop()
	start := time.Now()
	var issued int64
	for issued < p.quota {
		select {
		case <-r.stopped:
			return
		case now := <-t.C:
			due := min(p.quota, int64(rate*now.Sub(start).Seconds())+1)
			for ; issued < due; issued++ {
				select {
				case p.tokens <- struct{}{}:
				default:
					p.missed.Add(1)
				}
			}
		}
	}
}

// waitPublishers waits for the publishing goroutines. Once the run has
// stopped they are given closeTimeout to return; one still blocked then is
// writing to a gateway that no longer reads, and its connection is closed
// under it so the bench ends anyway.
func (r *run) waitPublishers(wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-r.stopped:
	}
	select {
	case <-done:
		return
	case <-time.After(closeTimeout):
	}
	r.fail(fmt.Errorf("bench: publishers still blocked %s after the run stopped: the gateway is not reading", closeTimeout))
	for _, p := range r.pubs {
		_ = p.conn.Close()
	}
	<-done
}

// measure publishes, waits for the deliveries and computes the result.
func (r *run) measure(ctx context.Context) Result {
	cfg := r.cfg
	stopOnCancel := context.AfterFunc(ctx, func() { r.fail(interrupted(ctx)) })
	defer stopOnCancel()

	decisions0, haveDecisions := decisionsTotal(r.apps)
	cache0 := cacheStats(r.apps)
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)

	workers := 1
	if cfg.QoS == 1 {
		workers = qos1Workers
	}
	start := time.Since(r.base)
	limit := time.AfterFunc(cfg.DurationLimit, r.stop)
	defer limit.Stop()

	var wg sync.WaitGroup
	for _, p := range r.pubs {
		if cfg.Rate > 0 {
			rate := float64(cfg.Rate) * float64(p.quota) / float64(cfg.Messages)
			// Slots for paceSlack of sends: a publisher held up for
			// less than that (a GC pause, a busy core) catches up; one
			// held up longer misses slots.
			p.tokens = make(chan struct{}, workers+int(rate*paceSlack.Seconds())+1)
			wg.Go(func() { r.pace(p, rate) })
		}
		for range workers {
			wg.Go(func() {
				if err := r.publish(ctx, p); err != nil {
					r.fail(err)
				}
			})
		}
	}
	r.waitPublishers(&wg)
	publishEnd := time.Since(r.base)
	limit.Stop()
	var missed int64
	for _, p := range r.pubs {
		missed += p.missed.Load()
	}
	sent := r.sent.Load()
	// Every slot is either sent or skipped by the pacer, unless the
	// duration limit stopped publishing first.
	cut := sent+missed < int64(cfg.Messages)

	// Wait for every message sent to reach every subscriber: until the
	// duration limit, and in any case for drainGrace after the last
	// send, so messages still in flight when the limit struck are not
	// counted as lost.
	now := time.Since(r.base)
	drainUntil := time.Now().Add(max(start+cfg.DurationLimit, publishEnd+drainGrace) - now)
	for r.minDelivered() < sent && time.Now().Before(drainUntil) && r.failed() == nil {
		time.Sleep(pollEvery)
	}
	if r.minDelivered() < sent {
		// Still missing at the deadline: the limit cut the run.
		cut = true
	}

	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	decisions1, _ := decisionsTotal(r.apps)
	cache1 := cacheStats(r.apps)

	var h histogram
	var unique, dups, foreign, cross, last int64
	for _, s := range r.subs {
		s.mu.Lock()
		h.merge(&s.hist)
		unique += s.unique.Load()
		dups += s.dups
		foreign += s.foreign
		cross += s.cross
		last = max(last, s.last.Load())
		s.mu.Unlock()
	}
	end := time.Duration(last)
	if end <= start {
		end = time.Since(r.base)
	}
	elapsed := (end - start).Seconds()
	pubElapsed := (publishEnd - start).Seconds()
	expected := sent * int64(len(r.subs))
	res := Result{
		Sent:               sent,
		Deliveries:         unique,
		ExpectedDeliveries: expected,
		Lost:               expected - unique,
		Duplicates:         dups,
		Foreign:            foreign,
		CrossNode:          cross,
		MissedSlots:        missed,
		StoppedByLimit:     cut,
		ElapsedSeconds:     elapsed,
		Latency: Latency{
			P50: micros(h.quantile(0.50)),
			P90: micros(h.quantile(0.90)),
			P99: micros(h.quantile(0.99)),
			Max: micros(time.Duration(h.max)),
		},
	}
	if elapsed > 0 {
		res.DeliveriesPerSec = float64(unique) / elapsed
		res.MessagesPerSec = res.DeliveriesPerSec / float64(len(r.subs))
	}
	if pubElapsed > 0 {
		res.PublishRate = float64(sent) / pubElapsed
	}
	if sent > 0 {
		res.AllocsPerMessage = float64(ms1.Mallocs-ms0.Mallocs) / float64(sent)
		res.BytesPerMessage = float64(ms1.TotalAlloc-ms0.TotalAlloc) / float64(sent)
	}
	if haveDecisions {
		d := decisions1 - decisions0
		res.Decisions = &d
		if elapsed > 0 {
			res.DecisionsPerSec = d / elapsed
		}
		lookups := (cache1.Hits + cache1.Misses + cache1.Bypassed) - (cache0.Hits + cache0.Misses + cache0.Bypassed)
		if lookups > 0 {
			hit := float64(cache1.Hits-cache0.Hits) / float64(lookups)
			res.CacheHitRatio = &hit
		}
	}
	return res
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// decisionsTotal is the gateways' count of policy decisions, every action
// and result, from their Prometheus registries.
func decisionsTotal(apps []*app.App) (float64, bool) {
	var sum float64
	for _, a := range apps {
		n, ok := decisionsOf(a)
		if !ok {
			return 0, false
		}
		sum += n
	}
	return sum, true
}

func decisionsOf(a *app.App) (float64, bool) {
	mfs, err := a.Prometheus().Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() != "ztgate_decisions_total" {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		return sum, true
	}
	return 0, false
}

// cacheStats adds up the decision caches of the gateways.
func cacheStats(apps []*app.App) policy.CacheStats {
	var t policy.CacheStats
	for _, a := range apps {
		s := a.DecisionCache().Stats()
		t.Hits += s.Hits
		t.Misses += s.Misses
		t.Bypassed += s.Bypassed
	}
	return t
}
