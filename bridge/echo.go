package bridge

import (
	"hash/maphash"
	"sync"
	"time"
)

// echoRing remembers what an MQTT 3.1.1 bridge forwarded in the last ttl,
// by a hash of (remote topic, payload), so a message the upstream sends
// back because in and out rules overlap is recognised and dropped. MQTT 5
// needs none of this: its subscriptions are made with No Local. It is
// bounded: the oldest entries are forgotten first. The hash is seeded per
// process, so a peer cannot craft a collision to suppress a message.
type echoRing struct {
	seed maphash.Seed
	ttl  time.Duration

	mu   sync.Mutex
	ring []echoEntry
	pos  int
	last map[uint64]time.Time
}

type echoEntry struct {
	h uint64
	t time.Time
}

func newEchoRing(size int, ttl time.Duration) *echoRing {
	return &echoRing{seed: maphash.MakeSeed(), ttl: ttl, ring: make([]echoEntry, size), last: make(map[uint64]time.Time, size)}
}

func (e *echoRing) hash(topic string, payload []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(e.seed)
	_, _ = h.WriteString(topic)
	_ = h.WriteByte(0)
	_, _ = h.Write(payload)
	return h.Sum64()
}

func (e *echoRing) add(topic string, payload []byte) {
	h, now := e.hash(topic, payload), time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.ring[e.pos]
	if t, ok := e.last[old.h]; ok && t.Equal(old.t) {
		delete(e.last, old.h)
	}
	e.ring[e.pos] = echoEntry{h: h, t: now}
	e.pos = (e.pos + 1) % len(e.ring)
	e.last[h] = now
}

func (e *echoRing) seen(topic string, payload []byte) bool {
	h := e.hash(topic, payload)
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.last[h]
	return ok && time.Since(t) < e.ttl
}
