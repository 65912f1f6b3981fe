package gateway

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

const (
	shareFilter = "$share/g/devices/+/telemetry/#"
	// shareBatch is how many QoS 1 messages a test sends through a share
	// group: with two members picked at random, the chance that one of them
	// gets none is 2^-39, so "both share" is a safe positive control.
	shareBatch = 40
)

// connectPersistent opens an MQTT 5 session with Clean Start 0 and a
// session expiry, so that it outlives its connection.
func (e *env) connectPersistent(cfg *tls.Config, clientID string) (*client, *paho.Connack) {
	e.t.Helper()
	c, ack, err := e.connect(cfg, &paho.Connect{ClientID: clientID, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	if err != nil {
		e.t.Fatalf("connect %s: %v", clientID, err)
	}
	return c, ack
}

// sendBatch publishes n QoS 1 telemetry messages from sensor-1, each
// acknowledged, so all of them have been routed when it returns.
func sendBatch(t *testing.T, sensor *client, round string, n int) {
	t.Helper()
	for i := range n {
		p := &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1, Payload: fmt.Appendf(nil, "%s-%d", round, i)}
		if code := sensor.publish(t, p); code != 0 {
			t.Fatalf("publish %s-%d: %#x", round, i, code)
		}
	}
}

// drain returns the payloads c has received so far, waiting until it has
// want of them or, if it never gets that many, until waitFor has passed.
func (c *client) drain(want int) map[string]bool {
	got := map[string]bool{}
	deadline := time.Now().Add(waitFor)
	for len(got) < want {
		m, ok := c.Msgs.Take(time.Until(deadline))
		if !ok {
			return got
		}
		got[string(m.Payload)] = true
	}
	// Anything already queued beyond want counts too.
	for k := range c.drainSome() {
		got[k] = true
	}
	return got
}

// share is two persistent members of shareFilter and a sensor.
type share struct {
	a, b, sensor *client
	aCfg, bCfg   *tls.Config
}

// shareMembers connects ctl-a and ctl-b as persistent members of
// shareFilter, a sensor, and checks (positive control) that the two
// members share a batch: together they get every message, each some.
func shareMembers(t *testing.T, e *env) *share {
	t.Helper()
	aCfg := e.enroll("ctl-a", controllerLabels)
	bCfg := e.enroll("ctl-b", controllerLabels)
	a, _ := e.connectPersistent(aCfg, "ctl-a")
	b, _ := e.connectPersistent(bCfg, "ctl-b")
	for _, c := range []*client{a, b} {
		if got := c.subscribe(t, sub(shareFilter, 1)); got[0] != 1 {
			t.Fatalf("SUBACK %#x", got[0])
		}
	}
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	sendBatch(t, sensor, "before", shareBatch)
	ga, gb := a.drainSome(), b.drainSome()
	poll(t, "the first batch", func() bool {
		for k := range a.drainSome() {
			ga[k] = true
		}
		for k := range b.drainSome() {
			gb[k] = true
		}
		return len(ga)+len(gb) >= shareBatch
	})
	if len(ga)+len(gb) != shareBatch || len(ga) == 0 || len(gb) == 0 {
		t.Fatalf("before the cut: ctl-a got %d, ctl-b %d of %d; want them to share all", len(ga), len(gb), shareBatch)
	}
	return &share{a: a, b: b, sensor: sensor, aCfg: aCfg, bCfg: bCfg}
}

// drainSome returns what c has received so far without waiting.
func (c *client) drainSome() map[string]bool {
	got := map[string]bool{}
	for {
		m, ok := c.Msgs.Take(0)
		if !ok {
			return got
		}
		got[string(m.Payload)] = true
	}
}

// waitRegistryApplied waits until the registry watcher has applied every
// change made so far.
func (e *env) waitRegistryApplied(t *testing.T) {
	t.Helper()
	poll(t, "registry change applied", func() bool { return e.gw.watch.waiting.Load() == e.reg.Watch() })
}

// Item: a share-group member whose device is suspended, revoked or deleted
// (or suspended and resumed before it reconnects), or that a new policy
// revision no longer admits, must not take messages of the group: the live
// member gets every one.
func TestSharedGroupMemberCutLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(e *env) error
	}{
		{"suspended", func(e *env) error {
			_, err := e.reg.SetStatus("ctl-b", registry.StatusSuspended)
			return err
		}},
		{"revoked", func(e *env) error {
			_, err := e.reg.SetStatus("ctl-b", registry.StatusRevoked)
			return err
		}},
		{"deleted", func(e *env) error { return e.reg.Delete("ctl-b") }},
		{"refused by a new revision", func(e *env) error {
			e.gw.decider.(*tightener).deny(func(in *policy.Input) bool {
				return in.Action == policy.ActionConnect && deviceIs(in, "ctl-b")
			})
			e.gw.reevaluateNow(e.t, "test revision")
			return nil
		}},
		{"suspended-then-resumed", func(e *env) error {
			if _, err := e.reg.SetStatus("ctl-b", registry.StatusSuspended); err != nil {
				return err
			}
			e.waitRegistryApplied(e.t.(*testing.T))
			_, err := e.reg.SetStatus("ctl-b", registry.StatusActive)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, &tightener{next: engine(t)})
			sh := shareMembers(t, e)
			if err := tc.cut(e); err != nil {
				t.Fatal(err)
			}
			expectDisconnect(t, sh.b, 0x87)
			e.waitRegistryApplied(t)

			sendBatch(t, sh.sensor, "after", shareBatch)
			if got := sh.a.drain(shareBatch); len(got) != shareBatch {
				t.Fatalf("the live member got %d of %d messages after ctl-b was %s", len(got), shareBatch, tc.name)
			}
		})
	}
}

