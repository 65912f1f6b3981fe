package gateway

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"strings"
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

// chainNotAfter returns the earliest expiry in a certificate chain: a
// chain is valid only while every certificate in it is. An empty chain has
// expired.
func chainNotAfter(chain []*x509.Certificate) time.Time {
	var t time.Time
	for i, c := range chain {
		if i == 0 || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
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

// newSubject builds the policy subject of a session.
func newSubject(id spiffeid.ID, dev *registry.Device, clientID, remote string, version byte) *policy.Subject {
	path := id.Path()
	segments := []string{}
	if p := strings.TrimPrefix(path, "/"); p != "" {
		segments = strings.Split(p, "/")
	}
	subj := &policy.Subject{
		Identity: policy.Identity{
			SPIFFEID:    id.String(),
			TrustDomain: id.TrustDomain().Name(),
			Path:        path,
			Segments:    segments,
		},
		Client: policy.Client{
			ID:              clientID,
			RemoteAddr:      remote,
			ProtocolVersion: version,
		},
	}
	if dev != nil {
		labels := maps.Clone(dev.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		subj.Device = &policy.Device{Name: dev.Name, Labels: labels, Status: string(dev.Status)}
	}
	return subj
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

// logDenied writes the decision log line of a denial.
func (g *Gateway) logDenied(s *session, in *policy.Input, d policy.Decision) {
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

// deny logs a refusal the gateway makes on its own, before any policy.
func (g *Gateway) deny(s *session, action policy.Action, what, value, why string) {
	g.log.LogAttrs(g.ctx, slog.LevelInfo, "gateway: denied",
		slog.String("action", string(action)),
		slog.String("spiffe_id", s.spiffeID),
		slog.String("client_id", s.clientID),
		slog.String(what, value),
		slog.String("reason", why),
	)
}
