package gateway

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/registry"
)

// setState puts s in a state, for tests that build sessions by hand.
func (s *session) setState(c connPhase, p phase, denied bool) {
	s.life.mu.Lock()
	s.life.st.Store(uint32(packState(c, p, denied)))
	s.life.mu.Unlock()
}

// tableRows are the transitions of the code's tables, one line each, in the
// words of gateway/doc.go.
func tableRows() []string {
	var rows []string
	for k, to := range connTransitions {
		rows = append(rows, fmt.Sprintf("connection %s %s %s", k.from, k.ev, to))
	}
	for k, to := range phaseTransitions {
		rows = append(rows, fmt.Sprintf("session %s %s %s", k.from, k.ev, to))
	}
	slices.Sort(rows)
	return rows
}

// docRows reads the transition tables of gateway/doc.go: the indented lines
// under a header "connection event next" or "session event next".
func docRows(t *testing.T) []string {
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`^//\t(\S+)\s+(\S+)\s+(\S+)`)
	var rows []string
	table := ""
	for _, line := range strings.Split(string(b), "\n") {
		m := row.FindStringSubmatch(line)
		switch {
		case m == nil:
			table = ""
		case m[2] == "event" && m[3] == "next":
			table = m[1]
		case table != "":
			rows = append(rows, fmt.Sprintf("%s %s %s %s", table, m[1], m[2], m[3]))
		}
	}
	slices.Sort(rows)
	return rows
}

// TestStateTableDocumented fails when a transition is added to or removed
// from the code's tables without the table in gateway/doc.go, or the other
// way round.
func TestStateTableDocumented(t *testing.T) {
	code, doc := tableRows(), docRows(t)
	if len(doc) == 0 {
		t.Fatal("no transition table found in doc.go")
	}
	for _, r := range code {
		if !slices.Contains(doc, r) {
			t.Errorf("transition %q is in state.go but not in doc.go", r)
		}
	}
	for _, r := range doc {
		if !slices.Contains(code, r) {
			t.Errorf("transition %q is in doc.go but not in state.go", r)
		}
	}
}

var allEvents = []event{evEstablished, evKick, evDisconnect, evTakeover, evResume, evHandOver,
	evDetach, evDrop, evExpire, evRefuse}

// TestStateWalk walks every transition: from a new session (connecting,
// live), every event in every state reached. Each step must be the table's
// (or change nothing when the table has no row), the closed-connection rule
// must hold in every state reached, every row must be taken in some reached
// state, and gone must be reachable from every state.
func TestStateWalk(t *testing.T) {
	start := packState(connConnecting, phaseLive, false)
	seen := map[state]bool{start: true}
	queue := []state{start}
	used := map[string]bool{}
	next := map[state][]state{}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		if st.conn() == connClosed && (st.phase() == phaseHandedOver || st.phase() == phaseDropped) {
			t.Errorf("state %s/%s reached: a closed connection's handed-over or dropped session is gone", st.conn(), st.phase())
		}
		for _, ev := range allEvents {
			to, ok := step(st, ev)
			c, cok := connTransitions[connStep{st.conn(), ev}]
			p, pok := phaseTransitions[phaseStep{st.phase(), ev}]
			switch {
			case st.phase() == phaseGone:
				if ok || to != st {
					t.Errorf("gone took %s to %s/%s", ev, to.conn(), to.phase())
				}
				continue
			case !cok && !pok:
				if ok || to != st {
					t.Errorf("%s/%s: %s is in no table but changed the state", st.conn(), st.phase(), ev)
				}
				continue
			case cok:
				used[fmt.Sprintf("connection %s %s %s", st.conn(), ev, c)] = true
				if to.conn() != c {
					t.Errorf("%s/%s: %s led to connection %s, want %s", st.conn(), st.phase(), ev, to.conn(), c)
				}
			case pok:
				used[fmt.Sprintf("session %s %s %s", st.phase(), ev, p)] = true
				if to.phase() != p && to.phase() != phaseGone {
					t.Errorf("%s/%s: %s led to %s, want %s", st.conn(), st.phase(), ev, to.phase(), p)
				}
			}
			if !ok {
				t.Errorf("%s/%s: %s is in a table but step refused it", st.conn(), st.phase(), ev)
			}
			if to.denied() != st.denied() {
				t.Errorf("%s changed the denied mark", ev)
			}
			next[st] = append(next[st], to)
			if !seen[to] {
				seen[to] = true
				queue = append(queue, to)
			}
		}
	}
	for _, r := range tableRows() {
		if !used[r] {
			t.Errorf("transition %q is never taken from a state a session can reach", r)
		}
	}
	for st := range seen {
		if !reaches(st, next, func(s state) bool { return s.phase() == phaseGone }) {
			t.Errorf("state %s/%s never ends: gone is not reachable from it", st.conn(), st.phase())
		}
	}
}

