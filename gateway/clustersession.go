package gateway

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sort"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/internal/brokerstore"
)

// SessionDirectory is what the gateway needs of a cluster to move sessions
// between nodes (package cluster implements it over JetStream). Client IDs
// are the scoped ones mochi knows (SPIFFE ID, space, client ID), so a
// session never moves to another identity.
//
// Without one (Config.Sessions nil) the gateway is a single node and
// nothing here runs.
type SessionDirectory interface {
	// Claim is called on a CONNECT the gateway has accepted, before mochi
	// looks for a session to inherit: it ends the session of clientID on
	// whichever other node holds it (a live connection there gets DISCONNECT
	// 0x8E) and returns its state to restore here; nil when there is none,
	// when this node holds it, or for a clean start. An error whose
	// IdentityMismatch method reports true means the session belongs to
	// another identity; any other error means the directory could not be
	// asked, and the CONNECT is refused (server unavailable).
	Claim(ctx context.Context, clientID, spiffeID string, cleanStart bool) (*brokerstore.Session, error)
	// Put records that this node holds the session s (Subscriptions and
	// DisconnectedAt are read; Inflight is not). With establish the record
	// is this node's whoever held it; without, only a record of this node
	// is updated.
	Put(ctx context.Context, spiffeID string, s *brokerstore.Session, establish bool) error
	// Delete removes the record of clientID if this node holds it.
	Delete(ctx context.Context, clientID string) error
	// Owns reports whether the record of clientID names this node.
	Owns(ctx context.Context, clientID string) (bool, error)
	// Serve answers other nodes' claims on this node's sessions with
	// handler until stop is called.
	Serve(handler func(ctx context.Context, clientID, spiffeID string, cleanStart bool) (*brokerstore.Session, error)) (stop func(), err error)
}

const (
	// claimTimeout bounds the claim of one CONNECT: reading the directory
	// and the takeover request to the holder.
	claimTimeout = 5 * time.Second
	// dirWriteTimeout bounds one directory write.
	dirWriteTimeout = 2 * time.Second
	// dirShards is how many writers the directory updates go through: the
	// updates of one client ID always take the same one, in order.
	dirShards = 8
	// dirQueue is the updates that may wait per writer; beyond it the
	// caller waits (back-pressure), as for the broker store.
	dirQueue = 1024
	// dirDrainTimeout bounds the wait for queued updates at Close.
	dirDrainTimeout = 5 * time.Second
)

// errOtherIdentity refuses a takeover by another identity than the one the
// session belongs to. The cluster recognizes it by its method.
var errOtherIdentity error = otherIdentity{}

type otherIdentity struct{}

func (otherIdentity) Error() string {
	return "gateway: the session belongs to another identity"
}

func (otherIdentity) IdentityMismatch() bool { return true }

func isOtherIdentity(err error) bool {
	var m interface{ IdentityMismatch() bool }
	return errors.As(err, &m) && m.IdentityMismatch()
}

// directory is the gateway's side of the session directory: the writers
// that keep the records up to date, and the takeover service.
type directory struct {
	d      SessionDirectory
	seed   maphash.Seed
	shards [dirShards]chan func(context.Context)
	wg     sync.WaitGroup
	stop   func()
	// mu guards closed against the sends on shards.
	mu     sync.RWMutex
	closed bool
}

func (g *Gateway) initDirectory(d SessionDirectory) {
	x := &directory{d: d, seed: maphash.MakeSeed()}
	for i := range x.shards {
		ch := make(chan func(context.Context), dirQueue)
		x.shards[i] = ch
		x.wg.Add(1)
		go func() {
			defer x.wg.Done()
			for op := range ch {
				ctx, cancel := context.WithTimeout(context.Background(), dirWriteTimeout)
				op(ctx)
				cancel()
			}
		}()
	}
	g.dir = x
}

// enqueue queues op on the writer of clientID.
func (x *directory) enqueue(clientID string, op func(context.Context)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.closed {
		x.shards[maphash.String(x.seed, clientID)%dirShards] <- op
	}
}

// serveTakeovers starts answering other nodes' claims (Start).
func (g *Gateway) serveTakeovers() error {
	if g.dir == nil {
		return nil
	}
	stop, err := g.dir.d.Serve(g.handOver)
	if err != nil {
		return err
	}
	g.dir.stop = stop
	return nil
}

