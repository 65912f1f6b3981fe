package policy

import (
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
)

// The decision cache. mochi asks for a decision once per PUBLISH and once
// per delivery, and a prepared query costs tens of microseconds; but a
// session publishes to, and receives from, few distinct topics, and the
// same subject with the same topic gets the same answer until the policy or
// the subject changes. So the cache keeps, per Subject, the decisions of
// the revision in force, keyed on exactly the per-decision fields that
// revision reads (InputRefs):
//
//   - the revision: a decision is kept with the revision that made it and
//     reused only while that revision is in force, so a new policy applies
//     to the very next decision;
//   - the subject: identity, device and client are fixed for a Subject (the
//     gateway builds a new one when the registry record changes), so the
//     decisions live in the Subject itself and die with it;
//   - the action and, of topic, filter, qos, retain, will and payload_size,
//     those the revision reads at all.
//
// A revision whose decisions depend on anything else (the input used as a
// whole or with a computed key, input.time, a nondeterministic builtin) is
// not cached: every decision goes to the engine. So are connect and admin
// decisions (a new Subject each time, nothing to reuse), failed
// evaluations, and decisions under a done context.

// Default bounds of a Cache.
const (
	// DefaultCacheEntries bounds the decisions kept for all subjects
	// together. An entry with a 30-byte topic takes about 230 bytes, so
	// the default bound is some 15 MB.
	DefaultCacheEntries = 1 << 16
	// DefaultCachePerSubject bounds the decisions kept for one subject,
	// so that one subject receiving from many topics cannot take the
	// whole cache.
	DefaultCachePerSubject = 4096
	// DefaultCacheMaxBytes bounds the memory of the decisions kept. The
	// entry bound alone allows 4 GiB (MQTT topics reach 64 KiB); 64 MiB
	// holds DefaultCacheEntries decisions on topics of up to some 900
	// bytes, far more than the 30 to 100 bytes of usual topics, and keeps
	// the worst case a small share of a gateway's memory.
	DefaultCacheMaxBytes = 64 << 20
)

// The shares of CacheOptions.MaxBytes a subject, and a decision, may take.
// A decision larger than maxBytes/entryShare (1 MiB by default; any MQTT
// topic fits) is not kept at all: the engine decides it every time.
const (
	subjectShare = 16 // as DefaultCacheEntries / DefaultCachePerSubject
	entryShare   = 64
)

// entryOverhead is what a decision costs beyond its strings: its key and
// value, their map slot and the reasons' slice header, rounded up.
const entryOverhead = 160

// CacheOptions configure a Cache.
type CacheOptions struct {
	// MaxEntries bounds the decisions kept for all subjects together;
	// zero means DefaultCacheEntries. When it is reached, a subject makes
	// room among its own decisions or keeps no more.
	MaxEntries int
	// MaxPerSubject bounds the decisions kept for one subject; zero means
	// DefaultCachePerSubject (or MaxEntries, if lower). When it is
	// reached, a random decision of the subject makes room.
	MaxPerSubject int
	// MaxBytes bounds the memory of the decisions kept for all subjects
	// together, as accounted: each decision its topic or filter, its
	// reasons and a fixed overhead. Zero means DefaultCacheMaxBytes. One
	// subject keeps at most a sixteenth of it; a decision larger than a
	// sixty-fourth is not kept.
	MaxBytes int64
}

// CacheStats counts what a Cache did.
type CacheStats struct {
	// Hits are decisions answered from the cache.
	Hits uint64
	// Misses are cacheable decisions that were not cached yet: the
	// engine decided them.
	Misses uint64
	// Bypassed are decisions the cache passed to the engine without
	// looking: a revision that is not cacheable, connect and admin
	// decisions, a done context, a subject cached by another Cache.
	Bypassed uint64
	// Entries is the number of decisions kept now.
	Entries int64
	// Bytes is the memory the decisions kept now are accounted for.
	Bytes int64
}

