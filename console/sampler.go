package console

import (
	"context"
	"errors"
	"sync"
	"time"
)

const (
	// DefaultSampleInterval and DefaultSamplePoints make the overview's
	// chart: one point per 10 s over the last 10 minutes.
	DefaultSampleInterval = 10 * time.Second
	DefaultSamplePoints   = 60
)

// Point is the decisions of one sampling interval, ending at T.
type Point struct {
	T       time.Time `json:"t"`
	Allowed uint64    `json:"allowed"`
	Denied  uint64    `json:"denied"`
}

// Sampler turns the gateway's running decision totals into a ring of
// per-interval counts. It reads the totals once per interval on its own
// goroutine, so the decision path pays nothing for it.
type Sampler struct {
	read     func() (allowed, denied uint64)
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	ring    []Point // oldest first once full: ring[next:] then ring[:next]
	next    int
	full    bool
	primed  bool
	lastA   uint64
	lastD   uint64
	running bool
}

// NewSampler returns a Sampler of read (the running totals, e.g.
// (*metrics.Metrics).DecisionTotals) that keeps points intervals; zeros
// mean the defaults.
func NewSampler(read func() (allowed, denied uint64), interval time.Duration, points int) (*Sampler, error) {
	switch {
	case read == nil:
		return nil, errors.New("console: a sampler needs the decision totals")
	case interval < 0 || points < 0:
		return nil, errors.New("console: negative sampling interval or points")
	}
	if interval == 0 {
		interval = DefaultSampleInterval
	}
	if points == 0 {
		points = DefaultSamplePoints
	}
	return &Sampler{read: read, interval: interval, now: time.Now, ring: make([]Point, points)}, nil
}

// Run samples every interval until ctx ends. A second Run while one is
// running returns at once.
func (s *Sampler) Run(ctx context.Context) {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return
	}
	s.running = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
	s.Sample()
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sample()
		}
	}
}

// Sample takes one sample now: the decisions since the previous one. The
// first sample only sets the baseline (the totals since the process
// started are no interval's).
func (s *Sampler) Sample() {
	a, d := s.read()
	now := s.now().UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.primed {
		s.primed, s.lastA, s.lastD = true, a, d
		return
	}
	p := Point{T: now, Allowed: delta(a, s.lastA), Denied: delta(d, s.lastD)}
	s.lastA, s.lastD = a, d
	s.ring[s.next] = p
	s.next = (s.next + 1) % len(s.ring)
	if s.next == 0 {
		s.full = true
	}
}

// delta is cur-prev, 0 when a counter went back (a fresh Metrics).
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return 0
	}
	return cur - prev
}

// Points returns the kept points, oldest first.
func (s *Sampler) Points() []Point {
	if s == nil {
		return []Point{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.full {
		return append([]Point{}, s.ring[:s.next]...)
	}
	out := make([]Point, 0, len(s.ring))
	out = append(out, s.ring[s.next:]...)
	return append(out, s.ring[:s.next]...)
}