// stopTakeovers stops answering claims and waits for those being
// answered (Close, before mochi closes).
func (g *Gateway) stopTakeovers() {
	if g.dir != nil && g.dir.stop != nil {
		g.dir.stop()
	}
}

// closeDirectory writes the updates queued (the disconnects of Close
// among them), within dirDrainTimeout.
func (g *Gateway) closeDirectory() {
	x := g.dir
	if x == nil {
		return
	}
	x.mu.Lock()
	x.closed = true
	for _, ch := range x.shards {
		close(ch)
	}
	x.mu.Unlock()
	done := make(chan struct{})
	go func() { x.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(dirDrainTimeout):
		g.log.Warn("gateway: session directory updates left unwritten at close")
	}
}

// dirPut queues the record of cl's session as this node's: connected
// when disconnectedAt is 0.
func (g *Gateway) dirPut(cl *mqtt.Client, establish bool, disconnectedAt int64) {
	spiffeID, _, ok := strings.Cut(cl.ID, " ")
	if g.dir == nil || !ok {
		return
	}
	rec := brokerstore.ClientSession(cl, time.Now())
	rec.DisconnectedAt = disconnectedAt
	rec.Subscriptions = subscriptionsOf(cl)
	g.dir.enqueue(cl.ID, func(ctx context.Context) {
		if err := g.dir.d.Put(ctx, spiffeID, rec, establish); err != nil {
			g.log.Warn("gateway: session directory not updated", "client_id", rec.ClientID, "err", err)
		}
	})
}

// dirDelete queues the removal of the record of the scoped client ID id,
// if this node holds it.
func (g *Gateway) dirDelete(id string) {
	if g.dir == nil {
		return
	}
	g.dir.enqueue(id, func(ctx context.Context) {
		if err := g.dir.d.Delete(ctx, id); err != nil {
			g.log.Warn("gateway: session directory record not removed", "client_id", id, "err", err)
		}
	})
}

// subscriptionsOf lists the subscriptions of cl, by filter.
func subscriptionsOf(cl *mqtt.Client) []packets.Subscription {
	all := cl.State.Subscriptions.GetAll()
	subs := make([]packets.Subscription, 0, len(all))
	for _, sub := range all {
		subs = append(subs, sub)
	}
	sort.Slice(subs, func(i, j int) bool { return subs[i].Filter < subs[j].Filter })
	return subs
}

// claim takes over, for the CONNECT of s under the scoped client ID id,
// the session of id that another node holds, and puts it into mochi as an
// offline session (restoreSession, as at start) for mochi to hand to the
// new connection. why is the reason the CONNECT is refused ("" when it is
// not), code its reason code.
//
// A directory that cannot be asked refuses the CONNECT (server
// unavailable): starting an empty session here would leave the old one
// live on its node, two sessions of one client ID.
func (g *Gateway) claim(s *session, id string, clean bool) (code packets.Code, why string) {
	if g.dir == nil {
		return packets.CodeSuccess, ""
	}
	ctx, cancel := context.WithTimeout(g.ctx, claimTimeout)
	defer cancel()
	rec, err := g.dir.d.Claim(ctx, id, s.spiffeID, clean)
	switch {
	case isOtherIdentity(err):
		return packets.ErrNotAuthorized, "client ID's session belongs to another identity"
	case err != nil:
		g.log.Warn("gateway: session directory unavailable", "spiffe_id", s.spiffeID, "client_id", s.clientID, "err", err)
		return packets.ErrServerUnavailable, "session directory unavailable"
	case rec == nil || clean:
		return packets.CodeSuccess, ""
	case rec.ClientID != id:
		g.log.Warn("gateway: claimed session of another client ID ignored", "client_id", s.clientID, "got", rec.ClientID)
		return packets.CodeSuccess, ""
	}
	if _, ok := g.server.Clients.Get(id); ok {
		// Held here too (a holder that was unreachable once): the session
		// mochi has is the one the connection resumes.
		g.log.Warn("gateway: claimed session already held here; keeping this node's", "client_id", s.clientID)
		return packets.CodeSuccess, ""
	}
	if err := g.store.PutSession(rec); err != nil {
		g.log.Warn("gateway: claimed session not stored", "client_id", s.clientID, "err", err)
		return packets.ErrServerUnavailable, "session not stored"
	}
	restored, _, why, err := g.restoreOne(rec, time.Now(), false)
	switch {
	case err != nil:
		return packets.ErrServerUnavailable, "session not restored"
	case why != "":
		g.log.Info("gateway: claimed session not restored", "reason", why, "client_id", s.clientID)
	default:
		// The record is this node's from now, before the connection is
		// established: a CONNECT refused after this leaves the session
		// here, offline, where the directory says it is.
		g.dirPut(restored.cl, true, rec.DisconnectedAt)
	}
	return packets.CodeSuccess, ""
}

