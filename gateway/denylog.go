package gateway

import (
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztgate/ztgate/policy"
)

const (
	// denyInterval is how long the repeats of a denial already logged in
	// full are only counted. A client sending the same forbidden PUBLISH
	// in a loop costs one full line and one summary line per interval,
	// not a line per packet. The decision log, when on, still records
	// every denial.
	denyInterval = 10 * time.Second
	// denyKinds bounds the kinds of denial a session tracks; the denials
	// of any further kinds are counted together, so a client varying its
	// topics grows neither the gateway's memory nor its log.
	denyKinds = 16
)

// denyKey is what makes two denials of one session the same kind: the
// same action on the same topic or filter (will or not), refused for the
// same reasons by the same revision, or by the gateway itself for the same
// reason.
type denyKey struct {
	action   policy.Action
	topic    string
	filter   string
	will     bool
	reason   string   // the gateway's own refusal
	reasons  []string // the policy's
	revision string
	failed   bool // the decision failed (error, timeout)
}

func (k *denyKey) equal(o *denyKey) bool {
	return k.action == o.action && k.topic == o.topic && k.filter == o.filter && k.will == o.will &&
		k.reason == o.reason && k.revision == o.revision && k.failed == o.failed && slices.Equal(k.reasons, o.reasons)
}

// denyKind is one kind of denial of a session: when its last full line was
// written, and how many denials of it have been counted since.
type denyKind struct {
	key   denyKey
	since time.Time
	count int
}

// denyLog is the record of one session's denials.
type denyLog struct {
	mu    sync.Mutex
	kinds []denyKind // at most denyKinds
	other denyKind   // the denials of every kind beyond those
}