// inIndex reports whether mochi's topic index routes topic to client id,
// in a share group or not.
func (e *env) inIndex(id, topic string) bool {
	subs := e.gw.server.Topics.Subscribers(topic)
	for _, members := range subs.Shared {
		if _, ok := members[id]; ok {
			return true
		}
	}
	_, ok := subs.Subscriptions[id]
	return ok
}

// Item: the session of a device cut from the registry leaves the topic
// index at once, so nothing is routed or queued to it. A revoked or deleted
// device's session ends: mochi forgets it, and a device enrolled again
// under the same identity starts afresh (session present 0). A suspended
// device's session is kept for it: after the resume it reconnects to it
// (session present 1) and, without subscribing again, gets what is
// published from then on, but nothing of what was published while it was
// suspended (positive control for the kept subscriptions).
func TestCutSessionLeavesRouting(t *testing.T) {
	const bID = "spiffe://example.org/device/ctl-b ctl-b"
	for _, tc := range []struct {
		name string
		cut  []registry.Status // "deleted" for a deletion
		kept bool              // the session stays (detached)
	}{
		{"suspended", []registry.Status{registry.StatusSuspended}, true},
		{"revoked", []registry.Status{registry.StatusRevoked}, false},
		{"deleted", []registry.Status{"deleted"}, false},
		{"suspended-then-revoked", []registry.Status{registry.StatusSuspended, registry.StatusRevoked}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, engine(t))
			sh := shareMembers(t, e)
			if got := sh.b.subscribe(t, sub("devices/+/state", 1)); got[0] != 1 {
				t.Fatalf("SUBACK %#x", got[0])
			}
			if !e.inIndex(bID, "devices/sensor-1/state") || !e.inIndex(bID, "devices/sensor-1/telemetry/t") {
				t.Fatal("ctl-b's subscriptions are not in the index before the cut")
			}
			for i, st := range tc.cut {
				var err error
				if st == "deleted" {
					err = e.reg.Delete("ctl-b")
				} else {
					_, err = e.reg.SetStatus("ctl-b", st)
				}
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					expectDisconnect(t, sh.b, 0x87)
				}
				e.waitRegistryApplied(t)
			}
			for _, topic := range []string{"devices/sensor-1/state", "devices/sensor-1/telemetry/t"} {
				if e.inIndex(bID, topic) {
					t.Fatalf("after the cut, mochi still routes %s to ctl-b", topic)
				}
			}
			if code := sh.sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte("while cut")}); code != 0 {
				t.Fatalf("publish: %#x", code)
			}
			if tc.kept {
				cl, held := e.gw.server.Clients.Get(bID)
				if !held {
					t.Fatal("mochi no longer holds the suspended device's session")
				}
				if n := cl.State.Inflight.Len(); n != 0 {
					t.Fatalf("%d messages queued for the suspended session", n)
				}
			} else {
				// Ended once its connection has.
				poll(t, "the session to end", func() bool {
					_, held := e.gw.server.Clients.Get(bID)
					return !held && len(e.gw.sessionsOf("spiffe://example.org/device/ctl-b")) == 0
				})
			}

			switch tc.name {
			case "suspended":
				if _, err := e.reg.SetStatus("ctl-b", registry.StatusActive); err != nil {
					t.Fatal(err)
				}
				e.waitRegistryApplied(t)
				if e.inIndex(bID, "devices/sensor-1/state") {
					t.Fatal("the resume put the offline session back in the index before it reconnected")
				}
				b, ack := e.connectPersistent(sh.bCfg, "ctl-b")
				if !ack.SessionPresent {
					t.Fatal("the suspended device's session was not kept for it")
				}
				if code := sh.sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte("resumed")}); code != 0 {
					t.Fatalf("publish: %#x", code)
				}
				if m := b.expectOnly(t, "devices/sensor-1/state"); string(m.Payload) != "resumed" {
					t.Fatalf("received %q first; want the message published after the resume", m.Payload)
				}
			case "deleted":
				bCfg := e.enroll("ctl-b", controllerLabels)
				_, ack := e.connectPersistent(bCfg, "ctl-b")
				if ack.SessionPresent {
					t.Fatal("a device enrolled again inherited the deleted device's session")
				}
			}
		})
	}
}

