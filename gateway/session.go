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
	// life is the session's state (see state.go), and the lock that
	// orders its changes. A session taken over (replaced) publishes
	// nothing but its Last Will; deliveries to it are still decided (as
	// receives of the same identity) until mochi has moved them to the new
	// connection, so a QoS 1 or 2 message racing the takeover is queued,
	// not dropped.
	life lifecycle
	// replacing is the session this one takes over, until the takeover is
	// complete (OnSessionEstablished). Only the client's own goroutine
	// touches it.
	replacing *session
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
	// denials aggregates the log lines of the session's denials.
	denials denyLog
	// lim are the session's limits, set at CONNECT (limits.go).
	lim sessionLimits
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
// that may not go on is marked denied; the caller disconnects it.
func (g *Gateway) refresh(s *session) (why string, changed bool) {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	dev, ch, err := g.lookupDevice(s.spiffeID)
	if err == nil {
		s.record.Store(&ch)
	}
	prev := s.device.Load()
	if s.life.load().phase() == phaseDetached {
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
		s.deny()
		return reasonRegistryError, false
	case prev != nil && dev == nil:
		s.deny()
		g.log.Info("gateway: device no longer enrolled", "spiffe_id", s.spiffeID, "client_id", s.clientID)
		return reasonDeleted, false
	case !mayConnect(dev):
		s.deny()
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
		s.deny()
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
//     policy no longer admits or whose chain no longer verifies, is
//     detached (detachSession): nothing is
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
	case reasonSuspended, reasonInactive, reasonPolicy, reasonUnverified:
		g.detachSession(s)
	}
}

// detachSession removes the subscriptions of s from mochi's topic index,
// keeping them in the session's own state: mochi subscribes a resumed
// session anew from that state. The index is keyed by client ID, which a
// new connection taking the session over shares, so a session already
// taken over is left alone (the transition table has no detach for it).
func (g *Gateway) detachSession(s *session) {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	g.detachLocked(s)
}

// detachLocked is detachSession with the lifecycle lock held: also the
// second pass when the connection of a detached session ends, for anything
// a SUBSCRIBE racing the cut added.
func (g *Gateway) detachLocked(s *session) {
	if _, _, ok := g.transition(s, evDetach); !ok {
		return
	}
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
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	_, to, ok := g.transition(s, evDrop)
	if !ok {
		return
	}
	g.server.UnsubscribeClient(s.cl)
	s.cl.ClearInflights()
	if to.phase() == phaseGone { // its connection had already ended
		g.forget(s)
	}
}

// forget removes a dropped session whose connection has ended, in mochi
// and here. It runs under the lifecycle lock: a new connection of the same
// client ID waits in takeOver until mochi no longer has the session, so it
// starts a fresh one and is never itself removed by mistake.
func (g *Gateway) forget(s *session) {
	cl := s.cl
	s.stopExpiry()
	// Forgotten while still connected (a new connection of the same ID
	// came first), OnDisconnect will not find it to count it closed.
	if s.life.counted {
		s.life.counted = false
		g.metrics.SessionClosed()
	}
	// Anything a SUBSCRIBE racing the drop added.
	g.server.UnsubscribeClient(cl)
	cl.ClearInflights()
	if cur, ok := g.server.Clients.Get(cl.ID); ok && cur == cl {
		g.server.Clients.Delete(cl.ID)
	}
	// Stored, it would come back at the next start, also for a device
	// deleted and enrolled again (a new one).
	if err := g.store.DeleteSession(cl.ID); err != nil {
		g.log.Error("gateway: stored session not deleted", "client_id", cl.ID, "err", err)
	}
	g.dirDelete(cl.ID)
	g.sessions.Delete(cl)
	g.flushDenials(s, true)
}

