package brokerstore

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// Session is a stored persistent session, as Load returns it.
type Session struct {
	ClientID        string `json:"id"` // scoped client ID, as mochi knows it
	Remote          string `json:"remote,omitempty"`
	ProtocolVersion byte   `json:"v"`
	Clean           bool   `json:"clean,omitempty"`
	// SessionExpiry is the Session Expiry Interval in seconds (MQTT 5;
	// SessionExpiryFlag set when the client sent one).
	SessionExpiry     uint32 `json:"expiry,omitempty"`
	SessionExpiryFlag bool   `json:"expiry_flag,omitempty"`
	ReceiveMaximum    uint16 `json:"recv_max,omitempty"`
	MaximumPacketSize uint32 `json:"max_packet,omitempty"`
	// ConnectedAt and DisconnectedAt are Unix seconds; DisconnectedAt is 0
	// while the connection that stored the session was open.
	ConnectedAt    int64  `json:"connected_at,omitempty"`
	DisconnectedAt int64  `json:"disconnected_at,omitempty"`
	Gen            uint64 `json:"gen,omitempty"` // the connection that stored it

	Subscriptions []packets.Subscription `json:"-"`
	Inflight      []packets.Packet       `json:"-"`
}

// Expired reports whether the session's expiry passed while it was stored
// disconnected. A session stored while connected (the process died) counts
// as disconnected from now.
func (s *Session) Expired(now time.Time) bool {
	if s.ProtocolVersion < 5 || s.DisconnectedAt == 0 {
		return false
	}
	return s.DisconnectedAt+int64(s.SessionExpiry) < now.Unix()
}

// RemainingExpiry is what is left of the session's expiry interval at now.
func (s *Session) RemainingExpiry(now time.Time) uint32 {
	if s.DisconnectedAt == 0 {
		return s.SessionExpiry
	}
	left := s.DisconnectedAt + int64(s.SessionExpiry) - now.Unix()
	switch {
	case left < 0:
		return 0
	case left > int64(s.SessionExpiry):
		return s.SessionExpiry // the clock went back
	}
	return uint32(left)
}

func sessionOf(cl *mqtt.Client, gen uint64, now time.Time) *Session {
	p := &cl.Properties
	return &Session{
		ClientID:          cl.ID,
		Remote:            cl.Net.Remote,
		ProtocolVersion:   p.ProtocolVersion,
		Clean:             p.Clean,
		SessionExpiry:     p.Props.SessionExpiryInterval,
		SessionExpiryFlag: p.Props.SessionExpiryIntervalFlag,
		ReceiveMaximum:    p.Props.ReceiveMaximum,
		MaximumPacketSize: p.Props.MaximumPacketSize,
		ConnectedAt:       now.Unix(),
		Gen:               gen,
	}
}

// message is a stored PUBLISH (or the PUBREC of an incoming QoS 2 one):
// everything of the packet that outlives its connection. The topic alias
// does not: it means nothing to the next connection.
type message struct {
	Type             byte                   `json:"t"`
	QoS              byte                   `json:"q,omitempty"`
	Retain           bool                   `json:"r,omitempty"`
	PacketID         uint16                 `json:"id,omitempty"`
	Topic            string                 `json:"topic,omitempty"`
	Payload          []byte                 `json:"p,omitempty"`
	Origin           string                 `json:"origin,omitempty"`
	ClientIdentifier string                 `json:"cid,omitempty"` // set on the gateway's delayed wills
	Created          int64                  `json:"created,omitempty"`
	Expiry           int64                  `json:"expiry,omitempty"`
	ProtocolVersion  byte                   `json:"v,omitempty"`
	ReasonCode       byte                   `json:"rc,omitempty"`
	PayloadFormat    *byte                  `json:"pf,omitempty"`
	MessageExpiry    uint32                 `json:"mexp,omitempty"`
	ContentType      string                 `json:"ct,omitempty"`
	ResponseTopic    string                 `json:"rt,omitempty"`
	CorrelationData  []byte                 `json:"cd,omitempty"`
	SubscriptionIDs  []int                  `json:"sid,omitempty"`
	User             []packets.UserProperty `json:"user,omitempty"`
}

func messageOf(pk *packets.Packet) *message {
	m := &message{
		Type:             pk.FixedHeader.Type,
		QoS:              pk.FixedHeader.Qos,
		Retain:           pk.FixedHeader.Retain,
		PacketID:         pk.PacketID,
		Topic:            pk.TopicName,
		Payload:          pk.Payload,
		Origin:           pk.Origin,
		ClientIdentifier: pk.Connect.ClientIdentifier,
		Created:          pk.Created,
		Expiry:           pk.Expiry,
		ProtocolVersion:  pk.ProtocolVersion,
		ReasonCode:       pk.ReasonCode,
		MessageExpiry:    pk.Properties.MessageExpiryInterval,
		ContentType:      pk.Properties.ContentType,
		ResponseTopic:    pk.Properties.ResponseTopic,
		CorrelationData:  pk.Properties.CorrelationData,
		SubscriptionIDs:  pk.Properties.SubscriptionIdentifier,
		User:             pk.Properties.User,
	}
	if pk.Properties.PayloadFormatFlag {
		f := pk.Properties.PayloadFormat
		m.PayloadFormat = &f
	}
	return m
}

