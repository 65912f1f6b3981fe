package bridge

import (
	"testing"
	"time"
)

// Reconnect waits grow from 1 s, double, stop at 60 s, and are drawn
// uniformly below that bound (full jitter), never negative.
func TestBackoffBounds(t *testing.T) {
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for n, w := range want {
		if got := maxBackoff(n); got != w*time.Second {
			t.Errorf("maxBackoff(%d) = %v; want %v", n, got, w*time.Second)
		}
	}
	if got := maxBackoff(1 << 20); got != backoffCap {
		t.Errorf("maxBackoff(huge) = %v; want the cap", got)
	}
	// Full jitter: the waits are spread below the bound, not pinned to it.
	var below int
	for range 200 {
		d := backoff(3)
		if d < 0 || d >= 8*time.Second {
			t.Fatalf("backoff(3) = %v; want in [0, 8s)", d)
		}
		if d < 4*time.Second {
			below++
		}
	}
	if below == 0 || below == 200 {
		t.Errorf("%d of 200 waits below half the bound; want a spread", below)
	}
}
