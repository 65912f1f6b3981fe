package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Every limit has its own series, anything else is "other", counting
// allocates nothing, and a nil Metrics counts nothing.
func TestLimitHit(t *testing.T) {
	m := New(nil)
	m.LimitHit("sessions")
	m.LimitHit("sessions")
	m.LimitHit("no such limit")
	if got := testutil.ToFloat64(m.limits.vec.WithLabelValues("sessions")); got != 2 {
		t.Fatalf("sessions %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.limits.vec.WithLabelValues("other")); got != 1 {
		t.Fatalf("other %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.limits.vec); n != len(Limits) {
		t.Fatalf("%d series, want the fixed set of %d", n, len(Limits))
	}
	if a := testing.AllocsPerRun(100, func() { m.LimitHit("conn_rate") }); a != 0 {
		t.Fatalf("%v allocations per hit", a)
	}
	var none *Metrics
	none.LimitHit("sessions")
}
