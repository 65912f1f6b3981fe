package test

import (
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
)

// Rule: revoking a device through the API cuts every live session of that
// identity at once and refuses reconnects with 0x87, while other devices
// stay connected and keep receiving (positive control).
func TestRevoke_CutsLiveSessions(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	a1 := f.env.MustConnect(t, f.s1, "sensor-1-a", nil)
	a1.Sub(t, "devices/sensor-1/commands/#")
	a2 := f.env.MustConnect(t, f.s1, "sensor-1-b", &testutil.ConnOpts{Persistent: true})
	b := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	b.Sub(t, "devices/sensor-2/commands/#")
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/before", Payload: "x", QoS: 1})
	a1.Msgs.Expect(t, "devices/sensor-1/commands/before", wait)

	f.env.SetStatus(t, "sensor-1", "revoke")
	for _, c := range []*testutil.Client{a1, a2} {
		if d := c.WaitClosed(t, wait); d != nil {
			t.Logf("server DISCONNECT reason %#x", d.ReasonCode)
		}
	}
	f.env.RequireRefused(t, f.s1, "sensor-1-a", nil, testutil.ReasonNotAuthorized)
	f.env.RequireRefused(t, f.s1, "sensor-1-b", &testutil.ConnOpts{Persistent: true}, testutil.ReasonNotAuthorized)

	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/after", Payload: "y", QoS: 1})
	b.Msgs.ExpectPayload(t, "devices/sensor-2/commands/after", "y", wait)
	if b.Closed() {
		t.Fatal("revoking sensor-1 cut sensor-2")
	}

	// Revocation is final: the API refuses to resume, and the device stays out.
	res := f.env.API(t, f.env.Admin, "POST", "/v1/devices/sensor-1/resume", nil)
	if res.Status < 400 || res.Status >= 500 {
		t.Errorf("resume of a revoked device: %d %s; want a 4xx", res.Status, res.Body)
	} else {
		res.ErrorMessage(t)
	}
	f.env.RequireRefused(t, f.s1, "sensor-1-a", nil, testutil.ReasonNotAuthorized)
}

// Rule: suspending cuts the live session and refuses reconnects; resuming
// lets the same SVID connect again and be served (positive control).
func TestRevoke_SuspendThenResume(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	d := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	f.env.SetStatus(t, "sensor-1", "suspend")
	d.WaitClosed(t, wait)
	f.env.RequireRefused(t, f.s1, "sensor-1", nil, testutil.ReasonNotAuthorized)

	f.env.SetStatus(t, "sensor-1", "resume")
	d = f.env.MustConnect(t, f.s1, "sensor-1", nil)
	d.Sub(t, "devices/sensor-1/commands/#")
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/welcome-back", Payload: "x", QoS: 1})
	d.Msgs.Expect(t, "devices/sensor-1/commands/welcome-back", wait)
}

// Rule: suspending a controller cuts it the same way: an identity is cut
// whatever its role.
func TestRevoke_SuspendedControllerCut(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/telemetry/#")
	dev := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/t", Payload: "1", QoS: 1})
	ctl.Msgs.Expect(t, "devices/sensor-1/telemetry/t", wait)

	f.env.SetStatus(t, "ctl", "suspend")
	ctl.WaitClosed(t, wait)
	f.env.RequireRefused(t, f.ctl, "ctl", nil, testutil.ReasonNotAuthorized)
}
