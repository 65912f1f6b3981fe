package registry

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

// Replication.
//
// In a cluster every node's registry is a replica of one totally ordered log
// (a JetStream stream, see package cluster). A write is staged in memdb as
// on a single node, then offered to the log as one record holding its
// resulting state (the bbolt operations and the audit entries without IDs),
// on the condition that the log still ends where this node last applied.
// If another node wrote first, the staged change is dropped, the node
// catches up and the write is staged again on the newer state: checks such
// as "name is free" or "token unused" are always made against the whole
// history before the record, so two nodes can never both create one name or
// both redeem one token. Records from other nodes are applied by a
// follower, in log order, to bbolt (audit IDs come from the local bucket
// sequence, so the same order yields the same IDs everywhere) and memdb,
// firing Watch and WatchDevice like a local write.
//
// The bbolt file is a checkpoint: it records the sequence and ID of the last
// record applied, and a restarted node follows the log from there.
//
// Without a quorum the log refuses appends, and so every write fails with
// ErrNoQuorum; reads keep serving the state last applied. A node cut off
// from the majority therefore serves what it last knew, for as long as it
// is cut off, but never diverges.

// Log is a totally ordered, replicated log of registry changes (implemented
// by package cluster).
type Log interface {
	// Append stores rec as the record after sequence expect, only if the
	// log's last sequence is still expect: otherwise ErrLogConflict
	// (another node wrote first). id deduplicates a retried Append of the
	// same record. An error matching ErrNoQuorum means the log cannot
	// accept writes now.
	Append(ctx context.Context, id string, expect uint64, rec []byte) (seq uint64, err error)
	// Follow calls apply, in order, for every record after sequence after,
	// until ctx ends or apply fails (and then returns apply's error).
	Follow(ctx context.Context, after uint64, apply func(seq uint64, rec []byte) error) error
	// Last returns the log's last sequence (0 when empty), asking the
	// leader (fails, matching ErrNoQuorum, without a quorum).
	Last(ctx context.Context) (uint64, error)
}

var (
	// ErrLogConflict is returned by Log.Append when the log has moved past
	// the expected sequence, and by a write that kept losing that race.
	ErrLogConflict = errors.New("registry: replicated log moved on: another node wrote first")
	// ErrNoQuorum is matched by a write refused because the cluster has no
	// quorum (a Log reports it by wrapping it). Nothing was written.
	ErrNoQuorum = errors.New("registry: cluster has no quorum; write refused")
	// ErrRecordTooLarge is matched by a change too large for one log
	// record (a Log reports it by wrapping it). Import splits its batches
	// until they fit; a single change that cannot fit is refused.
	ErrRecordTooLarge = errors.New("registry: change too large for one replicated log record")
	// ErrReplicationStopped is matched by every write after the follower
	// met a log record it cannot apply: the node serves what it had and
	// refuses writes until it is restarted with a build that reads it.
	ErrReplicationStopped = errors.New("registry: replication stopped")
)

// ReplicaOptions tunes OpenReplicated. Zero values take the defaults.
type ReplicaOptions struct {
	// WriteTimeout bounds one write's calls to the log, retries after a
	// conflict included (default 5 s).
	WriteTimeout time.Duration
	// OpenTimeout bounds OpenReplicated's checks of the log and its catch-up
	// with it (default 60 s).
	OpenTimeout time.Duration
	// Logger receives the follower's errors (nil discards them).
	Logger *slog.Logger
}

const (
	defaultWriteTimeout = 5 * time.Second
	defaultOpenTimeout  = 60 * time.Second
	// maxConflictRetries bounds how often a write is staged again after
	// another node wrote first: under heavy contention a caller gets an
	// error instead of an unbounded wait.
	maxConflictRetries = 10
	lastAttemptTimeout = 2 * time.Second
	followRetryMin     = 100 * time.Millisecond
	followRetryMax     = 2 * time.Second
	// recordFormat is the version of the log record encoding.
	recordFormat = 1
)

