package gateway

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/registry"
)

// retainedState has sensor-1 and sensor-2 publish their retained state and
// waits until both are retained.
func retainedState(t *testing.T, e *env) (s1, s2 *client) {
	t.Helper()
	s1 = e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	s2 = e.mustConnect(e.enroll("sensor-2", nil), "sensor-2")
	for _, c := range []struct {
		c    *client
		name string
	}{{s1, "sensor-1"}, {s2, "sensor-2"}} {
		p := &paho.Publish{Topic: "devices/" + c.name + "/state", QoS: 1, Retain: true, Payload: []byte(c.name + " up")}
		if code := c.c.publish(t, p); code != 0 {
			t.Fatalf("retained state of %s: %#x", c.name, code)
		}
	}
	return s1, s2
}

// retainedSeen subscribes a new controller to every device's state and
// returns the topics of the retained messages it is handed: everything it
// receives before a live barrier that s2 publishes. mochi queues the
// retained messages after the SUBACK, on the subscriber's goroutine; the
// PUBACK of the controller's next PUBLISH shows that is done.
func retainedSeen(t *testing.T, e *env, name string, s2 *client) map[string]bool {
	t.Helper()
	ctl := e.mustConnect(e.enroll(name, controllerLabels), name)
	ctl.subscribe(t, sub("devices/+/state", 1))
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-9/commands/sync", QoS: 1}); code != 0 {
		t.Fatalf("controller publish: %#x", code)
	}
	s2.publish(t, &paho.Publish{Topic: "devices/sensor-2/state", QoS: 1, Payload: []byte("barrier")})
	seen := map[string]bool{}
	for {
		m := ctl.next(t)
		if string(m.Payload) == "barrier" {
			return seen
		}
		seen[m.Topic] = true
	}
}

// Item: a revoked or deleted device's retained messages are cleared, also
// when it is offline; a suspended device's stay (the suspension is
// temporary), and so do another device's (positive control), and with
// KeepRetainedOnRevoke nothing is cleared.
func TestRevocationClearsRetained(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cut     func(e *env) error
		keep    bool // KeepRetainedOnRevoke
		cleared bool
	}{
		{name: "revoked", cleared: true, cut: func(e *env) error {
			_, err := e.reg.SetStatus("sensor-1", registry.StatusRevoked)
			return err
		}},
		{name: "deleted", cleared: true, cut: func(e *env) error { return e.reg.Delete("sensor-1") }},
		{name: "suspended", cleared: false, cut: func(e *env) error {
			_, err := e.reg.SetStatus("sensor-1", registry.StatusSuspended)
			return err
		}},
		{name: "revoked, option off", keep: true, cleared: false, cut: func(e *env) error {
			_, err := e.reg.SetStatus("sensor-1", registry.StatusRevoked)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvWith(t, engine(t), func(c *Config) { c.KeepRetainedOnRevoke = tc.keep })
			s1, s2 := retainedState(t, e)
			// Offline when it is cut: its session cannot be what clears.
			_ = s1.Disconnect(&paho.Disconnect{})
			poll(t, "sensor-1 offline", func() bool { return len(e.gw.Sessions()) == 1 })
			if seen := retainedSeen(t, e, "ctl-before", s2); !seen["devices/sensor-1/state"] || !seen["devices/sensor-2/state"] {
				t.Fatalf("before the cut, retained: %v", seen)
			}

			if err := tc.cut(e); err != nil {
				t.Fatal(err)
			}
			e.waitRegistryApplied(t)
			seen := retainedSeen(t, e, "ctl-after", s2)
			if seen["devices/sensor-1/state"] == tc.cleared {
				t.Errorf("sensor-1's retained state delivered: %v; want %v", seen["devices/sensor-1/state"], !tc.cleared)
			}
			if !seen["devices/sensor-2/state"] {
				t.Error("sensor-2's retained state was cleared too")
			}
		})
	}
}

