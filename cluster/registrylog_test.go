package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/testcluster"
	"github.com/ztgate/ztgate/registry"
)

const (
	td = "spiffe://example.org"
	// replicaWriteTimeout bounds each registry write of these tests; a
	// stream leader election after a node stops fits in it under -race.
	replicaWriteTimeout = 10 * time.Second
)

func newRegistryLog(t testing.TB, tc *testcluster.Cluster, i int) *cluster.RegistryLog {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	l, err := cluster.NewRegistryLog(ctx, tc.Nodes[i].JetStream(), len(tc.Nodes))
	if err != nil {
		t.Fatalf("node %d: NewRegistryLog: %v", i, err)
	}
	return l
}

type record struct {
	seq  uint64
	data string
}

// follow collects n records after sequence after (bounded by opTimeout).
func follow(t *testing.T, l registry.Log, after uint64, n int) []record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var got []record
	errDone := errors.New("done")
	err := l.Follow(ctx, after, func(seq uint64, rec []byte) error {
		got = append(got, record{seq, string(rec)})
		if len(got) == n {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("Follow(%d): %v after %v", after, err, got)
	}
	return got
}

// TestRegistryLog: conditional appends, deduplication of a retried ID,
// ordered delivery from any node, and no-quorum errors on a lone node.
func TestRegistryLog(t *testing.T) {
	tc := testcluster.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	if _, err := cluster.NewRegistryLog(ctx, tc.Nodes[0].JetStream(), 0); err == nil {
		t.Fatal("NewRegistryLog with 0 replicas succeeded")
	}
	a, c := newRegistryLog(t, tc, 0), newRegistryLog(t, tc, 2)

	steps := []struct {
		name    string
		id      string
		expect  uint64
		wantSeq uint64
		wantErr error
	}{
		{"first", "r1", 0, 1, nil},
		{"retry of first", "r1", 0, 1, nil},
		{"stale expectation", "r2", 0, 0, registry.ErrLogConflict},
		{"second", "r2", 1, 2, nil},
		{"retry of second after the log moved on", "r2", 1, 2, nil},
	}
	for _, s := range steps {
		seq, err := a.Append(ctx, s.id, s.expect, []byte(s.id))
		if !errors.Is(err, s.wantErr) || (s.wantErr == nil) != (err == nil) || seq != s.wantSeq {
			t.Fatalf("%s: Append(%s, %d) = %d, %v; want %d, %v", s.name, s.id, s.expect, seq, err, s.wantSeq, s.wantErr)
		}
	}
	if _, err := a.Append(ctx, "huge", 2, make([]byte, cluster.MaxPayload+1)); !errors.Is(err, registry.ErrRecordTooLarge) {
		t.Fatalf("Append of more than the largest NATS message: %v, want ErrRecordTooLarge", err)
	}
	if last, err := c.Last(ctx); err != nil || last != 2 {
		t.Fatalf("Last on c = %d, %v; want 2", last, err)
	}
	if got := follow(t, c, 0, 2); fmt.Sprint(got) != "[{1 r1} {2 r2}]" {
		t.Fatalf("Follow(0) on c = %v", got)
	}
	if got := follow(t, c, 1, 1); fmt.Sprint(got) != "[{2 r2}]" {
		t.Fatalf("Follow(1) on c = %v", got)
	}
	// Follow returns when its context ends.
	fctx, fcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer fcancel()
	if err := c.Follow(fctx, 2, func(uint64, []byte) error { return errors.New("no record expected") }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Follow at the end: %v, want the context's deadline", err)
	}

	tc.Stop(0)
	tc.Stop(1)
	lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer lcancel()
	if _, err := c.Append(lctx, "r3", 2, []byte("r3")); !errors.Is(err, registry.ErrNoQuorum) || !errors.Is(err, cluster.ErrNoQuorum) {
		t.Fatalf("Append on a lone node: %v, want ErrNoQuorum", err)
	}
	// The stream leader may answer until it notices it lost its quorum
	// (its answer is still the committed end: it cannot append alone).
	var err error
	deadline := time.Now().Add(formTimeout)
	for {
		lctx, lcancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = c.Last(lctx)
		lcancel()
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !errors.Is(err, registry.ErrNoQuorum) || !errors.Is(err, cluster.ErrNoQuorum) {
		t.Fatalf("Last on a lone node: %v, want ErrNoQuorum", err)
	}
}

func device(name string) registry.Device {
	return registry.Device{Name: name, SPIFFEID: td + "/device/" + name}
}

// openStore opens node i's registry replica on file path.
func openStore(t testing.TB, tc *testcluster.Cluster, i int, path string) *registry.Store {
	t.Helper()
	return openStoreTimeout(t, tc, i, path, replicaWriteTimeout)
}

func openStoreTimeout(t testing.TB, tc *testcluster.Cluster, i int, path string, write time.Duration) *registry.Store {
	t.Helper()
	s, err := registry.OpenReplicated(path, newRegistryLog(t, tc, i),
		registry.ReplicaOptions{WriteTimeout: write, OpenTimeout: formTimeout})
	if err != nil {
		t.Fatalf("node %d: OpenReplicated: %v", i, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// waitFor polls cond (bounded) until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitWatch(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(opTimeout):
		t.Fatalf("%s: watch did not fire", what)
	}
}

func audit(t *testing.T, s *registry.Store) []registry.AuditEntry {
	t.Helper()
	var out []registry.AuditEntry
	var after uint64
	for range 100 {
		page, err := s.ListAudit(after, 1000)
		if err != nil {
			t.Fatalf("ListAudit: %v", err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].ID
	}
	t.Fatal("audit log did not end")
	return nil
}

// sameAudit waits until every store holds the audit log of the first.
func sameAudit(t *testing.T, stores ...*registry.Store) {
	t.Helper()
	want := audit(t, stores[0])
	for i, s := range stores[1:] {
		waitFor(t, "audit entries", func() bool { return len(audit(t, s)) >= len(want) })
		if got := audit(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("store %d audit:\n%v\nwant\n%v", i+1, got, want)
		}
	}
}

// race runs f on each store at once and returns their errors.
func race(stores []*registry.Store, f func(s *registry.Store) error) []error {
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Go(func() { errs[i] = f(s) })
	}
	wg.Wait()
	return errs
}

// oneWins checks that exactly one error is nil and the others match lost.
func oneWins(t *testing.T, errs []error, lost error) {
	t.Helper()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, lost):
			t.Fatalf("errors %v: want nil or %v", errs, lost)
		}
	}
	if wins != 1 {
		t.Fatalf("%d of %d succeeded (%v), want exactly 1", wins, len(errs), errs)
	}
}

