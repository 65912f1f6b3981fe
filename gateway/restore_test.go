package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// The restore tests run a gateway with a store, "crash" it by taking a
// snapshot of what its store has committed at that instant (what SIGKILL
// would leave: every committed write is in the file, nothing else), and
// start a new gateway on the same registry and CA from that snapshot.

// restoreQuiet is how long a test waits for a message that must not come,
// after its positive control arrived.
const restoreQuiet = 300 * time.Millisecond

// openStore opens a store at path, closed when the test ends (after the
// gateway using it, whose cleanup was registered later).
func openStore(t testing.TB, path string, fsync bool) *brokerstore.Store {
	t.Helper()
	st, err := brokerstore.Open(brokerstore.Options{Path: path, Fsync: fsync, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newStoreEnv is newEnv with a store.
func newStoreEnv(t testing.TB, d policy.Decider) *env {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), brokerstore.FileName), false)
	return newEnvWith(t, d, func(c *Config) { c.Store = st })
}

// crash returns a copy of what the store of e's gateway has committed once
// the writes queued so far are in, then closes that gateway (whose later
// writes go to its own file only). Waiting for the queue keeps a message
// from coming back twice (journal and copy); a test of a crash in the
// middle of a write takes its own snapshot (ackSnapshot).
func (e *env) crash(t testing.TB) string {
	t.Helper()
	snap := filepath.Join(t.TempDir(), "crashed-"+brokerstore.FileName)
	if err := e.gw.store.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := e.gw.store.Snapshot(snap); err != nil {
		t.Fatal(err)
	}
	_ = e.gw.Close()
	return snap
}

// restartFrom starts a new gateway on e's registry and CA, deciding with d,
// whose store is the file at path.
func (e *env) restartFrom(t testing.TB, path string, d policy.Decider, mods ...func(*Config)) *env {
	t.Helper()
	cfg := Config{
		Addr:     "127.0.0.1:0",
		TLS:      e.gw.tls,
		Verifier: e.gw.verifier,
		Registry: e.reg,
		Decider:  d,
		Logger:   e.gw.log,
		Store:    openStore(t, path, false),
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	gw := startGateway(t, cfg)
	return &env{t: t, ca: e.ca, caDir: e.caDir, reg: e.reg, gw: gw, addr: gw.Addr().String(), bundle: e.bundle, logs: e.logs}
}

func deviceID(name string) spiffeid.ID { return spiffeid.RequireFromSegments(testTD, "device", name) }

// goOffline closes c and waits until the gateway holds its session as an
// offline one.
func (e *env) goOffline(t testing.TB, c *client, dev string) {
	t.Helper()
	c.Close()
	id := scopedClientID(deviceID(dev).String(), dev)
	poll(t, dev+" offline", func() bool {
		cl, ok := e.gw.server.Clients.Get(id)
		if !ok || !cl.Closed() {
			return false
		}
		s := e.gw.session(cl)
		return s != nil && !s.life.load().connected()
	})
}

// storedSessions lists the scoped client IDs of the sessions in the store.
func storedSessions(t testing.TB, st *brokerstore.Store) map[string]*brokerstore.Session {
	t.Helper()
	state, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*brokerstore.Session{}
	for _, s := range state.Sessions {
		out[s.ClientID] = s
	}
	return out
}

// ackSnapshot takes a snapshot of the store at the instant the first
// PUBACK to a client whose ID ends in suffix is encoded: what a crash right
// as the publisher is told "accepted" would leave.
type ackSnapshot struct {
	mqtt.HookBase
	st     *brokerstore.Store
	suffix string
	path   string
	taken  atomic.Bool
	err    atomic.Value
}

func (h *ackSnapshot) ID() string { return "test-ack-snapshot" }
func (h *ackSnapshot) Provides(b byte) bool {
	return b == mqtt.OnPacketEncode
}

func (h *ackSnapshot) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Puback && len(cl.ID) > len(h.suffix) &&
		cl.ID[len(cl.ID)-len(h.suffix):] == h.suffix && h.taken.CompareAndSwap(false, true) {
		if err := h.st.Snapshot(h.path); err != nil {
			h.err.Store(err)
		}
	}
	return pk
}

