package registry

import (
	"fmt"
	"maps"
	"slices"
	"strings"
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
	// now is the store's clock (time.Now; tests move it).
	now func() time.Time
	// beforeCommit, when set (by tests), runs at the end of every bbolt
	// write transaction; an error rolls the whole transaction back.
	beforeCommit func(tx *bbolt.Tx) error
	// repl is the replicated log this store follows; nil for a single node.
	repl *replica
}

// Open opens (creating if needed) the bbolt file at path and loads memdb from
// it. A new file is created 0600 in a directory created 0700. Any record
// that does not decode or validate fails Open with an error naming its key.
// Expired bootstrap tokens are pruned (a bounded number per Open).
func Open(path string) (*Store, error) {
	s, err := openStore(path)
	if err != nil {
		return nil, err
	}
	if err := s.pruneExpired(path); err != nil {
		return nil, err
	}
	return s, nil
}

// openStore opens the bbolt file and loads memdb from it.
func openStore(path string) (*Store, error) {
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
	s := &Store{bolt: bdb, db: db, now: time.Now}
	s.count.Store(int64(n))
	ch := make(chan struct{})
	s.watch.Store(&ch)
	return s, nil
}

// pruneExpired removes expired tokens at open; on failure it closes s.
func (s *Store) pruneExpired(path string) error {
	if err := s.write(func(w *writeTxn) error {
		_, err := w.pruneTokens(w.now, pruneOnOpen)
		return err
	}); err != nil {
		_ = s.Close()
		return fmt.Errorf("registry: open %s: prune expired tokens: %w", path, err)
	}
	return nil
}

