package test

import (
	"net/http"
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
)

// reasonAdministrativeAction is the MQTT 5 DISCONNECT reason of a kick.
const reasonAdministrativeAction = 0x98

// day2Session is the part of a GET /v1/sessions entry these tests read.
type day2Session struct {
	ClientID      string `json:"client_id"`
	Device        string `json:"device"`
	Subscriptions []struct {
		Filter string `json:"filter"`
		QoS    byte   `json:"qos"`
	} `json:"subscriptions"`
	QueueDepth *int `json:"queue_depth"`
}

// sessionsOf lists the live sessions of device through the API.
func sessionsOf(t *testing.T, e *testutil.Env, device string) []day2Session {
	t.Helper()
	res := e.API(t, e.Admin, http.MethodGet, "/v1/sessions?device="+device, nil)
	if res.Status != http.StatusOK {
		t.Fatalf("sessions of %s: %d %s", device, res.Status, res.Body)
	}
	var out []day2Session
	res.DecodeJSON(t, &out)
	return out
}

// Rule: deleting a device through the API ends its live sessions (the
// identity is no longer enrolled, so it cannot come back either), and
// leaves every other device connected and served (positive control).
func TestDay2_DeleteEndsSessions(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	a := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	a.Sub(t, "devices/sensor-1/commands/#")
	b := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	b.Sub(t, "devices/sensor-2/commands/#")
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)

	res := f.env.API(t, f.env.Admin, http.MethodDelete, "/v1/devices/sensor-1", nil)
	if res.Status != http.StatusOK {
		t.Fatalf("delete: %d %s", res.Status, res.Body)
	}
	var dev struct {
		Name     string `json:"name"`
		SPIFFEID string `json:"spiffe_id"`
	}
	res.DecodeJSON(t, &dev)
	if dev.Name != "sensor-1" || dev.SPIFFEID != f.s1.ID {
		t.Fatalf("deleted device %+v, want sensor-1 %s", dev, f.s1.ID)
	}
	if d := a.WaitDisconnect(t, wait); d.ReasonCode != testutil.ReasonNotAuthorized {
		t.Errorf("DISCONNECT reason %#x, want %#x", d.ReasonCode, testutil.ReasonNotAuthorized)
	}
	f.env.RequireRefused(t, f.s1, "sensor-1", nil, testutil.ReasonNotAuthorized)
	if r := f.env.API(t, f.env.Admin, http.MethodGet, "/v1/devices/sensor-1", nil); r.Status != http.StatusNotFound {
		t.Errorf("get after delete: %d %s, want 404", r.Status, r.Body)
	}
	if r := f.env.API(t, f.env.Admin, http.MethodDelete, "/v1/devices/sensor-1", nil); r.Status != http.StatusNotFound {
		t.Errorf("second delete: %d %s, want 404", r.Status, r.Body)
	}

	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/after", Payload: "y", QoS: 1})
	b.Msgs.ExpectPayload(t, "devices/sensor-2/commands/after", "y", wait)
	if b.Closed() {
		t.Fatal("deleting sensor-1 cut sensor-2")
	}
}