// replica is the replication state of a Store.
type replica struct {
	log  Log
	opts ReplicaOptions
	// applied is the sequence of the last record applied (written under
	// Store.mu, read anywhere).
	applied atomic.Uint64
	// progress is closed and replaced after each applied record and when
	// replication stops, to wake writers waiting to catch up.
	progress atomic.Pointer[chan struct{}]
	failed   atomic.Pointer[error]

	cancel   context.CancelFunc
	done     chan struct{} // closed when the follower has returned
	stopOnce sync.Once
}

// OpenReplicated opens the bbolt file at path as the local checkpoint of the
// replicated log l: it loads the file (as Open does), checks that the file
// belongs to this log, applies the records it has not seen, and keeps
// following the log until Close. Writes go through the log (see Log).
//
// It refuses a file written by a single-node Open (its state is not in the
// log), a checkpoint beyond the end of the log (the cluster's state was
// wiped, or the file belongs to another cluster) and a checkpoint whose last
// record differs from the log's record at that sequence.
func OpenReplicated(path string, l Log, o ReplicaOptions) (*Store, error) {
	if l == nil {
		return nil, errors.New("registry: open replicated: no log")
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = defaultWriteTimeout
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = defaultOpenTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := openStore(path)
	if err != nil {
		return nil, err
	}
	if err := s.startReplica(l, o); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("registry: open %s: %w", path, err)
	}
	if err := s.pruneExpired(path); err != nil {
		return nil, err
	}
	return s, nil
}

// startReplica checks the checkpoint against the log, starts the follower
// and waits until it has applied the log as it was at open.
func (s *Store) startReplica(l Log, o ReplicaOptions) error {
	seq, id, err := readCheckpoint(s.bolt)
	if err != nil {
		return err
	}
	if seq == 0 {
		if err := s.checkEmpty(); err != nil {
			return err
		}
	}
	r := &replica{log: l, opts: o}
	r.applied.Store(seq)
	ch := make(chan struct{})
	r.progress.Store(&ch)

	ctx, cancel := context.WithTimeout(context.Background(), o.OpenTimeout)
	defer cancel()
	last, err := lastWhenLed(ctx, l)
	if err != nil {
		return fmt.Errorf("read the replicated log: %w", err)
	}
	if seq > last {
		return fmt.Errorf("local checkpoint is at log record %d but the log ends at %d: "+
			"the cluster's registry was wiped or this file belongs to another cluster; refusing to start", seq, last)
	}
	if seq > 0 {
		if err := r.verify(ctx, seq, id); err != nil {
			return err
		}
	}
	s.repl = r
	fctx, fcancel := context.WithCancel(context.Background())
	r.cancel, r.done = fcancel, make(chan struct{})
	go s.follow(fctx)
	if err := s.waitApplied(ctx, last); err != nil {
		return fmt.Errorf("catch up with the replicated log: %w", err)
	}
	return nil
}

// errVerified stops the Follow of verify after the one record it reads.
var errVerified = errors.New("verified")

// verify checks that the log's record at seq is the one the checkpoint
// applied: the same sequence alone does not prove the same history.
func (r *replica) verify(ctx context.Context, seq uint64, id string) error {
	err := r.log.Follow(ctx, seq-1, func(got uint64, rec []byte) error {
		if got != seq {
			return fmt.Errorf("log delivered record %d, want %d", got, seq)
		}
		ch, err := decodeChange(rec)
		if err != nil {
			return fmt.Errorf("log record %d: %w", seq, err)
		}
		if ch.ID != id {
			return fmt.Errorf("log record %d is %q but this checkpoint applied %q: the file belongs to another log; refusing to start",
				seq, ch.ID, id)
		}
		return errVerified
	})
	if errors.Is(err, errVerified) {
		return nil
	}
	return fmt.Errorf("check the checkpoint against the log: %w", err)
}

