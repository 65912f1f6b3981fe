package identity

import (
	"testing"
	"time"
)

// The refresh interval: the configured one, else the bundle's hint, else
// the default; always within [floor, 24h], whatever a partner hints.
func TestFederationInterval(t *testing.T) {
	f := &Federation{minWait: minFederationRefresh}
	for _, tc := range []struct {
		name       string
		configured time.Duration
		hint       time.Duration
		want       time.Duration
	}{
		{"configured wins over the hint", 2 * time.Minute, time.Hour, 2 * time.Minute},
		{"hint when none configured", 0, 90 * time.Second, 90 * time.Second},
		{"default without either", 0, 0, DefaultFederationRefresh},
		{"a zero-ish hint is raised to the floor", 0, time.Millisecond, time.Second},
		{"a year-long hint is cut to a day", 0, 365 * 24 * time.Hour, 24 * time.Hour},
		{"a week configured is cut to a day", 7 * 24 * time.Hour, 0, 24 * time.Hour},
	} {
		d := &fedDomain{FederatedDomain: FederatedDomain{RefreshInterval: tc.configured}}
		if got := f.interval(d, tc.hint); got != tc.want {
			t.Errorf("%s: interval = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// Retries back off exponentially from 2s to the interval, each wait
// jittered within [backoff/2, backoff] and never under the floor.
func TestFederationBackoff(t *testing.T) {
	floor, interval := time.Second, time.Minute
	var b time.Duration
	var seq []time.Duration
	for range 10 {
		b = nextBackoff(b, floor, interval)
		seq = append(seq, b)
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second,
		time.Minute, time.Minute, time.Minute, time.Minute, time.Minute}
	for i := range want {
		if seq[i] != want[i] {
			t.Fatalf("backoff sequence %v, want %v", seq, want)
		}
	}
	if got := nextBackoff(0, floor, 500*time.Millisecond); got != floor {
		t.Errorf("an interval under the floor: backoff %s, want the floor", got)
	}
	seen := map[time.Duration]bool{}
	for range 200 {
		w := jitter(8*time.Second, floor)
		if w < 4*time.Second || w > 8*time.Second {
			t.Fatalf("jitter(8s) = %s, outside [4s, 8s]", w)
		}
		seen[w] = true
	}
	if len(seen) < 2 {
		t.Error("jitter gave the same wait 200 times")
	}
	if w := jitter(time.Second, floor); w != floor {
		t.Errorf("jitter(1s) = %s, want the 1s floor", w)
	}
}
