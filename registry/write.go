package registry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-memdb"
	"go.etcd.io/bbolt"
)

// writeTxn is one change being staged: the memdb half in mem, the bbolt half
// as a list of operations and audit entries that persist applies in one
// bbolt transaction. Nothing is visible to readers until commit.
type writeTxn struct {
	mem   *memdb.Txn
	now   time.Time // UTC, the time of this change
	ops   []diskOp
	audit []AuditEntry
	// delta is the change in the number of devices; devices is whether any
	// device record changed (and so whether Watch fires).
	delta   int64
	devices bool
	// seq and id, on a replicated store, are the log record this change
	// is: persist checkpoints them with the change.
	seq uint64
	id  string
}

type diskOp struct {
	bucket []byte
	key    []byte
	val    []byte // nil: delete
	// mustBeNew refuses to overwrite: a memdb that lost track of a record
	// never silently replaces it on disk.
	mustBeNew bool
}

func (w *writeTxn) empty() bool { return len(w.ops) == 0 && len(w.audit) == 0 }

// putDevice stores d (a new record when isNew).
// Encoding comes first, so that a failure stages nothing in either half.
func (w *writeTxn) putDevice(d *Device, isNew bool) error {
	val, err := encode(d)
	if err != nil {
		return err
	}
	if err := w.mem.Insert(tableDevices, d); err != nil {
		return fmt.Errorf("registry: insert: %w", err)
	}
	w.ops = append(w.ops, diskOp{bucket: bucketDevices, key: []byte(d.Name), val: val, mustBeNew: isNew})
	w.devices = true
	if isNew {
		w.delta++
	}
	return nil
}

// deleteDevice removes d and the token that would enroll it: a token must
// never outlive its device, or it could enroll a later device of that name.
func (w *writeTxn) deleteDevice(d *Device) error {
	if err := w.deleteTokenOf(d.Name); err != nil {
		return err
	}
	if err := w.mem.Delete(tableDevices, d); err != nil {
		return fmt.Errorf("registry: delete: %w", err)
	}
	w.ops = append(w.ops, diskOp{bucket: bucketDevices, key: []byte(d.Name)})
	w.devices = true
	w.delta--
	return nil
}

func (w *writeTxn) putToken(t *token, isNew bool) error {
	val, err := encodeToken(t)
	if err != nil {
		return err
	}
	if err := w.mem.Insert(tableTokens, t); err != nil {
		return fmt.Errorf("registry: insert token: %w", err)
	}
	w.ops = append(w.ops, diskOp{bucket: bucketTokens, key: []byte(t.ID), val: val, mustBeNew: isNew})
	return nil
}

func (w *writeTxn) deleteToken(t *token) error {
	if err := w.mem.Delete(tableTokens, t); err != nil {
		return fmt.Errorf("registry: delete token: %w", err)
	}
	w.ops = append(w.ops, diskOp{bucket: bucketTokens, key: []byte(t.ID)})
	return nil
}

// deleteTokenOf removes the token of device name, if it has one.
func (w *writeTxn) deleteTokenOf(name string) error {
	t, err := tokenOf(w.mem, name)
	if err != nil || t == nil {
		return err
	}
	return w.deleteToken(t)
}

// pruneTokens removes at most limit tokens that expired before now, oldest
// first; the expiry index makes the work proportional to what is removed.
func (w *writeTxn) pruneTokens(now time.Time, limit int) (int, error) {
	it, err := w.mem.Get(tableTokens, indexExpires)
	if err != nil {
		return 0, fmt.Errorf("registry: prune tokens: %w", err)
	}
	// Collect first: deleting while iterating the same index is not allowed.
	var expired []*token
	for raw := it.Next(); raw != nil && len(expired) < limit; raw = it.Next() {
		t := raw.(*token)
		if t.ExpiresAt.After(now) {
			break
		}
		expired = append(expired, t)
	}
	for _, t := range expired {
		if err := w.deleteToken(t); err != nil {
			return 0, err
		}
	}
	return len(expired), nil
}

// record stages an audit entry for this change.
func (w *writeTxn) record(o writeOptions, action, target, detail string) {
	w.audit = append(w.audit, o.entry(w.now, action, target, detail))
}

// write runs fn under the writer lock. fn stages a change in w (or returns
// an error, and nothing happens). A staged change is committed to bbolt,
// fsync included, and only then to memdb: memory never runs ahead of the
// disk. A change that stages nothing is a no-op.
func (s *Store) write(fn func(w *writeTxn) error) error {
	if s.repl != nil {
		return s.writeReplicated(fn)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	w := &writeTxn{mem: s.db.Txn(true), now: s.now().UTC()}
	defer w.mem.Abort()
	if err := fn(w); err != nil {
		return err
	}
	if w.empty() {
		return nil
	}
	if err := s.persist(w); err != nil {
		return err
	}
	s.commit(w)
	return nil
}

// persist applies the bbolt half of w in one transaction. Audit entries get
// their IDs here, from the audit bucket's sequence: a transaction that rolls
// back takes its sequence numbers with it, so IDs have no gaps.
func (s *Store) persist(w *writeTxn) error {
	err := s.bolt.Update(func(tx *bbolt.Tx) error {
		for _, op := range w.ops {
			b := tx.Bucket(op.bucket)
			if b == nil {
				return fmt.Errorf("bucket %s missing", op.bucket)
			}
			switch {
			case op.val == nil:
				if err := b.Delete(op.key); err != nil {
					return err
				}
			case op.mustBeNew && b.Get(op.key) != nil:
				return fmt.Errorf("record %s already on disk in %s", quote(string(op.key)), op.bucket)
			default:
				if err := b.Put(op.key, op.val); err != nil {
					return err
				}
			}
		}
		if len(w.audit) > 0 {
			b := tx.Bucket(bucketAudit)
			if b == nil {
				return errors.New("bucket audit missing")
			}
			for i := range w.audit {
				seq, err := b.NextSequence()
				if err != nil {
					return err
				}
				w.audit[i].ID = seq
				val, err := encodeAudit(&w.audit[i])
				if err != nil {
					return err
				}
				if err := b.Put(auditKey(seq), val); err != nil {
					return err
				}
			}
		}
		if w.seq != 0 {
			if err := putCheckpoint(tx, w.seq, w.id); err != nil {
				return err
			}
		}
		if s.beforeCommit != nil {
			return s.beforeCommit(tx)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("registry: write to disk: %w", err)
	}
	return nil
}

// commit makes a change that is already on disk visible in memory and, if a
// device changed, wakes the watchers once it is.
func (s *Store) commit(w *writeTxn) {
	if w.devices {
		delta := w.delta
		w.mem.Defer(func() {
			s.count.Add(delta)
			next := make(chan struct{})
			close(*s.watch.Swap(&next))
		})
	}
	w.mem.Commit()
}

func auditKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}
