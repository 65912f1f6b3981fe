package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/policy"
)

// The guardrails: what one identity, one session or one source address can
// make the gateway hold or do. They are enforced by the gateway before the
// policy is asked about anything, and the policy's optional limits rule can
// give an identity its own values at CONNECT (see LimitsSource).
//
// The defaults are those of ztgate's configuration (internal/app). A zero
// Config.Limits leaves every per-identity and per-address limit off, so that
// an embedder opts in; the queue, inflight and handshake bounds are never
// off.
const (
	// DefaultMaxSessionsPerIdentity bounds the sessions one SPIFFE ID holds:
	// a device needs one, a device with a spare process two; more is a
	// clone or a leak.
	DefaultMaxSessionsPerIdentity = 4
	// DefaultPublishRate and DefaultPublishBurst bound the PUBLISH packets
	// of one identity, per second and at once: telemetry is a message per
	// second or less, and the burst covers a device sending its backlog.
	DefaultPublishRate  = 100
	DefaultPublishBurst = 1000
	// DefaultPublishBytesRate and DefaultPublishBytesBurst bound the bytes
	// of those PUBLISH packets (whole packets): 1 MiB/s, 4 MiB at once
	// (16 packets of the maximum size).
	DefaultPublishBytesRate  = 1 << 20
	DefaultPublishBytesBurst = 4 << 20
	// DefaultMaxSubscriptionsPerSession bounds the filters of one session.
	DefaultMaxSubscriptionsPerSession = 100
	// DefaultMaxOutboundQueue is the slots of a session's outbound queue
	// (mochi's MaximumClientWritesPending). The patched mochi allocates the
	// whole queue at a client's first delivery (LazyOutboundQueue), so an
	// idle device holds none; one that has received holds it until it
	// disconnects: mochi's default of 8,192 pointers is 64 KiB, 1,024 is
	// 8 KiB and still holds a burst of a thousand deliveries for a
	// subscriber. A message that finds the queue full is
	// dropped, QoS 1 and 2 too (mochi v2.7.9 takes it out of the session's
	// in-flight messages): ztgate_broker_messages_dropped_total counts it.
	DefaultMaxOutboundQueue = 1024
	// DefaultMaxInflight bounds the QoS 1 and 2 messages a session holds
	// unacknowledged or queued while offline (mochi's MaximumInflight,
	// 8,192 by default); one more is dropped.
	DefaultMaxInflight = 1024
	// DefaultHandshakeTimeout bounds the TLS handshake plus the CONNECT.
	DefaultHandshakeTimeout = connectTimeout
	// DefaultConnRatePerIP and DefaultConnBurstPerIP bound the new
	// connections of one source address (an IPv6 /64), per second and at
	// once, before any TLS work: enough for a fleet behind one NAT coming
	// back after a restart, too few for a handshake flood.
	DefaultConnRatePerIP  = 50
	DefaultConnBurstPerIP = 200

	// limitLogInterval is how often one limit of one identity (or source
	// address) is logged: the first hit in full, the others counted into
	// the next line.
	limitLogInterval = time.Minute
)

// Limits configures the guardrails (see the constants above). For the
// per-identity and per-address limits, zero or a negative value is off; for
// the others, zero takes the default.
type Limits struct {
	MaxSessionsPerIdentity     int
	PublishRate                float64 // PUBLISH packets per second per identity
	PublishBurst               int
	PublishBytesRate           float64 // PUBLISH bytes per second per identity
	PublishBytesBurst          int
	MaxSubscriptionsPerSession int
	MaxOutboundQueue           int
	MaxInflight                int
	HandshakeTimeout           time.Duration
	ConnRatePerIP              float64 // new connections per second per source address
	ConnBurstPerIP             int
}

// DefaultLimits are the limits of ztgate's configuration.
func DefaultLimits() Limits {
	return Limits{
		MaxSessionsPerIdentity:     DefaultMaxSessionsPerIdentity,
		PublishRate:                DefaultPublishRate,
		PublishBurst:               DefaultPublishBurst,
		PublishBytesRate:           DefaultPublishBytesRate,
		PublishBytesBurst:          DefaultPublishBytesBurst,
		MaxSubscriptionsPerSession: DefaultMaxSubscriptionsPerSession,
		MaxOutboundQueue:           DefaultMaxOutboundQueue,
		MaxInflight:                DefaultMaxInflight,
		HandshakeTimeout:           DefaultHandshakeTimeout,
		ConnRatePerIP:              DefaultConnRatePerIP,
		ConnBurstPerIP:             DefaultConnBurstPerIP,
	}
}