// A QoS 1 message is durable for an offline persistent session by the time
// its publisher is acknowledged: a crash at the very moment the PUBACK is
// written loses nothing. mochi writes the PUBACK before it queues the
// message for subscribers; the journal (brokerstore) closes that gap.
// Control: the same message published after the snapshot does not come
// back (the snapshot is what it claims to be).
func TestRestore_MessageDurableWhenAcknowledged(t *testing.T) {
	e := newStoreEnv(t, engine(t))
	e.enroll("ctrl", map[string]string{"role": "controller"})
	pumpTLS := e.enroll("pump", nil)

	ctrl, _ := e.connectPersistent(e.svid(deviceID("ctrl")), "ctrl")
	ctrl.subscribe(t, sub("devices/+/state", 1))
	e.goOffline(t, ctrl, "ctrl")

	snap := &ackSnapshot{st: e.gw.store, suffix: " pump", path: filepath.Join(t.TempDir(), "at-ack.db")}
	if err := e.gw.server.AddHook(snap, nil); err != nil {
		t.Fatal(err)
	}
	pump := e.mustConnect(pumpTLS, "pump")
	if rc := pump.publish(t, &paho.Publish{Topic: "devices/pump/state", QoS: 1, Payload: []byte("at-ack")}); rc != 0 {
		t.Fatalf("PUBACK reason %#x", rc)
	}
	if rc := pump.publish(t, &paho.Publish{Topic: "devices/pump/state", QoS: 1, Payload: []byte("after")}); rc != 0 {
		t.Fatalf("PUBACK reason %#x", rc)
	}
	if !snap.taken.Load() {
		t.Fatal("no PUBACK seen")
	}
	if err, _ := snap.err.Load().(error); err != nil {
		t.Fatal(err)
	}
	_ = e.gw.Close()

	e2 := e.restartFrom(t, snap.path, engine(t))
	ctrl2, ack := e2.connectPersistent(e2.svid(deviceID("ctrl")), "ctrl")
	if !ack.SessionPresent {
		t.Fatal("the controller's session was not restored")
	}
	m := ctrl2.expectOnly(t, "devices/pump/state")
	if string(m.Payload) != "at-ack" {
		t.Fatalf("got %q, want the message acknowledged at the crash", m.Payload)
	}
	ctrl2.Msgs.ExpectNone(t, restoreQuiet)
}

// policyAfter is the policy after the restart: the test policy with one
// device refused at CONNECT, one filter refused at SUBSCRIBE and one topic
// refused at delivery.
type policyAfter struct {
	next          policy.Decider
	denyConnectID string
	denyFilter    string
	denyTopic     string
}

func (d *policyAfter) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	deny := policy.Decision{Reasons: []string{"policy after restart"}}
	switch {
	case in.Action == policy.ActionConnect && in.Subject.Identity.SPIFFEID == d.denyConnectID,
		in.Action == policy.ActionSubscribe && in.Filter == d.denyFilter,
		in.Action == policy.ActionReceive && in.Topic == d.denyTopic:
		return deny
	}
	return d.next.Decide(ctx, in)
}