// TestReplicatedRegistry runs three registry replicas on a three-node
// cluster: changes on any node reach the others (watchers included), races
// between nodes have one winner, a restarted node catches up, and a node
// without a quorum refuses writes while still serving reads.
func TestReplicatedRegistry(t *testing.T) {
	tc := testcluster.Start(t, 3)
	paths := make([]string, 3)
	stores := make([]*registry.Store, 3)
	for i := range stores {
		paths[i] = filepath.Join(t.TempDir(), "registry.db")
		stores[i] = openStore(t, tc, i, paths[i])
	}
	a, b, c := stores[0], stores[1], stores[2]
	top := t

	t.Run("create on a reaches c", func(t *testing.T) {
		_, ch, err := c.WatchDevice(td + "/device/cam")
		if !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("WatchDevice before create: %v", err)
		}
		start := time.Now()
		if _, err := a.Create(device("cam")); err != nil {
			t.Fatalf("Create on a: %v", err)
		}
		returned := time.Since(start)
		waitWatch(t, ch, "c after create on a")
		t.Logf("create on a returned after %v; WatchDevice on c fired after %v", returned, time.Since(start))
		if d, err := c.Get("cam"); err != nil || d.Status != registry.StatusActive {
			t.Fatalf("Get on c: %v, %v", d, err)
		}
	})

	t.Run("revoke on b seen on a", func(t *testing.T) {
		waitFor(t, "cam on b", func() bool { _, err := b.Get("cam"); return err == nil })
		_, ch, err := a.WatchDevice(td + "/device/cam")
		if err != nil {
			t.Fatalf("WatchDevice on a: %v", err)
		}
		start := time.Now()
		if _, err := b.SetStatus("cam", registry.StatusRevoked); err != nil {
			t.Fatalf("revoke on b: %v", err)
		}
		waitWatch(t, ch, "a after revoke on b")
		t.Logf("revoke on b -> WatchDevice on a fired after %v", time.Since(start))
		if d, _ := a.Get("cam"); d.Status != registry.StatusRevoked {
			t.Fatalf("a sees %s, want revoked", d.Status)
		}
	})

	t.Run("same name created on a and c at once", func(t *testing.T) {
		for round := range 5 {
			name := fmt.Sprintf("dup-%d", round)
			errs := race([]*registry.Store{a, c}, func(s *registry.Store) error { _, err := s.Create(device(name)); return err })
			oneWins(t, errs, registry.ErrExists)
		}
		mustCreate := func(s *registry.Store, name string) {
			if _, err := s.Create(device(name)); err != nil {
				t.Fatalf("Create(%s): %v", name, err)
			}
		}
		// Positive control: different names on both nodes both succeed.
		errs := race([]*registry.Store{a, c}, func(s *registry.Store) error {
			name := "own-a"
			if s == c {
				name = "own-c"
			}
			_, err := s.Create(device(name))
			return err
		})
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("distinct creates: %v", errs)
		}
		mustCreate(b, "after-race")
	})

	t.Run("token redeemed on b and c at once", func(t *testing.T) {
		for round := range 5 {
			name := fmt.Sprintf("enroll-%d", round)
			d := device(name)
			tok, _, err := a.CreateToken(name, time.Hour, nil, d.SPIFFEID, td+"/admin/alice")
			if err != nil {
				t.Fatalf("CreateToken: %v", err)
			}
			for _, s := range []*registry.Store{b, c} {
				waitFor(t, "pending "+name, func() bool { _, err := s.Get(name); return err == nil })
			}
			errs := race([]*registry.Store{b, c}, func(s *registry.Store) error { _, err := s.RedeemToken(tok, time.Time{}); return err })
			oneWins(t, errs, registry.ErrTokenInvalid)
			waitFor(t, "active on a", func() bool { d, _ := a.Get(name); return d.Status == registry.StatusActive })
		}
	})

	t.Run("audit ids identical", func(t *testing.T) {
		sameAudit(t, a, b, c)
		if n := len(audit(t, a)); n < 20 {
			t.Fatalf("only %d audit entries", n)
		}
	})

	t.Run("restarted node catches up", func(t *testing.T) {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		tc.Stop(2)
		for i := range 3 {
			if _, err := a.Create(device(fmt.Sprintf("while-c-down-%d", i))); err != nil {
				t.Fatalf("Create with c down: %v", err)
			}
		}
		tc.Restart(2)
		tc.WaitJetStream(formTimeout, 2)
		// It lives on after this subtest, and is the lone node of the
		// next one: a short write timeout bounds its refusal.
		c = openStoreTimeout(top, tc, 2, paths[2], 3*time.Second)
		stores[2] = c
		for i := range 3 {
			if _, err := c.Get(fmt.Sprintf("while-c-down-%d", i)); err != nil {
				t.Fatalf("reopened c: %v", err)
			}
		}
		sameAudit(t, a, b, c)
	})

	t.Run("lone node refuses writes and serves reads", func(t *testing.T) {
		for _, i := range []int{0, 1} {
			if err := stores[i].Close(); err != nil {
				t.Fatal(err)
			}
			tc.Stop(i)
		}
		start := time.Now()
		_, err := c.Create(device("minority"))
		t.Logf("lone node: Create refused after %v: %v", time.Since(start), err)
		if !errors.Is(err, registry.ErrNoQuorum) || !errors.Is(err, cluster.ErrNoQuorum) {
			t.Fatalf("Create on a lone node: %v, want ErrNoQuorum", err)
		}
		if _, err := c.Get("minority"); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("Get(minority): %v, want ErrNotFound", err)
		}
		if d, err := c.Get("cam"); err != nil || d.Status != registry.StatusRevoked {
			t.Fatalf("Get(cam) on a lone node: %v, %v", d, err)
		}
	})
}

// BenchmarkRegistryCreate compares one Create on a single-node registry
// (bbolt, fsync) with one on a replicated registry of a three-node cluster
// (append to an R3 stream, then the same bbolt write), in the same run.
func BenchmarkRegistryCreate(b *testing.B) {
	run := func(b *testing.B, s *registry.Store) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := s.Create(device(fmt.Sprintf("dev-%d", i))); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	b.Run("bbolt", func(b *testing.B) {
		s, err := registry.Open(filepath.Join(b.TempDir(), "registry.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		run(b, s)
	})
	b.Run("replicated3", func(b *testing.B) {
		tc := testcluster.Start(b, 3)
		stores := make([]*registry.Store, 3)
		for i := range stores {
			stores[i] = openStore(b, tc, i, filepath.Join(b.TempDir(), "registry.db"))
		}
		run(b, stores[0])
	})
}