// heldElsewhere is why a session stored here may not come back at start
// ("" when it may): in a cluster, only a session whose directory record
// names this node is this node's. Another node took it over while this one
// was down (resuming it from its record), or it ended there; the local copy
// is stale and is dropped, never resurrected.
func (g *Gateway) heldElsewhere(id string) (string, error) {
	if g.dir == nil {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(g.ctx, claimTimeout)
	defer cancel()
	owns, err := g.dir.d.Owns(ctx, id)
	switch {
	case err != nil:
		return "", fmt.Errorf("session directory: %w", err)
	case !owns:
		return reasonElsewhere, nil
	}
	return "", nil
}

// reasonElsewhere: the session directory names another node, or none.
const reasonElsewhere = "held by another node"

// dirHook keeps the directory record of this node's sessions: written when
// a session is established (the record is this node's from then), when its
// subscriptions change and when its connection ends; removed when the
// session ends. It runs after the gateway's and the store's hooks.
type dirHook struct {
	mqtt.HookBase
	g *Gateway
}

func (h *dirHook) ID() string { return "ztgate-sessions" }

func (h *dirHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnDisconnect,
		mqtt.OnClientExpired:
		return true
	}
	return false
}

// OnSessionEstablished records every session, a clean one too: a live
// connection is taken over across nodes like a persistent session.
func (h *dirHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if h.g.session(cl) != nil {
		h.g.dirPut(cl, true, 0)
	}
}

func (h *dirHook) OnSubscribed(cl *mqtt.Client, _ packets.Packet, _ []byte) { h.subsChanged(cl) }

func (h *dirHook) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) { h.subsChanged(cl) }

// subsChanged updates the subscriptions of a persistent session's record:
// the only ones another node resumes.
func (h *dirHook) subsChanged(cl *mqtt.Client) {
	if cl.Net.Inline || cl.IsTakenOver() || !persistentClient(cl) {
		return
	}
	h.g.dirPut(cl, false, cl.StopTime())
}

// OnDisconnect notes when a persistent session's connection ended (its
// expiry counts from then) and removes the record of a session that ends
// with its connection. A connection taken over here changes nothing: the
// record is the new connection's.
func (h *dirHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if cl.Net.Inline || cl.IsTakenOver() {
		return
	}
	if expire {
		h.g.dirDelete(cl.ID)
		return
	}
	at := cl.StopTime()
	if at == 0 {
		at = time.Now().Unix()
	}
	h.g.dirPut(cl, false, at)
}

func (h *dirHook) OnClientExpired(cl *mqtt.Client) { h.g.dirDelete(cl.ID) }

// refuseClaim answers a CONNECT refused by claim.
func (g *Gateway) refuseClaim(s *session, code packets.Code, why string) error {
	if s.version < 5 {
		if code == packets.ErrServerUnavailable {
			code = packets.Err3ServerUnavailable
		} else {
			code = packets.Err3NotAuthorized
		}
	}
	_ = g.server.SendConnack(s.cl, code, false, nil)
	g.metrics.ConnectionRefused()
	g.log.Info("gateway: CONNECT refused", "reason", why, "client_id", s.clientID, "remote_addr", s.remote,
		"spiffe_id", s.spiffeID)
	return errConnectRefused
}

