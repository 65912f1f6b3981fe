package console

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestSamplerRing(t *testing.T) {
	var allowed, denied atomic.Uint64
	allowed.Store(100) // totals from before: no interval's
	s, err := NewSampler(func() (uint64, uint64) { return allowed.Load(), denied.Load() }, time.Second, 3)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Unix(1000, 0)}
	s.now = clk.Now
	s.Sample()
	if p := s.Points(); len(p) != 0 {
		t.Fatalf("after the baseline: %+v", p)
	}
	for i := range 4 {
		allowed.Add(uint64(i + 1))
		denied.Add(uint64(10 * (i + 1)))
		clk.Advance(10 * time.Second)
		s.Sample()
	}
	p := s.Points()
	if len(p) != 3 {
		t.Fatalf("points %+v", p)
	}
	// Oldest first; the first interval fell out of the ring.
	for i, want := range []Point{{Allowed: 2, Denied: 20}, {Allowed: 3, Denied: 30}, {Allowed: 4, Denied: 40}} {
		if p[i].Allowed != want.Allowed || p[i].Denied != want.Denied {
			t.Fatalf("point %d: %+v, want %+v", i, p[i], want)
		}
		if i > 0 && !p[i].T.After(p[i-1].T) {
			t.Fatalf("points not oldest first: %+v", p)
		}
	}
}

func TestSamplerRunStops(t *testing.T) {
	s, err := NewSampler(func() (uint64, uint64) { return 0, 0 }, time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run does not return after cancel")
	}
	if _, err := NewSampler(nil, 0, 0); err == nil {
		t.Fatal("a sampler without totals")
	}
}
