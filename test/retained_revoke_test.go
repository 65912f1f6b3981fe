package test

import (
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testutil"
)

// Attack class: a revoked device's retained messages outlive it, handed to
// every new subscriber, and nobody can clear them. Revoking sensor-1 clears
// its retained state; sensor-2's is still delivered (positive control); a
// suspension keeps it (it is temporary), and so does a gateway configured
// with clear_retained_on_revoke: false.
func TestRetained_ClearedOnRevocation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		action  string
		clear   bool // clear_retained_on_revoke
		cleared bool
	}{
		{"revoked", "revoke", true, true},
		{"suspended", "suspend", true, false},
		{"revoked, option off", "revoke", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := testutil.StartObserved(t, func(c *app.Config) { c.ClearRetainedOnRevoke = tc.clear }).Env
			s1 := env.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
			s2 := env.Enroll(t, "sensor-2", map[string]string{"role": "sensor"})
			ctlDev := env.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"})

			d1 := env.MustConnect(t, s1, "sensor-1", nil)
			d2 := env.MustConnect(t, s2, "sensor-2", nil)
			d1.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "s1 up", QoS: 1, Retain: true})
			d2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "s2 up", QoS: 1, Retain: true})
			d1.Close() // offline when it is cut
			// A live session of sensor-1 only to see the change applied:
			// the gateway clears retained messages before it cuts sessions.
			probe := env.MustConnect(t, s1, "sensor-1-probe", nil)

			env.SetStatus(t, "sensor-1", tc.action)
			probe.WaitClosed(t, wait)
			ctl := subscribeStates(t, env, ctlDev, d2)
			if tc.cleared {
				ctl.Msgs.Never(t, "devices/sensor-1/state")
			} else {
				ctl.Msgs.ExpectPayload(t, "devices/sensor-1/state", "s1 up", wait)
			}
		})
	}
}

// The retained admin routes on a real gateway: the list names each retained
// message's publisher and never carries its payload; a delete clears the
// message for new subscribers, and the other device's stays (the control).
func TestRetained_AdminListAndDelete(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	s1 := env.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
	s2 := env.Enroll(t, "sensor-2", map[string]string{"role": "sensor"})
	ctlDev := env.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"})

	d1 := env.MustConnect(t, s1, "sensor-1", nil)
	d2 := env.MustConnect(t, s2, "sensor-2", nil)
	d1.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "secret-firmware-claim", QoS: 1, Retain: true})
	d2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "s2 up", QoS: 1, Retain: true})

	res := env.API(t, env.Admin, "GET", "/v1/retained?filter=devices/%2B/state", nil)
	if res.Status != 200 {
		t.Fatalf("GET /v1/retained: %d %s", res.Status, res.Body)
	}
	if strings.Contains(string(res.Body), "secret-firmware-claim") {
		t.Fatalf("the retained list carries a payload: %s", res.Body)
	}
	var list struct {
		Messages []struct {
			Topic    string `json:"topic"`
			SpiffeID string `json:"spiffe_id"`
		} `json:"messages"`
	}
	res.Decode(t, &list)
	got := map[string]string{}
	for _, m := range list.Messages {
		got[m.Topic] = m.SpiffeID
	}
	if got["devices/sensor-1/state"] != env.DeviceID("sensor-1") || got["devices/sensor-2/state"] != env.DeviceID("sensor-2") {
		t.Fatalf("retained list %s; want both states with their publishers", res.Body)
	}

	if res := env.API(t, env.Admin, "DELETE", "/v1/retained?topic=devices/sensor-1/state", nil); res.Status != 204 {
		t.Fatalf("DELETE /v1/retained: %d %s; want 204", res.Status, res.Body)
	}
	if res := env.API(t, env.Admin, "DELETE", "/v1/retained?topic=devices/sensor-1/state", nil); res.Status != 404 {
		t.Fatalf("second DELETE: %d %s; want 404", res.Status, res.Body)
	}
	// A device may not clear retained messages (not an admin).
	if res := env.API(t, s2, "DELETE", "/v1/retained?topic=devices/sensor-2/state", nil); res.Status != 403 {
		t.Fatalf("DELETE by a device: %d %s; want 403", res.Status, res.Body)
	}

	ctl := subscribeStates(t, env, ctlDev, d2)
	ctl.Msgs.Never(t, "devices/sensor-1/state")
}

// subscribeStates connects ctlDev, subscribes it to every device's state and
// waits until the retained messages are in: sensor-2's retained "s2 up" (the
// positive control), then a live "barrier" that sensor2 publishes. mochi
// queues the retained messages after the SUBACK, on the subscriber's
// goroutine: once the controller's next PUBLISH is acknowledged, they are
// ahead of the barrier, so a retained message not seen by then never comes.
func subscribeStates(t *testing.T, env *testutil.Env, ctlDev *testutil.Device, sensor2 *testutil.Client) *testutil.Client {
	t.Helper()
	ctl := env.MustConnect(t, ctlDev, "ctl", nil)
	ctl.Sub(t, "devices/+/state")
	ctl.Pub(t, msg{Topic: "devices/sensor-9/commands/sync", Payload: "s", QoS: 1})
	sensor2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "barrier", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-2/state", "s2 up", wait)
	ctl.Msgs.ExpectPayload(t, "devices/sensor-2/state", "barrier", wait)
	return ctl
}
