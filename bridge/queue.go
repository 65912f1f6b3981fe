package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

var queueBucket = []byte("queue")

// message is one queued outbound message. Seq is its key in the queue.
type message struct {
	Seq     uint64
	Topic   string // the remote topic
	Payload []byte
	QoS     byte
	Retain  bool
}

// record layout, version 1: version, qos, retain, topic length (uvarint),
// topic, payload.
const recordV1 = 1

func (m *message) encode() []byte {
	b := make([]byte, 0, 3+binary.MaxVarintLen64+len(m.Topic)+len(m.Payload))
	b = append(b, recordV1, m.QoS, 0)
	if m.Retain {
		b[2] = 1
	}
	b = binary.AppendUvarint(b, uint64(len(m.Topic)))
	b = append(b, m.Topic...)
	return append(b, m.Payload...)
}

func decodeMessage(seq uint64, v []byte) (message, error) {
	if len(v) < 3 || v[0] != recordV1 || v[1] > 1 {
		return message{}, fmt.Errorf("bridge: queue record %d: unknown format", seq)
	}
	n, k := binary.Uvarint(v[3:])
	if k <= 0 || n > uint64(len(v)-3-k) {
		return message{}, fmt.Errorf("bridge: queue record %d: bad topic length", seq)
	}
	rest := v[3+k:]
	return message{
		Seq:     seq,
		QoS:     v[1],
		Retain:  v[2] == 1,
		Topic:   string(rest[:n]),
		Payload: append([]byte(nil), rest[n:]...),
	}, nil
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// queue is a bridge's FIFO on disk: keys are big-endian sequence numbers,
// so a cursor walks them in order. Every append batch and every delete
// batch is one transaction and so one fsync.
type queue struct {
	db  *bolt.DB
	max int

	mu      sync.Mutex
	next    uint64 // the sequence number of the next append
	appends int    // append transactions, for the group-commit test
	// count is written under mu and read without it, so Status and a
	// scrape never wait for an fsync.
	count atomic.Int64
}

func openQueue(path string, max int) (*queue, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("bridge: open queue %s: %w", path, err)
	}
	q := &queue{db: db, max: max, next: 1}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(queueBucket)
		if err != nil {
			return err
		}
		if k, _ := b.Cursor().Last(); k != nil {
			if len(k) != 8 {
				return errors.New("queue key is not a sequence number")
			}
			q.next = binary.BigEndian.Uint64(k) + 1
		}
		q.count.Store(int64(b.Stats().KeyN))
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("bridge: open queue %s: %w", path, err)
	}
	return q, nil
}

// append stores msgs in order in one transaction, as far as the queue has
// room, and returns how many it stored; the rest (the newest) are dropped,
// so the messages already waiting keep their order and none is lost to
// make room.
func (q *queue) append(msgs []*message) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(msgs), q.max-int(q.count.Load()))
	if n <= 0 {
		return 0, nil
	}
	next := q.next
	err := q.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(queueBucket)
		for _, m := range msgs[:n] {
			if err := b.Put(seqKey(next), m.encode()); err != nil {
				return err
			}
			next++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("bridge: queue append: %w", err)
	}
	q.next = next
	q.count.Add(int64(n))
	q.appends++
	return n, nil
}

// read returns up to n messages from sequence number from on, in order,
// and the sequence numbers of records it cannot decode, which the caller
// removes: one bad record must not hold up the queue behind it forever.
func (q *queue) read(from uint64, n int) (msgs []message, bad []uint64, err error) {
	err = q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(queueBucket).Cursor()
		for k, v := c.Seek(seqKey(from)); k != nil && len(msgs)+len(bad) < n; k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k)
			m, err := decodeMessage(seq, v)
			if err != nil {
				bad = append(bad, seq)
				continue
			}
			msgs = append(msgs, m)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("bridge: queue read: %w", err)
	}
	return msgs, bad, nil
}

// remove deletes the messages with these sequence numbers in one
// transaction.
func (q *queue) remove(seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	removed := 0
	err := q.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(queueBucket)
		removed = 0
		for _, s := range seqs {
			k := seqKey(s)
			if b.Get(k) == nil {
				continue
			}
			if err := b.Delete(k); err != nil {
				return err
			}
			removed++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bridge: queue remove: %w", err)
	}
	q.count.Add(-int64(removed))
	return nil
}

func (q *queue) len() int { return int(q.count.Load()) }

func (q *queue) close() error {
	if err := q.db.Close(); err != nil {
		return fmt.Errorf("bridge: close queue: %w", err)
	}
	return nil
}
