// Package brokerstore keeps the MQTT broker's state on disk, in one bbolt
// file of its own (broker.db in the data dir): persistent sessions with
// their subscriptions and queued or in-flight messages, retained messages,
// the delayed wills the gateway sends itself, and a journal of the QoS 1
// and 2 messages acknowledged to their publisher but not yet handed to
// every subscriber.
//
// The store is a mochi hook (Hook) that writes what mochi changes, as mochi
// changes it, and a loader (Load) the gateway reads at start. Only the
// sessions that outlive their connection are written: a clean session costs
// nothing. Every write goes through one committer goroutine, in the order
// it was queued; writes queued while one transaction commits share the next
// one (group commit). With Options.Fsync the commit also fsyncs the file, so
// a write that was waited for survives a power loss; without it, it is in the
// operating system's cache once waited for, so it survives the process being
// killed but not the machine losing power.
//
// What an acknowledgement promises is waited for; the rest is queued:
//
//   - mochi writes the PUBACK (or PUBREC) of a publisher before it queues the
//     message for its subscribers, so the message is journaled in OnPublish,
//     before that acknowledgement, and the journal write is waited for. Its
//     copies for persistent sessions are queued, and so is the removal of
//     the journal entry once mochi has made every copy (OnPublished): that
//     removal commits with the copies or after them. Whatever is still in the
//     journal at start is published again (QoS 1 and 2 are at least once).
//   - a session, a subscription (before its SUBACK), a retained message set
//     or cleared (before the PUBACK), the PUBREC state of an incoming QoS 2
//     message and the removal of a session (a revocation must not come
//     back) are waited for.
//   - the rest is queued: the removal of a message its receiver
//     acknowledged (lost, it is delivered again), of an unsubscribed filter
//     (lost, it comes back, its deliveries still decided by the policy),
//     and delayed wills (lost, a notice is not sent).
package brokerstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"go.etcd.io/bbolt"
)

// FileName is the store's file in the data dir.
const FileName = "broker.db"

// ErrClosed is returned by every write after Close.
var ErrClosed = errors.New("brokerstore: closed")

// schemaVersion is written in the meta bucket; a file of another version is
// refused rather than misread.
const schemaVersion = 1

var (
	bucketMeta     = []byte("meta")
	bucketSessions = []byte("sessions") // scoped client ID -> sessionRecord
	bucketSubs     = []byte("subs")     // clientKey + filter -> packets.Subscription
	bucketInflight = []byte("inflight") // clientKey + packet ID -> messageRecord
	bucketRetained = []byte("retained") // topic -> messageRecord
	bucketJournal  = []byte("journal")  // sequence -> messageRecord
	bucketWills    = []byte("wills")    // scoped client ID -> willRecord
	keyVersion     = []byte("version")
)

var allBuckets = [][]byte{bucketMeta, bucketSessions, bucketSubs, bucketInflight, bucketRetained, bucketJournal, bucketWills}

// lockTimeout bounds the wait for bbolt's file lock, so a second gateway on
// the same data dir fails instead of hanging.
const lockTimeout = 2 * time.Second

// queueSize is how many writes may wait for the committer; a writer beyond
// it waits for room (back-pressure), never drops.
const queueSize = 4096

// maxBatch bounds the writes of one transaction, so one commit stays short
// even under a flood.
const maxBatch = 1024

// Options configures a Store.
type Options struct {
	// Path is the bbolt file; it is created if missing.
	Path string
	// Fsync makes every commit fsync the file before the writes in it
	// return: what was acknowledged survives a power loss. Off, it
	// survives the process being killed (SIGKILL, a crash), not the
	// machine losing power.
	Fsync bool
	// Logger receives write failures; nil means slog.Default().
	Logger *slog.Logger
}

// Store is the durable broker state. Its methods are safe for concurrent use.
type Store struct {
	db    *bbolt.DB
	fsync bool
	log   *slog.Logger

	// mu guards closed against the sends on reqs.
	mu     sync.RWMutex
	closed bool
	reqs   chan *request
	done   chan struct{}

	seq atomic.Uint64 // last journal sequence number

	// persistent holds the scoped client IDs whose sessions outlive their
	// connection (value: the connection generation that last stored the
	// session); only those are written, so a clean session costs nothing.
	persistent sync.Map
	npersist   atomic.Int64
	// conns is the per-connection state, by *mqtt.Client.
	conns sync.Map
	gen   atomic.Uint64

	failures atomic.Int64
}

// request is one write for the committer; done is nil for a write nobody
// waits for.
type request struct {
	op   func(tx *bbolt.Tx) error
	done chan error
}

