package test

import (
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
)

// auditorPolicy splits subscribe from receive: an identity labelled
// role=auditor may subscribe to devices/+/state but receive the state of
// sensor-1 only. Whatever a subscription matches, every delivery must pass
// its own receive decision.
const auditorPolicy = `package ztgate.authz

allow if {
	input.device.labels.role == "auditor"
	input.device.status == "active"
	input.action == "subscribe"
	mqtt.filter_within("devices/+/state", input.filter)
}

allow if {
	input.device.labels.role == "auditor"
	input.device.status == "active"
	input.action == "receive"
	input.topic == "devices/sensor-1/state"
}
`

// Attack class (CVE-2021-34434 class): retained messages are handed out at
// SUBSCRIBE time; each must pass the receive decision, not just the
// subscription filter. The auditor's filter covers both devices' retained
// state but it may read sensor-1's only (positive control).
func TestRetained_ReceiveCheckedOnRetainedDelivery(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testutil.WithExtraPolicy("zz_auditor.rego", auditorPolicy))
	aud := f.env.EnrollID(t, "auditor", "spiffe://example.org/observer/auditor", map[string]string{"role": "auditor"})

	spy := f.spyOn(t)
	d1 := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	d2 := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	d2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "secret", QoS: 1, Retain: true})
	d1.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "public", QoS: 1, Retain: true})
	// Once the spy has the live copies, later subscribers can only get the
	// retained ones.
	spy.Msgs.Expect(t, "devices/sensor-2/state", wait)
	spy.Msgs.Expect(t, "devices/sensor-1/state", wait)

	// The controller sees both, so both are really retained.
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/state")
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/state", "public", wait)
	ctl.Msgs.ExpectPayload(t, "devices/sensor-2/state", "secret", wait)

	a := f.env.MustConnect(t, aud, "auditor", nil)
	a.Sub(t, "devices/+/state")
	a.Msgs.ExpectPayload(t, "devices/sensor-1/state", "public", wait)
	// Live messages follow the same rule.
	d2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "secret-live", QoS: 1})
	d1.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "public-live", QoS: 1})
	a.Msgs.ExpectPayload(t, "devices/sensor-1/state", "public-live", wait)
	a.Msgs.ExpectNone(t, quiet)
}

// Attack class: a registry change takes effect for retained messages. A
// controller whose role label was removed no longer gets the retained
// state (SUBACK 0x87, nothing delivered); a controller that kept its label
// subscribing the same way is the positive control.
func TestRetained_RegistryChangeApplies(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	former := f.env.EnrollID(t, "ctl-former", "spiffe://example.org/controller/former", map[string]string{"role": "controller"})

	spy := f.spyOn(t)
	d1 := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	d1.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "v1", QoS: 1, Retain: true})
	spy.Msgs.Expect(t, "devices/sensor-1/state", wait) // live fan-out done
	f.env.SetLabels(t, "ctl-former", map[string]string{"role": "retired"})

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/state")
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/state", "v1", wait)

	c := f.env.MustConnect(t, former, "former", nil)
	codes := c.SubscribeCodes(t, "devices/+/state", "devices/sensor-1/state")
	if codes[0] != 0x87 || codes[1] != 0x87 {
		t.Errorf("former controller SUBSCRIBE: %#x; want [0x87 0x87]", codes)
	}
	c.Msgs.ExpectNone(t, quiet)
}

// Attack class (CVE-2018-12546 class): QoS 1 messages queued for an offline
// persistent session are delivered on reconnect only if the receiver may
// read them now. Two controllers leave persistent sessions subscribed to
// telemetry; a message is queued for both; one loses its role while
// offline. On reconnect the other gets the queued message (positive
// control), the demoted one gets nothing, neither queued nor live.
func TestQueued_NotDeliveredAfterPermissionLoss(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	demoted := f.env.EnrollID(t, "ctl-demoted", "spiffe://example.org/controller/demoted", map[string]string{"role": "controller"})
	p := &testutil.ConnOpts{Persistent: true, SessionExpiry: 300}

	for _, who := range []struct {
		dev *testutil.Device
		id  string
	}{{f.ctl, "ctl"}, {demoted, "demoted"}} {
		c := f.env.MustConnect(t, who.dev, who.id, p)
		c.Sub(t, "devices/+/telemetry/#")
		c.Close()
	}

	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/queued", Payload: "q", QoS: 1})
	f.env.SetLabels(t, "ctl-demoted", map[string]string{"role": "sensor"})

	ctl := f.env.MustConnect(t, f.ctl, "ctl", p)
	if !ctl.Connack.SessionPresent {
		t.Fatal("controller's persistent session was lost")
	}
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/queued", "q", wait)

	dem := f.env.MustConnect(t, demoted, "demoted", p)
	t.Logf("demoted controller: session present %v", dem.Connack.SessionPresent)
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/live", Payload: "l", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/live", "l", wait)
	dem.Msgs.ExpectNone(t, quiet)
	ctl.Msgs.ExpectNone(t, quiet)
}

// Control for the test above: with no change of permission, a message
// queued for an offline persistent session is delivered on reconnect, even
// across a suspend and resume of the receiver.
func TestQueued_DeliveredWhenStillAllowed(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	p := &testutil.ConnOpts{Persistent: true, SessionExpiry: 300}
	d := f.env.MustConnect(t, f.s1, "sensor-1", p)
	d.Sub(t, "devices/sensor-1/commands/#")
	d.Close()

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/queued", Payload: "q", QoS: 1})
	f.env.SetStatus(t, "sensor-1", "suspend")
	f.env.SetStatus(t, "sensor-1", "resume")

	d2 := f.env.MustConnect(t, f.s1, "sensor-1", p)
	if !d2.Connack.SessionPresent {
		t.Fatal("persistent session lost")
	}
	d2.Msgs.ExpectPayload(t, "devices/sensor-1/commands/queued", "q", wait)
	d2.Msgs.ExpectNone(t, quiet)
}
