package brokerstore

import (
	"bytes"
	"encoding/json"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// Hook returns the mochi hook that writes the broker's changes to s. Add it
// after the gateway's own hook: a PUBLISH the gateway refuses is never
// journaled, and the gateway's changes to a session (a takeover, a cut) are
// made before this hook stores the session.
//
// It provides none of mochi's Stored* loaders: the gateway loads the state
// itself (Load), deciding again what it restores.
func (s *Store) Hook() mqtt.Hook { return &hook{s: s} }

type hook struct {
	mqtt.HookBase
	s *Store
}

// connState is the store's state of one connection.
type connState struct {
	gen uint64
	// journal is the sequence number of the message of this connection
	// being published (between OnPublish and OnPublished), 0 if none. A
	// client's PUBLISHes are processed one at a time, on its goroutine.
	journal uint64
}

func (h *hook) ID() string { return "ztgate-store" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnClientExpired,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnPublish,
		mqtt.OnPublished,
		mqtt.OnRetainMessage,
		mqtt.OnRetainedExpired,
		mqtt.OnQosPublish,
		mqtt.OnQosComplete,
		mqtt.OnQosDropped,
	}, []byte{b})
}

// persistent reports whether cl's session outlives its connection.
func persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// OnSessionEstablished stores a persistent session, or removes the stored
// one of a connection that no longer wants it. A clean start begins with an
// empty session: whatever was stored under the ID goes in the same write.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	s := h.s
	gen := s.gen.Add(1)
	s.conns.Store(cl, &connState{gen: gen})
	if !persistent(cl) {
		if s.isPersistent(cl.ID) {
			if err := s.DeleteSession(cl.ID); err != nil {
				s.log.Error("brokerstore: delete session", "client_id", cl.ID, "err", err)
			}
		}
		return
	}
	s.markPersistent(cl.ID, gen)
	rec := sessionOf(cl, gen, time.Now())
	clean := pk.Connect.Clean
	id := cl.ID
	err := s.do(func(tx *bbolt.Tx) error {
		if clean {
			if err := deleteSession(tx, id); err != nil {
				return err
			}
		}
		return putJSON(tx, bucketSessions, []byte(id), rec)
	})
	if err != nil {
		s.log.Error("brokerstore: store session", "client_id", cl.ID, "err", err)
	}
}

// OnDisconnect notes when a persistent session's connection ended (its
// expiry counts from then, across restarts), or removes a session that ends
// with its connection. A connection a newer one has taken over changes
// nothing: the session is the new connection's.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	s := h.s
	v, ok := s.conns.LoadAndDelete(cl)
	if !ok {
		return
	}
	cs := v.(*connState)
	if cs.journal != 0 {
		// Published no further: its acknowledgement was never written.
		s.DeleteJournal(cs.journal)
	}
	if cl.IsTakenOver() {
		return
	}
	id, gen := cl.ID, cs.gen
	if expire {
		if !s.forgetPersistentGen(id, gen) {
			return
		}
		s.post(func(tx *bbolt.Tx) error {
			if !sameGen(tx, id, gen) {
				return nil
			}
			return deleteSession(tx, id)
		})
		return
	}
	now := time.Now().Unix()
	s.post(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSessions)
		raw := b.Get([]byte(id))
		var rec Session
		if raw == nil || json.Unmarshal(raw, &rec) != nil || rec.Gen != gen {
			return nil
		}
		rec.DisconnectedAt = now
		return putJSON(tx, bucketSessions, []byte(id), &rec)
	})
}

// sameGen reports whether the stored session of id was stored by the
// connection of generation gen.
func sameGen(tx *bbolt.Tx, id string, gen uint64) bool {
	raw := tx.Bucket(bucketSessions).Get([]byte(id))
	var rec Session
	return raw != nil && json.Unmarshal(raw, &rec) == nil && rec.Gen == gen
}

// OnClientExpired removes a session mochi expired.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	if err := h.s.DeleteSession(cl.ID); err != nil {
		h.s.log.Error("brokerstore: delete expired session", "client_id", cl.ID, "err", err)
	}
}