// handOver answers another node's claim on the session of the scoped
// client ID id: it ends the connection (DISCONNECT 0x8E for MQTT 5, closed
// for 3.1.1), waits for it to close (bounded by ctx), and removes the
// session here (mochi, the store, the directory record), returning its
// subscriptions and queued messages in the order they were queued; nil when
// there is nothing to hand over (no such session, a clean start, or one
// that ends with its connection).
func (g *Gateway) handOver(ctx context.Context, id, spiffeID string, clean bool) (*brokerstore.Session, error) {
	cl, ok := g.server.Clients.Get(id)
	if !ok {
		// Ended here meanwhile: whatever is stored of it is stale.
		if err := g.store.DeleteSession(id); err != nil {
			return nil, err
		}
		g.dirDelete(id)
		return nil, nil
	}
	s := g.session(cl)
	switch {
	case s == nil:
		return nil, nil
	case s.spiffeID != spiffeID:
		return nil, errOtherIdentity
	}
	g.kick(s, packets.ErrSessionTakenOver, reasonTakeover)
	g.awaitClosed(ctx, s)
	// The Last Will of the ended connection: a resumed session cancels a
	// delayed one, a clean start ends the session, which sends it
	// [MQTT-3.1.3-9], as a takeover on one node does.
	if clean {
		g.wills.fireNow(id)
	} else {
		g.wills.cancel(id)
	}

	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	rec := brokerstore.ClientSession(cl, g.now())
	rec.DisconnectedAt = cl.StopTime()
	if rec.DisconnectedAt == 0 {
		rec.DisconnectedAt = g.now().Unix()
	}
	rec.Subscriptions = subscriptionsOf(cl)
	_, to, ok := g.transition(s, evDrop)
	if !ok {
		return nil, nil // taken over here, or gone, meanwhile
	}
	// Out of the routing first, so nothing is queued after the copy.
	g.server.UnsubscribeClient(cl)
	rec.Inflight = queueOrder(cl.State.Inflight.GetAll(false))
	cl.ClearInflights()
	if to.phase() == phaseGone {
		g.forget(s)
	}
	if clean || !persistentClient(cl) {
		return nil, nil
	}
	return rec, nil
}

// awaitClosed waits until the connection of s has ended, as far as the
// gateway is concerned (OnDisconnect ran), or ctx is done.
func (g *Gateway) awaitClosed(ctx context.Context, s *session) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if st := s.life.load(); st.conn() == connClosed || st.phase() == phaseGone {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// persistentClient reports whether cl's session outlives its connection.
func persistentClient(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// queueOrder sorts queued messages in the order they were queued: by the
// time they were created, then by packet ID, which mochi hands out in
// increasing order (a run that wrapped past 65535 is put back in order).
func queueOrder(pks []packets.Packet) []packets.Packet {
	sort.SliceStable(pks, func(i, j int) bool {
		if pks[i].Created != pks[j].Created {
			return pks[i].Created < pks[j].Created
		}
		return pks[i].PacketID < pks[j].PacketID
	})
	for lo := 0; lo < len(pks); {
		hi := lo
		for hi < len(pks) && pks[hi].Created == pks[lo].Created {
			hi++
		}
		unwrap(pks[lo:hi])
		lo = hi
	}
	return pks
}

// unwrap rotates a run of packet IDs sorted ascending that wrapped (a gap
// of more than half the ID space) so that the IDs before the wrap come
// first.
func unwrap(run []packets.Packet) {
	for i := 1; i < len(run); i++ {
		if int(run[i].PacketID)-int(run[i-1].PacketID) > 1<<15 {
			rotated := append(append([]packets.Packet(nil), run[i:]...), run[:i]...)
			copy(run, rotated)
			return
		}
	}
}

// sequenceCreated renumbers the creation times of queued messages, in
// queue order, so that they strictly increase: mochi resends a resumed
// session's messages sorted on the low 16 bits of that time alone, so
// messages of the same second would otherwise go out in any order. The
// times move by at most the number of messages, and not across a wrap of
// the 16 bits; the message expiry, an absolute time, is unchanged.
func sequenceCreated(pks []packets.Packet) {
	if len(pks) < 2 {
		return
	}
	base := pks[0].Created
	for i := range pks {
		if t := pks[i].Created - int64(i); t < base {
			base = t
		}
	}
	if over := int64(uint16(base)) + int64(len(pks)) - 1<<16; over > 0 {
		base -= over
	}
	for i := range pks {
		pks[i].Created = base + int64(i)
	}
}
