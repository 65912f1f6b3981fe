package gateway

import (
	"errors"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/policy"
)

// errConnectRefused ends a connection whose CONNECT was refused; the CONNACK
// has been sent by then.
var errConnectRefused = errors.New("gateway: connect refused")

// hook is the gateway's one mochi hook. It turns MQTT events into policy
// decisions; the decisions themselves are the policy's.
type hook struct {
	mqtt.HookBase
	g *Gateway
}

func (h *hook) ID() string { return "ztgate" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnSessionEstablish,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnClientExpired,
		mqtt.OnACLCheck,
		mqtt.OnSubscribe,
		mqtt.OnSubscribed,
		mqtt.OnPublish,
		mqtt.OnWill,
		mqtt.OnPacketEncode,
		mqtt.OnSelectSubscribers,
		mqtt.OnRetainMessage:
		return true
	}
	return false
}

// session returns the gateway state of cl, nil for a client that has none
// (which every check treats as a deny).
func (g *Gateway) session(cl *mqtt.Client) *session {
	if v, ok := g.sessions.Load(cl); ok {
		return v.(*session)
	}
	return nil
}

// OnConnect decides the CONNECT: verified identity, registry record, the
// policy's "connect" and the Last Will. It runs after mochi parsed and
// validated the packet and before anything of the session exists.
//
// A refusal writes the CONNACK here, because mochi drops a connection
// whose OnConnect fails without answering it; OnConnectAuthenticate could
// only answer "bad user name or password". Username and password are never
// looked at.
func (h *hook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	g := h.g
	clientID := cl.ID // as sent, or as mochi assigned it
	remote := cl.Net.Remote
	version := cl.Properties.ProtocolVersion
	refuse := func(why string, attrs ...any) error {
		code := packets.ErrNotAuthorized // 0x87
		if version < 5 {
			// mochi maps no v5 code to 3.1.1's 0x05 but the bad-credentials
			// one; send it as is.
			code = packets.Err3NotAuthorized
		}
		_ = g.server.SendConnack(cl, code, false, nil)
		g.metrics.ConnectionRefused()
		g.log.Info("gateway: CONNECT refused",
			append([]any{"reason", why, "client_id", clientID, "remote_addr", remote}, attrs...)...)
		return errConnectRefused
	}

	cs, ok := connState(cl.Net.Conn)
	if !ok {
		return refuse("not a TLS connection")
	}
	// VerifyPeer verifies the chain now, expiry included: a resumed TLS
	// session, which skips the handshake's own verification, gets no
	// further than a full handshake would. The expiry it returns is that
	// of the chain it verified, not of whatever else the peer sent.
	peer, err := g.verifier.VerifyPeer(cs)
	if err != nil {
		return refuse("peer identity not verified", "err", err)
	}
	id, notAfter := peer.ID, peer.Expires
	spiffeID := id.String()
	if strings.IndexByte(spiffeID, ' ') >= 0 {
		// Cannot happen with a valid SPIFFE ID; the client ID scoping
		// depends on it, so it is checked rather than assumed.
		return refuse("SPIFFE ID contains a space", "spiffe_id", spiffeID)
	}

	// The lookup comes with a channel closed when the record changes: see
	// the end.
	dev, record, err := g.lookupDevice(spiffeID)
	if err != nil {
		return refuse("registry lookup failed", "spiffe_id", spiffeID, "err", err)
	}
	if !mayConnect(dev) {
		return refuse("device is "+string(dev.Status), "spiffe_id", spiffeID)
	}

	s := &session{
		cl:          cl,
		id:          id,
		spiffeID:    spiffeID,
		clientID:    clientID,
		remote:      remote,
		version:     version,
		connectedAt: g.now(),
		notAfter:    notAfter,
	}
	s.device.Store(dev)
	s.record.Store(&record)
	s.subject.Store(newSubject(id, dev, clientID, remote, version))
	if atomic.LoadUint32(&cl.Properties.Will.Flag) == 1 {
		s.will, s.hasWill = cl.Properties.Will, true
	}

	if err := g.admitLimits(s); err != nil {
		return err
	}
	defer g.settleLimits(s)
	if !g.decideConnect(s) {
		return refuse("denied by policy", "spiffe_id", spiffeID)
	}
	if s.hasWill && !g.allowWill(s, s.will) {
		return refuse("will denied", "spiffe_id", spiffeID)
	}
	// In a cluster, the session of the client ID on another node ends and
	// comes here, for mochi to hand to this connection (clustersession.go).
	if code, why := g.claim(s, scopedClientID(spiffeID, clientID), cl.Properties.Clean); why != "" {
		return g.refuseClaim(s, code, why)
	}

	// Bind the client ID to the identity for everything mochi keys on it.
	cl.ID = scopedClientID(spiffeID, clientID)
	// The connection lasts as long as the SVID it was verified with. The
	// timer costs nothing until it fires; OnDisconnect stops it.
	s.expiry = time.AfterFunc(time.Until(notAfter), func() { g.kick(s, codeSVIDExpired, reasonSVIDExpired) })
	g.sessions.Store(cl, s)

	// A registry change after the lookup above may have been checked by the
	// watcher before this session was stored, so it would never be applied
	// to it. If the record changed, look again.
	if s.recordChanged() {
		if why, _ := g.refresh(s); why != "" {
			s.stopExpiry()
			s.life.mu.Lock()
			g.transition(s, evRefuse)
			s.life.mu.Unlock()
			g.sessions.Delete(cl)
			return refuse("device changed during CONNECT", "spiffe_id", spiffeID, "why", why)
		}
	}
	g.metrics.ConnectionAccepted()
	return nil
}

