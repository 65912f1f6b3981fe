package test

import (
	"testing"
)

// Attack class: wildcards, $SYS and shared subscriptions in any case. One
// SUBSCRIBE carries many filters; each denied one gets 0x87 in its own
// slot, the allowed one in the middle is granted QoS 1 and still delivers,
// and none of the denied filters delivers anything.
func TestWildcards_PerFilterReasonCodes(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)

	filters := []string{
		"#",
		"+/#",
		"devices/#",
		"devices/+/commands/#",
		"$SYS/#",
		"devices/sensor-1/commands/#", // allowed
		"$share/g/#",
		"$SHARE/g/devices/x/commands/#",
		"$Share/g/#",
		"$share/g/devices/+/commands/#",
		"$share/g/devices/sensor-2/commands/#",
		"$sHaRe/g/devices/sensor-2/commands/#",
		"$share/g/$SYS/#",
	}
	want := make([]byte, len(filters))
	for i, fl := range filters {
		want[i] = 0x87
		if fl == "devices/sensor-1/commands/#" {
			want[i] = 0x01
		}
	}
	got := dev.SubscribeCodes(t, filters...)
	for i := range filters {
		if got[i] != want[i] {
			t.Errorf("filter %q: reason %#x; want %#x", filters[i], got[i], want[i])
		}
	}

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	d2 := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	ctl.Pub(t, msg{Topic: "devices/x/commands/c", Payload: "x", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/c", Payload: "x", QoS: 1})
	d2.Pub(t, msg{Topic: "devices/sensor-2/telemetry/t", Payload: "x", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/c", Payload: "mine", QoS: 1})
	dev.Msgs.ExpectPayload(t, "devices/sensor-1/commands/c", "mine", wait)
	dev.Msgs.ExpectNone(t, quiet)
}

// Rule: a shared subscription is decided on its inner filter, so
// $share/g/devices/NAME/commands/# is allowed for device NAME and delivers.
func TestWildcards_SharedSubscriptionOnOwnCommands(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	dev.Sub(t, "$share/workers/devices/sensor-1/commands/#")
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/job", Payload: "run", QoS: 1})
	dev.Msgs.ExpectPayload(t, "devices/sensor-1/commands/job", "run", wait)
	dev.Msgs.ExpectNone(t, quiet)
}

// A controller's wildcards are bounded too: devices/+/telemetry/# and
// devices/+/state are granted, wider filters are not.
func TestWildcards_ControllerFilters(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	filters := []string{
		"devices/+/telemetry/#", // allowed
		"devices/+/state",       // allowed
		"devices/sensor-1/telemetry/temp",
		"#",
		"devices/#",
		"devices/+/+",
		"devices/+/commands/#",
		"+/+/telemetry/#",
		"$share/g/devices/#",
		"$SHARE/g/#",
	}
	got := ctl.SubscribeCodes(t, filters...)
	for i, fl := range filters {
		want := byte(0x87)
		if i < 3 {
			want = 0x01
		}
		if got[i] != want {
			t.Errorf("controller filter %q: reason %#x; want %#x", fl, got[i], want)
		}
	}
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/c", Payload: "x", QoS: 1})
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/temp", Payload: "21", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/temp", "21", wait)
	ctl.Msgs.ExpectNone(t, quiet)
}