// denyFlusher writes the summaries of intervals that ended while nobody
// was denied anything more: one timer for the whole gateway, armed only
// while some session has denials counted.
type denyFlusher struct {
	interval atomic.Int64 // a time.Duration: denyInterval; tests shorten it
	armed    atomic.Bool

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

// noteDenial records a denial of s and reports whether it is to be logged
// in full: the first of its kind, or the first since its last interval
// ended. Repeats within the interval are only counted. A summary that is
// due (the interval of the slot's previous kind is over) is written here.
// Counting a repeat takes the session's lock and allocates nothing.
func (g *Gateway) noteDenial(s *session, k *denyKey) bool {
	now := time.Now()
	interval := time.Duration(g.denials.interval.Load())
	l := &s.denials
	l.mu.Lock()
	slot, other := l.slot(k, now, interval)
	if !slot.since.IsZero() && now.Sub(slot.since) < interval {
		slot.count++
		first := slot.count == 1
		l.mu.Unlock()
		if first {
			g.armDenials()
		}
		return false
	}
	// A new kind, or a new interval of this one: the summary of the last
	// goes first.
	var due denyKind
	if slot.count > 0 {
		due = *slot
	}
	if !other {
		slot.key = *k
		slot.key.reasons = slices.Clone(k.reasons) // kept beyond this decision
	}
	slot.since, slot.count = now, 0
	l.mu.Unlock()
	if due.count > 0 {
		g.logRepeated(s, &due, other)
	}
	return true
}

// slot returns the record of kind k: its own, a free one (or one whose
// interval is over and has nothing counted), or, with every one in use,
// the one of other kinds (other is then true).
func (l *denyLog) slot(k *denyKey, now time.Time, interval time.Duration) (slot *denyKind, other bool) {
	free := -1
	for i := range l.kinds {
		d := &l.kinds[i]
		if d.key.equal(k) {
			return d, false
		}
		if free < 0 && d.count == 0 && now.Sub(d.since) >= interval {
			free = i
		}
	}
	if free >= 0 {
		l.kinds[free] = denyKind{}
		return &l.kinds[free], false
	}
	if len(l.kinds) < denyKinds {
		if l.kinds == nil {
			l.kinds = make([]denyKind, 0, denyKinds)
		}
		l.kinds = append(l.kinds, denyKind{})
		return &l.kinds[len(l.kinds)-1], false
	}
	return &l.other, true
}

// flushDenials writes the summary of every kind of s with denials counted
// whose interval is over (of every kind, when the session closes: all). It
// reports whether any are still counted.
func (g *Gateway) flushDenials(s *session, all bool) (pending bool) {
	now := time.Now()
	interval := time.Duration(g.denials.interval.Load())
	var due [denyKinds + 1]denyKind
	var dueOther [denyKinds + 1]bool
	n := 0
	l := &s.denials
	l.mu.Lock()
	for i := 0; i <= len(l.kinds); i++ {
		d := &l.other
		if i < len(l.kinds) {
			d = &l.kinds[i]
		}
		switch {
		case d.count == 0:
		case all || now.Sub(d.since) >= interval:
			due[n], dueOther[n] = *d, i == len(l.kinds)
			n++
			d.count = 0
		default:
			pending = true
		}
		if all {
			// After the session closes, a denial is logged in full again.
			d.since = time.Time{}
		}
	}
	l.mu.Unlock()
	for i := range n {
		g.logRepeated(s, &due[i], dueOther[i])
	}
	return pending
}

// armDenials makes sure the gateway's summary timer will run: a denial has
// just been counted, and its summary is due when its interval ends even if
// the session says nothing more.
func (g *Gateway) armDenials() {
	f := &g.denials
	if !f.armed.CompareAndSwap(false, true) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	f.timer = time.AfterFunc(time.Duration(f.interval.Load()), g.sweepDenials)
}

// sweepDenials writes the summaries that are due, in every session, and
// runs again while any session has denials counted.
func (g *Gateway) sweepDenials() {
	g.denials.armed.Store(false)
	pending := false
	g.sessions.Range(func(_, v any) bool {
		if g.flushDenials(v.(*session), false) {
			pending = true
		}
		return true
	})
	if pending {
		g.armDenials()
	}
}

// stopDenials stops the summary timer and writes every summary still due,
// of the persistent sessions too: the gateway is closing.
func (g *Gateway) stopDenials() {
	f := &g.denials
	f.mu.Lock()
	f.stopped = true
	if f.timer != nil {
		f.timer.Stop()
	}
	f.mu.Unlock()
	g.sessions.Range(func(_, v any) bool {
		g.flushDenials(v.(*session), true)
		return true
	})
}

// logRepeated writes the summary line of denials counted without a line
// of their own: the kind (as its full line named it) or, for those counted
// together, only that they were of other kinds; how many; since when.
func (g *Gateway) logRepeated(s *session, d *denyKind, other bool) {
	attrs := make([]slog.Attr, 0, 12)
	k := &d.key
	if other {
		attrs = append(attrs, slog.String("kinds", "other"))
	} else {
		attrs = append(attrs, slog.String("action", string(k.action)))
	}
	attrs = append(attrs,
		slog.String("spiffe_id", s.spiffeID),
		slog.String("client_id", s.clientID),
	)
	if !other {
		if k.topic != "" || k.action == policy.ActionPublish || k.action == policy.ActionReceive {
			attrs = append(attrs, slog.String("topic", k.topic))
		}
		if k.filter != "" || k.action == policy.ActionSubscribe {
			attrs = append(attrs, slog.String("filter", k.filter))
		}
		if k.will {
			attrs = append(attrs, slog.Bool("will", true))
		}
		if k.reason != "" {
			attrs = append(attrs, slog.String("reason", k.reason))
		} else {
			attrs = append(attrs, slog.Any("reasons", k.reasons), slog.String("revision", k.revision))
		}
		if k.failed {
			attrs = append(attrs, slog.Bool("failed", true))
		}
	}
	attrs = append(attrs, slog.Int("count", d.count), slog.Time("since", d.since))
	g.log.LogAttrs(g.ctx, slog.LevelInfo, "gateway: denied (repeated)", attrs...)
}