// Cache is a Decider that answers from memory what the engine decided
// before for the same Subject and the same fields of the input, under the
// same revision. It returns exactly what the engine returned then: Allow,
// Reasons (shared: callers must not modify them) and Revision.
//
// Put it directly around the engine, inside a decision logger (which must
// see, and give an id to, every decision) and inside metrics (which count
// every decision, cached or not); package internal/decisionchain builds
// that chain:
//
//	dl.Wrap(m.Wrap(policy.NewCache(engine, nil, policy.CacheOptions{})))
//
// A Subject's decisions are kept by the first Cache that decides for it;
// another Cache passes that Subject's decisions through. It is safe for
// concurrent use.
type Cache struct {
	engine        *Engine
	next          Decider
	maxEntries    int64
	maxPerSubject int
	maxBytes      int64
	subjectBytes  int64 // what one subject may keep
	entryBytes    int64 // the largest decision kept

	entries atomic.Int64
	bytes   atomic.Int64
	_       [48]byte // the counters below change on every decision
	hits    atomic.Uint64
	misses  atomic.Uint64
	bypass  atomic.Uint64
}

var _ Decider = (*Cache)(nil)

// NewCache returns a Cache over e. next is what decides a miss: e itself
// when nil, or a wrapper of e (it must decide with e, whose Revision the
// cache checks in each Decision it keeps).
func NewCache(e *Engine, next Decider, opts CacheOptions) *Cache {
	c := &Cache{engine: e, next: next, maxEntries: int64(opts.MaxEntries), maxPerSubject: opts.MaxPerSubject, maxBytes: opts.MaxBytes}
	if c.next == nil && e != nil {
		c.next = e
	}
	if c.maxEntries <= 0 {
		c.maxEntries = DefaultCacheEntries
	}
	if c.maxPerSubject <= 0 {
		c.maxPerSubject = int(min(DefaultCachePerSubject, c.maxEntries))
	}
	if c.maxBytes <= 0 {
		c.maxBytes = DefaultCacheMaxBytes
	}
	c.subjectBytes, c.entryBytes = c.maxBytes/subjectShare, c.maxBytes/entryShare
	return c
}

var errNoEngine = errors.New("policy: cache without an engine")

// Decide answers from the cache or asks the engine, see Cache.
func (c *Cache) Decide(ctx context.Context, in *Input) Decision {
	if c == nil || c.engine == nil || c.next == nil {
		if c != nil && c.next != nil {
			return c.next.Decide(ctx, in)
		}
		return Decision{Err: errNoEngine}
	}
	rev := c.engine.Active()
	if !rev.Cacheable() || in == nil || in.Subject == nil || ctx.Err() != nil {
		return c.pass(ctx, in)
	}
	k, ok := rev.plan.key(in)
	if !ok {
		return c.pass(ctx, in)
	}
	m := c.memoFor(in.Subject)
	if m == nil {
		return c.pass(ctx, in)
	}
	if v, ok := m.load(rev.plan, k); ok {
		c.hits.Add(1)
		return Decision{Allow: v.allow, Reasons: v.reasons, Revision: rev.ID}
	}
	c.misses.Add(1)
	d := c.next.Decide(ctx, in)
	// Only a decision made by the revision the key was built for, that did
	// not fail and that no logger gave an id is kept.
	if d.Err == nil && d.ID == "" && d.Revision == rev.ID {
		m.store(rev.plan, k, memoValue{allow: d.Allow, reasons: d.Reasons})
	}
	return d
}

func (c *Cache) pass(ctx context.Context, in *Input) Decision {
	c.bypass.Add(1)
	return c.next.Decide(ctx, in)
}

// Stats returns the cache's counters. A nil Cache has none.
func (c *Cache) Stats() CacheStats {
	if c == nil {
		return CacheStats{}
	}
	return CacheStats{
		Hits:     c.hits.Load(),
		Misses:   c.misses.Load(),
		Bypassed: c.bypass.Load(),
		Entries:  c.entries.Load(),
		Bytes:    c.bytes.Load(),
	}
}

// memoFor returns the Subject's decisions, nil when another Cache keeps
// them.
func (c *Cache) memoFor(s *Subject) *subjectMemo {
	m := s.memo.Load()
	if m == nil {
		fresh := &subjectMemo{owner: c}
		if s.memo.CompareAndSwap(nil, fresh) {
			// The subject's entries leave the count when it is collected;
			// fresh does not point back at s, as AddCleanup requires.
			runtime.AddCleanup(s, (*subjectMemo).release, fresh)
			m = fresh
		} else {
			m = s.memo.Load()
		}
	}
	if m.owner != c {
		return nil
	}
	return m
}

