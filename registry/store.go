package registry

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"
	"go.etcd.io/bbolt"
)

// Store is the device registry: go-memdb in memory, bbolt on disk as the
// store of record. Returned *Device values are copies owned by the caller.
// A Store is safe for concurrent use.
type Store struct {
	// mu serializes writers and Close, so that bbolt and memdb see the same
	// order of changes. Readers never take it.
	mu     sync.Mutex
	bolt   *bbolt.DB
	db     *memdb.MemDB
	closed atomic.Bool
	count  atomic.Int64
	// watch is closed and replaced after every committed change, and closed
	// for good by Close.
	watch atomic.Pointer[chan struct{}]
}

// Open opens (creating if needed) the bbolt file at path and loads memdb from
// it. A new file is created 0600 in a directory created 0700. Any record
// that does not decode or validate fails Open with an error naming its key.
func Open(path string) (*Store, error) {
	db, err := newMemDB()
	if err != nil {
		return nil, err
	}
	bdb, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	n, err := load(bdb, db)
	if err != nil {
		_ = bdb.Close()
		return nil, err
	}
	s := &Store{bolt: bdb, db: db}
	s.count.Store(int64(n))
	ch := make(chan struct{})
	s.watch.Store(&ch)
	return s, nil
}

// Close closes the bbolt file and wakes every Watch channel. Later calls on
// the store return ErrClosed; a second Close returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	done := make(chan struct{})
	close(done)
	close(*s.watch.Swap(&done))
	if err := s.bolt.Close(); err != nil {
		return fmt.Errorf("registry: close: %w", err)
	}
	return nil
}

// Create adds a device (status active unless set). Durable before it returns.
// The caller must fill SPIFFEID; CreatedAt and UpdatedAt are set here (UTC).
func (s *Store) Create(d Device) (*Device, error) {
	dev, err := normalize(d)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	dev.CreatedAt, dev.UpdatedAt = now, now

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, ErrClosed
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	// memdb does not enforce unique indexes itself: check both here.
	if existing, err := txn.First(tableDevices, indexID, dev.Name); err != nil {
		return nil, fmt.Errorf("registry: lookup: %w", err)
	} else if existing != nil {
		return nil, fmt.Errorf("%w: name %s is taken", ErrExists, quote(dev.Name))
	}
	if existing, err := txn.First(tableDevices, indexSPIFFEID, dev.SPIFFEID); err != nil {
		return nil, fmt.Errorf("registry: lookup: %w", err)
	} else if existing != nil {
		return nil, fmt.Errorf("%w: spiffe_id %s is used by device %s",
			ErrExists, quote(dev.SPIFFEID), quote(existing.(*Device).Name))
	}
	if err := txn.Insert(tableDevices, dev); err != nil {
		return nil, fmt.Errorf("registry: insert: %w", err)
	}
	val, err := encode(dev)
	if err != nil {
		return nil, err
	}
	if err := s.persist(func(b *bbolt.Bucket) error {
		if b.Get([]byte(dev.Name)) != nil {
			return fmt.Errorf("record %s already on disk", quote(dev.Name))
		}
		return b.Put([]byte(dev.Name), val)
	}); err != nil {
		return nil, err
	}
	s.commit(txn, +1)
	return dev.Clone(), nil
}

// SetStatus moves a device to st. active and suspended may be exchanged
// freely; revoked is final (ErrRevoked). Setting the current status is a
// no-op that writes nothing and fires no watch.
func (s *Store) SetStatus(name string, st Status) (*Device, error) {
	if !st.Valid() {
		return nil, fmt.Errorf("%w: status %s: must be active, suspended or revoked", ErrInvalid, quote(string(st)))
	}
	return s.update(name, func(cur *Device) (*Device, error) {
		if cur.Status == st {
			return nil, nil
		}
		if cur.Status == StatusRevoked {
			return nil, fmt.Errorf("%w: %s cannot become %s", ErrRevoked, quote(name), st)
		}
		next := cur.Clone()
		next.Status = st
		return next, nil
	})
}

// SetLabels replaces all labels of a device. The same labels again are a no-op.
func (s *Store) SetLabels(name string, labels map[string]string) (*Device, error) {
	if err := validateLabels(labels); err != nil {
		return nil, err
	}
	labels = cloneLabels(labels)
	return s.update(name, func(cur *Device) (*Device, error) {
		if maps.Equal(cur.Labels, labels) {
			return nil, nil
		}
		next := *cur
		next.Labels = labels
		return &next, nil
	})
}

// update applies change to the stored device under the writer lock. change
// returns the new record, or nil for no change.
func (s *Store) update(name string, change func(cur *Device) (*Device, error)) (*Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, ErrClosed
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	cur, err := first(txn, indexID, name)
	if err != nil {
		return nil, err
	}
	next, err := change(cur)
	if err != nil {
		return nil, err
	}
	if next == nil {
		return cur.Clone(), nil
	}
	next.UpdatedAt = time.Now().UTC()
	if err := txn.Insert(tableDevices, next); err != nil {
		return nil, fmt.Errorf("registry: insert: %w", err)
	}
	val, err := encode(next)
	if err != nil {
		return nil, err
	}
	if err := s.persist(func(b *bbolt.Bucket) error {
		return b.Put([]byte(next.Name), val)
	}); err != nil {
		return nil, err
	}
	s.commit(txn, 0)
	return next.Clone(), nil
}

