package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ztgate/ztgate/policy"
)

// The cluster's policy: one key in one KV bucket, whose value is the whole
// set of policy files in force (tests included).
const (
	PolicyBucket = "ztgate-policy"
	PolicyKey    = "active"
	// policyHistory is how many earlier sets the bucket keeps, for an
	// operator to look back at (nats kv history).
	policyHistory = 10
	// policyCallTimeout bounds each KV call. A commit holds the engine's
	// loads for this long at most.
	policyCallTimeout = 5 * time.Second
	// policyRewatch is how long the watcher waits before it watches again
	// after its subscription ended.
	policyRewatch = time.Second
	// policyStartAttempts bounds the rounds of Start when other nodes keep
	// changing the key under it.
	policyStartAttempts = 5
	// policyStartTimeout bounds how long Start waits for the bucket to
	// answer, retrying every policyStartRetry.
	policyStartTimeout = 30 * time.Second
	policyStartRetry   = 100 * time.Millisecond
)

// ErrPolicyConflict is matched by the error of a local policy change made
// while the cluster's set had moved on without this node (a change on
// another node not yet applied here, or one this node refused): the change
// is refused rather than written over the newer set.
var ErrPolicyConflict = errors.New("cluster: policy: the cluster's policy changed without this node")

// PolicyEngine is what PolicySync needs of the policy engine;
// *policy.Engine implements it.
type PolicyEngine interface {
	// Modules returns the set in force, tests included, and its
	// revision (policy.ModulesRevision).
	Modules() (revision string, modules map[string][]byte)
	// ApplyModules makes exactly modules the policy, through the same
	// checks as an upload, calling the CommitFunc before it activates.
	ApplyModules(modules map[string][]byte) error
	// SetCommit installs the function offered each new local set before
	// it is activated.
	SetCommit(fn policy.CommitFunc)
}

var _ PolicyEngine = (*policy.Engine)(nil)

// policyValue is the value of PolicyKey.
type policyValue struct {
	Revision string            `json:"revision"` // policy.ModulesRevision(Modules)
	Modules  map[string][]byte `json:"modules"`  // path -> content (base64 in JSON)
	Node     string            `json:"node"`     // the node that wrote it
	At       time.Time         `json:"at"`
}

// PolicySyncStatus is how this node stands with the cluster's policy.
type PolicySyncStatus struct {
	// ClusterRevision is the set revision last seen in the bucket, written
	// by ClusterNode as the key's revision ClusterSeq.
	ClusterRevision string    `json:"cluster_revision"`
	ClusterSeq      uint64    `json:"cluster_seq"`
	ClusterNode     string    `json:"cluster_node"`
	ClusterAt       time.Time `json:"cluster_at,omitzero"`
	// InForce reports whether that set is the one in force on this node.
	InForce bool `json:"in_force"`
	// RefusedRevision is the cluster's set this node refused (it failed
	// this node's checks or could not be kept), and LastError why; both
	// clear once this node is in step again.
	RefusedRevision string    `json:"refused_revision,omitempty"`
	LastError       string    `json:"last_error,omitempty"`
	LastErrorAt     time.Time `json:"last_error_at,omitzero"`
}

// PolicySync keeps a node's policy engine in step with the cluster's set in
// the KV bucket ztgate-policy: a local change (an API upload, a change in
// the watched policy directory) is committed to the bucket before it is
// activated, and a set written by another node is applied here through the
// same checks. The bucket's key revision orders the sets: a local change is
// written only on top of the set this node has in force (optimistic
// concurrency), so no change is lost to a concurrent one and two nodes
// never trade sets back and forth.
type PolicySync struct {
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	node    string
	eng     PolicyEngine
	log     *slog.Logger
	done    chan struct{}
	started atomic.Bool

	mu       sync.Mutex
	base     uint64      // key revision of the set in force here (0: none yet)
	seen     policyValue // newest value seen, Modules left out
	seenSeq  uint64
	applying string // set revision being applied from the bucket
	refused  string
	lastErr  string
	lastAt   time.Time
}

// NewPolicySync creates the bucket, or updates it to replicas, for node.
func NewPolicySync(ctx context.Context, js jetstream.JetStream, node string, replicas int, eng PolicyEngine, log *slog.Logger) (*PolicySync, error) {
	if js == nil || eng == nil || node == "" {
		return nil, errors.New("cluster: policy sync: JetStream, node name and engine are required")
	}
	if replicas < 1 {
		return nil, fmt.Errorf("cluster: policy sync: replicas %d: must be at least 1", replicas)
	}
	if log == nil {
		log = slog.Default()
	}
	var kv jetstream.KeyValue
	err := ensure(ctx, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      PolicyBucket,
			Description: "ztgate policy: the set of policy files in force on every node",
			History:     policyHistory,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
		return err
	})
	if err != nil {
		return nil, classify("policy sync: create bucket "+PolicyBucket, err)
	}
	return &PolicySync{kv: kv, js: js, node: node, eng: eng, log: log, done: make(chan struct{})}, nil
}

func policyCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, policyCallTimeout)
}

// Start brings the engine in step with the cluster, then keeps it so until
// ctx is done (Done is closed then). If the bucket holds a set other than
// the engine's, that set is applied: the cluster's set wins over a node's
// stale directory. If the bucket is empty, the engine's set is written.
// Only then does a local change need the cluster's consent. If the
// cluster's set fails this node's checks, Start logs it, keeps the set in
// force and returns nil; Status reports it (RefusedRevision, LastError).
// An error means the cluster could not be read or written (ErrNoQuorum).
func (s *PolicySync) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("cluster: policy sync: started twice")
	}
	if err := s.join(ctx); err != nil {
		close(s.done)
		return err
	}
	s.eng.SetCommit(s.commit)
	go s.run(ctx)
	return nil
}

// Done is closed when the sync stopped after its Start's ctx was done.
func (s *PolicySync) Done() <-chan struct{} { return s.done }

// Status reports how this node stands with the cluster's policy.
func (s *PolicySync) Status() PolicySyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, _ := s.eng.Modules()
	return PolicySyncStatus{
		ClusterRevision: s.seen.Revision,
		ClusterSeq:      s.seenSeq,
		ClusterNode:     s.seen.Node,
		ClusterAt:       s.seen.At,
		InForce:         s.seenSeq != 0 && s.seen.Revision == cur,
		RefusedRevision: s.refused,
		LastError:       s.lastErr,
		LastErrorAt:     s.lastAt,
	}
}

// join reads the key, and applies its set, or writes ours when it is empty.
// A bucket just created answers only once its replicas elected a leader,
// so join retries what looks like no quorum until policyStartTimeout.
func (s *PolicySync) join(ctx context.Context) error {
	deadline := time.Now().Add(policyStartTimeout)
	for attempt := 0; attempt < policyStartAttempts; {
		e, err := s.read(ctx)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			err = s.create(ctx)
			if errors.Is(err, jetstream.ErrKeyExists) {
				attempt++ // another node was first: take its set
				continue
			}
		} else if err == nil {
			s.handle(e)
			return nil
		}
		if err == nil || !errors.Is(err, ErrNoQuorum) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: policy sync: start: %w", ctx.Err())
		case <-time.After(policyStartRetry):
		}
	}
	return fmt.Errorf("cluster: policy sync: %s/%s kept changing during start", PolicyBucket, PolicyKey)
}

func (s *PolicySync) read(ctx context.Context) (jetstream.KeyValueEntry, error) {
	cctx, cancel := policyCtx(ctx)
	defer cancel()
	e, err := s.kv.Get(cctx, PolicyKey)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, classify("policy sync: read "+PolicyBucket+"/"+PolicyKey, err)
	}
	return e, err
}

// create writes the engine's set into the empty key.
func (s *PolicySync) create(ctx context.Context) error {
	rev, mods := s.eng.Modules()
	v, err := s.encode(rev, mods)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cctx, cancel := policyCtx(ctx)
	defer cancel()
	seq, err := s.kv.Create(cctx, PolicyKey, v)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		return classify("policy sync: write the first policy set", err)
	}
	s.committed(seq, rev)
	s.log.Info("cluster: policy set written to the empty cluster", "set", policyShort(rev), "seq", seq)
	return nil
}

// commit is the engine's CommitFunc: it writes a new local set on top of
// the set in force here. It runs with the engine's loads serialized.
func (s *PolicySync) commit(rev string, mods map[string][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev == s.applying {
		return nil // the set being applied from the bucket
	}
	if rev == s.seen.Revision && s.seenSeq != 0 {
		// The bucket has it already: writing it again would only make
		// every node look at it once more.
		s.base = s.seenSeq
		s.clearError()
		return nil
	}
	return s.write(rev, mods)
}

// write puts the set rev on top of the key's revision base: only over the
// set this node has in force. mu is held.
func (s *PolicySync) write(rev string, mods map[string][]byte) error {
	v, err := s.encode(rev, mods)
	if err != nil {
		return err
	}
	ctx, cancel := policyCtx(context.Background())
	defer cancel()
	seq, err := s.kv.Update(ctx, PolicyKey, v, s.base)
	switch {
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		why := fmt.Sprintf("the newest set %s (from node %s) is not in force here yet", policyShort(s.seen.Revision), s.seen.Node)
		if s.refused != "" {
			why = fmt.Sprintf("this node refused the cluster's set %s: %s", policyShort(s.refused), s.lastErr)
		}
		return fmt.Errorf("%w: %s; the change was not made", ErrPolicyConflict, why)
	case err != nil:
		return classify("policy sync: write policy set "+policyShort(rev), err)
	}
	s.committed(seq, rev)
	s.log.Info("cluster: policy set committed to the cluster", "set", policyShort(rev), "seq", seq)
	return nil
}

// committed records that the key holds this node's set rev at seq. mu is
// held.
func (s *PolicySync) committed(seq uint64, rev string) {
	s.base, s.seenSeq = seq, seq
	s.seen = policyValue{Revision: rev, Node: s.node, At: time.Now().UTC()}
	s.clearError()
}

func (s *PolicySync) clearError() {
	s.refused, s.lastErr, s.lastAt = "", "", time.Time{}
}

// encode is the value for the set rev, refused when the cluster could not
// carry it.
func (s *PolicySync) encode(rev string, mods map[string][]byte) ([]byte, error) {
	v, err := json.Marshal(policyValue{Revision: rev, Modules: mods, Node: s.node, At: time.Now().UTC()})
	if err != nil {
		return nil, fmt.Errorf("cluster: policy sync: encode set %s: %w", policyShort(rev), err)
	}
	if nc := s.js.Conn(); nc != nil && int64(len(v)) > nc.MaxPayload() {
		return nil, fmt.Errorf("cluster: policy sync: the policy set is %d bytes encoded, more than the %d bytes a NATS message may carry", len(v), nc.MaxPayload())
	}
	return v, nil
}

// decodePolicyValue checks a value from the bucket: whoever wrote it, the set must be
// what its revision says.
func decodePolicyValue(raw []byte) (policyValue, error) {
	var v policyValue
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("cluster: policy sync: decode the value: %w", err)
	}
	if got := policy.ModulesRevision(v.Modules); got != v.Revision {
		return v, fmt.Errorf("cluster: policy sync: the value's set %s does not match its modules (%s)", policyShort(v.Revision), policyShort(got))
	}
	return v, nil
}

