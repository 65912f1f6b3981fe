package gateway

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/internal/testcluster"
)

var _ SessionDirectory = (*cluster.SessionDirectory)(nil)

// nodes are gateways on one CA and registry, each with its own store and
// the session directory of its own node of a 3-node JetStream cluster.
type nodes struct {
	tc   *testcluster.Cluster
	envs []*env
	dirs []*cluster.SessionDirectory
}

func sessionDirectory(t testing.TB, tc *testcluster.Cluster, i int) *cluster.SessionDirectory {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		d, err := cluster.NewSessionDirectory(ctx, tc.Nodes[i].JetStream(), tc.Nodes[i].Conn(), tc.Cfgs[i].Node,
			cluster.SessionDirectoryOptions{Replicas: len(tc.Nodes), Logger: quietLogger()})
		if err == nil {
			return d
		}
		// Placement may not know every peer right after the cluster formed.
		if ctx.Err() != nil {
			t.Fatalf("node %d: session directory: %v", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startNodes starts a gateway on each of the first n nodes of a 3-node
// cluster.
func startNodes(t *testing.T, n int) *nodes {
	t.Helper()
	ns := &nodes{tc: testcluster.Start(t, 3)}
	for i := range n {
		d := sessionDirectory(t, ns.tc, i)
		ns.dirs = append(ns.dirs, d)
		path := filepath.Join(t.TempDir(), brokerstore.FileName)
		mod := func(c *Config) { c.Sessions = d }
		if i == 0 {
			st := openStore(t, path, false)
			ns.envs = append(ns.envs, newEnvWith(t, engine(t), func(c *Config) { c.Store = st; mod(c) }))
			continue
		}
		ns.envs = append(ns.envs, ns.envs[0].restartFrom(t, path, engine(t), mod))
	}
	// Each node's takeover service reaches the others over the routes.
	for i := range n {
		for j := range n {
			if i != j {
				waitTakeoverService(t, ns.tc, j, ns.tc.Cfgs[i].Node)
			}
		}
	}
	return ns
}

// waitTakeoverService waits until a request from node i reaches node's
// takeover service.
func waitTakeoverService(t testing.TB, tc *testcluster.Cluster, i int, node string) {
	t.Helper()
	poll(t, "takeover service of "+node, func() bool {
		_, err := tc.Nodes[i].Conn().Request("ztgate.session.takeover."+node, []byte("{}"), time.Second)
		return err == nil
	})
}

// persistent connects clientID with clean start 0 and a session expiry of
// 300 s, failing the test on a refusal.
func (e *env) persistent(t testing.TB, dev, clientID string) (*client, *paho.Connack) {
	t.Helper()
	c, ack, err := e.connect(e.svid(deviceID(dev)), &paho.Connect{ClientID: clientID, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	if err != nil {
		t.Fatalf("connect %s as %s: %v", clientID, dev, err)
	}
	return c, ack
}

func (e *env) holds(id string) bool {
	_, ok := e.gw.server.Clients.Get(id)
	return ok
}

func record(t testing.TB, d *cluster.SessionDirectory, id string) *cluster.SessionRecord {
	t.Helper()
	r, _, err := d.Record(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func command(t testing.TB, ctrl *client, dev string, i int) {
	t.Helper()
	p := &paho.Publish{Topic: fmt.Sprintf("devices/%s/commands/set", dev), QoS: 1, Payload: fmt.Appendf(nil, "c%d", i)}
	if code := ctrl.publish(t, p); code != 0 {
		t.Fatalf("command %d: %#x", i, code)
	}
}

// A persistent session moves with its device: subscribed on A, offline
// while commands are queued for it on A, resumed on C with session present
// and the queued commands in order; A no longer holds it anywhere, and the
// subscription lives on at C (a new command published on C arrives).
func TestClusterSession_ResumedOnAnotherNodeWithQueue(t *testing.T) {
	ns := startNodes(t, 2)
	a, c := ns.envs[0], ns.envs[1]
	a.enroll("pump", nil)
	ctrlTLS := a.enroll("ctrl", map[string]string{"role": "controller"})
	id := scopedClientID(deviceID("pump").String(), "pump")

	dev, _ := a.persistent(t, "pump", "pump")
	dev.subscribe(t, sub("devices/pump/commands/#", 1))
	a.goOffline(t, dev, "pump")
	ctrl := a.mustConnect(ctrlTLS, "ctrl")
	const n = 5
	for i := range n {
		command(t, ctrl, "pump", i)
	}

	moved, ack := c.persistent(t, "pump", "pump")
	if !ack.SessionPresent {
		t.Fatal("session present = 0 on C")
	}
	for i := range n {
		m := moved.expectOnly(t, "devices/pump/commands/set")
		if want := fmt.Sprintf("c%d", i); string(m.Payload) != want {
			t.Fatalf("queued command %d: %q, want %q", i, m.Payload, want)
		}
	}
	if a.holds(id) {
		t.Error("A still holds the session in the broker")
	}
	if _, ok := storedSessions(t, a.gw.store)[id]; ok {
		t.Error("A still holds the session in its store")
	}
	poll(t, "the record naming C", func() bool {
		r := record(t, ns.dirs[0], id)
		return r != nil && r.Node == "n1" && len(r.Subscriptions) == 1
	})
	// Positive control: the subscription works on C.
	ctrlC := c.mustConnect(ctrlTLS, "ctrl-c")
	command(t, ctrlC, "pump", 99)
	if m := moved.expectOnly(t, "devices/pump/commands/set"); string(m.Payload) != "c99" {
		t.Fatalf("command on C: %q", m.Payload)
	}
	poll(t, "C's store holding the session", func() bool {
		s := storedSessions(t, c.gw.store)[id]
		return s != nil && len(s.Subscriptions) == 1
	})
}

// A client ID connected live to A that connects to C takes the session
// over: A's connection gets DISCONNECT 0x8E, C's works.
func TestClusterSession_LiveTakeoverAcrossNodes(t *testing.T) {
	ns := startNodes(t, 2)
	a, c := ns.envs[0], ns.envs[1]
	a.enroll("pump", nil)
	ctrlTLS := a.enroll("ctrl", map[string]string{"role": "controller"})

	old, _ := a.persistent(t, "pump", "pump")
	old.subscribe(t, sub("devices/pump/commands/#", 1))
	poll(t, "A's record", func() bool {
		r := record(t, ns.dirs[0], scopedClientID(deviceID("pump").String(), "pump"))
		return r != nil && r.Node == "n0" && len(r.Subscriptions) == 1
	})

	now, ack := c.persistent(t, "pump", "pump")
	d := old.WaitDisconnect(t, waitFor)
	if d == nil || d.ReasonCode != packets.ErrSessionTakenOver.Code {
		t.Fatalf("A's connection ended with %+v, want DISCONNECT 0x8E", d)
	}
	if !ack.SessionPresent {
		t.Error("session present = 0 on C")
	}
	ctrl := c.mustConnect(ctrlTLS, "ctrl")
	command(t, ctrl, "pump", 1)
	if m := now.expectOnly(t, "devices/pump/commands/set"); string(m.Payload) != "c1" {
		t.Fatalf("command on C: %q", m.Payload)
	}
	if now.Closed() {
		t.Fatal("C's connection closed")
	}
}

// Client IDs are bound to identities: another identity sending the same
// client ID on C gets a session of its own (as on one node), and A's
// session is untouched, its connection still receiving. The holder itself
// refuses to hand a session to another identity, and a node told so
// refuses the CONNECT.
func TestClusterSession_OtherIdentitySameClientID(t *testing.T) {
	ns := startNodes(t, 2)
	a, c := ns.envs[0], ns.envs[1]
	a.enroll("pump", nil)
	a.enroll("valve", nil)
	ctrlTLS := a.enroll("ctrl", map[string]string{"role": "controller"})
	pumpID := scopedClientID(deviceID("pump").String(), "dev-1")

	pump, _ := a.persistent(t, "pump", "dev-1")
	pump.subscribe(t, sub("devices/pump/commands/#", 1))
	valve, ack := c.persistent(t, "valve", "dev-1")
	if ack.SessionPresent {
		t.Error("the other identity was handed a session")
	}
	defer valve.Close()

	// Asked directly, the holder refuses the other identity.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := a.gw.handOver(ctx, pumpID, deviceID("valve").String(), false); !isOtherIdentity(err) {
		t.Fatalf("handOver to another identity: %v", err)
	}
	ctrl := a.mustConnect(ctrlTLS, "ctrl")
	command(t, ctrl, "pump", 1)
	if m := pump.expectOnly(t, "devices/pump/commands/set"); string(m.Payload) != "c1" {
		t.Fatalf("command on A: %q", m.Payload)
	}
	if pump.Closed() || !a.holds(pumpID) {
		t.Fatal("A's session was ended")
	}
}

// fakeDirectory answers claims with err; everything else succeeds.
type fakeDirectory struct{ err error }

func (f fakeDirectory) Claim(context.Context, string, string, bool) (*brokerstore.Session, error) {
	return nil, f.err
}
func (fakeDirectory) Put(context.Context, string, *brokerstore.Session, bool) error { return nil }
func (fakeDirectory) Delete(context.Context, string) error                          { return nil }
func (fakeDirectory) Owns(context.Context, string) (bool, error)                    { return true, nil }
func (fakeDirectory) Serve(func(context.Context, string, string, bool) (*brokerstore.Session, error)) (func(), error) {
	return func() {}, nil
}

// A claim that fails refuses the CONNECT, fail closed: "server
// unavailable" when the directory cannot be asked, "not authorized" when the
// session belongs to another identity. Control: a claim that succeeds.
func TestClusterSession_ClaimFailureRefusesConnect(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want byte
	}{
		{"directory reachable", nil, 0},
		{"directory unreachable", fmt.Errorf("cluster: %w", context.DeadlineExceeded), packets.ErrServerUnavailable.Code},
		{"another identity", fmt.Errorf("cluster: %w", cluster.ErrSessionIdentity), packets.ErrNotAuthorized.Code},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnvWith(t, engine(t), func(c *Config) { c.Sessions = fakeDirectory{err: tt.err} })
			_, ack, err := e.connect(e.enroll("pump", nil), &paho.Connect{ClientID: "pump", CleanStart: true})
			switch {
			case tt.want == 0 && err != nil:
				t.Fatalf("connect: %v", err)
			case tt.want != 0 && (ack == nil || ack.ReasonCode != tt.want):
				t.Fatalf("CONNACK %+v (err %v), want %#x", ack, err, tt.want)
			}
		})
	}
}

// The holder's node stopped: the session resumes on C from its directory
// record, subscriptions only (the commands queued on A are not available),
// and a new command reaches the device on C. A, restarted, drops its stale
// copy; another session whose record still names A comes back (control).
func TestClusterSession_OwnerDownSubscriptionsFromRecordQueueLost(t *testing.T) {
	ns := startNodes(t, 2)
	a, c := ns.envs[0], ns.envs[1]
	a.enroll("pump", nil)
	a.enroll("ctl", map[string]string{"role": "controller"})
	ctrlTLS := a.enroll("ctrl", map[string]string{"role": "controller"})
	pumpID := scopedClientID(deviceID("pump").String(), "pump")
	ctlID := scopedClientID(deviceID("ctl").String(), "ctl")

	dev, _ := a.persistent(t, "pump", "pump")
	dev.subscribe(t, sub("devices/pump/commands/#", 1))
	a.goOffline(t, dev, "pump")
	other, _ := a.persistent(t, "ctl", "ctl")
	other.subscribe(t, sub("devices/+/state", 1))
	a.goOffline(t, other, "ctl")
	ctrl := a.mustConnect(ctrlTLS, "ctrl")
	command(t, ctrl, "pump", 0) // queued on A
	poll(t, "A's records", func() bool {
		r, o := record(t, ns.dirs[0], pumpID), record(t, ns.dirs[0], ctlID)
		return r != nil && r.DisconnectedAt != nil && o != nil && o.DisconnectedAt != nil
	})
	snap := a.crash(t)

	moved, ack := c.persistent(t, "pump", "pump")
	if !ack.SessionPresent {
		t.Fatal("session present = 0 on C")
	}
	ctrlC := c.mustConnect(ctrlTLS, "ctrl-c")
	command(t, ctrlC, "pump", 1)
	if m := moved.expectOnly(t, "devices/pump/commands/set"); string(m.Payload) != "c1" {
		t.Fatalf("first message on C: %q, want the new command c1 (c0 was queued on A)", m.Payload)
	}

	a2 := a.restartFrom(t, snap, engine(t), func(cfg *Config) { cfg.Sessions = ns.dirs[0] })
	if a2.holds(pumpID) {
		t.Error("restarted A resurrected the session C holds")
	}
	if _, ok := storedSessions(t, a2.gw.store)[pumpID]; ok {
		t.Error("restarted A kept the stale session in its store")
	}
	if !a2.holds(ctlID) {
		t.Error("restarted A did not restore the session it still holds")
	}
	if r := record(t, ns.dirs[1], pumpID); r == nil || r.Node != "n1" {
		t.Errorf("record after A's restart: %+v", r)
	}
}

// queueOrder puts queued messages back in the order they were queued,
// packet IDs that wrapped included, and sequenceCreated makes mochi's
// resend order (the low 16 bits of the creation time) follow it.
func TestQueueOrder(t *testing.T) {
	pk := func(created int64, id uint16) packets.Packet { return packets.Packet{Created: created, PacketID: id} }
	got := queueOrder([]packets.Packet{pk(11, 2), pk(10, 65535), pk(10, 1), pk(10, 65534), pk(9, 7)})
	want := []uint16{7, 65534, 65535, 1, 2}
	for i, p := range got {
		if p.PacketID != want[i] {
			t.Fatalf("order %v, want IDs %v", got, want)
		}
	}
	// Across a wrap of the low 16 bits the renumbered times still sort.
	run := []packets.Packet{pk(1<<16-2, 1), pk(1<<16-2, 2), pk(1<<16-2, 3), pk(1<<16-1, 4)}
	sequenceCreated(run)
	for i := 1; i < len(run); i++ {
		if uint16(run[i].Created) <= uint16(run[i-1].Created) || run[i].Created > 1<<16-1 {
			t.Fatalf("created %d after %d", run[i].Created, run[i-1].Created)
		}
	}
}