// Delete removes a device. A revoked device cannot be deleted (ErrRevoked):
// its record keeps the name and SPIFFE ID from being enrolled again, which
// would make the revoked SVIDs valid once more.
func (s *Store) Delete(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	cur, err := first(txn, indexID, name)
	if err != nil {
		return err
	}
	if cur.Status == StatusRevoked {
		return fmt.Errorf("%w: %s is kept so that its name and spiffe_id are never reused", ErrRevoked, quote(name))
	}
	if err := txn.Delete(tableDevices, cur); err != nil {
		return fmt.Errorf("registry: delete: %w", err)
	}
	if err := s.persist(func(b *bbolt.Bucket) error {
		return b.Delete([]byte(name))
	}); err != nil {
		return err
	}
	s.commit(txn, -1)
	return nil
}

// persist commits one change to bbolt (fsync included). The caller holds mu
// and an uncommitted memdb txn, which it aborts if this fails.
func (s *Store) persist(fn func(b *bbolt.Bucket) error) error {
	err := s.bolt.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		if b == nil {
			return errors.New("bucket devices missing")
		}
		return fn(b)
	})
	if err != nil {
		return fmt.Errorf("registry: write to disk: %w", err)
	}
	return nil
}

// commit makes a change that is already on disk visible in memory and wakes
// the watchers once it is.
func (s *Store) commit(txn *memdb.Txn, delta int64) {
	txn.Defer(func() {
		s.count.Add(delta)
		next := make(chan struct{})
		close(*s.watch.Swap(&next))
	})
	txn.Commit()
}

// first returns the stored (shared, never mutated) device of a unique index.
func first(txn *memdb.Txn, index, key string) (*Device, error) {
	raw, err := txn.First(tableDevices, index, key)
	if err != nil {
		return nil, fmt.Errorf("registry: lookup: %w", err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, quote(key))
	}
	return raw.(*Device), nil
}

// Get returns the device called name.
func (s *Store) Get(name string) (*Device, error) {
	return s.get(indexID, name)
}

// GetBySPIFFEID returns the device enrolled with the SPIFFE ID id (canonical
// form, as in a verified SVID). It is on the CONNECT path: one lock-free
// memdb lookup and a copy, no disk access.
func (s *Store) GetBySPIFFEID(id string) (*Device, error) {
	return s.get(indexSPIFFEID, id)
}

func (s *Store) get(index, key string) (*Device, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	txn := s.db.Txn(false)
	defer txn.Abort()
	d, err := first(txn, index, key)
	if err != nil {
		return nil, err
	}
	return d.Clone(), nil
}

// List returns every device, sorted by name.
func (s *Store) List() ([]*Device, error) {
	devs, _, err := s.ListWatch()
	return devs, err
}

// ListWatch returns every device, sorted by name, and a channel that is
// closed at the next change after that snapshot (or at Close).
func (s *Store) ListWatch() ([]*Device, <-chan struct{}, error) {
	if s.closed.Load() {
		return nil, nil, ErrClosed
	}
	// Take the channel before the snapshot: a change in between then wakes
	// the caller once too often, never once too few.
	ch := s.Watch()
	txn := s.db.Txn(false)
	defer txn.Abort()
	it, err := txn.Get(tableDevices, indexID)
	if err != nil {
		return nil, nil, fmt.Errorf("registry: list: %w", err)
	}
	return collect(it, int(s.count.Load())), ch, nil
}

// ListByLabel returns the devices that carry label key=value, sorted by name.
func (s *Store) ListByLabel(key, value string) ([]*Device, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	txn := s.db.Txn(false)
	defer txn.Abort()
	it, err := txn.Get(tableDevices, indexLabels, key, value)
	if err != nil {
		return nil, fmt.Errorf("registry: list: %w", err)
	}
	// The label index is ordered by (key, value, name).
	return collect(it, 0), nil
}

func collect(it memdb.ResultIterator, sizeHint int) []*Device {
	out := make([]*Device, 0, max(sizeHint, 0))
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*Device).Clone())
	}
	return out
}

// Len returns the number of devices, revoked ones included.
func (s *Store) Len() int {
	return int(s.count.Load())
}

// Watch returns a channel that is closed at the next change to any device,
// and at Close. Take a new channel after each wake-up.
func (s *Store) Watch() <-chan struct{} {
	return *s.watch.Load()
}

// WatchDevice returns the device enrolled with spiffeID and a channel closed
// when that record changes or is deleted. For an unknown ID it returns nil,
// an error wrapping ErrNotFound and a channel closed when a change may have
// enrolled it (possibly spuriously: look again on wake-up). Close does not
// close these channels; select on Watch() or a context as well.
func (s *Store) WatchDevice(spiffeID string) (*Device, <-chan struct{}, error) {
	if s.closed.Load() {
		return nil, nil, ErrClosed
	}
	txn := s.db.Txn(false)
	defer txn.Abort()
	ch, raw, err := txn.FirstWatch(tableDevices, indexSPIFFEID, spiffeID)
	if err != nil {
		return nil, nil, fmt.Errorf("registry: lookup: %w", err)
	}
	if raw == nil {
		return nil, ch, fmt.Errorf("%w: %s", ErrNotFound, quote(spiffeID))
	}
	return raw.(*Device).Clone(), ch, nil
}
