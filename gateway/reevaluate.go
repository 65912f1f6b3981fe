package gateway

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// reevaluator holds the state of the re-evaluations Reevaluate asks for.
// Requests coalesce: however many arrive while a pass runs, one more pass
// follows it, so a burst of policy activations costs at most two passes.
type reevaluator struct {
	// wake holds at most one token: the pending flag.
	wake chan struct{}
	// epoch counts requests. A pass covers every request counted before
	// it starts; done is the epoch the last finished pass started at.
	epoch atomic.Uint64
	done  atomic.Uint64

	mu     sync.Mutex
	reason string // of the latest request
	passes uint64 // passes run, for tests
}

// Reevaluate re-checks every session against the policy as it is now: call
// it after a new policy revision is activated. It returns at once; the
// re-evaluation runs on the gateway's own goroutine, and requests made
// while one runs are coalesced into a single following pass.
//
// For every session, connected or a persistent one kept offline:
//   - a connected session whose peer chain no longer verifies against the
//     verifier's bundles (a CA removed from its trust domain's bundle, a
//     trust domain no longer served) is ended like a policy cut, MQTT 5
//     clients getting DISCONNECT 0x87 "identity no longer verifies": call
//     Reevaluate after a bundle change too;
//   - a session whose CONNECT would now be refused (the "connect" decision,
//     or while connected its Last Will) is ended: MQTT 5 clients get
//     DISCONNECT 0x87, MQTT 3.1.1 connections are closed;
//   - each subscription the policy would now refuse is removed;
//   - each queued or in-flight message the client may no longer receive is
//     dropped, so it is neither resent nor delivered on resumption.
//
// Every delivery is also decided when it is sent, so what a new revision
// denies is never delivered even before the pass reaches a session; the
// pass removes the state that would keep asking.
//
// reason is logged with the pass (for example "policy revision abc123").
// Reevaluate is safe to call at any time, before Start and after Close
// included.
func (g *Gateway) Reevaluate(reason string) {
	r := &g.reeval
	r.mu.Lock()
	r.reason = reason
	r.mu.Unlock()
	// The epoch moves before the token is left, so a pass that takes the
	// token also covers this request.
	r.epoch.Add(1)
	select {
	case r.wake <- struct{}{}:
	default: // a pass is pending already
	}
}

// runReevaluations runs the passes Reevaluate asks for, one at a time,
// until Close.
func (g *Gateway) runReevaluations() {
	defer g.wg.Done()
	r := &g.reeval
	for {
		select {
		case <-r.wake:
		case <-g.ctx.Done():
			return
		}
		epoch := r.epoch.Load()
		r.mu.Lock()
		reason := r.reason
		r.passes++
		r.mu.Unlock()
		g.reevaluateAll(reason)
		r.done.Store(epoch)
	}
}

// reevaluateAll is one re-evaluation pass over every session. It holds no
// lock across sessions: sync.Map's Range does not, and mochi's
// subscription and in-flight stores are copied before anything is decided.
func (g *Gateway) reevaluateAll(reason string) {
	start := time.Now()
	var sessions, cut, unverified, subs, msgs int
	g.sessions.Range(func(_, v any) bool {
		if g.ctx.Err() != nil {
			return false // closing: every session is being ended anyway
		}
		s := v.(*session)
		if st := s.life.load(); st.denied() || st.takenOver() || st.phase() == phaseGone {
			return true
		}
		sessions++
		if err := g.reverify(s); err != nil {
			unverified++
			g.log.Info("gateway: peer identity no longer verifies", "spiffe_id", s.spiffeID,
				"client_id", s.clientID, "err", err)
			s.deny()
			if g.kick(s, codeUnverified, reasonUnverified) {
				cut++
			}
			g.cutSession(s, reasonUnverified)
			return true
		}
		if !g.admitted(s) {
			s.deny()
			if g.kick(s, packets.ErrNotAuthorized, reasonPolicy) {
				cut++
			}
			g.cutSession(s, reasonPolicy)
			return true
		}
		n, m := g.prune(s)
		subs += n
		msgs += m
		return true
	})
	g.log.Info("gateway: sessions re-evaluated", "reason", reason, "sessions", sessions,
		"disconnected", cut, "unverified", unverified, "subscriptions_removed", subs, "messages_dropped", msgs,
		"took", time.Since(start).String())
}

