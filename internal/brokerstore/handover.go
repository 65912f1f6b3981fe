package brokerstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// A session handed from one gateway to another (a cluster takeover) travels
// in the encoding the store writes it in: the same fields, the same message
// record (no topic alias), so that what a node restores from a handover is
// exactly what it would restore from its own disk.

// handover is the encoded form of a Session with its parts.
type handover struct {
	Session       *Session               `json:"session"`
	Subscriptions []packets.Subscription `json:"subs,omitempty"`
	Inflight      []*message             `json:"inflight,omitempty"`
}

// MarshalSession encodes s, its subscriptions and its queued messages.
func MarshalSession(s *Session) ([]byte, error) {
	if s == nil || s.ClientID == "" {
		return nil, errors.New("brokerstore: marshal session: no client ID")
	}
	h := handover{Session: s, Subscriptions: s.Subscriptions, Inflight: make([]*message, len(s.Inflight))}
	for i := range s.Inflight {
		h.Inflight[i] = messageOf(&s.Inflight[i])
	}
	raw, err := json.Marshal(&h)
	if err != nil {
		return nil, fmt.Errorf("brokerstore: marshal session: %w", err)
	}
	return raw, nil
}

// UnmarshalSession decodes what MarshalSession encoded. A record without a
// client ID, or a queued entry that is not a PUBLISH or one of its
// acknowledgements (the only packets mochi queues), is refused: it comes from
// another process.
func UnmarshalSession(raw []byte) (*Session, error) {
	var h handover
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("brokerstore: unmarshal session: %w", err)
	}
	if h.Session == nil || h.Session.ClientID == "" {
		return nil, errors.New("brokerstore: unmarshal session: no client ID")
	}
	s := h.Session
	s.Subscriptions = h.Subscriptions
	s.Inflight = make([]packets.Packet, 0, len(h.Inflight))
	for _, m := range h.Inflight {
		if m == nil {
			return nil, errors.New("brokerstore: unmarshal session: empty queued message")
		}
		switch m.Type {
		case packets.Publish, packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		default:
			return nil, fmt.Errorf("brokerstore: unmarshal session: queued packet of type %d", m.Type)
		}
		s.Inflight = append(s.Inflight, m.packet())
	}
	return s, nil
}

// ClientSession is the record of cl's session as the store would write it,
// without its parts (the caller fills Subscriptions and Inflight).
func ClientSession(cl *mqtt.Client, now time.Time) *Session {
	return sessionOf(cl, 0, now)
}

// PutSession stores s with its subscriptions and queued messages, replacing
// whatever was stored under its client ID, and returns once that is
// committed. It is how a session handed over by another node becomes this
// node's, as if it had been loaded from this node's disk; the gateway then
// restores it like any loaded session (Restored, and the pruning).
func (s *Store) PutSession(rec *Session) error {
	if s == nil {
		return nil
	}
	if rec == nil || rec.ClientID == "" {
		return errors.New("brokerstore: put session: no client ID")
	}
	id := rec.ClientID
	head := *rec
	head.Subscriptions, head.Inflight = nil, nil
	msgs := make([][]byte, len(rec.Inflight))
	for i := range rec.Inflight {
		raw, err := encoded(messageOf(&rec.Inflight[i]))
		if err != nil {
			return err
		}
		msgs[i] = raw
	}
	subs := rec.Subscriptions
	inflight := rec.Inflight
	err := s.do(func(tx *bbolt.Tx) error {
		if err := deleteSession(tx, id); err != nil {
			return err
		}
		if err := putJSON(tx, bucketSessions, []byte(id), &head); err != nil {
			return err
		}
		for i := range subs {
			if err := putJSON(tx, bucketSubs, subKey(id, subs[i].Filter), &subs[i]); err != nil {
				return err
			}
		}
		for i := range inflight {
			if err := tx.Bucket(bucketInflight).Put(inflightKey(id, inflight[i].PacketID), msgs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("brokerstore: put session: %w", err)
	}
	return nil
}
