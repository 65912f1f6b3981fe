package gateway

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/brokerstore"
)

// restore loads the stored broker state (Config.Store) into mochi before the
// listener accepts anything, deciding again what comes back:
//
//   - a session is dropped, and deleted from the store, when its device is
//     now revoked, suspended or otherwise not active, no longer in the
//     registry, or refused by the policy's "connect"; or when its expiry
//     passed while the gateway was down;
//   - a kept session loses, here and in the store, each subscription the
//     policy refuses now, and gets its gateway session (closed, live), so
//     that what is queued for it is decided again at delivery and pruned
//     again when the device resumes it, which goes through the takeover
//     path of any offline session;
//   - retained messages come back with their publishers in the index that
//     clears them on revocation; those of a publisher revoked or no longer
//     in the registry are cleared at once;
//   - pending delayed wills of kept sessions are scheduled again, each
//     decided when it fires;
//   - messages left in the journal (acknowledged, maybe not queued for
//     every subscriber) are published again, each delivery decided.
//
// mochi's own loader is not used: it restores everything as it was.
func (g *Gateway) restore() error {
	if g.store == nil {
		return nil
	}
	st, err := g.store.Load()
	if err != nil {
		return fmt.Errorf("gateway: restore: %w", err)
	}
	now := time.Now()
	retained := g.restoreRetained(st.Retained, now)
	kept := make(map[string]*session, len(st.Sessions))
	var dropped, subsRemoved int
	for _, rec := range st.Sessions {
		s, removed, why, err := g.restoreOne(rec, now, true)
		if err != nil {
			return err
		}
		if why != "" {
			dropped++
			g.log.Info("gateway: stored session not restored", "reason", why, "client_id", rec.ClientID)
			continue
		}
		subsRemoved += removed
		kept[rec.ClientID] = s
	}
	wills := g.restoreWills(st.Wills, kept, now)
	replayed := g.replayJournal(st.Journal)
	g.log.Info("gateway: broker state restored", "sessions", len(kept), "sessions_dropped", dropped,
		"subscriptions_removed", subsRemoved, "retained", retained, "delayed_wills", wills,
		"journal_replayed", replayed, "unreadable_records", st.Dropped, "fsync", g.store.Fsync())
	return nil
}

// restoreOne restores the stored session rec (restoreSession), or deletes
// it from the store, and its directory record, when it may not come back
// (why). It is the one path of a session stored here at start (atStart:
// checked first against the session directory) and of a session another
// node handed over (claim), which is stored first.
func (g *Gateway) restoreOne(rec *brokerstore.Session, now time.Time, atStart bool) (s *session, removed int, why string, err error) {
	if atStart {
		if why, err = g.heldElsewhere(rec.ClientID); err != nil {
			return nil, 0, "", fmt.Errorf("gateway: restore: %w", err)
		}
	}
	if why == "" {
		if s, removed, why = g.restoreSession(rec, now); why == "" {
			return s, removed, "", nil
		}
	}
	if err := g.store.DeleteSession(rec.ClientID); err != nil {
		return nil, 0, why, fmt.Errorf("gateway: restore: %w", err)
	}
	g.dirDelete(rec.ClientID)
	return nil, 0, why, nil
}

// restoreSession decides a stored session again and, when it may stay,
// puts it into mochi as an offline persistent session. why is the reason it
// may not ("" when it may); removed counts its subscriptions refused now.
func (g *Gateway) restoreSession(rec *brokerstore.Session, now time.Time) (s *session, removed int, why string) {
	spiffeID, clientID, ok := strings.Cut(rec.ClientID, " ")
	id, err := spiffeid.FromString(spiffeID)
	if !ok || err != nil {
		return nil, 0, "malformed client ID"
	}
	if rec.Expired(now) {
		return nil, 0, "expired"
	}
	dev, ch, err := g.lookupDevice(spiffeID)
	switch {
	case err != nil:
		return nil, 0, reasonRegistryError
	case dev == nil:
		return nil, 0, reasonDeleted
	case !mayConnect(dev):
		return nil, 0, statusReason(dev.Status)
	}
	cl := g.server.NewClient(nil, listenerID, rec.ClientID, false)
	s = &session{
		cl:          cl,
		id:          id,
		spiffeID:    spiffeID,
		clientID:    clientID,
		remote:      rec.Remote,
		version:     rec.ProtocolVersion,
		connectedAt: time.Unix(rec.ConnectedAt, 0),
	}
	s.device.Store(dev)
	s.record.Store(&ch)
	s.subject.Store(newSubject(id, dev, clientID, rec.Remote, rec.ProtocolVersion))
	if !g.decideConnect(s) {
		return nil, 0, reasonPolicy
	}

	p := &cl.Properties
	p.ProtocolVersion = rec.ProtocolVersion
	p.Clean = rec.Clean
	p.Props = packets.Properties{
		// What is left of it: mochi counts it from the restart.
		SessionExpiryInterval:     rec.RemainingExpiry(now),
		SessionExpiryIntervalFlag: rec.SessionExpiryFlag,
		ReceiveMaximum:            rec.ReceiveMaximum,
		MaximumPacketSize:         rec.MaximumPacketSize,
		// No outbound topic aliases for an offline session: a message
		// queued with one loses its topic name.
	}
	cl.Net.Remote = rec.Remote
	// An offline session is a stopped client, as mochi keeps one whose
	// connection ended.
	cl.Stop(packets.ErrServerShuttingDown)
	// From here on, the store writes what changes in it.
	g.store.Restored(rec.ClientID)
	for _, sub := range rec.Subscriptions {
		if !g.allowSubscribe(s, sub.Filter, sub.Qos) {
			g.store.DeleteSubscription(rec.ClientID, sub.Filter)
			removed++
			continue
		}
		if g.server.Topics.Subscribe(cl.ID, sub) {
			atomic.AddInt64(&g.server.Info.Subscriptions, 1)
		}
		cl.State.Subscriptions.Add(sub.Filter, sub)
	}
	// mochi resends them in the order of their creation times.
	queued := queueOrder(append([]packets.Packet(nil), rec.Inflight...))
	sequenceCreated(queued)
	for _, pk := range queued {
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&g.server.Info.Inflight, 1)
		}
	}
	g.server.Clients.Add(cl)
	s.life.mu.Lock()
	g.transition(s, evDisconnect) // connecting -> closed: offline, its own session
	s.life.mu.Unlock()
	g.sessions.Store(cl, s)
	g.holdRestored(s)
	return s, removed, ""
}

