package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/testcluster"
	"github.com/ztgate/ztgate/policy"
)

const (
	psPolicy = `package ztgate.authz

default allow := false

allow if input.action == "connect"
`
	psTests = `package ztgate.authz_test

test_connect if data.ztgate.authz.allow with input as {"action": "connect"}
`
	psAdmin     = "package ztgate.authz\n\nallow if input.action == \"admin\"\n"
	psAdminTest = "package ztgate.authz_test\n\ntest_admin if data.ztgate.authz.allow with input as {\"action\": \"admin\"}\n"
	// psWait bounds how long a revision may take to reach another node;
	// far longer than it takes, for -race on a loaded machine.
	psWait = 20 * time.Second
)

func psBase() map[string]string {
	return map[string]string{"authz.rego": psPolicy, "authz_test.rego": psTests}
}

func psQuietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// policyNode is one gateway's policy: a real engine over its own
// directory, as the app loads it.
type policyNode struct {
	eng  *policy.Engine
	dir  string
	sync *cluster.PolicySync
	stop context.CancelFunc
}

func newPolicyNode(t *testing.T, files map[string]string, opts policy.Options) *policyNode {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := policy.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = psQuietLog()
	eng, err := policy.NewEngine(fsys, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	return &policyNode{eng: eng, dir: dir}
}

// start runs a PolicySync for the node on n until the test ends.
func (p *policyNode) start(t *testing.T, n *cluster.Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := cluster.NewPolicySync(ctx, n.JetStream(), n.Name(), 3, p.eng, psQuietLog())
	if err != nil {
		cancel()
		t.Fatalf("NewPolicySync: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	p.sync, p.stop = s, cancel
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.Done():
		case <-time.After(psWait):
			t.Error("PolicySync did not stop")
		}
	})
}

func (p *policyNode) set() string {
	rev, _ := p.eng.Modules()
	return rev
}