// OnConnectAuthenticate accepts exactly the clients OnConnect accepted.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.g.session(cl) != nil
}

// OnSessionEstablish runs before mochi lets cl inherit the session held
// under its scoped client ID and resends that session's queued messages
// without any read check. Those are pruned here to what the identity may
// subscribe to and receive now, policy and registry as they are at this
// CONNECT. Another identity's session is never found: the ID is scoped.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	g := h.g
	s := g.session(cl)
	if s == nil {
		return
	}
	// A will delayed by the session's previous connection: a resumed
	// session cancels it [MQTT-3.1.3-9]; a clean start ends the session,
	// which sends it now.
	if pk.Connect.Clean {
		g.wills.fireNow(cl.ID)
	} else {
		g.wills.cancel(cl.ID)
	}

	old, ok := g.server.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	// From here on the old client publishes nothing but its will. A
	// delivery racing to it until mochi moves its session is still decided
	// as a receive of this same identity, so it is queued (and, being
	// decided, needs no pruning) rather than dropped. Its state goes once
	// the session has moved and its connection has ended.
	if os := g.session(old); os != nil {
		if !g.takeOver(os, !pk.Connect.Clean) {
			return // a dropped session: mochi no longer has it
		}
		s.replacing = os
	}
	if pk.Connect.Clean {
		return // mochi discards the old session
	}

	g.pruneSubscriptions(s, old)
	g.pruneInflight(s, old)
}

// OnSessionEstablished counts the session as connected: mochi has answered
// the CONNECT and will call OnDisconnect when the connection ends. The
// session this one took over is handed over: it is forgotten now if its
// connection has ended, else when it ends (OnDisconnect).
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	g := h.g
	s := g.session(cl)
	if s == nil {
		return
	}
	s.life.mu.Lock()
	_, to, _ := g.transition(s, evEstablished)
	if to.phase() != phaseGone && !s.life.counted {
		s.life.counted = true
		g.metrics.SessionOpened()
	}
	s.life.mu.Unlock()
	if os := s.replacing; os != nil {
		s.replacing = nil
		os.life.mu.Lock()
		if _, to, ok := g.transition(os, evHandOver); ok && to.phase() == phaseGone {
			g.sessions.Delete(os.cl)
		}
		os.life.mu.Unlock()
	}
}

