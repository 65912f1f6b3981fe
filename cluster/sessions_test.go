package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/internal/testcluster"
)

const (
	sensorID    = "spiffe://example.org/device/sensor"
	otherID     = "spiffe://example.org/device/other"
	sensorScope = sensorID + " sensor-1"
)

func newDirectory(t testing.TB, tc *testcluster.Cluster, i int, opts cluster.SessionDirectoryOptions) *cluster.SessionDirectory {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if opts.Replicas == 0 {
		opts.Replicas = len(tc.Nodes)
	}
	for {
		d, err := cluster.NewSessionDirectory(ctx, tc.Nodes[i].JetStream(), tc.Nodes[i].Conn(), tc.Cfgs[i].Node, opts)
		if err == nil {
			return d
		}
		// Right after the cluster formed, placement may not know every
		// peer yet ("no suitable peers"): try again within the bound.
		if ctx.Err() != nil {
			t.Fatalf("node %d: NewSessionDirectory: %v", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// putAt writes the record of s as node d's (establish).
func putAt(t testing.TB, d *cluster.SessionDirectory, spiffeID string, s *brokerstore.Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := d.Put(ctx, spiffeID, s, true); err != nil {
		t.Fatalf("Put: %v", err)
	}
}

func storedSession(subs ...string) *brokerstore.Session {
	s := &brokerstore.Session{ClientID: sensorScope, ProtocolVersion: 5, SessionExpiry: 300, SessionExpiryFlag: true}
	for i, f := range subs {
		s.Subscriptions = append(s.Subscriptions, packets.Subscription{Filter: f, Qos: 1, Identifier: i + 1})
	}
	return s
}

func queued(n, size int) []packets.Packet {
	out := make([]packets.Packet, n)
	for i := range out {
		out[i] = packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID:    uint16(i + 1),
			TopicName:   fmt.Sprintf("t/%d", i),
			Payload:     []byte(strings.Repeat("x", size)),
			Created:     1_700_000_000,
		}
	}
	return out
}

func mustRecord(t *testing.T, d *cluster.SessionDirectory, id string) *cluster.SessionRecord {
	t.Helper()
	r, _, err := d.Record(context.Background(), id)
	if err != nil {
		t.Fatalf("Record: %v", err)
	}
	return r
}

// TestSessionDirectoryRecords: the record a node writes is read on another
// node; only the holder updates or removes it, and an establish takes it
// over whoever held it.
func TestSessionDirectoryRecords(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newDirectory(t, tc, 0, cluster.SessionDirectoryOptions{})
	c := newDirectory(t, tc, 2, cluster.SessionDirectoryOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	if r := mustRecord(t, c, sensorScope); r != nil {
		t.Fatalf("record before any write: %+v", r)
	}
	if err := a.Put(ctx, sensorID, storedSession("a/#"), true); err != nil {
		t.Fatalf("Put: %v", err)
	}
	r := mustRecord(t, c, sensorScope)
	if r == nil || r.Node != "n0" || r.SPIFFEID != sensorID || r.ExpiryInterval != 300 || r.DisconnectedAt != nil ||
		len(r.Subscriptions) != 1 || r.Subscriptions[0].Filter != "a/#" || r.Subscriptions[0].Identifier != 1 {
		t.Fatalf("record read on n2: %+v", r)
	}
	if owns, err := a.Owns(ctx, sensorScope); err != nil || !owns {
		t.Fatalf("n0 Owns = %v, %v; want true", owns, err)
	}
	if owns, err := c.Owns(ctx, sensorScope); err != nil || owns {
		t.Fatalf("n2 Owns = %v, %v; want false", owns, err)
	}

	// Not the holder: an update and a delete change nothing.
	if err := c.Put(ctx, sensorID, storedSession("c/#"), false); err != nil {
		t.Fatalf("Put by n2: %v", err)
	}
	if err := c.Delete(ctx, sensorScope); err != nil {
		t.Fatalf("Delete by n2: %v", err)
	}
	if r := mustRecord(t, a, sensorScope); r == nil || r.Node != "n0" || r.Subscriptions[0].Filter != "a/#" {
		t.Fatalf("record after n2's update and delete: %+v", r)
	}
	// The holder's update goes in (positive control).
	off := storedSession("a/#", "b/+")
	off.DisconnectedAt = 1_700_000_123
	if err := a.Put(ctx, sensorID, off, false); err != nil {
		t.Fatalf("update by n0: %v", err)
	}
	if r := mustRecord(t, c, sensorScope); r == nil || len(r.Subscriptions) != 2 || r.DisconnectedAt == nil || *r.DisconnectedAt != 1_700_000_123 {
		t.Fatalf("record after n0's update: %+v", r)
	}

	// An establish on n2 makes it n2's; n0's late write is then ignored.
	if err := c.Put(ctx, sensorID, storedSession("c/#"), true); err != nil {
		t.Fatalf("establish on n2: %v", err)
	}
	if err := a.Delete(ctx, sensorScope); err != nil {
		t.Fatalf("late delete by n0: %v", err)
	}
	if r := mustRecord(t, a, sensorScope); r == nil || r.Node != "n2" {
		t.Fatalf("record after the establish on n2: %+v", r)
	}
	if err := c.Delete(ctx, sensorScope); err != nil {
		t.Fatalf("Delete by n2: %v", err)
	}
	if r := mustRecord(t, a, sensorScope); r != nil {
		t.Fatalf("record after the holder's delete: %+v", r)
	}
}

// TestSessionKey: base64url without padding, and a hash for a client ID
// too long to be a subject token.
func TestSessionKey(t *testing.T) {
	if got := cluster.SessionKey("a b"); got != "YSBi" {
		t.Fatalf("SessionKey(a b) = %q", got)
	}
	long := strings.Repeat("x", 4000)
	k := cluster.SessionKey(long)
	if !strings.HasPrefix(k, "h.") || len(k) > 64 || k == cluster.SessionKey(long+"y") {
		t.Fatalf("SessionKey(long) = %q", k)
	}
}

// TestSessionTakeoverAnswered: the holder answers with the session's
// subscriptions and queue, in order; a clean start carries nothing; another
// identity is refused by the holder.
func TestSessionTakeoverAnswered(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newDirectory(t, tc, 0, cluster.SessionDirectoryOptions{})
	c := newDirectory(t, tc, 2, cluster.SessionDirectoryOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := a.Put(ctx, sensorID, storedSession("a/#"), true); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	var lastClean atomic.Bool
	stop, err := a.Serve(func(_ context.Context, id, spiffeID string, clean bool) (*brokerstore.Session, error) {
		calls.Add(1)
		lastClean.Store(clean)
		if !strings.HasPrefix(id, spiffeID+" ") {
			return nil, identityMismatch{}
		}
		s := storedSession("a/#")
		s.DisconnectedAt = time.Now().Unix()
		s.Inflight = queued(3, 10)
		return s, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	waitServing(t, tc.Nodes[2].Conn(), "n0")

	s, err := c.Claim(ctx, sensorScope, sensorID, false)
	if err != nil || s == nil {
		t.Fatalf("Claim = %v, %v", s, err)
	}
	if len(s.Subscriptions) != 1 || s.Subscriptions[0].Filter != "a/#" || len(s.Inflight) != 3 {
		t.Fatalf("claimed session: %+v", s)
	}
	for i, pk := range s.Inflight {
		if want := fmt.Sprintf("t/%d", i); pk.TopicName != want || pk.FixedHeader.Qos != 1 {
			t.Fatalf("queued[%d] = %s q%d, want %s q1", i, pk.TopicName, pk.FixedHeader.Qos, want)
		}
	}

	// The claim made the record n2's.
	if r := mustRecord(t, a, sensorScope); r == nil || r.Node != "n2" || r.DisconnectedAt != nil || len(r.Subscriptions) != 1 {
		t.Fatalf("record after the claim: %+v", r)
	}

	// A clean start: the holder is asked (and ends it), nothing carried.
	putAt(t, a, sensorID, storedSession("a/#"))
	s, err = c.Claim(ctx, sensorScope, sensorID, true)
	if err != nil || s != nil || !lastClean.Load() {
		t.Fatalf("clean Claim = %v, %v (clean seen %v)", s, err, lastClean.Load())
	}

	// The holder refuses another identity (the record is forged to name it
	// so that the request is sent at all).
	forged := storedSession("a/#")
	forged.ClientID = otherID + " " + "sensor-1-forged"
	if err := a.Put(ctx, sensorID, forged, true); err != nil {
		t.Fatal(err)
	}
	before := calls.Load()
	if _, err := c.Claim(ctx, forged.ClientID, sensorID, false); !errors.Is(err, cluster.ErrSessionIdentity) {
		t.Fatalf("Claim of another identity's ID: %v, want ErrSessionIdentity", err)
	}
	if calls.Load() != before+1 {
		t.Fatal("the holder was not asked")
	}
	// A requester whose SPIFFE ID differs from the record's is refused
	// before anything is asked.
	putAt(t, a, sensorID, storedSession("a/#"))
	before = calls.Load()
	if _, err := c.Claim(ctx, sensorScope, otherID, false); !errors.Is(err, cluster.ErrSessionIdentity) {
		t.Fatalf("Claim by another identity: %v, want ErrSessionIdentity", err)
	}
	if calls.Load() != before {
		t.Fatal("the holder was asked for a record of another identity")
	}

	// The holder's own node claims nothing: mochi has the session there.
	if s, err := a.Claim(ctx, sensorScope, sensorID, false); err != nil || s != nil {
		t.Fatalf("Claim on the holder = %v, %v", s, err)
	}
}

// waitServing waits until node's takeover service answers requests sent
// from nc (the subscription reaches the other nodes over the routes).
func waitServing(t testing.TB, nc *nats.Conn, node string) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for {
		_, err := nc.Request("ztgate.session.takeover."+node, []byte("{}"), time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("takeover service of %s not reachable: %v", node, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type identityMismatch struct{}

func (identityMismatch) Error() string          { return "mismatch" }
func (identityMismatch) IdentityMismatch() bool { return true }

// TestSessionTakeoverBounds: a queue beyond the count limit or the server's
// maximum payload is cut, keeping the oldest messages in order.
func TestSessionTakeoverBounds(t *testing.T) {
	tc := testcluster.Start(t, 3)
	for _, tt := range []struct {
		name      string
		max, n    int
		size      int
		wantUnder int // the count carried is at most this, and at least 1
		wantAll   bool
	}{
		{name: "within bounds", max: 100, n: 5, size: 100, wantAll: true},
		{name: "count limit", max: 4, n: 10, size: 100, wantUnder: 4},
		{name: "payload limit", max: 1000, n: 40, size: cluster.MaxPayload / 32, wantUnder: 39},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			a := newDirectory(t, tc, 0, cluster.SessionDirectoryOptions{MaxHandoverMessages: tt.max})
			// The bounds are what is checked, not the time: a holder
			// encoding a near-1 MiB answer under -race on a loaded
			// machine outlasted the default (seen in CI), and the claim
			// resumed from the record, carrying nothing.
			c := newDirectory(t, tc, 1, cluster.SessionDirectoryOptions{TakeoverTimeout: opTimeout})
			if err := a.Put(ctx, sensorID, storedSession("a/#"), true); err != nil {
				t.Fatal(err)
			}
			stop, err := a.Serve(func(context.Context, string, string, bool) (*brokerstore.Session, error) {
				s := storedSession("a/#")
				s.Inflight = queued(tt.n, tt.size)
				return s, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			waitServing(t, tc.Nodes[1].Conn(), "n0")
			cctx, ccancel := context.WithTimeout(context.Background(), 2*opTimeout)
			defer ccancel()
			s, err := c.Claim(cctx, sensorScope, sensorID, false)
			if err != nil || s == nil {
				t.Fatalf("Claim = %v, %v", s, err)
			}
			got := len(s.Inflight)
			switch {
			case tt.wantAll && got != tt.n:
				t.Fatalf("carried %d of %d", got, tt.n)
			case !tt.wantAll && (got < 1 || got > tt.wantUnder):
				t.Fatalf("carried %d of %d, want 1..%d", got, tt.n, tt.wantUnder)
			}
			for i, pk := range s.Inflight {
				if want := fmt.Sprintf("t/%d", i); pk.TopicName != want {
					t.Fatalf("queued[%d] = %s, want %s (oldest first)", i, pk.TopicName, want)
				}
			}
		})
	}
}

// TestSessionTakeoverHolderUnreachable: a holder that does not answer in
// time, or whose node has no responder, is passed over: the session is
// resumed from its record (subscriptions, no queue), and a clean start gets
// nothing. Claim returns within its bounds.
func TestSessionTakeoverHolderUnreachable(t *testing.T) {
	tc := testcluster.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	a := newDirectory(t, tc, 0, cluster.SessionDirectoryOptions{})
	c := newDirectory(t, tc, 2, cluster.SessionDirectoryOptions{TakeoverTimeout: 300 * time.Millisecond})
	off := storedSession("a/#", "b/+")
	off.DisconnectedAt = time.Now().Unix()
	if err := a.Put(ctx, sensorID, off, true); err != nil {
		t.Fatal(err)
	}

	check := func(t *testing.T) {
		t.Helper()
		putAt(t, a, sensorID, off)
		s, err := c.Claim(ctx, sensorScope, sensorID, false)
		if err != nil || s == nil {
			t.Fatalf("Claim = %v, %v", s, err)
		}
		if s.ClientID != sensorScope || len(s.Subscriptions) != 2 || len(s.Inflight) != 0 || s.SessionExpiry != 300 {
			t.Fatalf("session from the record: %+v", s)
		}
		putAt(t, a, sensorID, off)
		if s, err := c.Claim(ctx, sensorScope, sensorID, true); err != nil || s != nil {
			t.Fatalf("clean Claim = %v, %v", s, err)
		}
	}
	t.Run("no responder", check)

	t.Run("no answer in time", func(t *testing.T) {
		release := make(chan struct{})
		stop, err := a.Serve(func(ctx context.Context, _, _ string, _ bool) (*brokerstore.Session, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		defer close(release)
		waitServing(t, tc.Nodes[2].Conn(), "n0")
		check(t)
	})

	t.Run("expired record", func(t *testing.T) {
		old := storedSession("a/#")
		old.DisconnectedAt = time.Now().Add(-time.Hour).Unix()
		if err := a.Put(ctx, sensorID, old, true); err != nil {
			t.Fatal(err)
		}
		if s, err := c.Claim(ctx, sensorScope, sensorID, false); err != nil || s != nil {
			t.Fatalf("Claim of an expired session = %v, %v", s, err)
		}
		if r := mustRecord(t, c, sensorScope); r == nil || r.Node != "n2" || len(r.Subscriptions) != 0 {
			t.Fatalf("record after claiming an expired session: %+v", r)
		}
	})
}

// TestSessionClaimNoQuorum: a node that cannot read the directory fails
// the claim (the gateway refuses the CONNECT) within the caller's bound.
func TestSessionClaimNoQuorum(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newDirectory(t, tc, 0, cluster.SessionDirectoryOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := a.Put(ctx, sensorID, storedSession("a/#"), true); err != nil {
		t.Fatal(err)
	}
	// Positive control: with a quorum, the holder's own claim is fine.
	if _, err := a.Claim(ctx, sensorScope, sensorID, false); err != nil {
		t.Fatalf("Claim with a quorum: %v", err)
	}
	if r := mustRecord(t, a, sensorScope); r == nil || r.Node != "n0" || len(r.Subscriptions) != 1 {
		t.Fatalf("record after the holder's own claim: %+v", r)
	}
	tc.Stop(1)
	tc.Stop(2)
	short, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	_, err := a.Claim(short, sensorScope, sensorID, false)
	if !errors.Is(err, cluster.ErrNoQuorum) {
		t.Fatalf("Claim without a quorum: %v, want ErrNoQuorum", err)
	}
}

// TestSessionDirectoryStreamBoundWhileDirect: every node creates the
// sessions bucket with direct gets on (the KV default) and turns them off.
// A node that binds the bucket's stream in between, while another node is
// starting, holds a handle that sends direct gets: once direct gets are off,
// each one found no responder, and every CONNECT on that node was refused
// with 0x88 (TestCluster, three cases on node A). With direct gets still
// on, it would read a replica's copy, maybe stale. Either way the directory
// must read from the stream's leader.
func TestSessionDirectoryStreamBoundWhileDirect(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newDirectory(t, tc, 0, cluster.SessionDirectoryOptions{})
	b := newDirectory(t, tc, 1, cluster.SessionDirectoryOptions{})
	js := tc.Nodes[0].JetStream()
	// Each step has its own time: under a loaded machine's -race, the
	// steps together took more than one opTimeout.
	step := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		t.Cleanup(cancel)
		return ctx
	}
	allowDirect := func(on bool) {
		t.Helper()
		st, err := js.Stream(step(), "KV_"+cluster.SessionsBucket)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		cfg := st.CachedInfo().Config
		cfg.AllowDirect = on
		if _, err := js.UpdateStream(step(), cfg); err != nil {
			t.Fatalf("allow direct %v: %v", on, err)
		}
	}
	boundWhileDirect := func() jetstream.Stream {
		t.Helper()
		allowDirect(true)
		st, err := js.Stream(step(), "KV_"+cluster.SessionsBucket)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if !st.CachedInfo().Config.AllowDirect {
			t.Fatal("the handle bound while direct gets were on does not say so")
		}
		return st
	}

	for _, tt := range []struct {
		name        string
		directAfter bool // direct gets still on at the server when a reads
	}{
		{"DirectTurnedOffSince", false},
		{"DirectStillOn", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := sensorScope + "-" + tt.name
			// Positive control: b, bound the usual way, writes the record.
			putAt(t, b, sensorID, &brokerstore.Session{ClientID: id, ProtocolVersion: 5})
			st := boundWhileDirect()
			cluster.UseSessionStream(a, st)
			if !tt.directAfter {
				allowDirect(false)
				// The servers drop their direct-get responders a moment
				// later: wait until the stale handle's reads fail ("no
				// responders"; under load, also no answer in time).
				for deadline := time.Now().Add(opTimeout); ; {
					gctx, gcancel := context.WithTimeout(context.Background(), time.Second)
					_, err := st.GetLastMsgForSubject(gctx, "$KV."+cluster.SessionsBucket+"."+cluster.SessionKey(id))
					gcancel()
					if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("a direct get still answered after direct gets were turned off: %v", err)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer rcancel()
			r, _, err := a.Record(rctx, id)
			if err != nil {
				t.Fatalf("Record on the node whose handle was bound while direct gets were on: %v", err)
			}
			if r == nil || r.Node != tc.Cfgs[1].Node {
				t.Fatalf("Record = %+v, want the record node %s wrote", r, tc.Cfgs[1].Node)
			}
			st, err = js.Stream(step(), "KV_"+cluster.SessionsBucket)
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			if st.CachedInfo().Config.AllowDirect {
				t.Fatal("direct gets are still on after the directory read: replicas answer reads")
			}
		})
	}
}

// TestSessionClaimAcrossLeaderChange: a CONNECT's claim made while the
// bucket's stream changes leader waits for the new one instead of refusing
// the CONNECT (0x88, seen in TestCluster under load): its reads and its
// compare-and-set write are sent again within the claim's time.
func TestSessionClaimAcrossLeaderChange(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newDirectory(t, tc, 0, cluster.SessionDirectoryOptions{})
	nc := tc.Nodes[1].Conn()
	for i := range 8 {
		// The step-down is answered once the leader gave up; the claim
		// races the election that follows.
		if _, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN.KV_"+cluster.SessionsBucket, nil, opTimeout); err != nil {
			t.Fatalf("step-down %d: %v", i, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := a.Claim(ctx, fmt.Sprintf("%s-%d", sensorScope, i), sensorID, false)
		cancel()
		if err != nil {
			t.Fatalf("claim %d right after a leader step-down: %v", i, err)
		}
	}
}