// cachePlan is what the cache needs to know of one revision: whether its
// decisions may be reused and which per-decision fields they depend on.
// Revisions with the same id share one plan.
type cachePlan struct {
	id        string
	refs      InputRefs
	cacheable bool
	// The per-decision fields the revision reads.
	topic, filter, qos, retain, will, size bool
	// Of input.bridge: whether it is there, and which of its fields.
	bridge, bridgeName, bridgeURL, remoteTopic bool
}

func newCachePlan(id string, refs InputRefs) *cachePlan {
	p := &cachePlan{id: id, refs: refs, cacheable: refs.Cacheable()}
	for _, path := range refs.Paths {
		field, _, _ := strings.Cut(strings.TrimPrefix(path, "input."), ".")
		switch field {
		case "topic":
			p.topic = true
		case "filter":
			p.filter = true
		case "qos":
			p.qos = true
		case "retain":
			p.retain = true
		case "will":
			p.will = true
		case "payload_size":
			p.size = true
		case "bridge":
			p.planBridge(path)
		}
	}
	return p
}

// planBridge notes what a path under input.bridge reads. Any path there
// tells whether the bridge is present; input.bridge as a whole, or a field
// the document does not have, keys on all of it.
func (p *cachePlan) planBridge(path string) {
	p.bridge = true
	switch strings.TrimPrefix(path, "input.bridge") {
	case ".name":
		p.bridgeName = true
	case ".url":
		p.bridgeURL = true
	case ".remote_topic":
		p.remoteTopic = true
	default:
		p.bridgeName, p.bridgeURL, p.remoteTopic = true, true, true
	}
}

// memoKey identifies a decision within one Subject and one revision. A
// field the revision does not read, or the action does not carry, is left
// zero.
//
// filter holds, for the bridge actions (which carry no filter), the bridge
// fields the revision reads (bridgeKey): every publish decision hashes the
// key, so it grows by nothing for them.
type memoKey struct {
	topic, filter string
	size          int
	action        uint8
	qos           byte
	retain, will  bool
}

// Cached actions. Connect and admin decisions come with a new Subject
// each time: there is nothing to reuse. A bridge_out decision comes with
// the publisher's Subject, a bridge_in with the bridge's, both long-lived.
const (
	keyPublish uint8 = iota + 1
	keyReceive
	keySubscribe
	keyBridgeOut
	keyBridgeIn
)

// key builds the key of in; ok is false for an action that is not cached.
func (p *cachePlan) key(in *Input) (k memoKey, ok bool) {
	switch in.Action {
	case ActionPublish:
		k.action = keyPublish
	case ActionReceive:
		k.action = keyReceive
	case ActionSubscribe:
		k.action = keySubscribe
	case ActionBridgeOut:
		k.action = keyBridgeOut
	case ActionBridgeIn:
		k.action = keyBridgeIn
	default:
		return k, false
	}
	fs := fieldsFor(in.Action)
	if fs.topic && p.topic {
		k.topic = in.Topic
	}
	if fs.filter && p.filter {
		k.filter = in.Filter
	}
	if fs.qos && p.qos {
		k.qos = in.QoS
	}
	if fs.message {
		k.retain = p.retain && in.Retain
		k.will = p.will && in.Will
		if p.size {
			k.size = in.PayloadSize
		}
	}
	if fs.bridge && p.bridge {
		k.filter = p.bridgeKey(in.Bridge)
	}
	return k, true
}