// OnDisconnect forgets the state of a session mochi forgets too (or that a
// new connection took over), and keeps that of a persistent session, whose
// queued deliveries are still decided.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	g := h.g
	s := g.session(cl)
	if s == nil {
		return
	}
	s.stopExpiry()
	s.life.mu.Lock()
	from, to, _ := g.transition(s, evDisconnect)
	if expire {
		_, to, _ = g.transition(s, evExpire)
	}
	if s.life.counted {
		s.life.counted = false
		g.metrics.SessionClosed()
		// A connection the gateway was ending has its reason counted
		// already.
		if (from.takenOver() || cl.IsTakenOver()) && from.conn() != connClosing {
			g.metrics.Disconnected(reasonTakeover)
		}
	}
	// A SUBSCRIBE that raced a cut has been handled by now.
	switch {
	case to.phase() == phaseGone && from.phase() == phaseDropped:
		g.forget(s)
	case to.phase() == phaseGone:
		g.sessions.Delete(cl)
	case to.phase() == phaseDetached:
		g.detachLocked(s)
	}
	s.life.mu.Unlock()
	g.flushDenials(s, true)
}

// OnClientExpired forgets an expired persistent session.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	g := h.g
	if s := g.session(cl); s != nil {
		s.life.mu.Lock()
		g.transition(s, evExpire)
		s.life.mu.Unlock()
		g.flushDenials(s, true)
	}
	g.sessions.Delete(cl)
}

// OnSubscribe decides every filter of a SUBSCRIBE and records the decisions
// for OnACLCheck, which mochi calls per filter to get its reason code.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	g := h.g
	s := g.session(cl)
	if s == nil {
		return pk // no session: OnACLCheck denies every filter
	}
	// Loaded before deciding: see OnSubscribed.
	s.subEpoch = g.reeval.epoch.Load()
	s.subSubject = s.subject.Load()
	ending := s.life.load().conn() >= connClosing
	ds := g.decideFilters(s, cl, pk.Filters, ending)
	s.pending.Store(&ds)
	return pk
}

// OnSubscribed ends the SUBSCRIBE: mochi has asked about every filter and
// added the granted ones. Retained messages are delivered after this, each
// decided as a receive.
//
// A re-evaluation (policy activation) or a registry change that came
// between the decisions and mochi adding the subscriptions may have looked
// at the session before they were there. If one did, the granted filters
// are decided again, and any now denied is removed.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	g := h.g
	s := g.session(cl)
	if s == nil {
		return
	}
	quotaCodes(s, codes)
	s.pending.Store(nil)
	if g.reeval.epoch.Load() == s.subEpoch && s.subject.Load() == s.subSubject {
		return
	}
	for i, sub := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code && !g.allowSubscribe(s, sub.Filter, sub.Qos) {
			g.unsubscribe(cl, sub.Filter)
		}
	}
}

// allowSubscribe decides a subscription to filter; a $share subscription is
// decided on its inner filter.
func (g *Gateway) allowSubscribe(s *session, filter string, qos byte) bool {
	inner, ok := subscribeFilter(filter)
	if !ok {
		g.deny(s, policy.ActionSubscribe, "filter", filter, "malformed, shared without a filter, or a server filter")
		return false
	}
	return g.decideSubscribe(s, inner, qos)
}

// OnACLCheck is mochi's check for three different things, told apart here.
//
// write=true comes only from mochi's processPublish, before the topic alias
// is resolved (an alias-only PUBLISH has an empty topic here). It answers
// only whether the client has a live session; the decision is OnPublish's,
// which mochi calls next on every PUBLISH it has not dropped, with the
// resolved topic, QoS, retain flag and payload, and before anything is
// retained or delivered. An inline client skips this check but not
// OnPublish, which refuses any client that is not ours.
//
// write=false is either a SUBSCRIBE filter (from processSubscribe, on the
// client's own goroutine, between OnSubscribe and OnSubscribed) or a
// delivery (retained or live, to this client, from any goroutine). A filter
// recorded by OnSubscribe for the SUBSCRIBE in progress gets its recorded
// decision; anything else is a delivery and gets a receive decision.
//
// A delivery can race with the SUBSCRIBE, and the two look the same only
// when the string is both a recorded filter and a topic name (a filter with
// no wildcard and no '$'): a topic name never has a wildcard, and no topic
// devices may receive starts with '$'. For those strings the answer is the
// subscribe decision AND the receive decision, so it is never more than
// either of them: a racing delivery gets no more than a receive decision
// would give, and a wildcard-free subscription is granted only when its one
// topic may also be received.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	g := h.g
	s := g.session(cl)
	if s == nil {
		return false
	}
	st := s.life.load()
	if write || st.denied() {
		return st.active()
	}
	if p := s.pending.Load(); p != nil {
		for i := range *p {
			if d := &(*p)[i]; d.filter == topic {
				if !d.allow || !isTopicName(topic) {
					return d.allow
				}
				return g.decideReceive(s, topic)
			}
		}
	}
	if !isTopicName(topic) {
		return false
	}
	return g.decideReceive(s, topic)
}