// What comes back after a crash is decided again at start: the sessions of
// a device suspended, revoked or deleted meanwhile, or that the policy now
// refuses at CONNECT, are dropped (in the store too); a kept session loses
// the subscription the policy now refuses, and of its queued messages
// only those it may still receive are delivered. Control: a kept session
// with its allowed subscription and message.
func TestRestore_DecidedAgain(t *testing.T) {
	e := newStoreEnv(t, engine(t))
	ctrls := []string{"keep", "suspended", "revoked", "deleted", "refused"}
	for _, name := range ctrls {
		e.enroll(name, map[string]string{"role": "controller"})
		c, _ := e.connectPersistent(e.svid(deviceID(name)), name)
		c.subscribe(t, sub("devices/+/state", 1), sub("devices/+/telemetry/#", 1))
		e.goOffline(t, c, name)
	}
	pumpTLS := e.enroll("pump", nil)
	pump := e.mustConnect(pumpTLS, "pump")
	for _, topic := range []string{"devices/pump/state", "devices/pump/telemetry/t"} {
		if rc := pump.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(topic)}); rc != 0 {
			t.Fatalf("PUBACK reason %#x", rc)
		}
	}
	snap := e.crash(t)

	// While the gateway is down.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.reg.SetStatus("suspended", registry.StatusSuspended)
	must(err)
	_, err = e.reg.SetStatus("revoked", registry.StatusRevoked)
	must(err)
	must(e.reg.Delete("deleted"))

	after := &policyAfter{next: engine(t), denyConnectID: deviceID("refused").String(),
		denyFilter: "devices/+/telemetry/#", denyTopic: "devices/pump/telemetry/t"}
	e2 := e.restartFrom(t, snap, after)

	stored := storedSessions(t, e2.gw.store)
	for _, name := range ctrls {
		id := scopedClientID(deviceID(name).String(), name)
		_, inMochi := e2.gw.server.Clients.Get(id)
		_, inStore := stored[id]
		if want := name == "keep"; inMochi != want || inStore != want {
			t.Errorf("%s: restored %v, stored %v; want %v", name, inMochi, inStore, want)
		}
	}
	if s := stored[scopedClientID(deviceID("keep").String(), "keep")]; s != nil {
		var filters []string
		for _, sub := range s.Subscriptions {
			filters = append(filters, sub.Filter)
		}
		if len(filters) != 1 || filters[0] != "devices/+/state" {
			t.Errorf("stored subscriptions of the kept session: %q, want devices/+/state only", filters)
		}
	}

	keep, ack := e2.connectPersistent(e2.svid(deviceID("keep")), "keep")
	if !ack.SessionPresent {
		t.Fatal("the kept session was not restored")
	}
	keep.expectOnly(t, "devices/pump/state")
	keep.Msgs.ExpectNone(t, restoreQuiet)

	// The refused subscription is gone; the other one delivers.
	pump2 := e2.mustConnect(pumpTLS, "pump")
	pump2.publish(t, &paho.Publish{Topic: "devices/pump/telemetry/u", QoS: 1, Payload: []byte("u")})
	pump2.publish(t, &paho.Publish{Topic: "devices/pump/state", QoS: 1, Payload: []byte("s")})
	keep.expectOnly(t, "devices/pump/state")
	keep.Msgs.ExpectNone(t, restoreQuiet)

	// The suspended device, active again, finds no session.
	_, err = e2.reg.SetStatus("suspended", registry.StatusActive)
	must(err)
	_, ack = e2.connectPersistent(e2.svid(deviceID("suspended")), "suspended")
	if ack.SessionPresent {
		t.Error("the suspended device's session came back")
	}
}

// A retained message survives a crash, and its publisher's revocation
// while the gateway is down clears it at start (it is in the publisher
// index again). Control: another publisher's retained message stays.
func TestRestore_RetainedAndRevocation(t *testing.T) {
	e := newStoreEnv(t, engine(t))
	ctrlTLS := e.enroll("ctrl", map[string]string{"role": "controller"})
	for _, name := range []string{"pump", "valve"} {
		c := e.mustConnect(e.enroll(name, nil), name)
		c.publish(t, &paho.Publish{Topic: fmt.Sprintf("devices/%s/state", name), QoS: 1, Retain: true, Payload: []byte(name)})
		c.Close()
	}
	e2 := restartWithValveRevoked(t, e, ctrlTLS, "pump")
	state, err := e2.gw.store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(state.Retained) != 1 || state.Retained[0].TopicName != "devices/pump/state" {
		t.Errorf("stored retained messages %d, want only devices/pump/state", len(state.Retained))
	}
}

// A delayed will pending at the crash is sent after the restart, decided
// then. Control: the will of a device revoked meanwhile is not. The wills
// are retained, so the subscriber sees them whenever they fire.
func TestRestore_DelayedWill(t *testing.T) {
	e := newStoreEnv(t, engine(t))
	ctrlTLS := e.enroll("ctrl", map[string]string{"role": "controller"})
	for _, name := range []string{"pump", "valve"} {
		cfg := e.enroll(name, nil)
		delay := uint32(3)
		c, _, err := e.connect(cfg, &paho.Connect{ClientID: name, CleanStart: true,
			Properties:     &paho.ConnectProperties{SessionExpiryInterval: u32(3600)},
			WillMessage:    &paho.WillMessage{Topic: fmt.Sprintf("devices/%s/state", name), QoS: 1, Retain: true, Payload: []byte("gone")},
			WillProperties: &paho.WillProperties{WillDelayInterval: &delay}})
		if err != nil {
			t.Fatal(err)
		}
		c.Kill()
	}
	poll(t, "both wills stored", func() bool {
		_ = e.gw.store.Flush()
		st, err := e.gw.store.Load()
		return err == nil && len(st.Wills) == 2
	})
	restartWithValveRevoked(t, e, ctrlTLS, "gone")
}