// files is every file in the node's directory.
func (p *policyNode) files(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// psWaitSet waits until each node has the set rev in force.
func psWaitSet(t *testing.T, rev string, nodes ...*policyNode) {
	t.Helper()
	deadline := time.Now().Add(psWait)
	for _, p := range nodes {
		for p.set() != rev {
			if time.Now().After(deadline) {
				t.Fatalf("set %.12s not in force within %s on node with dir %s: has %.12s, status %+v, sync %+v",
					rev, psWait, p.dir, p.set(), p.eng.Status(), p.sync.Status())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// history is every value of the policy key the bucket keeps.
func psHistory(t *testing.T, js jetstream.JetStream) []jetstream.KeyValueEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.PolicyBucket)
	if err != nil {
		t.Fatal(err)
	}
	h, err := kv.History(ctx, cluster.PolicyKey)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func psRevisions(t *testing.T, h []jetstream.KeyValueEntry) []string {
	t.Helper()
	var out []string
	for _, e := range h {
		var v struct {
			Revision string `json:"revision"`
			Node     string `json:"node"`
		}
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			t.Fatalf("value %d: %v", e.Revision(), err)
		}
		out = append(out, v.Revision[:12]+"@"+v.Node)
	}
	return out
}

func psBytes(files map[string]string) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range files {
		out[k] = []byte(v)
	}
	return out
}

func psWith(files map[string]string, kv ...string) map[string]string {
	out := maps.Clone(files)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// An upload on one node becomes the policy of every node, kept in each
// node's directory; a node started later with a stale directory takes the
// cluster's set; one upload is one value in the bucket (no ping-pong).
func TestPolicySyncReplicates(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newPolicyNode(t, psBase(), policy.Options{})
	b := newPolicyNode(t, psBase(), policy.Options{})
	c := newPolicyNode(t, psBase(), policy.Options{}) // started later
	a.start(t, tc.Nodes[0])
	b.start(t, tc.Nodes[1])
	base := a.set()

	start := time.Now()
	if err := a.eng.PutModule("admin.rego", []byte(psAdmin)); err != nil {
		t.Fatal(err)
	}
	if err := a.eng.PutModule("admin_test.rego", []byte(psAdminTest)); err != nil {
		t.Fatal(err)
	}
	want := a.set()
	psWaitSet(t, want, b)
	t.Logf("two uploads on node A in force on node B after %s", time.Since(start))
	if a.eng.Revision() != b.eng.Revision() {
		t.Errorf("policy revision A %s, B %s", a.eng.Revision(), b.eng.Revision())
	}
	wantFiles := psWith(psBase(), "admin.rego", psAdmin, "admin_test.rego", psAdminTest)
	if got := b.files(t); !maps.Equal(got, wantFiles) {
		t.Errorf("B's directory holds %q, want %q", got, wantFiles)
	}
	if d := b.eng.Decide(context.Background(), &policy.Input{Action: policy.ActionAdmin, Subject: &policy.Subject{Client: policy.Client{ID: "x"}}}); !d.Allow {
		t.Errorf("B denies admin after the upload on A: %+v", d)
	}

	// C's directory is stale: the cluster's set wins as C starts.
	if c.set() != base {
		t.Fatal("positive control: C starts with the old set")
	}
	c.start(t, tc.Nodes[2])
	if c.set() != want {
		t.Errorf("C after Start has %.12s, want the cluster's %.12s", c.set(), want)
	}
	if got := c.files(t); !maps.Equal(got, wantFiles) {
		t.Errorf("C's directory holds %q, want %q", got, wantFiles)
	}
	// A restart of C reads the cluster's set from its directory.
	if again := newPolicyNode(t, c.files(t), policy.Options{}); again.set() != want {
		t.Error("C's directory does not hold the cluster's set")
	}

	// An upload on C reaches A and B.
	start = time.Now()
	if err := c.eng.PutModule("admin_test.rego", []byte(psAdminTest+"\ntest_connect_too if data.ztgate.authz.allow with input as {\"action\": \"connect\"}\n")); err != nil {
		t.Fatal(err)
	}
	last := c.set()
	psWaitSet(t, last, a, b)
	t.Logf("a test-only upload on node C in force on nodes A and B after %s", time.Since(start))

	// No node wrote again what it took from the bucket. Give a ping-pong
	// time to show.
	time.Sleep(500 * time.Millisecond)
	h := psHistory(t, tc.Nodes[0].JetStream())
	if got := psRevisions(t, h); len(got) != 4 {
		t.Errorf("the bucket holds %d values, want 4 (A's first, two uploads on A, one on C): %q", len(got), got)
	}
	for _, p := range []*policyNode{a, b, c} {
		if st := p.sync.Status(); !st.InForce || st.ClusterRevision != last || st.LastError != "" {
			t.Errorf("sync status %+v", st)
		}
	}
}

// A module that fails its tests is refused where it is uploaded and never
// offered to the cluster; a set that passes on the uploading node but fails
// the gate on another is refused there, visibly, and the node does not
// overwrite the cluster's set with its own.
func TestPolicySyncGate(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newPolicyNode(t, psBase(), policy.Options{AllowBuiltins: []string{"time.now_ns"}})
	b := newPolicyNode(t, psBase(), policy.Options{AllowBuiltins: []string{"time.now_ns"}})
	c := newPolicyNode(t, psBase(), policy.Options{}) // no clock for C
	a.start(t, tc.Nodes[0])
	b.start(t, tc.Nodes[1])
	c.start(t, tc.Nodes[2])
	base := a.set()

	err := a.eng.PutModule("admin_test.rego", []byte(psAdminTest))
	if !errors.Is(err, policy.ErrPolicyRejected) || !strings.Contains(err.Error(), "test_admin") {
		t.Fatalf("PutModule of a failing test = %v, want ErrPolicyRejected", err)
	}
	// Positive control: a passing module takes the same path.
	start := time.Now()
	if err := a.eng.PutModule("admin.rego", []byte(psAdmin)); err != nil {
		t.Fatal(err)
	}
	put := time.Since(start)
	good := a.set()
	psWaitSet(t, good, b, c)
	all := time.Since(start)
	// Baseline: the same upload on an engine that is not in a cluster.
	alone := newPolicyNode(t, psBase(), policy.Options{AllowBuiltins: []string{"time.now_ns"}})
	start = time.Now()
	if err := alone.eng.PutModule("admin.rego", []byte(psAdmin)); err != nil {
		t.Fatal(err)
	}
	t.Logf("PutModule on A returned after %s (alone, no cluster: %s); in force on B and C after %s", put, time.Since(start), all)
	for _, got := range psRevisions(t, psHistory(t, tc.Nodes[1].JetStream())) {
		if strings.HasPrefix(got, base[:12]) || strings.HasPrefix(got, good[:12]) {
			continue
		}
		t.Errorf("the bucket holds %s, neither the first set nor the good one", got)
	}
	if _, mods := b.eng.Modules(); mods["admin_test.rego"] != nil {
		t.Error("the refused test reached B")
	}

	// Tests that read the clock pass on A and B, and fail C's gate.
	clock := "package ztgate.authz_test\n\ntest_clock if time.now_ns() > 0\n"
	if err := a.eng.PutModule("clock_test.rego", []byte(clock)); err != nil {
		t.Fatal(err)
	}
	clocked := a.set()
	psWaitSet(t, clocked, b)
	deadline := time.Now().Add(psWait)
	for c.sync.Status().RefusedRevision != clocked {
		if time.Now().After(deadline) {
			t.Fatalf("C did not report the refused set: %+v", c.sync.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := c.sync.Status()
	if c.set() != good || st.InForce || !strings.Contains(st.LastError, "time.now_ns") || st.LastErrorAt.IsZero() {
		t.Errorf("C: set %.12s (want %.12s kept), status %+v", c.set(), good, st)
	}
	if es := c.eng.Status(); !strings.Contains(es.LastError, "time.now_ns") {
		t.Errorf("C's engine does not say why: %+v", es)
	}
	// C cannot replace the set it refused with its own older one.
	err = c.eng.PutModule("other.rego", []byte("package ztgate.other\n\nx := 1\n"))
	if !errors.Is(err, policy.ErrNotCommitted) || !errors.Is(err, cluster.ErrPolicyConflict) {
		t.Errorf("PutModule on C after refusing the cluster's set = %v, want ErrNotCommitted and ErrPolicyConflict", err)
	}
	if _, mods := c.eng.Modules(); mods["other.rego"] != nil {
		t.Error("the refused upload is in force on C")
	}
	if _, err := os.Stat(filepath.Join(c.dir, "other.rego")); err == nil {
		t.Error("the refused upload is in C's directory")
	}
	// Positive control: the next set that passes C's gate is taken.
	if err := a.eng.PutModule("clock_test.rego", []byte("package ztgate.authz_test\n\ntest_clock if true\n")); err != nil {
		t.Fatal(err)
	}
	psWaitSet(t, a.set(), b, c)
	if st := c.sync.Status(); !st.InForce || st.RefusedRevision != "" || st.LastError != "" {
		t.Errorf("C after a good set: %+v", st)
	}
}

// A value in the bucket that is not a valid set is refused on every node;
// the revision in force stays.
func TestPolicySyncBadValue(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newPolicyNode(t, psBase(), policy.Options{})
	a.start(t, tc.Nodes[0])
	base := a.set()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	kv, err := tc.Nodes[1].JetStream().KeyValue(ctx, cluster.PolicyBucket)
	if err != nil {
		t.Fatal(err)
	}
	evil := psWith(psBase(), "../evil.rego", psAdmin)
	for _, tt := range []struct{ name, value, errHas string }{
		{"not JSON", "{", "decode"},
		{"revision does not match", `{"revision":"00","modules":{"authz.rego":"cGFja2FnZSB4Cg=="},"node":"x"}`, "does not match its modules"},
		{"a path out of the directory", psValue(t, evil), "invalid module name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := kv.Put(ctx, cluster.PolicyKey, []byte(tt.value)); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(psWait)
			for !strings.Contains(a.sync.Status().LastError, tt.errHas) {
				if time.Now().After(deadline) {
					t.Fatalf("no refusal mentioning %q: %+v", tt.errHas, a.sync.Status())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if a.set() != base {
				t.Error("the bad value changed the set in force")
			}
		})
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(a.dir), "evil.rego")); err == nil {
		t.Error("a module escaped the directory")
	}
	// Positive control: a valid set written by another node is taken.
	good := psWith(psBase(), "admin.rego", psAdmin)
	if _, err := kv.Put(ctx, cluster.PolicyKey, []byte(psValue(t, good))); err != nil {
		t.Fatal(err)
	}
	psWaitSet(t, policy.ModulesRevision(psBytes(good)), a)
}

func psValue(t *testing.T, files map[string]string) string {
	t.Helper()
	mods := psBytes(files)
	b, err := json.Marshal(map[string]any{"revision": policy.ModulesRevision(mods), "modules": mods, "node": "elsewhere", "at": time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// psFakeEngine holds a set in memory; its ApplyModules can be held up, to
// make a local change race an incoming one.
type psFakeEngine struct {
	mu     sync.Mutex
	mods   map[string][]byte
	commit policy.CommitFunc
	hold   chan struct{} // when set, ApplyModules waits for it to close
}

func (f *psFakeEngine) Modules() (string, map[string][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return policy.ModulesRevision(f.mods), maps.Clone(f.mods)
}

func (f *psFakeEngine) ApplyModules(mods map[string][]byte) error {
	f.mu.Lock()
	hold, commit := f.hold, f.commit
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if commit != nil {
		if err := commit(policy.ModulesRevision(mods), mods); err != nil {
			return err
		}
	}
	f.mu.Lock()
	f.mods = maps.Clone(mods)
	f.mu.Unlock()
	return nil
}

func (f *psFakeEngine) SetCommit(fn policy.CommitFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commit = fn
}

// change is a local change (an upload) on the fake: committed first.
func (f *psFakeEngine) change(mods map[string][]byte) error {
	f.mu.Lock()
	commit := f.commit
	f.mu.Unlock()
	if err := commit(policy.ModulesRevision(mods), mods); err != nil {
		return err
	}
	f.mu.Lock()
	f.mods = mods
	f.mu.Unlock()
	return nil
}

// A local change made while a newer set from another node is on its way is
// refused (optimistic concurrency), not written over the newer set.
func TestPolicySyncConflict(t *testing.T) {
	tc := testcluster.Start(t, 3)
	f := &psFakeEngine{mods: psBytes(psBase())}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := cluster.NewPolicySync(ctx, tc.Nodes[0].JetStream(), tc.Nodes[0].Name(), 3, f, psQuietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); <-s.Done() }()
	kvctx, kvcancel := context.WithTimeout(context.Background(), opTimeout)
	defer kvcancel()
	kv, err := tc.Nodes[1].JetStream().KeyValue(kvctx, cluster.PolicyBucket)
	if err != nil {
		t.Fatal(err)
	}

	// Positive control: with nothing in between, a local change is committed.
	first := psBytes(psWith(psBase(), "one.rego", "package ztgate.one\n\nx := 1\n"))
	if err := f.change(first); err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(kvctx, cluster.PolicyKey); err != nil || !strings.Contains(string(e.Value()), policy.ModulesRevision(first)) {
		t.Fatalf("bucket after a local change: %v", err)
	}

	hold := make(chan struct{})
	f.mu.Lock()
	f.hold = hold
	f.mu.Unlock()
	other := psWith(psBase(), "two.rego", "package ztgate.two\n\nx := 2\n")
	if _, err := kv.Put(kvctx, cluster.PolicyKey, []byte(psValue(t, other))); err != nil {
		t.Fatal(err)
	}
	// Wait until the sync saw it (and is held applying it).
	deadline := time.Now().Add(psWait)
	for s.Status().ClusterRevision != policy.ModulesRevision(psBytes(other)) {
		if time.Now().After(deadline) {
			t.Fatalf("the other node's set not seen: %+v", s.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	err = f.change(psBytes(psWith(psBase(), "three.rego", "package ztgate.three\n\nx := 3\n")))
	if !errors.Is(err, cluster.ErrPolicyConflict) {
		t.Errorf("a local change racing a newer set = %v, want ErrPolicyConflict", err)
	}
	close(hold)
	psWaitFake(t, f, policy.ModulesRevision(psBytes(other)))
	if got := psRevisions(t, psHistory(t, tc.Nodes[2].JetStream())); len(got) != 3 {
		t.Errorf("bucket history %q, want the first set, the local change and the other node's", got)
	}
	// Positive control: once in step, local changes commit again.
	if err := f.change(psBytes(psWith(other, "four.rego", "package ztgate.four\n\nx := 4\n"))); err != nil {
		t.Errorf("a local change once in step: %v", err)
	}
}

func psWaitFake(t *testing.T, f *psFakeEngine, rev string) {
	t.Helper()
	deadline := time.Now().Add(psWait)
	for {
		if got, _ := f.Modules(); got == rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("set %.12s not applied", rev)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A node cut off from the majority refuses an upload with ErrNoQuorum
// instead of running a set the cluster does not have.
func TestPolicySyncNoQuorum(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newPolicyNode(t, psBase(), policy.Options{})
	a.start(t, tc.Nodes[0])
	// Positive control: with a quorum the upload is taken.
	if err := a.eng.PutModule("one.rego", []byte("package ztgate.one\n\nx := 1\n")); err != nil {
		t.Fatal(err)
	}
	rev := a.set()
	before := a.files(t)
	tc.Stop(1)
	tc.Stop(2)
	start := time.Now()
	err := a.eng.PutModule("admin.rego", []byte(psAdmin))
	t.Logf("upload without quorum refused after %s: %v", time.Since(start), err)
	if !errors.Is(err, policy.ErrNotCommitted) || !errors.Is(err, cluster.ErrNoQuorum) {
		t.Fatalf("PutModule without quorum = %v, want ErrNotCommitted and ErrNoQuorum", err)
	}
	if a.set() != rev {
		t.Error("the refused upload is in force")
	}
	if got := a.files(t); !maps.Equal(got, before) {
		t.Errorf("directory changed: %q -> %q", before, got)
	}
}

// A change in a node's watched policy directory reaches the other nodes,
// and the files a node writes when it takes the cluster's set do not make
// its own watcher write the set back.
func TestPolicySyncWatchedDirectory(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newPolicyNode(t, psBase(), policy.Options{})
	b := newPolicyNode(t, psBase(), policy.Options{})
	for _, p := range []*policyNode{a, b} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- policy.Watch(ctx, p.eng, p.dir, 50*time.Millisecond, psQuietLog()) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Watch: %v", err)
			}
		})
	}
	a.start(t, tc.Nodes[0])
	b.start(t, tc.Nodes[1])

	start := time.Now()
	if err := os.WriteFile(filepath.Join(a.dir, "admin.rego"), []byte(psAdmin), 0o644); err != nil {
		t.Fatal(err)
	}
	want := policy.ModulesRevision(psBytes(psWith(psBase(), "admin.rego", psAdmin)))
	psWaitSet(t, want, a, b)
	t.Logf("a file written in A's watched directory in force on B after %s (debounce 50ms)", time.Since(start))
	if got := b.files(t)["admin.rego"]; got != psAdmin {
		t.Errorf("B's directory: admin.rego = %q", got)
	}
	// B's watcher sees the files B wrote; give it time to reload.
	time.Sleep(500 * time.Millisecond)
	if got := psRevisions(t, psHistory(t, tc.Nodes[2].JetStream())); len(got) != 2 {
		t.Errorf("the bucket holds %q, want A's first set and A's change", got)
	}
	if a.set() != want || b.set() != want {
		t.Errorf("sets A %.12s, B %.12s, want %.12s", a.set(), b.set(), want)
	}
}