// Open opens or creates the store at opts.Path.
func Open(opts Options) (*Store, error) {
	if opts.Path == "" {
		return nil, errors.New("brokerstore: no path")
	}
	db, err := bbolt.Open(opts.Path, 0o600, &bbolt.Options{
		Timeout: lockTimeout,
		// bbolt fsyncs at every commit unless NoSync; the committer makes
		// one commit per group of queued writes, so in fsync mode a group
		// shares one fsync.
		NoSync: !opts.Fsync,
		// The freelist is rebuilt when the file is opened instead of being
		// written at every commit: fewer pages per small write.
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
	})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("brokerstore: %s is locked by another process", opts.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("brokerstore: open %s: %w", opts.Path, err)
	}
	s := &Store{
		db:    db,
		fsync: opts.Fsync,
		log:   opts.Logger,
		reqs:  make(chan *request, queueSize),
		done:  make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if err := db.Update(s.init); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("brokerstore: %s: %w", opts.Path, err)
	}
	go s.commit()
	return s, nil
}

// init creates the buckets, checks the schema version and reads the last
// journal sequence number.
func (s *Store) init(tx *bbolt.Tx) error {
	for _, b := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	switch v := meta.Get(keyVersion); {
	case v == nil:
		if err := meta.Put(keyVersion, u64(schemaVersion)); err != nil {
			return err
		}
	case len(v) != 8 || binary.BigEndian.Uint64(v) != schemaVersion:
		return fmt.Errorf("schema version %x, want %d: written by another ztgate version", v, schemaVersion)
	}
	if k, _ := tx.Bucket(bucketJournal).Cursor().Last(); len(k) == 8 {
		s.seq.Store(binary.BigEndian.Uint64(k))
	}
	return nil
}

// Fsync reports whether commits are fsynced.
func (s *Store) Fsync() bool { return s.fsync }

// Failures is the number of writes that failed since Open.
func (s *Store) Failures() int64 { return s.failures.Load() }

// Close waits for the queued writes, then closes the file. Writes after
// Close fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.mu.Unlock()
	<-s.done
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("brokerstore: close: %w", err)
	}
	return nil
}

// do runs op in a transaction and returns once it is committed (and, in
// fsync mode, on disk).
func (s *Store) do(op func(tx *bbolt.Tx) error) error {
	r := &request{op: op, done: make(chan error, 1)}
	if !s.send(r) {
		return ErrClosed
	}
	return <-r.done
}

// post queues op without waiting for it: for writes whose loss in a crash
// costs a duplicate, never a message. Writes run in the order they were
// queued.
func (s *Store) post(op func(tx *bbolt.Tx) error) {
	s.send(&request{op: op})
}

func (s *Store) send(r *request) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.reqs <- r
	return true
}

// Flush returns once every write queued before it is committed.
func (s *Store) Flush() error {
	return s.do(func(*bbolt.Tx) error { return nil })
}

// commit is the committer: it takes whatever writes are queued, up to
// maxBatch, and commits them in one transaction.
func (s *Store) commit() {
	defer close(s.done)
	batch := make([]*request, 0, maxBatch)
	errs := make([]error, 0, maxBatch)
	for r := range s.reqs {
		batch = append(batch[:0], r)
	fill:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		errs = errs[:0]
		err := s.db.Update(func(tx *bbolt.Tx) error {
			for _, r := range batch {
				// One write failing (a key too long) fails that write,
				// not the others in the transaction.
				errs = append(errs, r.op(tx))
			}
			return nil
		})
		for i, r := range batch {
			e := err
			if e == nil {
				e = errs[i]
			}
			if e != nil {
				s.failures.Add(1)
				if r.done == nil {
					s.log.Error("brokerstore: write failed", "err", e)
				}
			}
			if r.done != nil {
				r.done <- e
			}
		}
	}
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// clientKey is the prefix of a client's keys in the subs and inflight
// buckets: its length, then the ID, so that no client ID is a prefix of
// another's keys whatever bytes it holds.
func clientKey(id string) []byte {
	k := binary.AppendUvarint(make([]byte, 0, len(id)+binary.MaxVarintLen64), uint64(len(id)))
	return append(k, id...)
}

func subKey(id, filter string) []byte { return append(clientKey(id), filter...) }

func inflightKey(id string, pid uint16) []byte {
	return binary.BigEndian.AppendUint16(clientKey(id), pid)
}

// deletePrefix deletes every key of b that starts with prefix.
func deletePrefix(b *bbolt.Bucket, prefix []byte) error {
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

func hasPrefix(k, prefix []byte) bool {
	return len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix)
}

// putJSON stores v under k in bucket b.
func putJSON(tx *bbolt.Tx, b, k []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(b).Put(k, raw)
}

// encoded is v in JSON, encoded on the caller's goroutine rather than the
// committer's, which every write goes through.
func encoded(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("brokerstore: encode: %w", err)
	}
	return raw, nil
}

