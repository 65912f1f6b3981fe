package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/internal/testcluster"
)

// fakeNode is one node's live connections, as its gateway would list and
// kick them.
type fakeNode struct {
	mu       sync.Mutex
	sessions []brokerview.Session
	kicked   []string
	kickErr  error
}

func (f *fakeNode) list() []brokerview.Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sessions)
}

func (f *fakeNode) kick(id string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kicked = append(f.kicked, id)
	n := 0
	for _, s := range f.sessions {
		if s.SPIFFEID == id {
			n++
		}
	}
	return n, f.kickErr
}

func (f *fakeNode) kicks() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.kicked)
}

// TestAdminFanOut: the session list and the kick asked on one node cover
// every node's connections, each listed with its node; a node that does
// not answer, or answers with an error, is named, and the rest still
// comes back.
func TestAdminFanOut(t *testing.T) {
	tc := testcluster.Start(t, 3)
	at := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	const s1, s2 = "spiffe://example.org/device/s1", "spiffe://example.org/device/s2"
	fakes := make([]*fakeNode, 3)
	admins := make([]*cluster.NodeAdmin, 3)
	for i := range fakes {
		// Node i has one connection of s1 and, on node 2, one of s2.
		f := &fakeNode{sessions: []brokerview.Session{{ClientID: fmt.Sprintf("s1-%d", i), SPIFFEID: s1,
			ConnectedAt: at.Add(time.Duration(2-i) * time.Second)}}}
		if i == 2 {
			f.sessions = append(f.sessions, brokerview.Session{ClientID: "s2", SPIFFEID: s2, ConnectedAt: at.Add(time.Hour)})
		}
		fakes[i] = f
		a, err := cluster.ServeAdmin(tc.Nodes[i].Conn(), tc.Cfgs[i].Node, cluster.AdminOptions{Nodes: 3, Timeout: 2 * time.Second},
			f.list, f.kick)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		admins[i] = a
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	node := func(i int) string { return tc.Cfgs[i].Node }
	summary := func(ss []brokerview.Session) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Node+"/"+s.ClientID)
		}
		return out
	}

	// The other nodes' subscriptions reach a node's server a moment after
	// they are made.
	var all []brokerview.Session
	var err error
	for i := 0; ; i++ {
		if all, err = admins[0].Sessions(ctx, ""); err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Sessions: %v", err)
	}
	// Oldest connection first.
	want := []string{node(2) + "/s1-2", node(1) + "/s1-1", node(0) + "/s1-0", node(2) + "/s2"}
	if got := summary(all); !slices.Equal(got, want) {
		t.Fatalf("sessions asked on %s: %v, want %v", node(0), got, want)
	}
	only, err := admins[1].Sessions(ctx, s2)
	if err != nil || !slices.Equal(summary(only), []string{node(2) + "/s2"}) {
		t.Fatalf("sessions of s2 asked on %s: %v %v", node(1), summary(only), err)
	}

	n, err := admins[0].Kick(ctx, s1)
	if err != nil || n != 3 {
		t.Fatalf("kick s1: %d %v, want 3 ended", n, err)
	}
	for i, f := range fakes {
		if got := f.kicks(); !slices.Equal(got, []string{s1}) {
			t.Errorf("node %d asked to kick %v, want [s1] once", i, got)
		}
	}

	// A node answering with an error is named, with its error; the
	// others' part comes back.
	fakes[1].mu.Lock()
	fakes[1].kickErr = errors.New("gateway closed")
	fakes[1].mu.Unlock()
	n, err = admins[0].Kick(ctx, s1)
	if !errors.Is(err, cluster.ErrNodesUnanswered) || !strings.Contains(err.Error(), node(1)+": gateway closed") || n != 3 {
		t.Fatalf("kick with node 1 failing: %d %v", n, err)
	}
	fakes[1].mu.Lock()
	fakes[1].kickErr = nil
	fakes[1].mu.Unlock()

	// A list too large for one message: the node says so, rather than
	// the list coming back silently short. One device's sessions fit.
	big := make([]brokerview.Session, 20_000)
	for i := range big {
		big[i] = brokerview.Session{ClientID: fmt.Sprintf("client-%06d", i), SPIFFEID: fmt.Sprintf("spiffe://example.org/device/d%d", i),
			RemoteAddr: "127.0.0.1:50000"}
	}
	fakes[1].mu.Lock()
	kept := fakes[1].sessions
	fakes[1].sessions = big
	fakes[1].mu.Unlock()
	if _, err := admins[0].Sessions(ctx, ""); !errors.Is(err, cluster.ErrNodesUnanswered) ||
		!strings.Contains(err.Error(), node(1)+": 20000 sessions") {
		t.Fatalf("a node with 20000 sessions: %v, want it to say the list is too large", err)
	}
	if got, err := admins[0].Sessions(ctx, "spiffe://example.org/device/d7"); err != nil || len(got) != 1 {
		t.Fatalf("one device's sessions among 20000: %d %v", len(got), err)
	}
	fakes[1].mu.Lock()
	fakes[1].sessions = kept
	fakes[1].mu.Unlock()

	// A node that stops answering: named by the ones that did.
	admins[2].Close()
	start := time.Now()
	part, err := admins[0].Sessions(ctx, "")
	if !errors.Is(err, cluster.ErrNodesUnanswered) || !strings.Contains(err.Error(), "2 of 3 nodes answered") {
		t.Fatalf("sessions with node 2 mute: %v", err)
	}
	if got := summary(part); !slices.Equal(got, []string{node(1) + "/s1-1", node(0) + "/s1-0"}) {
		t.Fatalf("sessions with node 2 mute: %v, want the answered nodes' part", got)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("a mute node held the list for %s, beyond the 2s timeout", waited)
	}
	if n, err := admins[0].Kick(ctx, s1); !errors.Is(err, cluster.ErrNodesUnanswered) || n != 2 {
		t.Fatalf("kick with node 2 mute: %d %v, want 2 ended and the error", n, err)
	}

	// The node count unknown (an external NATS cluster): the answers of
	// the timeout's window, without an error.
	blind, err := cluster.ServeAdmin(tc.Nodes[0].Conn(), "blind", cluster.AdminOptions{Timeout: 500 * time.Millisecond},
		func() []brokerview.Session { return nil }, func(string) (int, error) { return 0, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer blind.Close()
	part, err = blind.Sessions(ctx, s1)
	if err != nil || len(part) != 2 {
		t.Fatalf("sessions without a node count: %v %v, want the 2 answering nodes' s1", summary(part), err)
	}
}