// Item: a connected member is preferred to a persistent one that is
// offline, which would only queue the message; with no member connected,
// the offline one queues it (positive control: nothing lost either way).
func TestSharedGroupPrefersConnectedMember(t *testing.T) {
	e := newEnv(t, engine(t))
	sh := shareMembers(t, e)
	bID := scopedClientID("spiffe://example.org/device/ctl-b", "ctl-b")
	_ = sh.b.Disconnect(&paho.Disconnect{})
	poll(t, "ctl-b offline", func() bool { return len(e.gw.Sessions()) == 2 })

	sendBatch(t, sh.sensor, "one-online", shareBatch)
	if got := sh.a.drain(shareBatch); len(got) != shareBatch {
		t.Fatalf("the connected member got %d of %d; the rest were queued for the offline one", len(got), shareBatch)
	}
	bcl, _ := e.gw.server.Clients.Get(bID)
	if n := bcl.State.Inflight.Len(); n != 0 {
		t.Fatalf("%d messages queued for the offline member while another was connected", n)
	}

	_ = sh.a.Disconnect(&paho.Disconnect{})
	poll(t, "both offline", func() bool { return len(e.gw.Sessions()) == 1 })
	const queued = 4
	sendBatch(t, sh.sensor, "none-online", queued)
	a, _ := e.connectPersistent(sh.aCfg, "ctl-a")
	b, _ := e.connectPersistent(sh.bCfg, "ctl-b")
	got := map[string]bool{}
	poll(t, "the queued messages", func() bool {
		for _, c := range []*client{a, b} {
			for k := range c.drainSome() {
				got[k] = true
			}
		}
		return len(got) >= queued
	})
}

// Item: a member the policy refuses the topic is passed over for one that
// may receive it.
func TestSharedGroupSkipsMemberDeniedReceive(t *testing.T) {
	d := &tightener{next: engine(t)}
	e := newEnv(t, d)
	sh := shareMembers(t, e)
	d.deny(func(in *policy.Input) bool { return in.Action == policy.ActionReceive && deviceIs(in, "ctl-b") })

	sendBatch(t, sh.sensor, "denied", shareBatch)
	if got := sh.a.drain(shareBatch); len(got) != shareBatch {
		t.Fatalf("the allowed member got %d of %d", len(got), shareBatch)
	}
	if got := sh.b.drainSome(); len(got) != 0 {
		t.Fatalf("the denied member got %d messages", len(got))
	}
}