// resolve fills the defaults of the bounds that are never off and checks
// the rest.
func (l Limits) resolve() (Limits, error) {
	switch {
	case l.MaxOutboundQueue < 0 || l.MaxOutboundQueue > math.MaxInt32:
		return l, fmt.Errorf("gateway: outbound queue of %d slots", l.MaxOutboundQueue)
	case l.MaxInflight < 0 || l.MaxInflight > math.MaxUint16:
		return l, fmt.Errorf("gateway: inflight maximum %d: want 1 to %d", l.MaxInflight, math.MaxUint16)
	case l.HandshakeTimeout < 0:
		return l, fmt.Errorf("gateway: negative handshake timeout %s", l.HandshakeTimeout)
	case math.IsNaN(l.PublishRate) || math.IsNaN(l.PublishBytesRate) || math.IsNaN(l.ConnRatePerIP):
		return l, fmt.Errorf("gateway: rate limit is not a number")
	}
	if l.MaxOutboundQueue == 0 {
		l.MaxOutboundQueue = DefaultMaxOutboundQueue
	}
	if l.MaxInflight == 0 {
		l.MaxInflight = DefaultMaxInflight
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	return l, nil
}

// LimitsSource gives an identity its own limits at CONNECT:
// policy.Engine's Limits, which evaluates the policy's limits rule. nil
// limits (no rule, or undefined for the input) leave the configured ones;
// an error refuses the CONNECT.
type LimitsSource interface {
	Limits(ctx context.Context, in *policy.Input) (policy.Limits, error)
}

// The names a limits rule may set, and the limit label of each hit.
const (
	limitPacketSize    = "packet_size"
	limitSessions      = "sessions"
	limitPublishRate   = "publish_rate"
	limitPublishBytes  = "publish_bytes"
	limitSubscriptions = "subscriptions"
	limitHandshake     = "handshake_timeout"
	limitConnRate      = "conn_rate"
	limitRule          = "limits_rule"

	keyMaxPacketSize     = "max_packet_size"
	keyMaxSessions       = "max_sessions_per_identity"
	keyPublishRate       = "publish_rate"
	keyPublishBurst      = "publish_burst"
	keyPublishBytesRate  = "publish_bytes_rate"
	keyPublishBytesBurst = "publish_bytes_burst"
	keyMaxSubscriptions  = "max_subscriptions_per_session"

	// reasonPacketTooLarge is the disconnect reason of a packet over the
	// maximum packet size.
	reasonPacketTooLarge = "packet_too_large"
)

// identityLimits are the limits of one identity, as resolved at a CONNECT.
// Zero is off, except for maxPacket.
type identityLimits struct {
	maxPacket   int
	maxSessions int
	msgRate     float64
	msgBurst    float64
	byteRate    float64
	byteBurst   float64
	maxSubs     int
}

func (g *Gateway) configuredLimits() identityLimits {
	l := g.limits.cfg
	return identityLimits{
		maxPacket:   int(g.maxPacket),
		maxSessions: max(l.MaxSessionsPerIdentity, 0),
		msgRate:     max(l.PublishRate, 0),
		msgBurst:    float64(max(l.PublishBurst, 1)),
		byteRate:    max(l.PublishBytesRate, 0),
		byteBurst:   float64(max(l.PublishBytesBurst, 1)),
		maxSubs:     max(l.MaxSubscriptionsPerSession, 0),
	}
}

// override applies the values of a limits rule. A name the gateway does not
// know or a value out of range is an error: a typo in a policy must not
// silently leave a controller at a sensor's limits, nor a sensor at none.
func (l *identityLimits) override(o policy.Limits) error {
	for k, v := range o {
		count := func(lo, hi float64) (int, error) {
			if v != math.Trunc(v) || v < lo || v > hi {
				return 0, fmt.Errorf("gateway: limits rule: %s is %v: want a whole number from %v to %v", k, v, lo, hi)
			}
			return int(v), nil
		}
		var err error
		switch k {
		case keyMaxPacketSize:
			l.maxPacket, err = count(1, MaxPacketSizeLimit)
		case keyMaxSessions:
			l.maxSessions, err = count(0, math.MaxInt32)
		case keyMaxSubscriptions:
			l.maxSubs, err = count(0, math.MaxInt32)
		case keyPublishRate:
			l.msgRate = v
		case keyPublishBytesRate:
			l.byteRate = v
		case keyPublishBurst:
			var n int
			n, err = count(1, math.MaxInt32)
			l.msgBurst = float64(n)
		case keyPublishBytesBurst:
			var n int
			n, err = count(1, math.MaxInt32)
			l.byteBurst = float64(n)
		default:
			err = fmt.Errorf("gateway: limits rule: unknown limit %q", k)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// limitState is the gateway's part of the guardrails: the configuration,
// the limits rule, and the state of every identity with a session.
type limitState struct {
	cfg    Limits
	source LimitsSource // nil: no limits rule

	mu     sync.Mutex
	idents map[string]*identityState
	conns  *ipLimiter // the listener's per-address rate
}

// identityState is what the sessions of one identity share: their token
// buckets, the sessions counted against its maximum, and when each limit was
// last logged.
type identityState struct {
	spiffeID string
	msgs     bucket
	bytes    bucket

	mu       sync.Mutex
	removed  bool       // forgotten by the sweep: look the identity up again
	sessions []*session // those the gateway holds, and those being decided
	logs     [numLimitLogs]limitLog
}

// sessionLimits are the limits of one session, set at its CONNECT.
type sessionLimits struct {
	ident *identityState
	// pending is set while the CONNECT is decided: the session counts
	// against the maximum before it is stored, so that two CONNECTs racing
	// cannot both take the last slot.
	pending   atomic.Bool
	maxPacket int
	maxSubs   int
	// quota lists the filters of the SUBSCRIBE being processed refused
	// for maxSubs, by index. Only the client's own goroutine touches it.
	quota []int
}

// identity returns the state of spiffeID, creating it.
func (g *Gateway) identity(spiffeID string) *identityState {
	g.limits.mu.Lock()
	defer g.limits.mu.Unlock()
	id := g.limits.idents[spiffeID]
	if id == nil {
		if g.limits.idents == nil {
			g.limits.idents = make(map[string]*identityState)
		}
		id = &identityState{spiffeID: spiffeID}
		g.limits.idents[spiffeID] = id
	}
	return id
}

// admitLimits resolves the limits of the session s is to be and counts it
// against its identity's sessions. A refusal has been answered (CONNACK
// 0x97, MQTT 3.1.1 0x05, for one session too many; 0x87 or 0x05 when the
// limits rule failed) when it returns errConnectRefused. On success the
// caller defers settleLimits.
//
// A new connection with the client ID of a session the identity holds takes
// that session over, so it is not one more.
func (g *Gateway) admitLimits(s *session) error {
	lim := g.configuredLimits()
	if src := g.limits.source; src != nil {
		in := g.input(s, policy.ActionConnect)
		o, err := src.Limits(g.ctx, in)
		*in = policy.Input{}
		g.inputs.Put(in)
		if err == nil {
			err = lim.override(o)
		}
		if err != nil {
			g.metrics.LimitHit(limitRule)
			g.log.Warn("gateway: limits rule failed; CONNECT refused", "spiffe_id", s.spiffeID, "client_id", s.clientID, "err", err)
			return g.refuseLimit(s, packets.ErrNotAuthorized, "limits rule failed")
		}
	}
	id := g.identity(s.spiffeID)
	id.mu.Lock()
	for id.removed {
		// The sweep forgot the entry after it was looked up.
		id.mu.Unlock()
		id = g.identity(s.spiffeID)
		id.mu.Lock()
	}
	s.lim = sessionLimits{ident: id, maxPacket: lim.maxPacket, maxSubs: lim.maxSubs}
	id.msgs.set(lim.msgRate, lim.msgBurst)
	id.bytes.set(lim.byteRate, lim.byteBurst)
	held := g.pruneSessions(id, s.clientID)
	if lim.maxSessions > 0 && held >= lim.maxSessions {
		id.mu.Unlock()
		g.limitHit(id, limitSessions, "CONNECT refused: sessions of the identity at the maximum",
			slog.String("client_id", s.clientID), slog.Int("max", lim.maxSessions))
		return g.refuseLimit(s, packets.ErrQuotaExceeded, "sessions per identity at the maximum")
	}
	s.lim.pending.Store(true)
	id.sessions = append(id.sessions, s)
	id.mu.Unlock()
	return nil
}

// holdRestored counts s, a session restored at start, against its
// identity's sessions, as one its device had kept offline: a device cannot
// open more sessions after a restart than before it.
func (g *Gateway) holdRestored(s *session) {
	id := g.identity(s.spiffeID)
	id.mu.Lock()
	s.lim.ident = id
	id.sessions = append(id.sessions, s)
	id.mu.Unlock()
}

// pruneSessions drops the sessions mochi no longer holds from the list of
// id and returns how many client IDs the rest hold, not counting clientID.
// The caller holds id.mu.
func (g *Gateway) pruneSessions(id *identityState, clientID string) int {
	live := id.sessions[:0]
	for _, o := range id.sessions {
		if o.lim.pending.Load() || g.session(o.cl) == o {
			live = append(live, o)
		}
	}
	clear(id.sessions[len(live):])
	id.sessions = live
	n := 0
	for i, o := range live {
		if o.clientID == clientID {
			continue
		}
		dup := false
		for _, p := range live[:i] {
			if p.clientID == o.clientID {
				dup = true
				break
			}
		}
		if !dup {
			n++
		}
	}
	return n
}

// settleLimits ends the CONNECT of s: from now on it counts against its
// identity's sessions while the gateway holds it, and its connection reads
// with its identity's limits.
func (g *Gateway) settleLimits(s *session) {
	s.lim.pending.Store(false)
	if g.session(s.cl) != s {
		return // refused
	}
	if pc, ok := s.cl.Net.Conn.(*packetConn); ok {
		pc.attach(g, s)
	}
}

// packetTooLarge ends the connection of s, which sent a packet over its
// maximum size: MQTT 5 clients get DISCONNECT 0x95 first. It runs on the
// connection's reading goroutine, before mochi sees the packet's header,
// and returns once the connection is closed.
func (g *Gateway) packetTooLarge(s *session, err error) {
	g.limitHit(s.lim.ident, limitPacketSize, "connection closed: packet over the maximum packet size",
		slog.String("client_id", s.clientID), slog.String("err", err.Error()))
	if g.startEnding(s) {
		g.metrics.Disconnected(reasonPacketTooLarge)
	}
	g.disconnect(s, packets.ErrPacketTooLarge)
}

// refuseLimit answers a CONNECT refused by a limit.
func (g *Gateway) refuseLimit(s *session, code packets.Code, why string) error {
	if s.version < 5 {
		code = packets.Err3NotAuthorized
	}
	_ = g.server.SendConnack(s.cl, code, false, nil)
	g.metrics.ConnectionRefused()
	g.log.Info("gateway: CONNECT refused", "reason", why, "client_id", s.clientID, "remote_addr", s.remote,
		"spiffe_id", s.spiffeID)
	return errConnectRefused
}

// decideFilters decides the filters of a SUBSCRIBE: a new filter beyond the
// session's maximum is refused (MQTT 5: 0x97, see quotaCodes) before the
// policy is asked; every other filter is the policy's.
func (g *Gateway) decideFilters(s *session, cl *mqtt.Client, filters packets.Subscriptions, ending bool) []filterDecision {
	ds := make([]filterDecision, len(filters))
	held, limit := -1, s.lim.maxSubs
	s.lim.quota = s.lim.quota[:0]
	for i, sub := range filters {
		ds[i].filter = sub.Filter
		if ending {
			continue
		}
		_, existing := cl.State.Subscriptions.Get(sub.Filter)
		if limit > 0 && !existing && !repeated(filters[:i], sub.Filter) {
			if held < 0 {
				held = cl.State.Subscriptions.Len()
			}
			if held >= limit {
				s.lim.quota = append(s.lim.quota, i)
				g.limitHit(s.lim.ident, limitSubscriptions, "SUBSCRIBE filter refused: subscriptions of the session at the maximum",
					slog.String("client_id", s.clientID), slog.String("filter", sub.Filter), slog.Int("max", limit))
				continue
			}
			ds[i].allow = g.allowSubscribe(s, sub.Filter, sub.Qos)
			if ds[i].allow {
				held++
			}
			continue
		}
		ds[i].allow = g.allowSubscribe(s, sub.Filter, sub.Qos)
	}
	return ds
}

func repeated(filters packets.Subscriptions, f string) bool {
	for _, o := range filters {
		if o.Filter == f {
			return true
		}
	}
	return false
}

// quotaCodes gives the filters refused for the subscription maximum their
// MQTT 5 reason code, 0x97 Quota exceeded, instead of the 0x87 mochi sets
// for every refusal: the client learns that unsubscribing would help, not
// that the filter is forbidden. codes is the SUBACK's own slice (mochi
// writes the SUBACK after OnSubscribed). MQTT 3.1.1 has one failure code.
func quotaCodes(s *session, codes []byte) {
	if s.version < 5 {
		return
	}
	for _, i := range s.lim.quota {
		if i < len(codes) {
			codes[i] = packets.ErrQuotaExceeded.Code
		}
	}
}

// limitLog is when one limit of one identity was last logged, and the hits
// since.
type limitLog struct {
	at    time.Time
	count int
}

// The limits logged per identity, by index in identityState.logs.
const (
	logPacketSize = iota
	logSessions
	logPublishRate
	logPublishBytes
	logSubscriptions
	numLimitLogs
)

func limitLogIndex(limit string) int {
	switch limit {
	case limitPacketSize:
		return logPacketSize
	case limitSessions:
		return logSessions
	case limitPublishRate:
		return logPublishRate
	case limitPublishBytes:
		return logPublishBytes
	}
	return logSubscriptions
}

// limitHit counts a hit of limit by id and logs it, once per identity and
// limit per minute: the first hit of a minute in full, with the number of
// hits since the last line.
func (g *Gateway) limitHit(id *identityState, limit, msg string, attrs ...slog.Attr) {
	g.metrics.LimitHit(limit)
	if id == nil {
		return
	}
	now := time.Now()
	id.mu.Lock()
	l := &id.logs[limitLogIndex(limit)]
	l.count++
	if !l.at.IsZero() && now.Sub(l.at) < limitLogInterval {
		id.mu.Unlock()
		return
	}
	hits := l.count
	l.at, l.count = now, 0
	id.mu.Unlock()
	g.log.LogAttrs(g.ctx, slog.LevelWarn, "gateway: limit hit: "+msg,
		append([]slog.Attr{slog.String("limit", limit), slog.String("spiffe_id", id.spiffeID),
			slog.Int("hits", hits)}, attrs...)...)
}

// flushLimitLogs writes a line for every limit of id with hits not logged
// whose minute is over, and reports whether id may be forgotten: no
// session counted, no hit pending, and its buckets full again.
func (g *Gateway) flushLimitLogs(id *identityState, now time.Time) (idle bool) {
	type due struct {
		limit string
		hits  int
	}
	var dues [numLimitLogs]due
	n := 0
	id.mu.Lock()
	g.pruneSessions(id, "")
	idle = len(id.sessions) == 0
	for i := range id.logs {
		l := &id.logs[i]
		if l.count > 0 && now.Sub(l.at) >= limitLogInterval {
			dues[n] = due{limitNames[i], l.count}
			n++
			l.at, l.count = now, 0
		}
		if l.count > 0 {
			idle = false
		}
	}
	id.mu.Unlock()
	for _, d := range dues[:n] {
		g.log.LogAttrs(g.ctx, slog.LevelWarn, "gateway: limit hit (repeated)", slog.String("limit", d.limit),
			slog.String("spiffe_id", id.spiffeID), slog.Int("hits", d.hits))
	}
	return idle && id.msgs.full(now) && id.bytes.full(now)
}

var limitNames = [numLimitLogs]string{limitPacketSize, limitSessions, limitPublishRate, limitPublishBytes, limitSubscriptions}

// startLimits starts the minute sweep of the limit state: the repeated
// hits are logged and identities with nothing left to limit forgotten.
func (g *Gateway) startLimits(l *listener) {
	l.connRate = g.limits.conns
	l.timeoutHit = func(remote net.Addr) { g.addrHit(limitHandshake, remote) }
	l.rateHit = func(remote net.Addr) { g.addrHit(limitConnRate, remote) }
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		t := time.NewTicker(limitLogInterval)
		defer t.Stop()
		for {
			select {
			case <-g.ctx.Done():
				return
			case now := <-t.C:
				g.sweepLimits(now)
			}
		}
	}()
}

func (g *Gateway) sweepLimits(now time.Time) {
	g.limits.mu.Lock()
	ids := make([]*identityState, 0, len(g.limits.idents))
	for _, id := range g.limits.idents {
		ids = append(ids, id)
	}
	g.limits.mu.Unlock()
	for _, id := range ids {
		if !g.flushLimitLogs(id, now) {
			continue
		}
		// A CONNECT may have come between the check and here; one that
		// looked the entry up before it is removed finds it marked.
		g.limits.mu.Lock()
		id.mu.Lock()
		if len(id.sessions) == 0 && id.msgs.full(now) && id.bytes.full(now) {
			id.removed = true
			delete(g.limits.idents, id.spiffeID)
		}
		id.mu.Unlock()
		g.limits.mu.Unlock()
	}
	g.limits.conns.sweep(now, g)
}
