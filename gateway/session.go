package gateway

import (
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// session is the gateway's state for one mochi client: one connection, and
// after it ends, the persistent session mochi keeps for it.
type session struct {
	cl          *mqtt.Client
	id          spiffeid.ID
	spiffeID    string
	clientID    string // unscoped
	remote      string
	version     byte
	connectedAt time.Time

	// subject is what every decision of the session is about. It is
	// replaced, never changed, when the registry record changes.
	subject atomic.Pointer[policy.Subject]
	// device is the registry record subject was built from (nil: not
	// enrolled), and record a channel the registry closes when that record
	// may have changed. refreshMu orders the refreshes of one session.
	device    atomic.Pointer[registry.Device]
	record    atomic.Pointer[<-chan struct{}]
	refreshMu sync.Mutex
	// revoked is set when the session may no longer do anything: every
	// decision for it denies without asking the policy.
	revoked atomic.Bool
	// online is true from CONNECT until the connection ends.
	online atomic.Bool
	// replaced is set when a new connection of the same identity and
	// client ID takes the session over; resumed tells whether it continues
	// the session (clean start false) or ends it. A replaced session
	// publishes nothing but its Last Will; deliveries to it are still
	// decided (as receives of the same identity) until mochi has moved
	// them to the new connection, so a QoS 1 or 2 message racing the
	// takeover is queued, not dropped.
	replaced atomic.Bool
	resumed  atomic.Bool
	// handedOver is set on a replaced session once the new connection's
	// session is established; its state is forgotten when that has
	// happened and its own connection has ended, whichever is last.
	handedOver atomic.Bool
	// replacing is the client this session took over, until the takeover
	// is complete (OnSessionEstablished).
	replacing atomic.Pointer[mqtt.Client]
	// pending holds the decided filters of the SUBSCRIBE being processed;
	// see hook.OnACLCheck.
	pending atomic.Pointer[[]filterDecision]
	// subEpoch and subSubject are the re-evaluation epoch and the subject
	// the SUBSCRIBE being processed was decided with (see OnSubscribed).
	// Only the client's own goroutine touches them.
	subEpoch   uint64
	subSubject *policy.Subject

	// will is the Last Will accepted at CONNECT. mochi clears its own copy
	// on the client's goroutine when the connection ends cleanly, so
	// re-evaluation reads this one.
	will    mqtt.Will
	hasWill bool
	// notAfter is when the peer's certificate chain stops being valid;
	// expiry ends the connection then. Both are set before the session is
	// stored and never changed.
	notAfter time.Time
	expiry   *time.Timer
	// ended is set once the gateway has started to end this connection
	// (see Gateway.kick). The connection decides nothing more of its own;
	// a persistent session it leaves behind still receives unless revoked.
	ended atomic.Bool
	// opened is true while the session is counted as connected.
	opened atomic.Bool

	// drop is set when the session is to end for good because its device
	// was revoked or deleted; gone once it has. dropMu orders the changes
	// of cutSession against a new connection taking the session over.
	dropMu sync.Mutex
	drop   atomic.Bool
	gone   bool
	// detached is set when the session is taken out of the topic index
	// because its device was suspended (see detachSession).
	detached atomic.Bool

	// denials aggregates the log lines of the session's denials.
	denials denyLog
}

// recordChanged reports whether the registry record s was last checked
// against may have changed since (true when s has no record channel).
func (s *session) recordChanged() bool {
	ch := s.record.Load()
	if ch == nil || *ch == nil {
		return true
	}
	select {
	case <-*ch:
		return true
	default:
		return false
	}
}

// stopExpiry stops the SVID expiry timer of s, if any.
func (s *session) stopExpiry() {
	if s.expiry != nil {
		s.expiry.Stop()
	}
}

// filterDecision is the subscribe decision on one filter of a SUBSCRIBE.
type filterDecision struct {
	filter string
	allow  bool
}

// scopedClientID is the client ID mochi knows a client by: the SPIFFE ID, a
// space, and the client ID the client sent (or was assigned). A SPIFFE ID
// never contains a space, so two identities never share a scoped ID,
// whatever client IDs they send: sessions, takeovers, queued messages and
// delayed wills, all keyed by it in mochi, stay within one identity.
func scopedClientID(spiffeID, clientID string) string {
	return spiffeID + " " + clientID
}

// newSubject builds the policy subject of a session: the one the admin API
// would build for the same identity, with the session's connection.
func newSubject(id spiffeid.ID, dev *registry.Device, clientID, remote string, version byte) *policy.Subject {
	return policy.NewSubject(id, dev, policy.Client{ID: clientID, RemoteAddr: remote, ProtocolVersion: version})
}

// lookupDevice returns the registry record of spiffeID, nil when the
// identity is not enrolled, and a channel the registry closes when that
// may change (for an identity not enrolled, possibly spuriously). Any other
// error is returned: the caller denies.
func (g *Gateway) lookupDevice(spiffeID string) (*registry.Device, <-chan struct{}, error) {
	dev, ch, err := g.reg.WatchDevice(spiffeID)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, ch, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return dev, ch, nil
}

// mayConnect is the gateway's own floor under the policy: an enrolled
// identity whose device is not active never has a session, whatever the
// policy says.
func mayConnect(dev *registry.Device) bool {
	return dev == nil || dev.Status == registry.StatusActive
}

// refresh brings s up to date with the registry. It returns why the
// session may not go on ("" when it may), and whether its subject changed.
// A session may not go on when its device is suspended, revoked or gone
// (enrolled at CONNECT, unknown now), when the registry cannot answer, or
// when the policy no longer admits its new subject (see admitted). A session
// that may not go on is marked revoked; the caller disconnects it.
func (g *Gateway) refresh(s *session) (why string, changed bool) {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	dev, ch, err := g.lookupDevice(s.spiffeID)
	if err == nil {
		s.record.Store(&ch)
	}
	prev := s.device.Load()
	if s.detached.Load() {
		// Cut for a suspension and detached: it stays so until the device
		// reconnects (a resume changes nothing here), unless the device is
		// revoked or deleted meanwhile, when it ends.
		switch {
		case err == nil && prev != nil && dev == nil:
			return reasonDeleted, false
		case err == nil && dev != nil && dev.Status == registry.StatusRevoked:
			return reasonRevoked, false
		}
		return "", false
	}
	switch {
	case err != nil:
		g.log.Warn("gateway: registry lookup failed; cutting session", "spiffe_id", s.spiffeID, "err", err)
		s.revoked.Store(true)
		return reasonRegistryError, false
	case prev != nil && dev == nil:
		s.revoked.Store(true)
		g.log.Info("gateway: device no longer enrolled", "spiffe_id", s.spiffeID, "client_id", s.clientID)
		return reasonDeleted, false
	case !mayConnect(dev):
		s.revoked.Store(true)
		s.device.Store(dev)
		s.subject.Store(newSubject(s.id, dev, s.clientID, s.remote, s.version))
		g.log.Info("gateway: device no longer active", "spiffe_id", s.spiffeID, "client_id", s.clientID,
			"status", string(dev.Status))
		return statusReason(dev.Status), true
	case sameDevice(prev, dev):
		return "", false
	}
	s.device.Store(dev)
	s.subject.Store(newSubject(s.id, dev, s.clientID, s.remote, s.version))
	// The subject changed (labels, name): the connection stands only if the
	// policy would admit the new subject.
	if !g.admitted(s) {
		s.revoked.Store(true)
		return reasonPolicy, true
	}
	return "", true
}

// cutSession takes the session of s, whose connection the registry watcher
// has just cut, out of mochi's routing. mochi would keep a persistent
// session in its topic index, share groups included, until it expires, and
// route messages to it that the receive check then drops: a share group's
// message lost although another member could have had it, also after a
// resume until the device reconnects.
//
//   - A revoked or deleted device's session ends (dropSession): revocation
//     is final, and a deleted device that is enrolled again is a new one.
//   - A suspended (or otherwise inactive) device's session, or one the
//     policy no longer admits, is detached (detachSession): nothing is
//     routed to it, and what it holds stays for the device to resume,
//     pruned to the policy of that moment, with its subscriptions back in
//     the index. Dropping it would do too, but a device that resumes
//     without subscribing again would then hear nothing.
//
// A registry that cannot answer only cuts the connection: every session is
// cut so when the registry closes, and nothing has been decided about any
// device.
func (g *Gateway) cutSession(s *session, why string) {
	switch why {
	case reasonRevoked, reasonDeleted:
		g.dropSession(s)
	case reasonSuspended, reasonInactive, reasonPolicy:
		g.detachSession(s)
	}
}

// detachSession removes the subscriptions of s from mochi's topic index,
// keeping them in the session's own state: mochi subscribes a resumed
// session anew from that state. The index is keyed by client ID, which a
// new connection taking the session over shares, so a session already
// taken over is left alone (see takeOver).
func (g *Gateway) detachSession(s *session) {
	s.dropMu.Lock()
	defer s.dropMu.Unlock()
	if s.replaced.Load() || s.gone {
		return
	}
	s.detached.Store(true)
	for filter := range s.cl.State.Subscriptions.GetAll() {
		if g.server.Topics.Unsubscribe(filter, s.cl.ID) {
			atomic.AddInt64(&g.server.Info.Subscriptions, -1)
		}
	}
}

// dropSession ends the session of s for good: it leaves the topic index
// and loses its queued messages now, and is forgotten (by mochi too) once
// its connection has ended, so a device that comes back starts a new
// session. A session a new connection has already taken over is left
// alone: that connection holds it now and is checked on its own.
func (g *Gateway) dropSession(s *session) {
	s.dropMu.Lock()
	if s.replaced.Load() || s.gone {
		s.dropMu.Unlock()
		return
	}
	s.drop.Store(true)
	g.server.UnsubscribeClient(s.cl)
	s.cl.ClearInflights()
	s.dropMu.Unlock()
	// OnDisconnect clears online before it reads drop: one of the two
	// sees the other and ends the session.
	if !s.online.Load() {
		g.endSession(s)
	}
}

// endSession forgets a dropped session, in mochi and here, once its
// connection has ended. It runs under dropMu: a new connection of the same
// client ID waits in takeOver until mochi no longer has the session, so it
// starts a fresh one and is never itself removed by mistake.
func (g *Gateway) endSession(s *session) {
	s.dropMu.Lock()
	defer s.dropMu.Unlock()
	if s.gone {
		return
	}
	s.gone = true
	cl := s.cl
	s.stopExpiry()
	// Ended here while still connected (a new connection of the same ID
	// came first), OnDisconnect will not find it to count it closed.
	if s.opened.CompareAndSwap(true, false) {
		g.metrics.SessionClosed()
	}
	// Anything a SUBSCRIBE racing the drop added.
	g.server.UnsubscribeClient(cl)
	cl.ClearInflights()
	if cur, ok := g.server.Clients.Get(cl.ID); ok && cur == cl {
		g.server.Clients.Delete(cl.ID)
	}
	g.sessions.Delete(cl)
	g.flushDenials(s, true)
}

// takeOver marks s as taken over by a new connection of the same client
// ID, which resumes it (or not). It returns false for a dropped session,
// which is ended here instead, so that the new connection finds none.
func (g *Gateway) takeOver(s *session, resume bool) bool {
	s.dropMu.Lock()
	if !s.drop.Load() {
		s.resumed.Store(resume)
		s.replaced.Store(true)
		s.dropMu.Unlock()
		return true
	}
	s.dropMu.Unlock()
	g.endSession(s)
	return false
}

// admitted reports whether the policy would accept the CONNECT of s now:
// the "connect" decision and, while the connection lasts, its Last Will.
func (g *Gateway) admitted(s *session) bool {
	if !g.decide(s, policy.ActionConnect, "", "", 0, false, false, 0) {
		return false
	}
	return !s.hasWill || !s.online.Load() || g.allowWill(s, s.will)
}

func sameDevice(a, b *registry.Device) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && a.Status == b.Status && maps.Equal(a.Labels, b.Labels)
}

