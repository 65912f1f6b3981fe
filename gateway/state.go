package gateway

import (
	"sync"
	"sync/atomic"
)

// The lifecycle of a session, as one state machine. A session's state is a
// pair, its connection's and its own, plus one mark (denied); the tables
// below are the only transitions, and gateway/doc.go shows them. A test
// compares the two.
//
// Every change happens under the session's lifecycle lock, with the effects
// that go with it (taking it out of mochi's routing, forgetting it): the
// paths that change a session (connect, disconnect, takeover, cuts) never
// race each other. What every message reads (may it publish, is it denied)
// is one atomic word, written under the lock and read without it.

// connPhase is the state of a session's own connection.
type connPhase uint8

const (
	connConnecting connPhase = iota // CONNECT accepted; mochi has not established the session yet
	connOpen                        // connected
	connClosing                     // the gateway is ending the connection
	connClosed                      // the connection has ended
)

// phase is the state of the session itself: the subscriptions, queued and
// in-flight messages mochi keeps under the client ID.
type phase uint8

const (
	phaseLive       phase = iota // the connection's own session
	phaseReplaced                // a new connection took it over; the hand-over is pending
	phaseHandedOver              // the new connection holds it now; only the old connection remains
	phaseDetached                // out of mochi's routing: device suspended, or no longer admitted
	phaseDropped                 // ends for good with its connection: device revoked or deleted
	phaseGone                    // forgotten, here and by mochi
)

// event is what happens to a session.
type event uint8

const (
	evEstablished event = iota // mochi established the session and answered the CONNECT
	evKick                     // the gateway ends the connection (SVID expiry, revoke/policy cut, denied 3.1.1 publish)
	evDisconnect               // the connection ended
	evTakeover                 // a new connection of the same client ID took the session over with clean start
	evResume                   // a new connection of the same client ID resumed the session
	evHandOver                 // the new connection's session is established
	evDetach                   // cut: device suspended, or re-evaluation no longer admits it
	evDrop                     // cut: device revoked or deleted
	evExpire                   // mochi forgets the session (clean session ended, or session expiry)
	evRefuse                   // the CONNECT was refused after the session was stored
)

type connStep struct {
	from connPhase
	ev   event
}

type phaseStep struct {
	from phase
	ev   event
}

// connTransitions are the transitions of a session's connection. A
// connection is kicked once: kicking one that is closing or closed changes
// nothing.
var connTransitions = map[connStep]connPhase{
	{connConnecting, evEstablished}: connOpen,
	{connClosing, evEstablished}:    connClosing,
	{connConnecting, evKick}:        connClosing,
	{connOpen, evKick}:              connClosing,
	{connConnecting, evDisconnect}:  connClosed,
	{connOpen, evDisconnect}:        connClosed,
	{connClosing, evDisconnect}:     connClosed,
}

// phaseTransitions are the transitions of the session itself. A session a
// new connection has taken over is that connection's to cut: detach and
// drop leave it alone.
var phaseTransitions = map[phaseStep]phase{
	{phaseLive, evTakeover}:     phaseReplaced,
	{phaseLive, evResume}:       phaseReplaced,
	{phaseLive, evDetach}:       phaseDetached,
	{phaseLive, evDrop}:         phaseDropped,
	{phaseLive, evExpire}:       phaseGone,
	{phaseLive, evRefuse}:       phaseGone,
	{phaseDetached, evTakeover}: phaseReplaced,
	{phaseDetached, evResume}:   phaseReplaced,
	{phaseDetached, evDetach}:   phaseDetached,
	{phaseDetached, evDrop}:     phaseDropped,
	{phaseDetached, evExpire}:   phaseGone,
	{phaseReplaced, evHandOver}: phaseHandedOver,
	{phaseReplaced, evExpire}:   phaseGone,
	{phaseDropped, evTakeover}:  phaseGone,
	{phaseDropped, evResume}:    phaseGone,
}

// state is a session's state packed in one word: the connection in bits
// 0-1, the phase in bits 2-4, and the denied mark in bit 5.
type state uint32

const deniedBit state = 1 << 5

func packState(c connPhase, p phase, denied bool) state {
	st := state(c) | state(p)<<2
	if denied {
		st |= deniedBit
	}
	return st
}

func (st state) conn() connPhase { return connPhase(st & 3) }
func (st state) phase() phase    { return phase(st >> 2 & 7) }

// denied reports whether the session may no longer do anything: every
// decision for it denies without asking the policy. The mark is set when
// the registry or the policy refuses the session, before it is cut, and is
// never cleared.
func (st state) denied() bool { return st&deniedBit != 0 }

// active reports whether the session's connection may still publish and
// take part in a share group: connected, its own session, not being ended,
// not denied.
func (st state) active() bool {
	return !st.denied() && st.phase() == phaseLive && st.conn() <= connOpen
}

// connected reports whether the session's connection has not ended.
func (st state) connected() bool { return st.conn() != connClosed && st.phase() != phaseGone }

// takenOver reports whether a new connection has taken the session over.
func (st state) takenOver() bool {
	return st.phase() == phaseReplaced || st.phase() == phaseHandedOver
}

// step is the transition function: the state after ev in st, and whether
// the tables have that transition (false: st is returned unchanged). One
// rule follows every step: a handed-over or dropped session whose
// connection is closed is gone.
func step(st state, ev event) (state, bool) {
	c, p := st.conn(), st.phase()
	if p == phaseGone {
		return st, false
	}
	if next, ok := connTransitions[connStep{c, ev}]; ok {
		c = next
	} else if next, ok := phaseTransitions[phaseStep{p, ev}]; ok {
		p = next
	} else {
		return st, false
	}
	if c == connClosed && (p == phaseHandedOver || p == phaseDropped) {
		p = phaseGone
	}
	return packState(c, p, st.denied()), true
}

// lifecycle is the state of one session and the lock that orders its
// changes.
type lifecycle struct {
	mu sync.Mutex
	st atomic.Uint32 // a state; written under mu only
	// resumed tells how the session was taken over (phaseReplaced and
	// after): continued by the new connection, or ended by a clean start.
	resumed bool
	// counted is set while the session is counted as connected in the
	// metrics: from its establishment until its connection ends or it is
	// forgotten, whichever is first.
	counted bool
}

// load returns the current state; it takes no lock.
func (l *lifecycle) load() state { return state(l.st.Load()) }

// apply makes the transition of ev, if the tables have one, and returns the
// states before and after. The caller holds l.mu.
func (l *lifecycle) apply(ev event) (from, to state, ok bool) {
	from = l.load()
	to, ok = step(from, ev)
	if ok {
		l.st.Store(uint32(to))
	}
	return from, to, ok
}

// deny sets the denied mark. The caller holds l.mu.
func (l *lifecycle) deny() { l.st.Store(uint32(l.load() | deniedBit)) }

var connNames = [...]string{"connecting", "open", "closing", "closed"}
var phaseNames = [...]string{"live", "replaced", "handed_over", "detached", "dropped", "gone"}
var eventNames = [...]string{"established", "kick", "disconnect", "takeover", "resume", "handover",
	"detach", "drop", "expire", "refuse"}

func (c connPhase) String() string { return connNames[c] }

// String is the state as the debug log shows it: "open/live",
// "closed/detached (denied)".
func (st state) String() string {
	s := st.conn().String() + "/" + st.phase().String()
	if st.denied() {
		s += " (denied)"
	}
	return s
}
func (p phase) String() string { return phaseNames[p] }
func (e event) String() string { return eventNames[e] }