func reaches(from state, next map[state][]state, goal func(state) bool) bool {
	seen := map[state]bool{from: true}
	queue := []state{from}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		if goal(st) {
			return true
		}
		for _, to := range next[st] {
			if !seen[to] {
				seen[to] = true
				queue = append(queue, to)
			}
		}
	}
	return false
}

// TestStateDeniedMark checks that the denied mark is kept by every
// transition and that a denied session is never active.
func TestStateDeniedMark(t *testing.T) {
	var l lifecycle
	if !l.load().active() || l.load().denied() {
		t.Fatal("a new session is not active")
	}
	l.apply(evEstablished)
	l.deny()
	if l.load().active() || !l.load().denied() {
		t.Fatal("a denied session is active")
	}
	l.apply(evKick)
	l.apply(evDetach)
	if st := l.load(); !st.denied() || st.conn() != connClosing || st.phase() != phaseDetached {
		t.Fatalf("after kick and detach: %s/%s denied=%v", st.conn(), st.phase(), st.denied())
	}
}

// raceOnlyRows are the transitions that happen only when two events race
// (a registry change during a CONNECT, the server closing before a session
// is established, a takeover racing the old connection's end): the walk
// above takes them; TestStateTransitionsLive does not wait for them.
var raceOnlyRows = []string{
	"connection closing established closing",  // kicked between CONNECT and CONNACK
	"connection connecting kick closing",      // the same, the kick first
	"connection connecting disconnect closed", // the server closes before the CONNACK
	"session live refuse gone",                // the registry changed during the CONNECT
	"session replaced expire gone",            // the old clean session ends before the hand-over
	"session dropped takeover gone",           // a new connection while a dropped one is ending
	"session dropped resume gone",
}

// stateLog collects the transitions a gateway logs at debug level, as
// table rows.
type stateLog struct{ testpki.LogBuffer }

var stateLine = regexp.MustCompile(`msg="gateway: session state".* event=(\w+) from="?(\w+)/(\w+)`)

// rows returns the transitions of client ID id ("": of every client).
func (l *stateLog) rows(id string) map[string]bool {
	names := func(ns []string) map[string]int {
		m := map[string]int{}
		for i, n := range ns {
			m[n] = i
		}
		return m
	}
	evs, conns, phases := names(eventNames[:]), names(connNames[:]), names(phaseNames[:])
	rows := map[string]bool{}
	for _, line := range strings.Split(l.String(), "\n") {
		m := stateLine.FindStringSubmatch(line)
		if m == nil || id != "" && !strings.Contains(line, " client_id="+id+" ") {
			continue
		}
		ev, c, p := event(evs[m[1]]), connPhase(conns[m[2]]), phase(phases[m[3]])
		if to, ok := connTransitions[connStep{c, ev}]; ok {
			rows[fmt.Sprintf("connection %s %s %s", c, ev, to)] = true
		} else if to, ok := phaseTransitions[phaseStep{p, ev}]; ok {
			rows[fmt.Sprintf("session %s %s %s", p, ev, to)] = true
		}
	}
	return rows
}