// run watches the key until ctx is done, watching again if the watch ends.
func (s *PolicySync) run(ctx context.Context) {
	defer close(s.done)
	for {
		if err := s.watch(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("cluster: policy sync: watching the cluster's policy; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(policyRewatch):
		}
	}
}

// watch applies each value of the key (the newest first) until ctx is done
// or the watch ends.
func (s *PolicySync) watch(ctx context.Context) error {
	// The watch lives as long as wctx, which also bounds its setup.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(policyCallTimeout, cancel)
	w, err := s.kv.Watch(wctx, PolicyKey)
	if !timer.Stop() {
		if err == nil {
			_ = w.Stop()
		}
		return classify("policy sync: watch "+PolicyBucket, context.DeadlineExceeded)
	}
	if err != nil {
		return classify("policy sync: watch "+PolicyBucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("cluster: policy sync: the watch ended")
			}
			if e != nil { // nil marks the end of the initial values
				s.handle(e)
			}
		}
	}
}

// handle brings the engine in step with one value of the key.
func (s *PolicySync) handle(e jetstream.KeyValueEntry) {
	seq := e.Revision()
	if e.Operation() != jetstream.KeyValuePut {
		s.rewrite(seq)
		return
	}
	v, err := decodePolicyValue(e.Value())
	s.mu.Lock()
	if seq <= s.base {
		s.mu.Unlock()
		return // in force here already, or older
	}
	if seq > s.seenSeq {
		s.seenSeq = seq
		s.seen = policyValue{Revision: v.Revision, Node: v.Node, At: v.At}
		if err != nil {
			s.seen.Revision = "" // unverified: never equal to a set of ours
		}
	}
	if err != nil {
		s.refuse(seq, v, err)
		s.mu.Unlock()
		return
	}
	if cur, _ := s.eng.Modules(); cur == v.Revision {
		s.base = seq
		s.clearError()
		s.mu.Unlock()
		return
	}
	// Not under mu: ApplyModules calls commit, which takes it.
	s.applying = v.Revision
	s.mu.Unlock()
	err = s.eng.ApplyModules(v.Modules)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applying = ""
	if err != nil {
		s.refuse(seq, v, err)
		return
	}
	s.base = seq
	s.clearError()
	s.log.Info("cluster: policy set from the cluster in force", "set", policyShort(v.Revision), "from", v.Node, "seq", seq)
}

// refuse records that this node did not take the set at seq; the set in
// force stays. mu is held.
func (s *PolicySync) refuse(seq uint64, v policyValue, err error) {
	s.refused = v.Revision
	if s.refused == "" {
		s.refused = fmt.Sprintf("seq %d", seq)
	}
	s.lastErr, s.lastAt = err.Error(), time.Now().UTC()
	s.log.Error("cluster: policy set from the cluster refused on this node; the set in force here stays and differs from the cluster's",
		"set", policyShort(v.Revision), "from", v.Node, "seq", seq, "err", err)
}

// rewrite puts the engine's set back after someone deleted or purged the
// key, so that a node starting later does not take its own directory for
// the cluster's policy.
func (s *PolicySync) rewrite(seq uint64) {
	rev, mods := s.eng.Modules()
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.base {
		return
	}
	s.log.Warn("cluster: policy key deleted; writing the set in force here again", "set", policyShort(rev), "seq", seq)
	s.base = seq
	s.seenSeq, s.seen = seq, policyValue{}
	if err := s.write(rev, mods); err != nil {
		s.log.Warn("cluster: policy sync: rewriting the deleted policy key", "err", err)
	}
}

func policyShort(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}
