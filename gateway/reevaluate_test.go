package gateway

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/policy"
)

// tightener is the test policy plus a rule, swapped at run time, that
// denies whatever it matches: a new policy revision, as far as the gateway
// can tell.
type tightener struct {
	next policy.Decider
	rule atomic.Pointer[func(*policy.Input) bool]
}

// deny makes f the extra rule; nil removes it (the old revision again).
func (d *tightener) deny(f func(*policy.Input) bool) { d.rule.Store(&f) }

func (d *tightener) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	if f := d.rule.Load(); f != nil && *f != nil && (*f)(in) {
		return policy.Decision{Reasons: []string{"tightened"}, Revision: "tightened"}
	}
	return d.next.Decide(ctx, in)
}

func deviceIs(in *policy.Input, name string) bool {
	return in.Subject != nil && in.Subject.Device != nil && in.Subject.Device.Name == name
}

// reevaluateNow asks for a re-evaluation and waits until a pass that covers
// the request has finished.
func (g *Gateway) reevaluateNow(t testing.TB, reason string) {
	t.Helper()
	g.Reevaluate(reason)
	epoch := g.reeval.epoch.Load()
	poll(t, "re-evaluation", func() bool { return g.reeval.done.Load() >= epoch })
}

// brokerClient returns mochi's client for the scoped client ID of device
// name and clientID (connected or a persistent session kept offline).
func (e *env) brokerClient(name, clientID string) *mqtt.Client {
	e.t.Helper()
	cl, ok := e.gw.server.Clients.Get("spiffe://example.org/device/" + name + " " + clientID)
	if !ok {
		e.t.Fatalf("no broker session for %s/%s", name, clientID)
	}
	return cl
}

func filters(cl *mqtt.Client) []string {
	var out []string
	for f := range cl.State.Subscriptions.GetAll() {
		out = append(out, f)
	}
	return out
}

func expectDisconnect(t *testing.T, c *client, code byte) {
	t.Helper()
	if d := c.WaitDisconnect(t, waitFor); d.ReasonCode != code {
		t.Errorf("DISCONNECT %#x, want %#x", d.ReasonCode, code)
	}
}

func TestReevaluateCutsSessionsThePolicyNoLongerAdmits(t *testing.T) {
	d := &tightener{next: engine(t)}
	e := newEnv(t, d)
	cfg1 := e.enroll("sensor-1", nil)
	v5 := e.mustConnect(cfg1, "sensor-1")
	v4 := e.dial311(cfg1)
	if code := v4.Connect(t, "sensor-1-v4"); code != 0 {
		t.Fatalf("3.1.1 CONNACK %#x", code)
	}
	withWill, _, err := e.connect(e.enroll("sensor-3", nil), &paho.Connect{ClientID: "sensor-3", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "devices/sensor-3/state", Payload: []byte("gone")}})
	if err != nil {
		t.Fatal(err)
	}
	other := e.mustConnect(e.enroll("sensor-2", nil), "sensor-2")

	// Positive control: a pass under the unchanged policy cuts nothing.
	e.gw.reevaluateNow(t, "unchanged")
	if n := len(e.gw.Sessions()); n != 4 {
		t.Fatalf("%d sessions after an unchanged pass, want 4", n)
	}

	// The new revision refuses sensor-1's CONNECT and sensor-3's will.
	d.deny(func(in *policy.Input) bool {
		return in.Action == policy.ActionConnect && deviceIs(in, "sensor-1") || in.Will && deviceIs(in, "sensor-3")
	})
	e.gw.reevaluateNow(t, "test revision")
	expectDisconnect(t, v5, 0x87)
	v4.ExpectClosed(t)
	expectDisconnect(t, withWill, 0x87)
	poll(t, "sessions to end", func() bool {
		s := e.gw.Sessions()
		return len(s) == 1 && s[0].Device == "sensor-2"
	})
	if code := other.publish(t, &paho.Publish{Topic: "devices/sensor-2/state", QoS: 1, Payload: []byte("up")}); code != 0 {
		t.Fatalf("admitted session: PUBACK %#x", code)
	}
	if !strings.Contains(e.logs.String(), "reason=policy") {
		t.Error("the cut is not logged with its reason")
	}
}