// restoreRetained puts the stored retained messages back, and their
// publishers in the index that clears them on revocation. A publisher no
// longer in the registry is taken to have been deleted while the gateway
// was down (it was enrolled when its message was accepted, or the index
// would not know it either way): its messages are cleared, as they would
// have been had the gateway been up.
func (g *Gateway) restoreRetained(msgs []packets.Packet, now time.Time) int {
	if g.cluster.link != nil {
		// The cluster's set replaces the local copy (loadClusterRetained);
		// judged against a registry that may lag behind the cluster's,
		// the copy could clear the cluster's messages of devices this node
		// does not know yet.
		for i := range msgs {
			_ = g.store.DeleteRetained(msgs[i].TopicName)
		}
		return 0
	}
	n := 0
	publishers := map[string]bool{}
	for _, pk := range msgs {
		if pk.ProtocolVersion == 5 && pk.Expiry > 0 && pk.Expiry < now.Unix() {
			_ = g.store.DeleteRetained(pk.TopicName)
			continue
		}
		g.server.Topics.RetainMessage(pk)
		n++
		if id := publisherID(&pk); id != "" {
			publishers[id] = true
		}
	}
	atomic.StoreInt64(&g.server.Info.Retained, int64(g.server.Topics.Retained.Len()))
	if g.retained.keep {
		return n
	}
	x := &g.retained
	x.mu.Lock()
	defer x.mu.Unlock()
	for id := range publishers {
		g.trackRetainer(x, id, &retainer{enrolled: true})
	}
	return int(atomic.LoadInt64(&g.server.Info.Retained))
}

// restoreWills schedules again the pending delayed wills of the sessions
// kept; the others go (their session was not restored, so it has ended).
func (g *Gateway) restoreWills(wills []brokerstore.Will, kept map[string]*session, now time.Time) int {
	n := 0
	for _, w := range wills {
		s := kept[w.ClientID]
		if s == nil {
			g.store.DeleteWill(w.ClientID)
			continue
		}
		delay := uint32(0)
		if d := w.Due.Sub(now); d > 0 {
			delay = uint32((d + time.Second - 1) / time.Second)
		}
		g.wills.schedule(w.ClientID, s, w.Will, delay)
		n++
	}
	return n
}

// replayJournal publishes again the messages acknowledged to their
// publishers that may not have been queued for every subscriber when the
// gateway stopped. They go through the will client, which mochi lets
// publish and whose deliveries are decided like any other; retained copies
// are in the store already, so they are not retained again (an older
// message would replace a newer one).
func (g *Gateway) replayJournal(journal []brokerstore.Journaled) int {
	n := 0
	for _, j := range journal {
		pk := j.Packet
		pk.FixedHeader.Retain = false
		pk.FixedHeader.Dup = false
		if pk.PacketID == 0 {
			pk.PacketID = 1 // required by mochi's validation; an inline publish is not acknowledged
		}
		if err := g.server.InjectPacket(g.wills.client, pk); err != nil {
			g.log.Warn("gateway: journaled message not published again", "topic", pk.TopicName, "err", err)
		} else {
			n++
		}
		g.store.DeleteJournal(j.Seq)
	}
	return n
}

// storedWill is the store's record of a will scheduled under key.
func storedWill(key string, will mqtt.Will, delay uint32) brokerstore.Will {
	return brokerstore.Will{ClientID: key, Will: will, Due: time.Now().Add(time.Duration(delay) * time.Second)}
}