// codeUnverified is the DISCONNECT reason of a connection whose peer chain
// no longer verifies against the trust bundles (a CA removed from a bundle,
// a federation dropped): 0x87, as for a policy cut, since the identity the
// connection was admitted with is no longer one the gateway trusts.
var codeUnverified = packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "identity no longer verifies"}

// reverify verifies the chain s's connection was made with against the
// bundles of now. The handshake verified it against those of then; a
// bundle that has lost the chain's CA since must end the connection, not
// only refuse the next one.
//
// A session that is not connected has no chain to hold it to: its next
// CONNECT is verified. Nor is a chain past its expiry reported: the
// session's expiry timer ends that connection with its own reason, which
// tells the client to renew rather than give up.
func (g *Gateway) reverify(s *session) error {
	if !s.life.load().connected() || !g.now().Before(s.notAfter) {
		return nil
	}
	cs, ok := connState(s.cl.Net.Conn)
	if !ok {
		return errors.New("gateway: not a TLS connection")
	}
	if _, err := g.verifier.VerifyPeer(cs); err != nil {
		return fmt.Errorf("gateway: re-verify peer chain: %w", err)
	}
	return nil
}

// prune removes what s may no longer hold: subscriptions the policy would
// refuse now, and queued or in-flight messages it may not receive.
func (g *Gateway) prune(s *session) (subs, msgs int) {
	return g.pruneSubscriptions(s, s.cl), g.pruneInflight(s, s.cl)
}

// pruneSubscriptions removes the subscriptions held in cl's state that s
// may not subscribe to now. cl is s's own client, or the one whose session
// s is about to inherit.
func (g *Gateway) pruneSubscriptions(s *session, cl *mqtt.Client) (removed int) {
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if g.allowSubscribe(s, filter, sub.Qos) {
			continue
		}
		g.unsubscribe(cl, filter)
		removed++
	}
	return removed
}

// unsubscribe removes one subscription of cl, as mochi's UNSUBSCRIBE does.
func (g *Gateway) unsubscribe(cl *mqtt.Client, filter string) {
	cl.State.Subscriptions.Delete(filter)
	if g.server.Topics.Unsubscribe(filter, cl.ID) {
		atomic.AddInt64(&g.server.Info.Subscriptions, -1)
	}
	g.store.DeleteSubscription(cl.ID, filter)
}

// pruneInflight drops the outgoing messages held in cl's state that s may
// not receive now. Those are the messages mochi resends when a session
// resumes, and, while connected, the ones waiting for the client's receive
// quota; mochi sends both without any read check.
func (g *Gateway) pruneInflight(s *session, cl *mqtt.Client) (dropped int) {
	for _, m := range cl.State.Inflight.GetAll(false) {
		// Only outgoing PUBLISHes carry messages; PUBREC/PUBREL entries are
		// acknowledgements of exchanges already decided.
		if m.FixedHeader.Type != packets.Publish {
			continue
		}
		// A message queued with an outbound topic alias has lost its topic
		// name, so it cannot be decided again: it goes (on resumption the
		// alias would mean nothing anyway).
		if isTopicName(m.TopicName) && g.decideReceive(s, m.TopicName) {
			continue
		}
		if cl.State.Inflight.Delete(m.PacketID) {
			g.store.DropInflight(cl, m.PacketID)
			atomic.AddInt64(&g.server.Info.Inflight, -1)
			if m.Expiry >= 0 {
				// It took one unit of the client's receive quota when it
				// was sent, which its acknowledgement, now ignored, would
				// have returned. (A message still waiting for quota, expiry
				// -1, took none.)
				cl.State.Inflight.IncreaseSendQuota()
			}
			dropped++
		}
	}
	return dropped
}