// TestStateTransitionsLive drives a real gateway through every transition
// that does not need a race (connect, resume, takeover, disconnect, expiry
// cut, suspension, revoke cut, re-evaluation) with real clients, and checks
// in the gateway's debug log that each was taken. Every row of the table is
// either taken here or listed in raceOnlyRows.
func TestStateTransitionsLive(t *testing.T) {
	logs := &stateLog{}
	sd := &switchDecider{next: engine(t)}
	e := newEnvWith(t, sd, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	persistent := func(cfg *tls.Config, id string, clean bool, expiry uint32) *client {
		t.Helper()
		c, _, err := e.connect(cfg, &paho.Connect{ClientID: id, CleanStart: clean,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(expiry)}})
		if err != nil {
			t.Fatalf("connect %s: %v", id, err)
		}
		return c
	}
	status := func(name string, st registry.Status) {
		t.Helper()
		if _, err := e.reg.SetStatus(name, st); err != nil {
			t.Fatal(err)
		}
	}
	want := func(id string, rows ...string) {
		t.Helper()
		poll(t, fmt.Sprintf("transitions of %s: %q", id, rows), func() bool {
			got := logs.rows(id)
			for _, r := range rows {
				if !got[r] {
					return false
				}
			}
			return true
		})
	}

	// connect, disconnect; a clean session ends with its connection.
	c := persistent(e.enroll("clean", nil), "clean", true, 0)
	_ = c.Disconnect(&paho.Disconnect{})
	want("clean", "connection connecting established open", "connection open disconnect closed", "session live expire gone")

	// resume and takeover of a connected session, then the hand-over.
	resumeCfg := e.enroll("resumer", nil)
	persistent(resumeCfg, "r", true, 300)
	persistent(resumeCfg, "r", false, 300)
	takeCfg := e.enroll("taker", nil)
	persistent(takeCfg, "t", true, 300)
	persistent(takeCfg, "t", true, 300)
	want("r", "session live resume replaced", "session replaced handover handed_over")
	want("t", "session live takeover replaced", "session replaced handover handed_over")

	// expiry cut.
	e.enroll("expiring", nil)
	persistent(e.svidTTL(spiffeid.RequireFromSegments(testTD, "device", "expiring"), 2*time.Second), "x", true, 0)
	want("x", "connection open kick closing", "connection closing disconnect closed")

	// suspension: detached, again when its connection ends; resumed and
	// taken over once active again.
	for _, name := range []string{"sleeper", "waker"} {
		persistent(e.enroll(name, nil), name, true, 300)
		status(name, registry.StatusSuspended)
	}
	want("sleeper", "session live detach detached", "session detached detach detached")
	want("waker", "session live detach detached", "session detached detach detached")
	status("sleeper", registry.StatusActive)
	status("waker", registry.StatusActive)
	persistent(e.svid(spiffeid.RequireFromSegments(testTD, "device", "sleeper")), "sleeper", false, 300)
	persistent(e.svid(spiffeid.RequireFromSegments(testTD, "device", "waker")), "waker", true, 300)
	want("sleeper", "session detached resume replaced")
	want("waker", "session detached takeover replaced")

	// A clean session suspended ends with its connection.
	persistent(e.enroll("napper", nil), "n", true, 0)
	status("napper", registry.StatusSuspended)
	want("n", "session detached expire gone")

	// revoke cut, connected and detached.
	persistent(e.enroll("thief", nil), "th", true, 300)
	status("thief", registry.StatusRevoked)
	want("th", "session live drop dropped")
	persistent(e.enroll("lurker", nil), "l", true, 300)
	status("lurker", registry.StatusSuspended)
	want("l", "session live detach detached", "connection closing disconnect closed")
	status("lurker", registry.StatusRevoked)
	want("l", "session detached drop dropped")

	// re-evaluation: the policy no longer admits connections.
	persistent(e.enroll("last", nil), "last", true, 300)
	sd.denyConnect.Store(true)
	e.gw.Reevaluate("test")
	want("last", "session live detach detached")

	got := logs.rows("")
	for _, r := range tableRows() {
		if !got[r] && !slices.Contains(raceOnlyRows, r) {
			t.Errorf("transition %q neither taken live nor listed as race-only", r)
		}
	}
	for _, r := range raceOnlyRows {
		if !slices.Contains(tableRows(), r) {
			t.Errorf("race-only transition %q is not in the table", r)
		}
	}
}
