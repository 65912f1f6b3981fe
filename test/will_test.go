package test

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/internal/testutil"
)

func will(topic, payload string) *testutil.ConnOpts {
	return &testutil.ConnOpts{Will: &paho.WillMessage{Topic: topic, Payload: []byte(payload), QoS: 1}}
}

// Attack class (mochi #503): a Last Will is a publish nobody checks. The
// will topic is authorized at CONNECT: a forbidden one refuses the CONNECT
// with 0x87; devices/NAME/state (the only will topic a device has) is the
// positive control.
func TestWill_ForbiddenTopicRefusesConnect(t *testing.T) {
	t.Parallel()
	f := newFleet(t)

	ok := f.env.MustConnect(t, f.s1, "sensor-1-ok", will("devices/sensor-1/state", "offline"))
	ok.Close()
	retained := will("devices/sensor-1/state", "offline")
	retained.Will.Retain = true
	f.env.MustConnect(t, f.s1, "sensor-1-retained", retained).Close()

	for _, c := range []struct {
		who   *testutil.Device
		topic string
	}{
		{f.s1, "devices/sensor-2/state"},
		{f.s1, "devices/sensor-2/commands/reboot"},
		{f.s1, "devices/sensor-1/commands/reboot"},
		{f.s1, "devices/sensor-1/telemetry/last"}, // telemetry is not a will topic
		{f.s1, "devices/sensor-1/state/x"},
		{f.s1, "other/topic"},
		{f.s1, "$SYS/broker/version"},
		{f.ctl, "devices/sensor-1/commands/reboot"}, // controllers have no will topic
		{f.ctl, "devices/sensor-1/state"},
	} {
		err := f.env.RequireRefused(t, c.who, "will-test", will(c.topic, "forged"), testutil.ReasonNotAuthorized)
		t.Logf("%s with will on %s: %v", c.who.ID, c.topic, err)
	}
}

// Rule: an allowed will (devices/NAME/state) is delivered when the device
// drops off the network without DISCONNECT, and not after a normal
// DISCONNECT.
func TestWill_AllowedWillDeliveredOnAbruptDisconnect(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/state")

	graceful := f.env.MustConnect(t, f.s1, "sensor-1", will("devices/sensor-1/state", "graceful"))
	graceful.Close()

	dev := f.env.MustConnect(t, f.s1, "sensor-1", will("devices/sensor-1/state", "lost"))
	dev.Kill()
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/state", "lost", wait)
	ctl.Msgs.ExpectNone(t, quiet)
}

// Attack class: a will authorized at CONNECT must be authorized again when
// it would be sent. The device is suspended or revoked while connected:
// the gateway cuts it, and its will is not published; a second device's
// will, sent afterwards the same way, is the positive control.
func TestWill_NotSentWhenDeniedAtSendTime(t *testing.T) {
	t.Parallel()
	for _, action := range []string{"suspend", "revoke"} {
		t.Run(action, func(t *testing.T) {
			t.Parallel()
			f := newFleet(t)
			ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
			ctl.Sub(t, "devices/+/state")
			d1 := f.env.MustConnect(t, f.s1, "sensor-1", will("devices/sensor-1/state", "s1-will"))
			d2 := f.env.MustConnect(t, f.s2, "sensor-2", will("devices/sensor-2/state", "s2-will"))

			f.env.SetStatus(t, "sensor-1", action)
			d1.WaitClosed(t, wait)

			d2.Kill()
			ctl.Msgs.ExpectPayload(t, "devices/sensor-2/state", "s2-will", wait)
			ctl.Msgs.ExpectNone(t, quiet)
		})
	}
}

// Attack class: with a Will Delay Interval the will is sent some time after
// the connection is gone. A device suspended during that delay must not
// have its will published; a device that stays active, dropped at the same
// moment with the same delay, is the positive control.
func TestWill_DelayedWillRecheckedAtSendTime(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/state")

	delayed := func(topic, payload string) *testutil.ConnOpts {
		o := will(topic, payload)
		o.Persistent, o.SessionExpiry, o.WillDelay = true, 60, 2
		return o
	}
	d1 := f.env.MustConnect(t, f.s1, "sensor-1", delayed("devices/sensor-1/state", "s1-will"))
	d2 := f.env.MustConnect(t, f.s2, "sensor-2", delayed("devices/sensor-2/state", "s2-will"))
	d1.Kill()
	d2.Kill()
	f.env.SetStatus(t, "sensor-1", "suspend")

	ctl.Msgs.ExpectPayload(t, "devices/sensor-2/state", "s2-will", wait)
	ctl.Msgs.ExpectNone(t, quiet)
}