// Close closes the bbolt file and wakes every Watch channel. Later calls on
// the store return ErrClosed; a second Close returns nil.
func (s *Store) Close() error {
	// The follower applies under s.mu: stop it before taking the lock.
	if s.repl != nil {
		s.repl.stop()
	}
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

// Create adds a device (status active unless set). Durable, with its audit
// entry, before it returns. The caller must fill SPIFFEID; CreatedAt and
// UpdatedAt are set here (UTC).
func (s *Store) Create(d Device, opts ...WriteOption) (*Device, error) {
	dev, err := normalize(d)
	if err != nil {
		return nil, err
	}
	o, err := options(opts)
	if err != nil {
		return nil, err
	}
	err = s.write(func(w *writeTxn) error {
		if err := checkNew(w.mem, dev); err != nil {
			return err
		}
		dev.CreatedAt, dev.UpdatedAt = w.now, w.now
		if err := w.putDevice(dev, true); err != nil {
			return err
		}
		w.record(o, ActionDeviceCreate, dev.Name, describe(dev))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return dev.Clone(), nil
}

// checkNew refuses a device whose name or SPIFFE ID is taken: memdb does not
// enforce unique indexes itself.
func checkNew(txn *memdb.Txn, dev *Device) error {
	if existing, err := lookup(txn, indexID, dev.Name); err != nil {
		return err
	} else if existing != nil {
		return fmt.Errorf("%w: name %s is taken", ErrExists, quote(dev.Name))
	}
	if existing, err := lookup(txn, indexSPIFFEID, dev.SPIFFEID); err != nil {
		return err
	} else if existing != nil {
		return fmt.Errorf("%w: spiffe_id %s is used by device %s",
			ErrExists, quote(dev.SPIFFEID), quote(existing.Name))
	}
	return nil
}

// describe is the audit detail of a new device.
func describe(d *Device) string {
	return fmt.Sprintf("spiffe_id %s, status %s, labels {%s}", d.SPIFFEID, d.Status, formatLabels(d.Labels))
}

// formatLabels renders labels as sorted k=v pairs (the selector syntax).
func formatLabels(labels map[string]string) string {
	pairs := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		pairs = append(pairs, k+"="+labels[k])
	}
	return strings.Join(pairs, ",")
}

// SetStatus moves a device to st. active and suspended may be exchanged
// freely; revoked is final (ErrRevoked). A pending device may only be
// revoked: it becomes active by redeeming its bootstrap token, never by
// SetStatus (ErrPending), and no device becomes pending again (ErrInvalid).
// Revoking a device also removes its bootstrap token. Setting the current
// status is a no-op that writes nothing and fires no watch.
func (s *Store) SetStatus(name string, st Status, opts ...WriteOption) (*Device, error) {
	if !st.Valid() {
		return nil, fmt.Errorf("%w: status %s: %s", ErrInvalid, quote(string(st)), statusRule)
	}
	o, err := options(opts)
	if err != nil {
		return nil, err
	}
	return s.update(name, func(w *writeTxn, cur *Device) (*Device, error) {
		if cur.Status == st {
			return nil, nil
		}
		switch {
		case cur.Status == StatusRevoked:
			return nil, fmt.Errorf("%w: %s cannot become %s", ErrRevoked, quote(name), st)
		case st == StatusPending:
			return nil, fmt.Errorf("%w: status pending is set only by a bootstrap token for a new device; %s is %s",
				ErrInvalid, quote(name), cur.Status)
		case cur.Status == StatusPending && st != StatusRevoked:
			return nil, fmt.Errorf("%w: %s becomes active only by redeeming its bootstrap token; it may be revoked or deleted",
				ErrPending, quote(name))
		}
		if st == StatusRevoked {
			if err := w.deleteTokenOf(name); err != nil {
				return nil, err
			}
		}
		next := cur.Clone()
		next.Status = st
		w.record(o, statusAction(st), name, fmt.Sprintf("%s -> %s", cur.Status, st))
		return next, nil
	})
}

func statusAction(st Status) string {
	switch st {
	case StatusRevoked:
		return ActionDeviceRevoke
	case StatusSuspended:
		return ActionDeviceSuspend
	default:
		return ActionDeviceResume
	}
}

// SetLabels replaces all labels of a device. The same labels again are a no-op.
func (s *Store) SetLabels(name string, labels map[string]string, opts ...WriteOption) (*Device, error) {
	if err := validateLabels(labels); err != nil {
		return nil, err
	}
	o, err := options(opts)
	if err != nil {
		return nil, err
	}
	labels = cloneLabels(labels)
	return s.update(name, func(w *writeTxn, cur *Device) (*Device, error) {
		if maps.Equal(cur.Labels, labels) {
			return nil, nil
		}
		next := *cur
		next.Labels = labels
		w.record(o, ActionDeviceLabels, name, fmt.Sprintf("{%s} -> {%s}", formatLabels(cur.Labels), formatLabels(labels)))
		return &next, nil
	})
}

// update applies change to the stored device under the writer lock. change
// returns the new record, or nil for no change; it may stage more in w (its
// audit entry, a token removal).
func (s *Store) update(name string, change func(w *writeTxn, cur *Device) (*Device, error)) (*Device, error) {
	var out *Device
	err := s.write(func(w *writeTxn) error {
		cur, err := first(w.mem, indexID, name)
		if err != nil {
			return err
		}
		next, err := change(w, cur)
		if err != nil {
			return err
		}
		if next == nil {
			out = cur.Clone()
			return nil
		}
		next.UpdatedAt = w.now
		if err := w.putDevice(next, false); err != nil {
			return err
		}
		out = next.Clone()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Delete removes a device, and its bootstrap token if it has one. A revoked
// device cannot be deleted (ErrRevoked): its record keeps the name and SPIFFE
// ID from being enrolled again, which would make the revoked SVIDs valid once
// more.
func (s *Store) Delete(name string, opts ...WriteOption) error {
	o, err := options(opts)
	if err != nil {
		return err
	}
	return s.write(func(w *writeTxn) error {
		cur, err := first(w.mem, indexID, name)
		if err != nil {
			return err
		}
		if cur.Status == StatusRevoked {
			return fmt.Errorf("%w: %s is kept so that its name and spiffe_id are never reused", ErrRevoked, quote(name))
		}
		if err := w.deleteDevice(cur); err != nil {
			return err
		}
		w.record(o, ActionDeviceDelete, name, fmt.Sprintf("was %s, %s", cur.Status, cur.SPIFFEID))
		return nil
	})
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
