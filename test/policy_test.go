package test

import (
	"fmt"
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
)

// Rule: a device publishes devices/NAME/telemetry/# and a controller
// subscribed to devices/+/telemetry/# receives it, at QoS 0 and 1.
func TestDefaultPolicy_TelemetryReachesController(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/telemetry/#")
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)

	for _, m := range []msg{
		{Topic: "devices/sensor-1/telemetry/temp", Payload: "21.5", QoS: 0},
		{Topic: "devices/sensor-1/telemetry/env/humidity", Payload: "40", QoS: 1},
		{Topic: "devices/sensor-1/telemetry", Payload: "parent level", QoS: 1},
	} {
		dev.Pub(t, m)
		ctl.Msgs.ExpectPayload(t, m.Topic, m.Payload, wait)
	}
	ctl.Msgs.ExpectNone(t, quiet)
}

// Rule: devices/NAME/state may be retained; a controller subscribing later
// to devices/+/state receives the retained state, and live state changes.
func TestDefaultPolicy_StateRetainedForController(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	spy := f.spyOn(t)
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	dev.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "online", QoS: 1, Retain: true})
	// The live copy has been fanned out once the spy has it; a later
	// subscriber can then only get the retained copy.
	spy.Msgs.Expect(t, "devices/sensor-1/state", wait)

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/state")
	m := ctl.Msgs.ExpectPayload(t, "devices/sensor-1/state", "online", wait)
	if !m.Retain {
		t.Fatal("state delivered on subscribe without the retain flag; want a retained message")
	}

	dev2 := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	dev2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "busy", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-2/state", "busy", wait)
	ctl.Msgs.ExpectNone(t, quiet)
}

// Rule: telemetry is never retained (PUBACK 0x87 and nothing stored), and
// neither are controller commands; retained state is the positive control
// in the same SUBSCRIBE.
func TestDefaultPolicy_RetainRefusedOnTelemetryAndCommands(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)

	dev.PubDenied(t, msg{Topic: "devices/sensor-1/telemetry/temp", Payload: "retained-telemetry", Retain: true})
	ctl.PubDenied(t, msg{Topic: "devices/sensor-1/commands/reboot", Payload: "retained-command", Retain: true})
	spy := f.spyOn(t)
	dev.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "online", QoS: 1, Retain: true})
	spy.Msgs.Expect(t, "devices/sensor-1/state", wait) // live fan-out done

	// Subscribers arriving later get the retained state and nothing else.
	ctl2 := f.env.MustConnect(t, f.ctl, "ctl-late", nil)
	ctl2.Sub(t, "devices/+/telemetry/#", "devices/+/state")
	ctl2.Msgs.ExpectPayload(t, "devices/sensor-1/state", "online", wait)

	dev2 := f.env.MustConnect(t, f.s1, "sensor-1-late", nil)
	dev2.Sub(t, "devices/sensor-1/commands/#")
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/ping", Payload: "live", QoS: 1})
	dev2.Msgs.ExpectPayload(t, "devices/sensor-1/commands/ping", "live", wait)

	ctl2.Msgs.ExpectNone(t, quiet)
	dev2.Msgs.ExpectNone(t, quiet)
}

// Rule: a controller publishes devices/+/commands/#; each device receives
// its own commands and only those.
func TestDefaultPolicy_CommandsReachOnlyTheirDevice(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	d1 := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	d1.Sub(t, "devices/sensor-1/commands/#")
	d2 := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	d2.Sub(t, "devices/sensor-2/commands/#")
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)

	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/reboot", Payload: "now", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/set/interval", Payload: "60", QoS: 0})
	d1.Msgs.ExpectPayload(t, "devices/sensor-1/commands/reboot", "now", wait)
	d2.Msgs.ExpectPayload(t, "devices/sensor-2/commands/set/interval", "60", wait)
	d1.Msgs.ExpectNone(t, quiet)
	d2.Msgs.ExpectNone(t, quiet)
}

// Rule: a device may publish only its own telemetry and state. Each refused
// PUBLISH gets PUBACK 0x87 and reaches no one, not even a subscriber to
// "#" allowed to read everything; an allowed publish after each one is the
// positive control.
func TestDefaultPolicy_DevicePublishRefused(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	spy := f.spyOn(t)
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)

	forbidden := []string{
		"devices/sensor-2/telemetry/temp",  // another device's telemetry
		"devices/sensor-2/state",           // another device's state
		"devices/sensor-2/commands/reboot", // another device's commands
		"devices/sensor-1/commands/reboot", // its own commands: controllers only
		"devices/sensor-1/state/extra",     // below state
		"devices/sensor-1/statex",          // prefix of state
		"devices/sensor-1/config",          // not a granted subtree
		"devices/sensor-1",                 // the device level itself
		"devices/sensor-10/telemetry/temp", // a name that starts with its own
		"devices/sensor-/telemetry/temp",   // a prefix of its own name
		"Devices/sensor-1/telemetry/temp",  // topics are case-sensitive
		"/devices/sensor-1/telemetry/temp", // leading empty level
		"devices//telemetry/temp",          // empty name level
		"sensor-1/telemetry/temp",          // outside the devices namespace
		"other/topic",
	}
	for i, topic := range forbidden {
		for _, qos := range []byte{0, 1} {
			if qos == 1 {
				dev.PubDenied(t, msg{Topic: topic, Payload: "forbidden"})
			} else if r := dev.Send(t, msg{Topic: topic, Payload: "forbidden"}); r.Err != nil {
				t.Fatalf("QoS 0 publish to %q: %v", topic, r.Err)
			}
			control := fmt.Sprintf("devices/sensor-1/telemetry/control-%d-%d", i, qos)
			dev.Pub(t, msg{Topic: control, Payload: "ok", QoS: 1})
			spy.Msgs.Expect(t, control, wait)
		}
	}

	// $SYS topics: mochi drops a client's PUBLISH to them before any hook
	// runs, without a PUBACK; what matters is that nothing is accepted or
	// delivered.
	for _, qos := range []byte{0, 1} {
		r := dev.SendWithin(t, msg{Topic: "$SYS/broker/clients/connected", Payload: "forged", QoS: qos}, quiet)
		if qos == 1 && r.Err == nil && r.Reason < 0x80 {
			t.Errorf("QoS 1 PUBLISH to $SYS accepted (PUBACK %#x)", r.Reason)
		}
		t.Logf("QoS %d PUBLISH to $SYS: reason %#x, err %v", qos, r.Reason, r.Err)
	}
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/control-sys", Payload: "ok", QoS: 1})
	spy.Msgs.Expect(t, "devices/sensor-1/telemetry/control-sys", wait)
	spy.Msgs.ExpectNone(t, quiet)
}