// OnSubscribed stores the subscriptions mochi granted, as the client's
// state holds them (a filter the gateway removed again is not there).
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	s := h.s
	if !s.isPersistent(cl.ID) {
		return
	}
	id := cl.ID
	var subs []packets.Subscription
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		if sub, ok := cl.State.Subscriptions.Get(f.Filter); ok {
			subs = append(subs, sub)
		}
	}
	if len(subs) == 0 {
		return
	}
	err := s.do(func(tx *bbolt.Tx) error {
		if !sessionExists(tx, id) {
			return nil
		}
		for i := range subs {
			if err := putJSON(tx, bucketSubs, subKey(id, subs[i].Filter), &subs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Error("brokerstore: store subscriptions", "client_id", id, "err", err)
	}
}

// OnUnsubscribed removes the stored subscriptions.
func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	for _, f := range pk.Filters {
		h.s.DeleteSubscription(cl.ID, f.Filter)
	}
}

// OnPublish journals a QoS 1 or 2 message before mochi acknowledges it
// (see the package comment). A message that cannot be journaled is refused
// the way a denial is, so its publisher does not take it for delivered:
// MQTT 5 gets PUBACK/PUBREC 0x80, MQTT 3.1.1 (which has no negative
// acknowledgement) is disconnected and sends it again on its next
// connection.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	if pk.FixedHeader.Qos == 0 || cl.Net.Inline || s.npersist.Load() == 0 {
		// No persistent session exists that it could be queued for.
		return pk, nil
	}
	v, ok := s.conns.Load(cl)
	if !ok {
		return pk, nil
	}
	cs := v.(*connState)
	if cs.journal != 0 {
		s.DeleteJournal(cs.journal) // its acknowledgement was never written
		cs.journal = 0
	}
	seq := s.seq.Add(1)
	raw, err := encoded(messageOf(&pk))
	if err == nil {
		err = s.do(func(tx *bbolt.Tx) error { return tx.Bucket(bucketJournal).Put(u64(seq), raw) })
	}
	if err == nil {
		cs.journal = seq
		return pk, nil
	}
	s.log.Error("brokerstore: journal write failed; PUBLISH refused", "client_id", cl.ID, "err", err)
	if cl.Properties.ProtocolVersion < 5 {
		cl.Stop(packets.ErrUnspecifiedError)
		return pk, packets.ErrRejectPacket
	}
	ack := packets.Puback
	if pk.FixedHeader.Qos == 2 {
		ack = packets.Pubrec
	}
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: ack},
		PacketID:    pk.PacketID,
		ReasonCode:  packets.ErrUnspecifiedError.Code,
	})
	return pk, packets.ErrRejectPacket
}

// OnPublished forgets the journaled message: mochi has queued it for every
// subscriber, and this hook has stored it for every persistent one.
func (h *hook) OnPublished(cl *mqtt.Client, _ packets.Packet) {
	if v, ok := h.s.conns.Load(cl); ok {
		cs := v.(*connState)
		if cs.journal != 0 {
			h.s.DeleteJournal(cs.journal)
			cs.journal = 0
		}
	}
}

// OnRetainMessage stores or clears a retained message before the PUBLISH
// that set it is acknowledged.
func (h *hook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	s := h.s
	topic := []byte(pk.TopicName)
	var err error
	if r < 0 {
		err = s.do(func(tx *bbolt.Tx) error { return tx.Bucket(bucketRetained).Delete(topic) })
	} else {
		var raw []byte
		if raw, err = encoded(messageOf(&pk)); err == nil {
			err = s.do(func(tx *bbolt.Tx) error { return tx.Bucket(bucketRetained).Put(topic, raw) })
		}
	}
	if err != nil {
		s.log.Error("brokerstore: store retained message", "topic", pk.TopicName, "err", err)
	}
}

// OnRetainedExpired removes an expired retained message.
func (h *hook) OnRetainedExpired(topic string) {
	k := []byte(topic)
	h.s.post(func(tx *bbolt.Tx) error { return tx.Bucket(bucketRetained).Delete(k) })
}

// OnQosPublish stores a message queued or in flight for a persistent
// session, or the PUBREC of an incoming QoS 2 message. The PUBACK of an
// incoming QoS 1 message is not stored: mochi forgets it as soon as it is
// written. A resend (DUP) is stored already.
//
// A message is queued, not waited for: one from a client is in the journal
// until OnPublished queues its removal, after every copy of it, so the
// journal entry goes in the same commit as the copies or a later one; a
// crash before that commit publishes it again at start. Only the PUBREC is
// waited for: it is the exactly-once state of an incoming QoS 2 message.
func (h *hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	s := h.s
	t := pk.FixedHeader.Type
	if t == packets.Puback || t == packets.Publish && pk.FixedHeader.Dup || !s.isPersistent(cl.ID) {
		return
	}
	id := cl.ID
	raw, err := encoded(messageOf(&pk))
	if err != nil {
		s.log.Error("brokerstore: store queued message", "client_id", id, "err", err)
		return
	}
	key := inflightKey(id, pk.PacketID)
	op := func(tx *bbolt.Tx) error {
		if !sessionExists(tx, id) {
			return nil
		}
		return tx.Bucket(bucketInflight).Put(key, raw)
	}
	if t == packets.Publish {
		s.post(op)
		return
	}
	if err := s.do(op); err != nil {
		s.log.Error("brokerstore: store QoS 2 state", "client_id", id, "err", err)
	}
}

// OnQosComplete removes a message its receiver acknowledged.
func (h *hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	h.dropped(cl, pk)
}

// OnQosDropped removes a message mochi dropped. When a resumed session is
// taken over, mochi clears the old connection's copy of the messages it
// has just handed to the new one: those stay.
func (h *hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	h.dropped(cl, pk)
}

func (h *hook) dropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return
	}
	h.s.DropInflight(cl, pk.PacketID)
}
