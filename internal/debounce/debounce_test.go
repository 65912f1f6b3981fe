package debounce

import (
	"testing"
	"time"
)

// A burst of events fires once, after it; a burst that does not stop still
// fires, bounded by four quiet periods after its first event.
func TestTimer(t *testing.T) {
	const wait = 20 * time.Millisecond
	d := New(wait)
	defer d.Stop()

	// Events 1 ms apart for far longer than 4 waits: the timer must fire
	// while they are still coming.
	stop := time.Now().Add(50 * wait)
	fired := false
	for !fired && time.Now().Before(stop) {
		d.Event()
		select {
		case <-d.C:
			d.Fired()
			fired = true
		case <-time.After(time.Millisecond):
		}
	}
	if !fired {
		t.Fatal("a burst that never stops never fired")
	}

	// A short burst fires once after it, then nothing more.
	for range 5 {
		d.Event()
	}
	select {
	case <-d.C:
		d.Fired()
	case <-time.After(50 * wait):
		t.Fatal("a burst did not fire")
	}
	select {
	case <-d.C:
		t.Fatal("one burst fired twice")
	case <-time.After(4 * wait):
	}

	// After schedules a retry with no event.
	d.After(wait)
	select {
	case <-d.C:
	case <-time.After(50 * wait):
		t.Fatal("After did not fire")
	}
}