// decide asks the policy about one action of s and logs a denial. It is the
// hot path of every publish and delivery: the input comes from a pool and
// nothing is allocated here on an allow.
func (g *Gateway) decide(s *session, action policy.Action, topic, filter string, qos byte, retain, will bool, size int) bool {
	if s.revoked.Load() {
		return false
	}
	in := g.inputs.Get().(*policy.Input)
	*in = policy.Input{
		Action:      action,
		Subject:     s.subject.Load(),
		Topic:       topic,
		Filter:      filter,
		QoS:         qos,
		Retain:      retain,
		Will:        will,
		PayloadSize: size,
		Time:        g.now(),
	}
	d := g.decider.Decide(g.ctx, in)
	if !d.Allow {
		g.logDenied(s, in, d)
	}
	*in = policy.Input{}
	g.inputs.Put(in)
	return d.Allow
}

// logDenied writes the decision log line of a denial: the first of its
// kind in full, the repeats counted into a summary (see noteDenial).
func (g *Gateway) logDenied(s *session, in *policy.Input, d policy.Decision) {
	k := denyKey{action: in.Action, topic: in.Topic, filter: in.Filter, will: in.Will,
		reasons: d.Reasons, revision: d.Revision, failed: d.Err != nil}
	if !g.noteDenial(s, &k) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("action", string(in.Action)),
		slog.String("spiffe_id", s.spiffeID),
		slog.String("client_id", s.clientID),
	)
	if in.Topic != "" || in.Action == policy.ActionPublish || in.Action == policy.ActionReceive {
		attrs = append(attrs, slog.String("topic", in.Topic))
	}
	if in.Filter != "" || in.Action == policy.ActionSubscribe {
		attrs = append(attrs, slog.String("filter", in.Filter))
	}
	if in.Will {
		attrs = append(attrs, slog.Bool("will", true))
	}
	attrs = append(attrs, slog.Any("reasons", d.Reasons), slog.String("revision", d.Revision))
	if d.ID != "" {
		// The key of the decision's entry in the decision log.
		attrs = append(attrs, slog.String("decision_id", d.ID))
	}
	if d.Err != nil {
		attrs = append(attrs, slog.String("err", d.Err.Error()))
	}
	g.log.LogAttrs(g.ctx, slog.LevelInfo, "gateway: denied", attrs...)
}

// deny logs a refusal the gateway makes on its own, before any policy,
// aggregated like a policy's denial.
func (g *Gateway) deny(s *session, action policy.Action, what, value, why string) {
	k := denyKey{action: action, reason: why}
	if what == "filter" {
		k.filter = value
	} else {
		k.topic = value
	}
	if !g.noteDenial(s, &k) {
		return
	}
	g.log.LogAttrs(g.ctx, slog.LevelInfo, "gateway: denied",
		slog.String("action", string(action)),
		slog.String("spiffe_id", s.spiffeID),
		slog.String("client_id", s.clientID),
		slog.String(what, value),
		slog.String("reason", why),
	)
}