// sessionExists reports whether id has a stored session: writes of a
// session's parts are dropped when it has none (it ended meanwhile), so
// nothing outlives its session.
func sessionExists(tx *bbolt.Tx, id string) bool {
	return tx.Bucket(bucketSessions).Get([]byte(id)) != nil
}

// deleteSession removes the session of id and everything it holds.
func deleteSession(tx *bbolt.Tx, id string) error {
	if err := tx.Bucket(bucketSessions).Delete([]byte(id)); err != nil {
		return err
	}
	if err := deletePrefix(tx.Bucket(bucketSubs), clientKey(id)); err != nil {
		return err
	}
	if err := deletePrefix(tx.Bucket(bucketInflight), clientKey(id)); err != nil {
		return err
	}
	return tx.Bucket(bucketWills).Delete([]byte(id))
}

// DeleteSession removes the stored session of the scoped client ID id, its
// subscriptions, its messages and its pending will, and returns once that
// is committed.
func (s *Store) DeleteSession(id string) error {
	if s == nil {
		return nil
	}
	s.forgetPersistent(id)
	return s.do(func(tx *bbolt.Tx) error { return deleteSession(tx, id) })
}

// DeleteSubscription removes one stored subscription of id.
func (s *Store) DeleteSubscription(id, filter string) {
	if s == nil || !s.isPersistent(id) {
		return
	}
	k := subKey(id, filter)
	s.post(func(tx *bbolt.Tx) error { return tx.Bucket(bucketSubs).Delete(k) })
}

// DropInflight removes the stored message of cl with packet ID pid, unless
// cl holds a message under that ID again by the time the write runs (the
// ID was reused: the stored record is the new message's).
func (s *Store) DropInflight(cl *mqtt.Client, pid uint16) {
	if s == nil || !s.isPersistent(cl.ID) {
		return
	}
	id := cl.ID
	s.post(func(tx *bbolt.Tx) error {
		if _, reused := cl.State.Inflight.Get(pid); reused {
			return nil
		}
		return tx.Bucket(bucketInflight).Delete(inflightKey(id, pid))
	})
}

// DeleteRetained removes the stored retained message of topic and returns
// once that is committed: a message cleared (on revocation, or through the
// API) does not come back after a restart.
func (s *Store) DeleteRetained(topic string) error {
	if s == nil {
		return nil
	}
	return s.do(func(tx *bbolt.Tx) error { return tx.Bucket(bucketRetained).Delete([]byte(topic)) })
}

// DeleteJournal forgets a journaled message once it has been published
// again.
func (s *Store) DeleteJournal(seq uint64) {
	s.post(func(tx *bbolt.Tx) error { return tx.Bucket(bucketJournal).Delete(u64(seq)) })
}

// The methods the gateway calls on its own changes (DeleteSession,
// DeleteSubscription, DropInflight, DeleteRetained, PutWill, DeleteWill) do
// nothing on a nil Store: a gateway without persistence calls them all the
// same.

// Restored tells the store that the session of id was loaded into the
// broker: its changes are written from now on.
func (s *Store) Restored(id string) {
	s.markPersistent(id, s.gen.Add(1))
}

func (s *Store) isPersistent(id string) bool {
	_, ok := s.persistent.Load(id)
	return ok
}

func (s *Store) markPersistent(id string, gen uint64) {
	if _, loaded := s.persistent.Swap(id, gen); !loaded {
		s.npersist.Add(1)
	}
}

func (s *Store) forgetPersistent(id string) {
	if _, loaded := s.persistent.LoadAndDelete(id); loaded {
		s.npersist.Add(-1)
	}
}

// forgetPersistentGen forgets id only if the connection of generation gen
// was the last to store it.
func (s *Store) forgetPersistentGen(id string, gen uint64) bool {
	if s.persistent.CompareAndDelete(id, gen) {
		s.npersist.Add(-1)
		return true
	}
	return false
}

// Snapshot writes a consistent copy of everything committed so far to
// path: what a crash at this instant would leave (in fsync mode, a power
// loss too). It is a backup, and what the tests restart from.
func (s *Store) Snapshot(path string) error {
	err := s.db.View(func(tx *bbolt.Tx) error { return tx.CopyFile(path, 0o600) })
	if err != nil {
		return fmt.Errorf("brokerstore: snapshot: %w", err)
	}
	return nil
}