// checkEmpty refuses a file without a checkpoint that holds state: it was
// written by a single-node gateway, and the other nodes would never see it.
func (s *Store) checkEmpty() error {
	txn := s.db.Txn(false)
	defer txn.Abort()
	tok, err := txn.First(tableTokens, indexID)
	if err != nil {
		return fmt.Errorf("lookup token: %w", err)
	}
	var audited uint64
	_ = s.bolt.View(func(tx *bbolt.Tx) error {
		audited = tx.Bucket(bucketAudit).Sequence()
		return nil
	})
	if s.count.Load() > 0 || tok != nil || audited > 0 {
		return fmt.Errorf("file holds %d devices and %d audit entries but no replication checkpoint: "+
			"it was written by a single-node gateway; start a cluster node from an empty file (import the devices through the API)",
			s.count.Load(), audited)
	}
	return nil
}

// stop ends the follower and waits for it.
func (r *replica) stop() {
	r.stopOnce.Do(func() {
		if r.cancel == nil {
			return
		}
		r.cancel()
		<-r.done
	})
}

func (r *replica) failure() error {
	if p := r.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail stops writes for good (first error wins) and wakes waiters.
func (r *replica) fail(err error) {
	err = fmt.Errorf("%w: %w", ErrReplicationStopped, err)
	if r.failed.CompareAndSwap(nil, &err) {
		r.opts.Logger.Error("registry: replication stopped; writes are refused until restart", "err", err)
	}
	r.wake()
}

func (r *replica) wake() {
	next := make(chan struct{})
	close(*r.progress.Swap(&next))
}

// setApplied records that record seq is applied (on disk with its
// checkpoint). Under s.mu.
func (r *replica) setApplied(seq uint64) {
	r.applied.Store(seq)
	r.wake()
}

// waitApplied waits until the follower has applied record target.
func (s *Store) waitApplied(ctx context.Context, target uint64) error {
	r := s.repl
	for {
		ch := *r.progress.Load()
		at := r.applied.Load()
		if at >= target {
			return nil
		}
		if err := r.failure(); err != nil {
			return err
		}
		if s.closed.Load() {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("registry: applied log record %d of %d: %w", at, target, ctx.Err())
		}
	}
}

// writeReplicated is write for a replicated store: the change is applied
// locally only once the log has it, right after everything the log had
// before it.
func (s *Store) writeReplicated(fn func(w *writeTxn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.repl.opts.WriteTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		done, err := s.tryAppend(ctx, fn)
		if done {
			return err
		}
		if attempt == maxConflictRetries {
			return fmt.Errorf("registry: write lost the race to other nodes %d times: %w", attempt, ErrLogConflict)
		}
		if err := s.catchUp(ctx); err != nil {
			return err
		}
		// Nodes that lost together would stage again together: a short
		// random pause lets one of them through first.
		pause := time.Duration(1+mrand.IntN(10*attempt)) * time.Millisecond
		select {
		case <-ctx.Done():
			return logError(ctx.Err())
		case <-time.After(pause):
		}
	}
}

// lastWhenLed asks the log for its end, again while it answers that it has
// no quorum: a stream just created elects its leader a moment later, and
// the nodes of a cluster open their registries as they start together.
func lastWhenLed(ctx context.Context, l Log) (uint64, error) {
	for {
		// Each attempt bounded: a request sent while the stream's first
		// leader is being elected may go unanswered.
		actx, cancel := context.WithTimeout(ctx, lastAttemptTimeout)
		last, err := l.Last(actx)
		cancel()
		if err == nil || !errors.Is(err, ErrNoQuorum) {
			return last, err
		}
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// catchUp waits until this node has applied the log up to its current end.
func (s *Store) catchUp(ctx context.Context) error {
	last, err := s.repl.log.Last(ctx)
	if err != nil {
		return logError(err)
	}
	return s.waitApplied(ctx, last)
}

// logError classifies an error of the log: no quorum (including the
// write's own deadline) or anything else.
func logError(err error) error {
	if errors.Is(err, ErrNoQuorum) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrNoQuorum, err)
	}
	return fmt.Errorf("registry: replicated log: %w", err)
}

// tryAppend stages fn's change and appends it to the log; done is false
// when another node wrote first (nothing happened; try again).
func (s *Store) tryAppend(ctx context.Context, fn func(w *writeTxn) error) (done bool, err error) {
	r := s.repl
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return true, ErrClosed
	}
	if err := r.failure(); err != nil {
		return true, err
	}
	w := &writeTxn{mem: s.db.Txn(true), now: s.now().UTC()}
	defer w.mem.Abort()
	if err := fn(w); err != nil {
		return true, err
	}
	if w.empty() {
		return true, nil
	}
	w.id = newRecordID()
	rec, err := encodeChange(w)
	if err != nil {
		return true, err
	}
	expect := r.applied.Load()
	seq, err := r.log.Append(ctx, w.id, expect, rec)
	switch {
	case errors.Is(err, ErrLogConflict):
		return false, nil
	case err != nil:
		return true, logError(err)
	case seq != expect+1:
		err := fmt.Errorf("log stored record %s as %d, expected %d", w.id, seq, expect+1)
		r.fail(err)
		return true, r.failure()
	}
	w.seq = seq
	if err := s.persist(w); err != nil {
		// The log has the record: the follower applies it from there, or
		// stops on the same disk error.
		return true, err
	}
	r.setApplied(seq)
	s.commit(w)
	return true, nil
}