// OnSelectSubscribers picks, per group, a member that is connected and may
// receive the topic, else one offline that may, else nobody; and it leaves
// mochi nothing to pick at random.
func TestOnSelectSubscribers(t *testing.T) {
	const topic = "devices/sensor-1/telemetry/t"
	type member struct {
		name    string
		offline bool
		revoked bool
		denied  bool
		absent  bool // not known to mochi
	}
	for _, tc := range []struct {
		name    string
		topic   string
		groups  map[string][]member
		want    map[string]bool // client names selected
		wantQoS byte
	}{
		{name: "connected preferred", topic: topic,
			groups: map[string][]member{"$share/g/devices/#": {{name: "off", offline: true}, {name: "on"}}},
			want:   map[string]bool{"on": true}},
		{name: "denied connected skipped for allowed offline", topic: topic,
			groups: map[string][]member{"$share/g/devices/#": {{name: "on", denied: true}, {name: "off", offline: true}}},
			want:   map[string]bool{"off": true}},
		{name: "revoked skipped", topic: topic,
			groups: map[string][]member{"$share/g/devices/#": {{name: "cut", revoked: true}, {name: "ok"}}},
			want:   map[string]bool{"ok": true}},
		{name: "unknown to mochi skipped", topic: topic,
			groups: map[string][]member{"$share/g/devices/#": {{name: "gone", absent: true}, {name: "ok", offline: true}}},
			want:   map[string]bool{"ok": true}},
		{name: "all denied: nobody", topic: topic,
			groups: map[string][]member{"$share/g/devices/#": {{name: "x", denied: true}, {name: "y", revoked: true}, {name: "z", offline: true, denied: true}}},
			want:   map[string]bool{}},
		{name: "server topic: nobody", topic: "$SYS/broker/uptime",
			groups: map[string][]member{"$share/g/#": {{name: "on"}}},
			want:   map[string]bool{}},
		{name: "one per group", topic: topic,
			groups: map[string][]member{
				"$share/g1/devices/#": {{name: "g1-denied", denied: true}, {name: "g1"}},
				"$share/g2/devices/#": {{name: "g2"}, {name: "g2-cut", revoked: true}},
			},
			want: map[string]bool{"g1": true, "g2": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			denied := map[string]bool{}
			g := newIdleGateway(t, &recorder{allow: func(in *policy.Input) bool {
				return in.Subject == nil || in.Subject.Device == nil || !denied[in.Subject.Device.Name]
			}})
			subs := &mqtt.Subscribers{
				Shared:         map[string]map[string]packets.Subscription{},
				SharedSelected: map[string]packets.Subscription{},
				Subscriptions:  map[string]packets.Subscription{},
			}
			names := map[string]string{} // scoped client ID -> name
			for filter, members := range tc.groups {
				subs.Shared[filter] = map[string]packets.Subscription{}
				for _, m := range members {
					cl, s := g.addSession(m.name, controllerLabels, 5)
					if !m.absent {
						g.server.Clients.Add(cl)
					}
					conn := connOpen
					if m.offline {
						conn = connClosed
					}
					s.setState(conn, phaseLive, m.revoked)
					denied[m.name] = m.denied
					subs.Shared[filter][cl.ID] = packets.Subscription{Filter: filter, Qos: 1}
					names[cl.ID] = m.name
				}
			}
			out := g.hook.OnSelectSubscribers(subs, packets.Packet{TopicName: tc.topic})
			got := map[string]bool{}
			for id := range out.SharedSelected {
				got[names[id]] = true
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("selected %v, want %v", got, tc.want)
			}
			// mochi picks a member itself when SharedSelected is empty:
			// that must find nothing.
			out.SelectShared()
			for id := range out.SharedSelected {
				if !tc.want[names[id]] {
					t.Fatalf("mochi's own pick would add %s", names[id])
				}
			}
		})
	}
}

// BenchmarkSelectShared compares the gateway's pick of a share-group
// member (a receive decision, cached, per member tried) with mochi's own
// (the first in map order, undecided), for one group of members, one of
// them offline. Each iteration builds the group, as mochi does per message.
func BenchmarkSelectShared(b *testing.B) {
	for _, members := range []int{2, 8} {
		g := newIdleGateway(b, policy.NewCache(engine(b), nil, policy.CacheOptions{}))
		ids := make([]string, members)
		for i := range ids {
			cl, s := g.addSession(fmt.Sprintf("ctl-%d", i), controllerLabels, 5)
			if i == 0 {
				s.setState(connClosed, phaseLive, false)
			}
			g.server.Clients.Add(cl)
			ids[i] = cl.ID
		}
		pk := packets.Packet{TopicName: "devices/sensor-1/telemetry/t"}
		group := func() *mqtt.Subscribers {
			subs := &mqtt.Subscribers{
				Shared:         map[string]map[string]packets.Subscription{shareFilter: {}},
				SharedSelected: map[string]packets.Subscription{},
				Subscriptions:  map[string]packets.Subscription{},
			}
			for _, id := range ids {
				subs.Shared[shareFilter][id] = packets.Subscription{Filter: shareFilter, Qos: 1}
			}
			return subs
		}
		if out := g.hook.OnSelectSubscribers(group(), pk); len(out.SharedSelected) != 1 {
			b.Fatalf("selected %v", out.SharedSelected)
		}
		// What building the group costs, in both of the others.
		b.Run(fmt.Sprintf("build/members=%d", members), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				group()
			}
		})
		b.Run(fmt.Sprintf("mochi/members=%d", members), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				group().SelectShared()
			}
		})
		b.Run(fmt.Sprintf("gateway/members=%d", members), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				g.hook.OnSelectSubscribers(group(), pk)
			}
		})
	}
}