func TestReevaluateRemovesSubscriptionsNowDenied(t *testing.T) {
	d := &tightener{next: engine(t)}
	e := newEnv(t, d)
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	if got := ctl.subscribe(t, sub("devices/+/telemetry/#", 1), sub("devices/+/state", 1)); got[0] != 1 || got[1] != 1 {
		t.Fatalf("SUBACK %#v", got)
	}

	// Subscribing to all telemetry is refused from now on; receiving it
	// is not, so only the removal of the subscription keeps it away.
	d.deny(func(in *policy.Input) bool {
		return in.Action == policy.ActionSubscribe && in.Filter == "devices/+/telemetry/#"
	})
	e.gw.reevaluateNow(t, "test revision")
	if got := filters(e.brokerClient("ctl", "ctl")); len(got) != 1 || got[0] != "devices/+/state" {
		t.Fatalf("subscriptions after the pass: %q, want only devices/+/state", got)
	}
	sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1, Payload: []byte("not for ctl")})
	// Positive control: the allowed subscription still delivers, and the
	// session is still connected.
	sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte("up")})
	ctl.expectOnly(t, "devices/sensor-1/state")
	if !strings.Contains(e.logs.String(), "filter=devices/+/telemetry/#") {
		t.Error("the removed subscription's denial is not logged")
	}
}

func TestReevaluatePrunesOfflinePersistentSession(t *testing.T) {
	d := &tightener{next: engine(t)}
	e := newEnv(t, d)
	cfg := e.enroll("sensor-1", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	persistent := func() (*client, *paho.Connack) {
		c, ack, err := e.connect(cfg, &paho.Connect{ClientID: "s1", CleanStart: false,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		return c, ack
	}
	command := func(topic, payload string) {
		t.Helper()
		if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/" + topic, QoS: 1, Payload: []byte(payload)}); code != 0 {
			t.Fatalf("command %s: %#x", topic, code)
		}
	}

	c, _ := persistent()
	c.subscribe(t, sub("devices/sensor-1/commands/reboot", 1), sub("devices/sensor-1/commands/config/#", 1))
	_ = c.Disconnect(&paho.Disconnect{})
	poll(t, "offline", func() bool { return len(e.gw.Sessions()) == 1 })
	command("reboot", "queued reboot")
	command("config/x", "queued config")
	poll(t, "messages queued", func() bool { return e.brokerClient("sensor-1", "s1").State.Inflight.Len() == 2 })

	// While the device is offline, a revision refuses it the reboot
	// command and the config subscription.
	d.deny(func(in *policy.Input) bool {
		return in.Action == policy.ActionReceive && in.Topic == "devices/sensor-1/commands/reboot" ||
			in.Action == policy.ActionSubscribe && in.Filter == "devices/sensor-1/commands/config/#"
	})
	e.gw.reevaluateNow(t, "test revision")
	cl := e.brokerClient("sensor-1", "s1")
	if n := cl.State.Inflight.Len(); n != 1 {
		t.Fatalf("%d queued messages after the pass, want the config one", n)
	}
	if got := filters(cl); len(got) != 1 || got[0] != "devices/sensor-1/commands/reboot" {
		t.Fatalf("subscriptions after the pass: %q", got)
	}

	// The old revision is back before the device returns: what the pass
	// removed stays removed, what it kept is delivered.
	d.deny(nil)
	command("config/y", "after the removal")
	command("reboot", "live reboot")
	c, ack := persistent()
	if !ack.SessionPresent {
		t.Fatal("session not resumed")
	}
	got := map[string]bool{}
	for len(got) < 2 {
		m := c.next(t)
		got[string(m.Payload)] = true
	}
	if !got["queued config"] || !got["live reboot"] {
		t.Fatalf("received %v; want the queued config and the live reboot only", got)
	}
	command("reboot", "barrier")
	if m := c.expectOnly(t, "devices/sensor-1/commands/reboot"); string(m.Payload) != "barrier" {
		t.Fatalf("received %q before the barrier: delivered against the re-evaluation", m.Payload)
	}
}

func TestReevaluateDropsInflightOfLiveSession(t *testing.T) {
	d := &tightener{next: engine(t)}
	e := newEnv(t, d)
	cfg := e.enroll("sensor-1", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")

	// A live MQTT 5 client that never acknowledges: what it was sent
	// stays in flight, to be resent when the session resumes.
	raw := e.dial5(cfg)
	if code := raw.ConnectWith(t, packets.ConnectParams{ClientIdentifier: "s1"},
		packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}); code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	raw.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "devices/sensor-1/commands/#", Qos: 1}}})
	if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Suback || pk.ReasonCodes[0] != 1 {
		t.Fatalf("SUBACK %+v, %v", pk, err)
	}
	for _, topic := range []string{"a", "b"} {
		if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/" + topic, QoS: 1, Payload: []byte(topic)}); code != 0 {
			t.Fatal(code)
		}
		if pk, err := raw.Read(); err != nil || pk.FixedHeader.Type != packets.Publish {
			t.Fatalf("delivery of %s: %+v, %v", topic, pk.FixedHeader, err)
		}
	}
	if n := e.brokerClient("sensor-1", "s1").State.Inflight.Len(); n != 2 {
		t.Fatalf("%d messages in flight, want 2", n)
	}

	d.deny(func(in *policy.Input) bool {
		return in.Action == policy.ActionReceive && in.Topic == "devices/sensor-1/commands/a"
	})
	e.gw.reevaluateNow(t, "test revision")
	if n := e.brokerClient("sensor-1", "s1").State.Inflight.Len(); n != 1 {
		t.Fatalf("%d messages in flight after the pass, want 1", n)
	}

	// The session resumes on a new connection (the old revision back):
	// only the message still allowed at the pass is resent.
	d.deny(nil)
	c, ack, err := e.connect(cfg, &paho.Connect{ClientID: "s1", CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	if err != nil || !ack.SessionPresent {
		t.Fatalf("resume: %+v, %v", ack, err)
	}
	if m := c.expectOnly(t, "devices/sensor-1/commands/b"); string(m.Payload) != "b" {
		t.Fatalf("resent %q", m.Payload)
	}
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/c", QoS: 1}); code != 0 {
		t.Fatal(code)
	}
	c.expectOnly(t, "devices/sensor-1/commands/c")
}

