package registry

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memLog is an in-memory Log shared by the Stores of one test, standing in
// for the JetStream stream of package cluster.
type memLog struct {
	mu      sync.Mutex
	recs    [][]byte
	ids     map[string]uint64
	changed chan struct{}
	// appendErr and lastErr, when set, are returned by Append and Last.
	appendErr error
	lastErr   error
	// alwaysConflict makes every Append lose the race.
	alwaysConflict bool
	// maxRecord, when set, refuses larger records (as NATS's max payload).
	maxRecord int
	conflicts int
	// beforeAppend, when set, runs once before the next Append is decided:
	// tests let another node write first in there.
	beforeAppend func()
}

func newMemLog() *memLog {
	return &memLog{ids: map[string]uint64{}, changed: make(chan struct{})}
}

func (l *memLog) Append(ctx context.Context, id string, expect uint64, rec []byte) (uint64, error) {
	l.mu.Lock()
	hook := l.beforeAppend
	l.beforeAppend = nil
	l.mu.Unlock()
	if hook != nil {
		hook()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.appendErr != nil {
		return 0, l.appendErr
	}
	if l.maxRecord > 0 && len(rec) > l.maxRecord {
		return 0, fmt.Errorf("fake log: %d bytes: %w", len(rec), ErrRecordTooLarge)
	}
	if seq, ok := l.ids[id]; ok {
		return seq, nil
	}
	if l.alwaysConflict || expect != uint64(len(l.recs)) {
		l.conflicts++
		return 0, ErrLogConflict
	}
	return l.appendLocked(id, rec), nil
}

func (l *memLog) appendLocked(id string, rec []byte) uint64 {
	l.recs = append(l.recs, append([]byte(nil), rec...))
	seq := uint64(len(l.recs))
	if id != "" {
		l.ids[id] = seq
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return seq
}

// inject appends rec as if some other build had written it.
func (l *memLog) inject(rec []byte) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.appendLocked("", rec)
}

func (l *memLog) Follow(ctx context.Context, after uint64, apply func(uint64, []byte) error) error {
	next := after + 1
	for {
		l.mu.Lock()
		ch := l.changed
		var batch [][]byte
		if next <= uint64(len(l.recs)) {
			batch = l.recs[next-1:]
		}
		l.mu.Unlock()
		for _, rec := range batch {
			if err := apply(next, rec); err != nil {
				return err
			}
			next++
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *memLog) Last(ctx context.Context) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lastErr != nil {
		return 0, l.lastErr
	}
	return uint64(len(l.recs)), nil
}

func (l *memLog) set(f func(l *memLog)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l)
}

var testReplicaOptions = ReplicaOptions{WriteTimeout: 5 * time.Second, OpenTimeout: 5 * time.Second}

func openReplicated(t testing.TB, path string, l Log) *Store {
	t.Helper()
	s, err := OpenReplicated(path, l, testReplicaOptions)
	if err != nil {
		t.Fatalf("OpenReplicated: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// replicas opens n Stores (nodes) on one log, each with its own file.
func replicas(t testing.TB, l Log, n int) ([]*Store, []string) {
	t.Helper()
	stores := make([]*Store, n)
	paths := make([]string, n)
	for i := range n {
		paths[i] = filepath.Join(t.TempDir(), fmt.Sprintf("node%d.db", i))
		stores[i] = openReplicated(t, paths[i], l)
	}
	return stores, paths
}

// waitFor polls cond (bounded) until it holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitDevice waits until s serves a device called name.
func waitDevice(t testing.TB, s *Store, name string) *Device {
	t.Helper()
	var d *Device
	waitFor(t, "device "+name, func() bool {
		var err error
		d, err = s.Get(name)
		return err == nil
	})
	return d
}

// TestReplicatedWritesReachOtherNodes: a change on one node is applied by
// the others, watchers fire there, and audit IDs agree everywhere.
func TestReplicatedWritesReachOtherNodes(t *testing.T) {
	l := newMemLog()
	s, _ := replicas(t, l, 3)
	a, b, c := s[0], s[1], s[2]

	_, ch, err := c.WatchDevice(td + "/device/cam")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("WatchDevice before create: %v, want ErrNotFound", err)
	}
	if _, err := a.Create(device("cam", "role", "camera"), WithActor(td+"/admin/alice")); err != nil {
		t.Fatalf("Create on a: %v", err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchDevice on c did not fire after a create on a")
	}
	got := waitDevice(t, c, "cam")
	want, _ := a.Get("cam")
	if err := sameDevice(got, want); err != nil {
		t.Fatalf("c serves %v", err)
	}
	if c.Len() != 1 {
		t.Fatalf("c.Len() = %d, want 1", c.Len())
	}

	_, ch, err = a.WatchDevice(td + "/device/cam")
	if err != nil {
		t.Fatalf("WatchDevice on a: %v", err)
	}
	if _, err := b.SetStatus("cam", StatusRevoked); err != nil {
		t.Fatalf("revoke on b: %v", err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchDevice on a did not fire after a revoke on b")
	}
	if d, _ := a.Get("cam"); d.Status != StatusRevoked {
		t.Fatalf("a sees status %s, want revoked", d.Status)
	}
	if err := c.RecordAudit(AuditEntry{Action: "svid.issue", Target: "cam", Result: ResultOK}); err != nil {
		t.Fatalf("RecordAudit on c: %v", err)
	}
	waitFor(t, "audit on every node", func() bool {
		for _, st := range s {
			if e, _ := st.ListAudit(0, 0); len(e) != 3 {
				return false
			}
		}
		return true
	})
	ref := allAudit(t, a)
	for i, st := range s[1:] {
		got := allAudit(t, st)
		if fmt.Sprint(got) != fmt.Sprint(ref) {
			t.Fatalf("node %d audit\n%v\nwant\n%v", i+1, got, ref)
		}
	}
	if ref[0].ID != 1 || ref[2].ID != 3 || ref[2].Action != "svid.issue" {
		t.Fatalf("audit = %+v", ref)
	}
}

// TestReplicatedConflictRetry: when another node appends first, the write
// is staged again on the newer state: a different name still succeeds, the
// same name gets ErrExists, and nothing is applied twice.
func TestReplicatedConflictRetry(t *testing.T) {
	for _, tc := range []struct {
		name    string
		other   string
		wantErr error
	}{
		{"different name", "other", nil},
		{"same name", "cam", ErrExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newMemLog()
			s, _ := replicas(t, l, 2)
			a, b := s[0], s[1]
			l.set(func(l *memLog) {
				l.beforeAppend = func() {
					if _, err := b.Create(device(tc.other)); err != nil {
						t.Errorf("Create on b: %v", err)
					}
				}
			})
			_, err := a.Create(device("cam"))
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Create on a: %v, want %v", err, tc.wantErr)
			}
			l.set(func(l *memLog) {
				if l.conflicts != 1 {
					t.Errorf("conflicts = %d, want 1", l.conflicts)
				}
			})
			want := 2
			if tc.wantErr != nil {
				want = 1
			}
			for i, st := range s {
				waitFor(t, "both nodes", func() bool { return st.Len() == want })
				if _, err := st.Get("cam"); err != nil {
					t.Fatalf("node %d: Get(cam): %v", i, err)
				}
				if n := len(allAudit(t, st)); n != want {
					t.Fatalf("node %d: %d audit entries, want %d", i, n, want)
				}
			}
		})
	}
}

// TestReplicatedConflictGivesUp: a write that keeps losing the race ends
// with ErrLogConflict after a bounded number of attempts, changing nothing.
func TestReplicatedConflictGivesUp(t *testing.T) {
	l := newMemLog()
	s, _ := replicas(t, l, 1)
	l.set(func(l *memLog) { l.alwaysConflict = true })
	_, err := s[0].Create(device("cam"))
	if !errors.Is(err, ErrLogConflict) {
		t.Fatalf("Create: %v, want ErrLogConflict", err)
	}
	l.set(func(l *memLog) {
		if l.conflicts != maxConflictRetries {
			t.Errorf("attempts = %d, want %d", l.conflicts, maxConflictRetries)
		}
		l.alwaysConflict = false
	})
	if _, err := s[0].Get("cam"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after refused write: %v, want ErrNotFound", err)
	}
	mustCreate(t, s[0], device("cam")) // positive control
}

// TestReplicatedNoQuorum: a write the log refuses for lack of quorum fails
// with ErrNoQuorum and changes nothing; reads keep serving.
func TestReplicatedNoQuorum(t *testing.T) {
	l := newMemLog()
	s, _ := replicas(t, l, 1)
	mustCreate(t, s[0], device("old"))
	l.set(func(l *memLog) { l.appendErr = fmt.Errorf("fake log: %w", ErrNoQuorum) })
	_, err := s[0].Create(device("new"))
	if !errors.Is(err, ErrNoQuorum) || !strings.HasPrefix(err.Error(), "registry: cluster has no quorum; write refused: ") {
		t.Fatalf("Create: %v, want ErrNoQuorum", err)
	}
	if _, err := s[0].Get("new"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(new): %v, want ErrNotFound", err)
	}
	if _, err := s[0].Get("old"); err != nil {
		t.Fatalf("Get(old) without quorum: %v", err)
	}
	l.set(func(l *memLog) { l.appendErr = nil })
	mustCreate(t, s[0], device("new"))
}

// TestReplicatedUndecodableRecordStopsWrites: a record this build cannot
// read stops replication and every later write (fail closed); reads serve
// the state before it.
func TestReplicatedUndecodableRecordStopsWrites(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  string
	}{
		{"garbage", "not json"},
		{"future format", `{"format":2,"id":"x"}`},
		{"unknown field", `{"format":1,"id":"x","ops":[],"color":"red"}`},
		{"unknown bucket", `{"format":1,"id":"x","ops":[{"bucket":"meta","key":"schema_version","val":"9"}]}`},
		{"bad device", `{"format":1,"id":"x","ops":[{"bucket":"devices","key":"a","val":{"name":"b"}}]}`},
		{"delete of a missing device", `{"format":1,"id":"x","ops":[{"bucket":"devices","key":"nope"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newMemLog()
			s, _ := replicas(t, l, 1)
			mustCreate(t, s[0], device("before"))
			l.inject([]byte(tc.rec))
			var err error
			waitFor(t, "writes to fail", func() bool {
				_, err = s[0].Create(device("after"))
				return err != nil
			})
			if !errors.Is(err, ErrReplicationStopped) {
				t.Fatalf("Create after a bad record: %v, want ErrReplicationStopped", err)
			}
			if _, err := s[0].Get("before"); err != nil {
				t.Fatalf("Get(before): %v", err)
			}
		})
	}
}

// TestReplicatedCheckpoint: a reopened node resumes from its checkpoint and
// catches up with what others wrote meanwhile; a checkpoint beyond the log,
// or from another log, refuses to open.
func TestReplicatedCheckpoint(t *testing.T) {
	l := newMemLog()
	s, paths := replicas(t, l, 2)
	mustCreate(t, s[0], device("one"))
	waitDevice(t, s[1], "one")
	if err := s[1].Close(); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s[0], device("two"))
	mustCreate(t, s[0], device("three"))

	counting := &countingLog{Log: l}
	b := openReplicated(t, paths[1], counting)
	for _, name := range []string{"one", "two", "three"} {
		if _, err := b.Get(name); err != nil {
			t.Fatalf("reopened node: Get(%s): %v", name, err)
		}
	}
	// Resumed after record 1: record 1 is read once to check identity,
	// then records 2 and 3, never more.
	if got := counting.applied.Load(); got != 3 {
		t.Errorf("records delivered on reopen = %d, want 3 (1 checked, 2 and 3 applied)", got)
	}
	if got := allAudit(t, b); len(got) != 3 || got[2].Target != "three" {
		t.Fatalf("audit after catch-up = %+v", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	_, err := OpenReplicated(paths[1], newMemLog(), testReplicaOptions)
	if err == nil || !strings.Contains(err.Error(), "checkpoint is at log record 3 but the log ends at 0") {
		t.Fatalf("open on an empty log: %v", err)
	}
	other := newMemLog()
	for range 3 {
		other.inject([]byte(`{"format":1,"id":"foreign"}`))
	}
	_, err = OpenReplicated(paths[1], other, testReplicaOptions)
	if err == nil || !strings.Contains(err.Error(), "another log") {
		t.Fatalf("open on another log: %v", err)
	}
	openReplicated(t, paths[1], l) // positive control: its own log still opens
}

type countingLog struct {
	Log
	applied atomic.Int64
}

func (c *countingLog) Follow(ctx context.Context, after uint64, apply func(uint64, []byte) error) error {
	return c.Log.Follow(ctx, after, func(seq uint64, rec []byte) error {
		c.applied.Add(1)
		return apply(seq, rec)
	})
}

// TestOpenReplicatedRefusesSingleNodeFile: a file written by a single-node
// gateway holds state the log never saw; serving it would diverge.
func TestOpenReplicatedRefusesSingleNodeFile(t *testing.T) {
	s, path := openTemp(t)
	mustCreate(t, s, device("local"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := OpenReplicated(path, newMemLog(), testReplicaOptions)
	if err == nil || !strings.Contains(err.Error(), "single-node") {
		t.Fatalf("OpenReplicated on a single-node file: %v", err)
	}
	// Positive control: an empty file opens.
	openReplicated(t, filepath.Join(t.TempDir(), "empty.db"), newMemLog())
}

// TestReplicatedRedeemOnce: one token redeemed at the same time on two
// nodes enrolls exactly once.
func TestReplicatedRedeemOnce(t *testing.T) {
	l := newMemLog()
	s, _ := replicas(t, l, 2)
	for round := range 20 {
		name := fmt.Sprintf("dev-%d", round)
		tok := mustToken(t, s[0], name)
		waitDevice(t, s[1], name)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range s {
			wg.Go(func() { _, errs[i] = s[i].RedeemToken(tok, time.Time{}) })
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, ErrTokenInvalid):
				t.Fatalf("round %d: RedeemToken: %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d redemptions succeeded (%v), want 1", round, wins, errs)
		}
	}
}

// TestSingleNodeWritesNoCheckpoint: Open (no log) keeps its format: no
// applied_seq is written.
func TestSingleNodeWritesNoCheckpoint(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("a"))
	seq, id, err := readCheckpoint(s.bolt)
	if err != nil || seq != 0 || id != "" {
		t.Fatalf("checkpoint of a single-node store = %d %q %v, want none", seq, id, err)
	}
}

// TestReplicatedImportSplitsLargeBatches: an import batch too large for one
// log record is split until its parts fit, and every row still lands once.
func TestReplicatedImportSplitsLargeBatches(t *testing.T) {
	l := newMemLog()
	s, _ := replicas(t, l, 2)
	// A row (device and audit entry) takes about 450 bytes: some 8 fit.
	l.set(func(l *memLog) { l.maxRecord = 4000 })
	rows := make([]Device, 40)
	for i := range rows {
		rows[i] = device(fmt.Sprintf("row-%02d", i), "role", "sensor")
	}
	res, err := s[0].Import(rows, td+"/admin/alice")
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	for i, r := range res {
		if r.Row != i || r.Result != ImportCreated {
			t.Fatalf("result %d = %+v", i, r)
		}
	}
	waitFor(t, "rows on the other node", func() bool { return s[1].Len() == len(rows) })
	if n := len(allAudit(t, s[1])); n != len(rows) {
		t.Fatalf("other node has %d audit entries, want %d", n, len(rows))
	}
	// A single change that can never fit is refused with its reason.
	l.set(func(l *memLog) { l.maxRecord = 100 })
	if _, err := s[0].Create(device("big")); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("Create of a too large record: %v, want ErrRecordTooLarge", err)
	}
}