// restartWithValveRevoked crashes e's gateway, revokes the device valve
// while it is down, restarts it and subscribes a controller to the
// devices' states: pump's must arrive with payload want, and nothing else.
func restartWithValveRevoked(t *testing.T, e *env, ctrlTLS *tls.Config, want string) *env {
	t.Helper()
	snap := e.crash(t)
	if _, err := e.reg.SetStatus("valve", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	e2 := e.restartFrom(t, snap, engine(t))
	ctrl := e2.mustConnect(ctrlTLS, "ctrl")
	ctrl.subscribe(t, sub("devices/+/state", 1))
	m := ctrl.expectOnly(t, "devices/pump/state")
	if string(m.Payload) != want {
		t.Fatalf("payload of devices/pump/state %q, want %q", m.Payload, want)
	}
	ctrl.Msgs.ExpectNone(t, restoreQuiet)
	return e2
}

// A session the gateway drops while running (its device revoked) leaves
// the store at once, so that nothing of it comes back at the next start,
// also for a device enrolled again under the same name. Control: another
// device's stored session stays.
func TestRestore_DroppedSessionLeavesStore(t *testing.T) {
	e := newStoreEnv(t, engine(t))
	for _, name := range []string{"keep", "revoked"} {
		e.enroll(name, map[string]string{"role": "controller"})
		c, _ := e.connectPersistent(e.svid(deviceID(name)), name)
		c.subscribe(t, sub("devices/+/state", 1))
		e.goOffline(t, c, name)
	}
	if _, err := e.reg.SetStatus("revoked", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	revoked := scopedClientID(deviceID("revoked").String(), "revoked")
	keep := scopedClientID(deviceID("keep").String(), "keep")
	poll(t, "the revoked session out of the store", func() bool {
		_, held := storedSessions(t, e.gw.store)[revoked]
		return !held
	})
	if _, held := storedSessions(t, e.gw.store)[keep]; !held {
		t.Error("the other device's stored session is gone")
	}
}

// A restored session resumed by its device is taken over like any offline
// session: the gateway then holds one session for the client ID, the new
// connection's.
func TestRestore_ResumedSessionTakenOver(t *testing.T) {
	e := newStoreEnv(t, engine(t))
	e.enroll("ctrl", map[string]string{"role": "controller"})
	c, _ := e.connectPersistent(e.svid(deviceID("ctrl")), "ctrl")
	c.subscribe(t, sub("devices/+/state", 1))
	e.goOffline(t, c, "ctrl")
	e2 := e.restartFrom(t, e.crash(t), engine(t))

	c2, ack := e2.connectPersistent(e2.svid(deviceID("ctrl")), "ctrl")
	if !ack.SessionPresent {
		t.Fatal("session not restored")
	}
	poll(t, "one session for the client ID", func() bool {
		n := 0
		e2.gw.sessions.Range(func(_, v any) bool {
			if v.(*session).clientID == "ctrl" {
				n++
			}
			return true
		})
		return n == 1
	})
	pump := e2.mustConnect(e2.enroll("pump", nil), "pump")
	pump.publish(t, &paho.Publish{Topic: "devices/pump/state", QoS: 1, Payload: []byte("x")})
	c2.expectOnly(t, "devices/pump/state")
}

// Sessions restored at start count against their identity's maximum, as
// the offline sessions they were: a restart does not give a device more
// sessions than it could hold before.
func TestRestore_SessionsCountAgainstTheLimit(t *testing.T) {
	e := newStoreEnv(t, engine(t))
	cfg := e.enroll("multi", nil)
	for _, id := range []string{"a", "b"} {
		c, _ := e.connectPersistent(cfg, id)
		c.Close()
	}
	poll(t, "both sessions offline", func() bool { return len(storedSessions(t, e.gw.store)) == 2 })
	e2 := e.restartFrom(t, e.crash(t), engine(t), func(c *Config) { c.Limits.MaxSessionsPerIdentity = 2 })
	cfg = e2.svid(deviceID("multi"))

	_, ack, err := e2.connect(cfg, &paho.Connect{ClientID: "c", CleanStart: true})
	if err == nil || ack == nil || ack.ReasonCode != packets.ErrQuotaExceeded.Code {
		t.Fatalf("a third session after the restart: err %v, CONNACK %+v; want 0x97", err, ack)
	}
	// Positive control: a restored session is resumed; it is not one more.
	if _, ack := e2.connectPersistent(cfg, "a"); !ack.SessionPresent {
		t.Fatal("restored session a not resumed")
	}
}