// OnPublish decides every PUBLISH on its resolved topic and its Response
// Topic (see allowPublish). A denial is answered the way MQTT allows: QoS 0
// is dropped; MQTT 5 QoS 1 and 2 get PUBACK or PUBREC 0x87; MQTT 3.1.1 has
// no negative acknowledgement, so the client is disconnected, as mochi does
// on its own ACL path.
//
// Only ErrRejectPacket is returned on a denial: it is the one error after
// which mochi neither acknowledges nor publishes. Any other error would be
// logged and the message published all the same (or, for MQTT 5 QoS 2,
// answered with a PUBACK).
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	g := h.g
	if cl == g.wills.client {
		return pk, nil // a delayed will, decided when its timer fired
	}
	if cl == g.cluster.client {
		return pk, nil // another node's, decided and forwarded there (DeliverRemote)
	}
	if cl == g.bridgeClient {
		return pk, nil // an upstream's, decided as bridge_in (PublishAs)
	}
	s := g.session(cl)
	code, reason := packets.ErrNotAuthorized, reasonPublishDenied
	if s != nil && s.life.load().active() && g.allowPublish(s, pk) {
		// In a cluster, stored by the cluster before mochi acknowledges it.
		if g.forwardPublish(s, &pk) {
			g.offer(s, pk.TopicName, pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Retain)
			return pk, nil
		}
		code, reason = codeClusterUnavailable, reasonClusterUnavailable
	}
	switch {
	case pk.FixedHeader.Qos == 0 || cl.Net.Inline:
	case cl.Properties.ProtocolVersion < 5:
		if s != nil && g.startEnding(s) {
			g.metrics.Disconnected(reason)
		}
		cl.Stop(code)
	default:
		ack := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			ack = packets.Pubrec
		}
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: ack},
			PacketID:    pk.PacketID,
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: code.Reason},
		})
	}
	return pk, packets.ErrRejectPacket
}

// OnWill decides the Last Will when mochi is about to send it: mochi itself
// checks no ACL for wills. A denied will is replaced by an empty one (no
// topic, no payload, no retain), which mochi publishes to nobody: returning
// an error would make mochi send the original.
//
// A will with a delay is sent by the gateway itself (see delayedWills): mochi
// would publish it later unchecked, so mochi only gets the empty one.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	g := h.g
	s := g.session(cl)
	if s == nil {
		return mqtt.Will{}, nil
	}
	if will.WillDelayInterval > 0 {
		// MQTT 5 3.1.3.2.2: sent when the delay is over or the session
		// ends, whichever comes first; not at all once a new connection
		// continues the session.
		delay := min(will.WillDelayInterval, cl.Properties.Props.SessionExpiryInterval)
		s.life.mu.Lock()
		takenOver, resumed := s.life.load().takenOver(), s.life.resumed
		s.life.mu.Unlock()
		if takenOver {
			if resumed {
				return mqtt.Will{}, nil
			}
			delay = 0
		}
		g.wills.schedule(cl.ID, s, will, delay)
		return mqtt.Will{}, nil
	}
	if !g.allowWill(s, will) {
		return mqtt.Will{}, nil
	}
	g.forwardWill(s.spiffeID, will)
	g.offer(s, will.TopicName, will.Payload, will.Qos, will.Retain)
	return will, nil
}

// allowWill decides a will as a publish with will=true.
func (g *Gateway) allowWill(s *session, w mqtt.Will) bool {
	if !isTopicName(w.TopicName) {
		g.deny(s, policy.ActionPublish, "topic", w.TopicName, "will topic is not a topic devices may use")
		return false
	}
	return g.decidePublish(s, w.TopicName, w.Qos, w.Retain, true, len(w.Payload))
}