// Item: a retained message a device leaves as a delayed Last Will is
// attributed to the device, not to the gateway's will client, and goes with
// its revocation.
func TestDelayedRetainedWillClearedOnRevocation(t *testing.T) {
	e := newEnv(t, engine(t))
	_, s2 := retainedState(t, e)
	cfg := e.svid(spiffeid.RequireFromSegments(testTD, "device", "sensor-1"))
	c, _, err := e.connect(cfg, &paho.Connect{ClientID: "sensor-1-will", CleanStart: true,
		Properties:     &paho.ConnectProperties{SessionExpiryInterval: u32(60)},
		WillMessage:    &paho.WillMessage{Topic: "devices/sensor-1/state", QoS: 1, Retain: true, Payload: []byte("gone")},
		WillProperties: &paho.WillProperties{WillDelayInterval: u32(3600)}})
	if err != nil {
		t.Fatalf("connect with will: %v", err)
	}
	c.TerminateConnectionForTest()
	poll(t, "will scheduled", func() bool { return e.gw.wills.len() == 1 })
	e.gw.wills.fireAllForTest(t)
	poll(t, "will retained", func() bool {
		for _, m := range e.gw.RetainedMessages("devices/sensor-1/state", 0) {
			if m.PayloadSize == len("gone") {
				return true
			}
		}
		return false
	})
	if got := e.gw.RetainedMessages("devices/sensor-1/state", 0); got[0].SPIFFEID != "spiffe://example.org/device/sensor-1" {
		t.Fatalf("the retained will is attributed to %q", got[0].SPIFFEID)
	}

	if _, err := e.reg.SetStatus("sensor-1", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	e.waitRegistryApplied(t)
	if seen := retainedSeen(t, e, "ctl", s2); seen["devices/sensor-1/state"] || !seen["devices/sensor-2/state"] {
		t.Fatalf("retained after the revocation: %v; want sensor-2's only", seen)
	}
}

// RetainedMessages lists what is retained under a filter, with its
// publisher; DeleteRetained clears one topic, after which a new subscriber
// gets nothing from it (and another topic is still served).
func TestRetainedMessagesAndDeleteRetained(t *testing.T) {
	e := newEnv(t, engine(t))
	before := time.Now().Add(-time.Second)
	_, s2 := retainedState(t, e)

	all := e.gw.RetainedMessages("#", 0)
	if len(all) != 2 {
		t.Fatalf("RetainedMessages(#) = %+v", all)
	}
	for i, name := range []string{"sensor-1", "sensor-2"} { // sorted by topic
		m := all[i]
		want := brokerview.RetainedMessage{Topic: "devices/" + name + "/state", QoS: 1, PayloadSize: len(name + " up"),
			SPIFFEID: "spiffe://example.org/device/" + name, Created: m.Created}
		if m != want || m.Created.Before(before.Truncate(time.Second)) || m.Created.After(time.Now()) {
			t.Errorf("message %d: %+v; want %+v created now", i, m, want)
		}
	}
	for _, tc := range []struct {
		filter string
		limit  int
		want   []string
	}{
		{"devices/sensor-1/#", 0, []string{"devices/sensor-1/state"}},
		{"devices/+/state", 1, []string{"devices/sensor-1/state"}},
		{"devices/+/state", -1, []string{"devices/sensor-1/state", "devices/sensor-2/state"}},
		{"devices/sensor-2/state", 5, []string{"devices/sensor-2/state"}},
		{"other/#", 0, nil},
		{"devices/#/state", 0, nil}, // malformed
		{"", 0, nil},
		{"$SYS/#", 0, nil},
	} {
		got := e.gw.RetainedMessages(tc.filter, tc.limit)
		if got == nil {
			t.Errorf("RetainedMessages(%q) = nil; want an empty list", tc.filter)
		}
		var topics []string
		for _, m := range got {
			topics = append(topics, m.Topic)
		}
		if fmt.Sprint(topics) != fmt.Sprint(tc.want) {
			t.Errorf("RetainedMessages(%q, %d) = %v; want %v", tc.filter, tc.limit, topics, tc.want)
		}
	}

	for _, topic := range []string{"", "devices/+/state", "devices/#", "$SYS/broker/uptime", "devices/none/state"} {
		if e.gw.DeleteRetained(topic) {
			t.Errorf("DeleteRetained(%q) = true", topic)
		}
	}
	if !e.gw.DeleteRetained("devices/sensor-1/state") {
		t.Fatal("DeleteRetained: false for a retained topic")
	}
	if e.gw.DeleteRetained("devices/sensor-1/state") {
		t.Fatal("DeleteRetained: true twice")
	}
	if seen := retainedSeen(t, e, "ctl", s2); seen["devices/sensor-1/state"] || !seen["devices/sensor-2/state"] {
		t.Fatalf("retained after DeleteRetained: %v; want sensor-2's only", seen)
	}
	// mochi's own count ($SYS topics included) follows.
	if n, want := atomic.LoadInt64(&e.gw.server.Info.Retained), int64(e.gw.server.Topics.Retained.Len()); n != want {
		t.Errorf("mochi counts %d retained messages, holds %d", n, want)
	}
}

// RetainedMessages and DeleteRetained are safe beside publishers.
func TestRetainedConcurrentUse(t *testing.T) {
	e := newEnv(t, engine(t))
	s1, _ := retainedState(t, e)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		for i := range 50 {
			p := &paho.Publish{Topic: fmt.Sprintf("devices/sensor-1/telemetry/%d", i%5), QoS: 1, Retain: true, Payload: []byte("v")}
			if _, err := s1.Publish(ctx, p); err != nil {
				t.Errorf("publish: %v", err) // not Fatal: another goroutine
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 200 {
			_ = e.gw.RetainedMessages("devices/#", 3)
			_ = e.gw.DeleteRetained(fmt.Sprintf("devices/sensor-1/telemetry/%d", i%5))
		}
	}()
	wg.Wait()
	// Positive control: the state nobody deleted is still listed.
	if got := e.gw.RetainedMessages("devices/+/state", 0); len(got) != 2 {
		t.Fatalf("retained state after the concurrent use: %+v", got)
	}
}
