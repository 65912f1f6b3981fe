package test

import (
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
)

var persistent = &testutil.ConnOpts{Persistent: true, SessionExpiry: 300}

// Attack class (mochi #504): a CONNECT with another identity's client ID
// inherits that session's subscriptions and queued messages. Device A
// leaves a persistent session with a subscription and a queued QoS 1
// command; device B connects with A's client ID and Clean Start 0: it gets
// no session, none of A's messages, and A's session survives: A reconnects
// and receives the queued command (positive control).
func TestTakeover_OtherIdentityGetsNothingOfTheSession(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	const shared = "shared-client-id"

	a := f.env.MustConnect(t, f.s1, shared, persistent)
	a.Sub(t, "devices/sensor-1/commands/#")
	a.Close()

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/queued", Payload: "for sensor-1 only", QoS: 1})

	b := f.env.MustConnect(t, f.s2, shared, persistent)
	if b.Connack.SessionPresent {
		t.Fatal("sensor-2 connecting with sensor-1's client ID got Session Present 1; want a new session")
	}
	// B's own session works (positive control on B's connection).
	b.Sub(t, "devices/sensor-2/commands/#")
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/live", Payload: "for sensor-1 only", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/mine", Payload: "for sensor-2", QoS: 1})
	b.Msgs.ExpectPayload(t, "devices/sensor-2/commands/mine", "for sensor-2", wait)
	b.Msgs.ExpectNone(t, quiet)
	b.Close()

	a2 := f.env.MustConnect(t, f.s1, shared, persistent)
	if !a2.Connack.SessionPresent {
		t.Fatal("sensor-1 reconnecting got Session Present 0; its persistent session was lost")
	}
	a2.Msgs.ExpectPayload(t, "devices/sensor-1/commands/queued", "for sensor-1 only", wait)
	a2.Msgs.ExpectPayload(t, "devices/sensor-1/commands/live", "for sensor-1 only", wait)
	a2.Msgs.ExpectNone(t, quiet)
}

// Two identities connected at the same time with the same client ID do not
// kick each other: each keeps its connection and its own deliveries.
func TestTakeover_SameClientIDConcurrentIdentities(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	const shared = "same-id"

	a := f.env.MustConnect(t, f.s1, shared, nil)
	a.Sub(t, "devices/sensor-1/commands/#")
	b := f.env.MustConnect(t, f.s2, shared, nil)
	b.Sub(t, "devices/sensor-2/commands/#")

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/x", Payload: "a", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/x", Payload: "b", QoS: 1})
	a.Msgs.ExpectPayload(t, "devices/sensor-1/commands/x", "a", wait)
	b.Msgs.ExpectPayload(t, "devices/sensor-2/commands/x", "b", wait)
	if a.Closed() || b.Closed() {
		t.Fatalf("a connection was dropped: sensor-1 closed=%v, sensor-2 closed=%v", a.Closed(), b.Closed())
	}
	a.Msgs.ExpectNone(t, quiet)
	b.Msgs.ExpectNone(t, quiet)

	// Positive control for the check above: the same identity reusing its
	// own client ID does take its session over, as MQTT requires.
	a2 := f.env.MustConnect(t, f.s1, shared, nil)
	a.WaitClosed(t, wait)
	if b.Closed() {
		t.Fatal("sensor-1 reconnecting dropped sensor-2's connection")
	}
	a2.Close()
}