// takeOver is the takeover of s by a new connection of the same client ID,
// which resumes it (or not). It returns false for a dropped session, which
// is forgotten here instead, so that the new connection finds none.
func (g *Gateway) takeOver(s *session, resume bool) bool {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	ev := evTakeover
	if resume {
		ev = evResume
	}
	from, _, ok := g.transition(s, ev)
	switch {
	case !ok:
		return true // taken over already
	case from.phase() == phaseDropped:
		g.forget(s)
		return false
	}
	s.life.resumed = resume
	return true
}

// startEnding marks the connection of s as being ended by the gateway, once:
// it reports false when the connection has ended or is being ended.
func (g *Gateway) startEnding(s *session) bool {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	if s.cl.Closed() {
		return false
	}
	_, _, ok := g.transition(s, evKick)
	return ok
}

// transition applies ev to the state of s, under the lifecycle lock the
// caller holds, and logs the change at debug level.
func (g *Gateway) transition(s *session, ev event) (from, to state, ok bool) {
	from, to, ok = s.life.apply(ev)
	if ok && g.log.Enabled(g.ctx, slog.LevelDebug) {
		g.log.LogAttrs(g.ctx, slog.LevelDebug, "gateway: session state",
			slog.String("spiffe_id", s.spiffeID), slog.String("client_id", s.clientID),
			slog.String("event", ev.String()),
			slog.String("from", from.String()), slog.String("to", to.String()))
	}
	return from, to, ok
}

// deny marks s denied: every decision for it denies from now on.
func (s *session) deny() {
	s.life.mu.Lock()
	s.life.deny()
	s.life.mu.Unlock()
}

// admitted reports whether the policy would accept the CONNECT of s now:
// the "connect" decision and, while the connection lasts, its Last Will.
func (g *Gateway) admitted(s *session) bool {
	if !g.decideConnect(s) {
		return false
	}
	return !s.hasWill || !s.life.load().connected() || g.allowWill(s, s.will)
}

func sameDevice(a, b *registry.Device) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && a.Status == b.Status && maps.Equal(a.Labels, b.Labels)
}

// The decisions of a session, one helper per action. They are the hot path
// of every publish and delivery: the input comes from a pool and nothing is
// allocated on an allow. A denied session (see state.denied) gets no
// decision from the policy.

// decideConnect asks the policy about the CONNECT of s.
func (g *Gateway) decideConnect(s *session) bool {
	return g.ask(s, g.input(s, policy.ActionConnect))
}

// decidePublish asks the policy about a PUBLISH (or, with will set, a Last
// Will) of s.
func (g *Gateway) decidePublish(s *session, topic string, qos byte, retain, will bool, size int) bool {
	in := g.input(s, policy.ActionPublish)
	in.Topic, in.QoS, in.Retain, in.Will, in.PayloadSize = topic, qos, retain, will, size
	return g.ask(s, in)
}

// decideSubscribe asks the policy about a subscription of s to filter (the
// inner filter of a $share subscription).
func (g *Gateway) decideSubscribe(s *session, filter string, qos byte) bool {
	in := g.input(s, policy.ActionSubscribe)
	in.Filter, in.QoS = filter, qos
	return g.ask(s, in)
}

// decideReceive asks the policy about a delivery to s on topic. mochi's
// delivery check passes only the topic, so qos, retain and payload_size of
// a receive input are 0.
func (g *Gateway) decideReceive(s *session, topic string) bool {
	in := g.input(s, policy.ActionReceive)
	in.Topic = topic
	return g.ask(s, in)
}

// input returns a pooled input for action of s; ask returns it to the pool.
func (g *Gateway) input(s *session, action policy.Action) *policy.Input {
	in := g.inputs.Get().(*policy.Input)
	*in = policy.Input{Action: action, Subject: s.subject.Load(), Time: g.now()}
	return in
}

// ask decides in for s and logs a denial.
func (g *Gateway) ask(s *session, in *policy.Input) bool {
	allow := false
	if !s.life.load().denied() {
		d := g.decider.Decide(g.ctx, in)
		if allow = d.Allow; !allow {
			g.logDenied(s, in, d)
		}
	}
	*in = policy.Input{}
	g.inputs.Put(in)
	return allow
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