// Rule: a controller may publish commands only; it cannot forge telemetry
// or state for a device.
func TestDefaultPolicy_ControllerCannotForgeDeviceData(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	spy := f.spyOn(t)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	for i, topic := range []string{
		"devices/sensor-1/telemetry/temp",
		"devices/sensor-1/state",
		"devices/sensor-1/config",
		"other/topic",
	} {
		ctl.PubDenied(t, msg{Topic: topic, Payload: "forged"})
		control := fmt.Sprintf("devices/sensor-1/commands/control-%d", i)
		ctl.Pub(t, msg{Topic: control, Payload: "ok", QoS: 1})
		spy.Msgs.Expect(t, control, wait)
	}
	spy.Msgs.ExpectNone(t, quiet)
}

// Rule: a device may subscribe only within devices/NAME/commands/#. Every
// other filter gets 0x87 in its own slot of the SUBACK while the allowed
// filter sent in the same SUBSCRIBE is granted, and traffic on the denied
// filters never reaches the device.
func TestDefaultPolicy_DeviceSubscribeRefused(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	const own = "devices/sensor-1/commands/#"

	for _, filter := range []string{
		"#", "+/#", "+", "devices/#", "devices/+",
		"devices/+/telemetry/#", "devices/+/state", "devices/+/commands/#",
		"devices/sensor-2/commands/#", "devices/sensor-2/#",
		"devices/sensor-1/#", "devices/sensor-1/+", "devices/sensor-1/telemetry/#",
		"devices/sensor-1/state", "devices/+/commands/reboot",
		"$SYS/#", "$SYS/broker/clients/connected",
	} {
		codes := dev.SubscribeCodes(t, filter, own)
		if codes[0] != 0x87 || codes[1] != 0x01 {
			t.Errorf("SUBSCRIBE [%q, %q]: reason codes %#x; want [0x87 0x01]", filter, own, codes)
		}
	}

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	d2 := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	d2.Pub(t, msg{Topic: "devices/sensor-2/telemetry/temp", Payload: "x", QoS: 1})
	d2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "x", QoS: 1, Retain: true})
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/reboot", Payload: "x", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/reboot", Payload: "mine", QoS: 1})
	dev.Msgs.ExpectPayload(t, "devices/sensor-1/commands/reboot", "mine", wait)
	dev.Msgs.ExpectNone(t, quiet)
}

// Rule: no $SYS for anyone. The gateway refuses $SYS filters before any
// policy is asked, so even the spy, whose policy would allow any filter,
// gets 0x87; a device and a controller get 0x87 per $SYS filter while the
// allowed filter of the same SUBSCRIBE is granted and delivers.
func TestDefaultPolicy_NoSys(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	spy := f.env.MustConnect(t, f.spy, "spy", nil)
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	sys := []string{"$SYS/#", "$SYS/broker/version", "$SYS/+/version", "$share/g/$SYS/#"}
	for _, c := range []struct {
		name   string
		client *testutil.Client
		allow  string
	}{
		{"device", dev, "devices/sensor-1/commands/#"},
		{"controller", ctl, "devices/+/telemetry/#"},
		{"spy", spy, "devices/sensor-1/telemetry/#"},
	} {
		codes := c.client.SubscribeCodes(t, append(sys, c.allow)...)
		for i, f := range sys {
			if codes[i] != 0x87 {
				t.Errorf("%s: SUBSCRIBE %s: %#x; want 0x87", c.name, f, codes[i])
			}
		}
		if codes[len(sys)] != 0x01 {
			t.Errorf("%s: SUBSCRIBE %s: %#x; want 0x01", c.name, c.allow, codes[len(sys)])
		}
	}
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/ping", Payload: "1", QoS: 1})
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/ping", Payload: "2", QoS: 1})
	dev.Msgs.Expect(t, "devices/sensor-1/commands/ping", wait)
	ctl.Msgs.Expect(t, "devices/sensor-1/telemetry/ping", wait)
	spy.Msgs.Expect(t, "devices/sensor-1/telemetry/ping", wait)
	dev.Msgs.ExpectNone(t, quiet)
	ctl.Msgs.ExpectNone(t, quiet)
	spy.Msgs.ExpectNone(t, quiet)
}