func newRecordID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b)
}

// fatalError marks a record that cannot be applied: skipping it would make
// this node diverge, so the follower stops.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// follow applies the log's records until ctx ends, resuming after
// transient errors (lost quorum, a restarted stream leader) from the last
// applied record.
func (s *Store) follow(ctx context.Context) {
	r := s.repl
	defer close(r.done)
	wait := followRetryMin
	for ctx.Err() == nil {
		err := r.log.Follow(ctx, r.applied.Load(), s.applyRecord)
		if ctx.Err() != nil || errors.Is(err, ErrClosed) {
			return
		}
		var fatal *fatalError
		if errors.As(err, &fatal) {
			r.fail(fatal.err)
			return
		}
		r.opts.Logger.Warn("registry: following the replicated log failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, followRetryMax)
	}
}

// applyRecord applies log record seq unless this node already has it
// (its own writes come back through Follow).
func (s *Store) applyRecord(seq uint64, rec []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	r := s.repl
	at := r.applied.Load()
	if seq <= at {
		return nil
	}
	if seq != at+1 {
		return &fatalError{fmt.Errorf("log record %d follows %d: records are missing", seq, at)}
	}
	ch, err := decodeChange(rec)
	if err != nil {
		return &fatalError{fmt.Errorf("log record %d: %w", seq, err)}
	}
	w := &writeTxn{mem: s.db.Txn(true), seq: seq, id: ch.ID}
	defer w.mem.Abort()
	if err := w.replay(ch); err != nil {
		return &fatalError{fmt.Errorf("log record %d: %w", seq, err)}
	}
	if err := s.persist(w); err != nil {
		return &fatalError{fmt.Errorf("log record %d: %w", seq, err)}
	}
	r.setApplied(seq)
	s.commit(w)
	return nil
}

// readCheckpoint returns the last applied log record (0, "" for none).
func readCheckpoint(bdb *bbolt.DB) (seq uint64, id string, err error) {
	err = bdb.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		v := meta.Get(keyAppliedSeq)
		if v == nil {
			return nil
		}
		if len(v) != 8 {
			return fmt.Errorf("meta %s is %d bytes, want 8", keyAppliedSeq, len(v))
		}
		seq, id = binary.BigEndian.Uint64(v), string(meta.Get(keyAppliedID))
		return nil
	})
	if err != nil {
		return 0, "", fmt.Errorf("registry: read checkpoint: %w", err)
	}
	return seq, id, nil
}

func putCheckpoint(tx *bbolt.Tx, seq uint64, id string) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return errors.New("bucket meta missing")
	}
	if err := meta.Put(keyAppliedSeq, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
		return err
	}
	return meta.Put(keyAppliedID, []byte(id))
}