func TestRegistryChangePrunesSubscriptions(t *testing.T) {
	e := newEnv(t, engine(t))
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	if got := ctl.subscribe(t, sub("devices/+/telemetry/#", 1)); got[0] != 1 {
		t.Fatalf("SUBACK %#x", got[0])
	}
	sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1})
	ctl.expectOnly(t, "devices/sensor-1/telemetry/t") // positive control

	// No longer a controller, still an active device: connected, without
	// the controller's subscription.
	if _, err := e.reg.SetLabels("ctl", nil); err != nil {
		t.Fatal(err)
	}
	poll(t, "subscription removed", func() bool { return len(filters(e.brokerClient("ctl", "ctl"))) == 0 })
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/ctl/state", QoS: 1}); code != 0 {
		t.Fatalf("session cut by a label change: PUBACK %#x", code)
	}
	if n := len(e.gw.Sessions()); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
}

// blockingDecider holds connect decisions while gate is set, to keep a
// re-evaluation pass running.
type blockingDecider struct {
	gate    atomic.Pointer[chan struct{}]
	entered chan struct{}
}

func (d *blockingDecider) Decide(_ context.Context, in *policy.Input) policy.Decision {
	if g := d.gate.Load(); g != nil && in.Action == policy.ActionConnect {
		select {
		case d.entered <- struct{}{}:
		default:
		}
		<-*g
	}
	return policy.Decision{Allow: true}
}

