// Package debounce turns a burst of file-system events into one action: the
// policy directory and the identity files are both rewritten by editors and
// deploy tools as several events in quick succession, and each should be
// read once, when the writing is over.
package debounce

import "time"

// Timer fires Wait after the last event of a burst, and at the latest four
// Waits after the burst's first event, so a file rewritten without pause is
// still read. It is not safe for concurrent use: one goroutine owns it and
// selects on C.
type Timer struct {
	// C delivers when the action is due; call Fired after receiving.
	C <-chan time.Time

	t       *time.Timer
	wait    time.Duration
	pending bool
	burst   time.Time // the first event since the last firing
}

// New returns a stopped timer with the given quiet period.
func New(wait time.Duration) *Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &Timer{C: t.C, t: t, wait: wait}
}

// Event records an event at time.Now() and schedules the firing.
func (d *Timer) Event() {
	now := time.Now()
	if !d.pending {
		d.pending, d.burst = true, now
	}
	wait := d.wait
	if limit := d.burst.Add(4 * d.wait).Sub(now); wait > limit {
		wait = max(limit, 0)
	}
	d.t.Reset(wait)
}

// Fired ends the burst C has just delivered for: the next event starts a
// new one.
func (d *Timer) Fired() { d.pending = false }

// After schedules a firing after dt whatever the events, for a retry.
func (d *Timer) After(dt time.Duration) { d.t.Reset(dt) }

// Stop stops the timer.
func (d *Timer) Stop() { d.t.Stop() }