func (m *message) packet() packets.Packet {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: m.Type, Qos: m.QoS, Retain: m.Retain},
		PacketID:        m.PacketID,
		TopicName:       m.Topic,
		Payload:         m.Payload,
		Origin:          m.Origin,
		Created:         m.Created,
		Expiry:          m.Expiry,
		ProtocolVersion: m.ProtocolVersion,
		ReasonCode:      m.ReasonCode,
		Properties: packets.Properties{
			MessageExpiryInterval:  m.MessageExpiry,
			ContentType:            m.ContentType,
			ResponseTopic:          m.ResponseTopic,
			CorrelationData:        m.CorrelationData,
			SubscriptionIdentifier: m.SubscriptionIDs,
			User:                   m.User,
		},
	}
	pk.Connect.ClientIdentifier = m.ClientIdentifier
	if m.PayloadFormat != nil {
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = *m.PayloadFormat, true
	}
	return pk
}

// Will is a pending delayed Last Will, stored by the gateway.
type Will struct {
	ClientID string    `json:"id"` // scoped client ID of the session it belongs to
	Will     mqtt.Will `json:"will"`
	Due      time.Time `json:"due"` // when it is to be sent
}

// Journaled is a message acknowledged to its publisher that may not have
// been queued for every subscriber: Load returns them in the order they
// were published.
type Journaled struct {
	Seq    uint64
	Packet packets.Packet
}

// State is everything Load read.
type State struct {
	Sessions []*Session
	Retained []packets.Packet
	Wills    []Will
	Journal  []Journaled
	// Dropped counts the records that could not be read, and the parts of
	// sessions that no longer exist; they were deleted.
	Dropped int
}

// Load reads the whole store. Records that cannot be decoded, and
// subscriptions or messages of a session that is not stored, are deleted
// (and counted in Dropped) rather than failing the start: one bad record
// must not keep every other session from coming back.
func (s *Store) Load() (*State, error) {
	st := &State{}
	err := s.do(func(tx *bbolt.Tx) error {
		byID := map[string]*Session{}
		var bad []func() error
		drop := func(b *bbolt.Bucket, k []byte) {
			k = append([]byte(nil), k...)
			bad = append(bad, func() error { return b.Delete(k) })
			st.Dropped++
		}

		b := tx.Bucket(bucketSessions)
		_ = b.ForEach(func(k, v []byte) error {
			var ss Session
			if json.Unmarshal(v, &ss) != nil || ss.ClientID != string(k) {
				drop(b, k)
				return nil
			}
			byID[ss.ClientID] = &ss
			st.Sessions = append(st.Sessions, &ss)
			return nil
		})

		b = tx.Bucket(bucketSubs)
		_ = b.ForEach(func(k, v []byte) error {
			id, _, ok := splitClientKey(k)
			ss := byID[id]
			var sub packets.Subscription
			if !ok || ss == nil || json.Unmarshal(v, &sub) != nil {
				drop(b, k)
				return nil
			}
			ss.Subscriptions = append(ss.Subscriptions, sub)
			return nil
		})

		b = tx.Bucket(bucketInflight)
		_ = b.ForEach(func(k, v []byte) error {
			id, _, ok := splitClientKey(k)
			ss := byID[id]
			var m message
			if !ok || ss == nil || json.Unmarshal(v, &m) != nil {
				drop(b, k)
				return nil
			}
			ss.Inflight = append(ss.Inflight, m.packet())
			return nil
		})

		b = tx.Bucket(bucketRetained)
		_ = b.ForEach(func(k, v []byte) error {
			var m message
			if json.Unmarshal(v, &m) != nil || m.Topic != string(k) {
				drop(b, k)
				return nil
			}
			st.Retained = append(st.Retained, m.packet())
			return nil
		})

		b = tx.Bucket(bucketJournal)
		_ = b.ForEach(func(k, v []byte) error {
			var m message
			if len(k) != 8 || json.Unmarshal(v, &m) != nil {
				drop(b, k)
				return nil
			}
			st.Journal = append(st.Journal, Journaled{Seq: binary.BigEndian.Uint64(k), Packet: m.packet()})
			return nil
		})

		b = tx.Bucket(bucketWills)
		_ = b.ForEach(func(k, v []byte) error {
			var w Will
			if json.Unmarshal(v, &w) != nil || w.ClientID != string(k) {
				drop(b, k)
				return nil
			}
			st.Wills = append(st.Wills, w)
			return nil
		})

		// Deleting while iterating a bucket is not allowed in bbolt.
		for _, del := range bad {
			if err := del(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("brokerstore: load: %w", err)
	}
	sort.Slice(st.Journal, func(i, j int) bool { return st.Journal[i].Seq < st.Journal[j].Seq })
	return st, nil
}

// splitClientKey splits a subs or inflight key into the client ID and the
// rest.
func splitClientKey(k []byte) (id string, rest []byte, ok bool) {
	n, w := binary.Uvarint(k)
	if w <= 0 || uint64(len(k)-w) < n {
		return "", nil, false
	}
	return string(k[w : w+int(n)]), k[w+int(n):], true
}

// PutWill stores a pending delayed will, replacing the one of the same
// session. It does not wait for the write: a will is a notice, and one lost
// in a crash within a commit of being scheduled costs no acknowledged
// message.
func (s *Store) PutWill(w Will) {
	if s == nil {
		return
	}
	raw, err := json.Marshal(w)
	if err != nil {
		s.log.Error("brokerstore: encode will", "err", err)
		return
	}
	s.post(func(tx *bbolt.Tx) error { return tx.Bucket(bucketWills).Put([]byte(w.ClientID), raw) })
}

// DeleteWill removes the pending will of the session id.
func (s *Store) DeleteWill(id string) {
	if s == nil {
		return
	}
	s.post(func(tx *bbolt.Tx) error { return tx.Bucket(bucketWills).Delete([]byte(id)) })
}