func TestReevaluateCoalesces(t *testing.T) {
	d := &blockingDecider{entered: make(chan struct{}, 1)}
	e := newEnv(t, d)
	e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")

	gate := make(chan struct{})
	d.gate.Store(&gate)
	e.gw.Reevaluate("first")
	select {
	case <-d.entered:
	case <-time.After(waitFor):
		t.Fatal("first pass did not start")
	}
	// A burst while the first pass runs...
	for i := 0; i < 50; i++ {
		e.gw.Reevaluate("burst")
	}
	d.gate.Store(nil)
	close(gate)
	epoch := e.gw.reeval.epoch.Load()
	poll(t, "burst covered", func() bool { return e.gw.reeval.done.Load() >= epoch })
	// ...is covered by one more pass.
	e.gw.reeval.mu.Lock()
	passes := e.gw.reeval.passes
	e.gw.reeval.mu.Unlock()
	if passes != 2 {
		t.Fatalf("%d passes for 51 requests, want 2", passes)
	}
	if !strings.Contains(e.logs.String(), "reason=burst") {
		t.Error("the pass is not logged with its reason")
	}
}

func TestReevaluateBeforeStartAndAfterClose(t *testing.T) {
	g := newIdleGateway(t, allowAll)
	g.Reevaluate("before start") // pending until Start; must not block
	g.Reevaluate("again")
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	g.Reevaluate("after close")
}

func TestSubscriptionRacingAReevaluationIsDecidedAgain(t *testing.T) {
	// mochi adds a subscription after OnSubscribe decided it. A pass that
	// runs in between does not see it; OnSubscribed decides it again.
	d := &tightener{next: allowAll}
	g := newIdleGateway(t, d)
	h := g.hook
	cl, s := g.addSession("a", nil, 5)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "x/#", Qos: 1}, {Filter: "y/#", Qos: 1}}}
	subscribe := func(between func()) []string {
		h.OnSubscribe(cl, pk)
		codes := make([]byte, len(pk.Filters))
		for i, f := range pk.Filters {
			if !h.OnACLCheck(cl, f.Filter, false) {
				codes[i] = packets.ErrNotAuthorized.Code
				continue
			}
			g.server.Topics.Subscribe(cl.ID, f)
			cl.State.Subscriptions.Add(f.Filter, f)
			codes[i] = 1
		}
		between()
		h.OnSubscribed(cl, pk, codes)
		return filters(cl)
	}
	denyX := func(in *policy.Input) bool { return in.Action == policy.ActionSubscribe && in.Filter == "x/#" }

	// Positive control: nothing in between, both stay.
	if got := subscribe(func() {}); len(got) != 2 {
		t.Fatalf("subscriptions %q, want both", got)
	}
	// A revision activated in between.
	got := subscribe(func() { d.deny(denyX); g.Reevaluate("racing revision") })
	if len(got) != 1 || got[0] != "y/#" {
		t.Fatalf("subscriptions %q after a racing revision, want y/# only", got)
	}
	// A registry change in between: a new subject.
	d.deny(nil)
	subscribe(func() {})
	got = subscribe(func() {
		d.deny(denyX)
		old := s.subject.Load()
		s.subject.Store(&policy.Subject{Identity: old.Identity, Device: old.Device, Client: old.Client})
	})
	if len(got) != 1 || got[0] != "y/#" {
		t.Fatalf("subscriptions %q after a racing subject change, want y/# only", got)
	}
}

func TestClosedRegistryCutsSessions(t *testing.T) {
	// A registry that cannot answer admits no one: every session is cut
	// and no CONNECT accepted, whatever the policy says.
	e := newEnv(t, allowAll)
	cfg := e.enroll("sensor-1", nil)
	c := e.mustConnect(cfg, "sensor-1")
	if code := c.publish(t, &paho.Publish{Topic: "t", QoS: 1}); code != 0 {
		t.Fatalf("positive control: PUBACK %#x", code)
	}
	if err := e.reg.Close(); err != nil {
		t.Fatal(err)
	}
	expectDisconnect(t, c, 0x87)
	if _, ack, err := e.connect(cfg, &paho.Connect{ClientID: "again", CleanStart: true}); err == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("CONNACK %+v, %v; want 0x87", ack, err)
	}
}
