package test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testutil"
)

// Attack class: a share-group member whose device is cut keeps its
// persistent session, and mochi routes the group's messages to it, where
// the receive check drops them: a message published to a group with an
// allowed member connected is lost. Two controllers with persistent
// sessions share $share/g/devices/+/telemetry/#; one is suspended (or
// revoked, or suspended and resumed without reconnecting); every one of 40
// QoS 1 messages from a sensor must reach the live member. Positive
// control: before the cut, the two members share the messages.
func TestShared_CutMemberLosesNothing(t *testing.T) {
	t.Parallel()
	const batch = 40
	for _, tc := range []struct {
		name    string
		actions []string
	}{
		{"suspended", []string{"suspend"}},
		{"revoked", []string{"revoke"}},
		{"suspended-then-resumed", []string{"suspend", "resume"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFleet(t)
			ctl2 := f.env.EnrollID(t, "ctl-2", "spiffe://example.org/controller/ctl-2", map[string]string{"role": "controller"})
			persistent := &testutil.ConnOpts{Persistent: true}
			a := f.env.MustConnect(t, f.ctl, "ctl", persistent)
			b := f.env.MustConnect(t, ctl2, "ctl-2", persistent)
			for _, c := range []*testutil.Client{a, b} {
				c.Sub(t, "$share/g/devices/+/telemetry/#")
			}
			sensor := f.env.MustConnect(t, f.s1, "sensor-1", nil)
			send := func(round string) {
				for i := range batch {
					sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/t", Payload: fmt.Sprintf("%s-%d", round, i), QoS: 1})
				}
			}

			send("before")
			waitCount(t, func() int { return a.Msgs.Count() + b.Msgs.Count() }, batch)
			if na, nb := a.Msgs.Count(), b.Msgs.Count(); na+nb != batch || na == 0 || nb == 0 {
				t.Fatalf("before the cut: ctl got %d, ctl-2 %d of %d; want them to share all", na, nb, batch)
			}

			for _, action := range tc.actions {
				f.env.SetStatus(t, "ctl-2", action)
				if action != "resume" {
					b.WaitClosed(t, wait)
				}
			}
			before := a.Msgs.Count()
			send("after")
			waitCount(t, func() int { return a.Msgs.Count() - before }, batch)
			if got := a.Msgs.Count() - before; got != batch {
				t.Fatalf("after ctl-2 was %s the live member got %d of %d", tc.name, got, batch)
			}
		})
	}
}

// waitCount waits until count() reaches want or, if it never does, for
// testutil.Wait.
func waitCount(t *testing.T, count func() int, want int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for count() < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}