// bridgeKey encodes the fields of b the plan reads, each with its length so
// that no two bridges share a key: "" without a bridge, "b" and the fields
// with one. A policy that reads no field but the bridge's presence costs no
// allocation.
func (p *cachePlan) bridgeKey(b *Bridge) string {
	if b == nil {
		return ""
	}
	if !p.bridgeName && !p.bridgeURL && !p.remoteTopic {
		return "b"
	}
	buf := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(b.Name)+len(b.URL)+len(b.RemoteTopic))
	buf = append(buf, 'b')
	for _, f := range [...]struct {
		read bool
		v    string
	}{{p.bridgeName, b.Name}, {p.bridgeURL, b.URL}, {p.remoteTopic, b.RemoteTopic}} {
		if !f.read {
			buf = append(buf, 0)
			continue
		}
		buf = binary.AppendUvarint(buf, uint64(len(f.v))+1)
		buf = append(buf, f.v...)
	}
	return string(buf)
}

type memoValue struct {
	allow   bool
	reasons []string
}

// entrySize is what a decision is accounted for: its strings and
// entryOverhead. A topic or filter can be 64 KiB, and reasons are whatever
// the policy makes of the input.
func entrySize(k memoKey, v memoValue) int64 {
	n := int64(entryOverhead + len(k.topic) + len(k.filter))
	for _, r := range v.reasons {
		n += int64(16 + len(r))
	}
	return n
}

// subjectMemo holds one Subject's decisions under one revision's plan.
type subjectMemo struct {
	owner *Cache

	mu       sync.RWMutex
	plan     *cachePlan
	m        map[memoKey]memoValue
	bytes    int64 // accounted for m (entrySize)
	released bool  // the Subject was collected (a late store keeps nothing)
}

func (m *subjectMemo) load(p *cachePlan, k memoKey) (memoValue, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.plan != p {
		return memoValue{}, false
	}
	v, ok := m.m[k]
	return v, ok
}

func (m *subjectMemo) store(p *cachePlan, k memoKey, v memoValue) {
	c := m.owner
	size := entrySize(k, v)
	if size > c.entryBytes {
		return // too large to keep: the engine decides it every time
	}
	// The caller's strings may share memory with a whole packet (mochi's
	// topics point into the packet buffer): keep copies of their own.
	k.topic, k.filter = strings.Clone(k.topic), strings.Clone(k.filter)
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.engine.Active().plan != p || m.released {
		return // the revision changed meanwhile: p's decisions are stale
	}
	if m.plan != p {
		c.entries.Add(-int64(len(m.m)))
		c.bytes.Add(-m.bytes)
		m.m, m.plan, m.bytes = nil, p, 0
	}
	if _, dup := m.m[k]; dup {
		return // decided concurrently: the same answer
	}
	if m.m == nil {
		m.m = make(map[memoKey]memoValue)
	}
	for (len(m.m) >= c.maxPerSubject || m.bytes+size > c.subjectBytes) && m.evictOne() {
	}
	// The space is taken first and given back if it is not there, so
	// that concurrent stores never keep more than the bounds together.
	n, b := c.entries.Add(1), c.bytes.Add(size)
	if n > c.maxEntries || b > c.maxBytes {
		// The cache is full: make room among this subject's own
		// decisions if they can make enough, or keep no more.
		if n-int64(len(m.m)) > c.maxEntries || b-m.bytes > c.maxBytes {
			c.entries.Add(-1)
			c.bytes.Add(-size)
			return
		}
		for (n > c.maxEntries || b > c.maxBytes) && m.evictOne() {
			n, b = c.entries.Load(), c.bytes.Load()
		}
		if n > c.maxEntries || b > c.maxBytes {
			c.entries.Add(-1)
			c.bytes.Add(-size)
			return
		}
	}
	m.m[k] = v
	m.bytes += size
}

// evictOne drops a decision of the subject, picked at random (map order
// is). m.mu is held.
func (m *subjectMemo) evictOne() bool {
	for k, v := range m.m {
		delete(m.m, k)
		size := entrySize(k, v)
		m.bytes -= size
		m.owner.entries.Add(-1)
		m.owner.bytes.Add(-size)
		return true
	}
	return false
}

// release drops all decisions; it runs when the Subject is collected.
func (m *subjectMemo) release() {
	m.mu.Lock()
	n, b := len(m.m), m.bytes
	m.m, m.plan, m.bytes, m.released = nil, nil, 0, true
	m.mu.Unlock()
	m.owner.entries.Add(-int64(n))
	m.owner.bytes.Add(-b)
}