// Rule: a kick ends every live session of the device, MQTT 5 clients
// hearing DISCONNECT 0x98, without suspending it: the device reconnects at
// once and resumes its persistent session (positive control), and other
// devices are not touched.
func TestDay2_KickEndsSessionsNotDevice(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	a1 := f.env.MustConnect(t, f.s1, "sensor-1-a", nil)
	a2 := f.env.MustConnect(t, f.s1, "sensor-1-b", &testutil.ConnOpts{Persistent: true})
	a2.Sub(t, "devices/sensor-1/commands/#")
	b := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	b.Sub(t, "devices/sensor-2/commands/#")
	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)

	if n := len(sessionsOf(t, f.env, "sensor-1")); n != 2 {
		t.Fatalf("sensor-1 has %d sessions before the kick, want 2", n)
	}
	res := f.env.API(t, f.env.Admin, http.MethodDelete, "/v1/devices/sensor-1/sessions", nil)
	if res.Status != http.StatusOK {
		t.Fatalf("kick: %d %s", res.Status, res.Body)
	}
	var kick struct {
		Device string `json:"device"`
		Kicked int    `json:"kicked"`
	}
	res.DecodeJSON(t, &kick)
	if kick.Device != "sensor-1" || kick.Kicked != 2 {
		t.Fatalf("kick answered %+v, want sensor-1 kicked 2", kick)
	}
	for _, c := range []*testutil.Client{a1, a2} {
		if d := c.WaitDisconnect(t, wait); d.ReasonCode != reasonAdministrativeAction {
			t.Errorf("DISCONNECT reason %#x, want %#x", d.ReasonCode, reasonAdministrativeAction)
		}
	}

	// Not suspended: still active, and back in at once with its session.
	var dev struct {
		Status string `json:"status"`
	}
	f.env.API(t, f.env.Admin, http.MethodGet, "/v1/devices/sensor-1", nil).DecodeJSON(t, &dev)
	if dev.Status != "active" {
		t.Fatalf("status after kick %q, want active", dev.Status)
	}
	a2 = f.env.MustConnect(t, f.s1, "sensor-1-b", &testutil.ConnOpts{Persistent: true})
	if !a2.Connack.SessionPresent {
		t.Error("the persistent session did not survive the kick")
	}
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/back", Payload: "x", QoS: 1})
	a2.Msgs.ExpectPayload(t, "devices/sensor-1/commands/back", "x", wait)

	// The other device was not touched.
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/c", Payload: "y", QoS: 1})
	b.Msgs.ExpectPayload(t, "devices/sensor-2/commands/c", "y", wait)
	if b.Closed() {
		t.Fatal("kicking sensor-1 cut sensor-2")
	}

	// A device with no session: 0, and an unknown one: 404.
	res = f.env.API(t, f.env.Admin, http.MethodDelete, "/v1/devices/spy/sessions", nil)
	res.DecodeJSON(t, &kick)
	if res.Status != http.StatusOK || kick.Kicked != 0 {
		t.Errorf("kick of an idle device: %d %s, want 200 kicked 0", res.Status, res.Body)
	}
	if r := f.env.API(t, f.env.Admin, http.MethodDelete, "/v1/devices/nope/sessions", nil); r.Status != http.StatusNotFound {
		t.Errorf("kick of an unknown device: %d %s, want 404", r.Status, r.Body)
	}
}

// Rule: the session list shows each session's subscriptions and queue
// depth, and ?device= narrows it to one device.
func TestDay2_SessionsShowSubscriptions(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	a := f.env.MustConnect(t, f.s1, "sensor-1", nil)
	a.Sub(t, "devices/sensor-1/commands/#")
	f.env.MustConnect(t, f.s2, "sensor-2", nil)

	got := sessionsOf(t, f.env, "sensor-1")
	if len(got) != 1 || got[0].ClientID != "sensor-1" || got[0].Device != "sensor-1" {
		t.Fatalf("sessions of sensor-1: %+v", got)
	}
	s := got[0]
	if len(s.Subscriptions) != 1 || s.Subscriptions[0].Filter != "devices/sensor-1/commands/#" || s.Subscriptions[0].QoS != 1 {
		t.Errorf("subscriptions %+v, want devices/sensor-1/commands/# at QoS 1", s.Subscriptions)
	}
	if s.QueueDepth == nil || *s.QueueDepth != 0 {
		t.Errorf("queue_depth %v, want 0", s.QueueDepth)
	}
	// Positive control: the other device is listed under its own name.
	if got := sessionsOf(t, f.env, "sensor-2"); len(got) != 1 || got[0].ClientID != "sensor-2" || got[0].Subscriptions == nil {
		t.Errorf("sessions of sensor-2: %+v, want one with an empty subscription list", got)
	}
}
