package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/registry"
)

var controllerLabels = map[string]string{"role": "controller"}

func TestNewRefusesUnsafeConfig(t *testing.T) {
	e := newEnv(t, allowAll)
	v := identity.NewVerifier(e.ca.Bundle())
	good := Config{Addr: "127.0.0.1:0", TLS: e.gw.tls, Verifier: v, Registry: e.reg, Decider: allowAll, Logger: quietLogger()}
	noClientCert := e.gw.tls.Clone()
	noClientCert.ClientAuth = tls.VerifyClientCertIfGiven

	for name, mod := range map[string]func(*Config){
		"no TLS":                   func(c *Config) { c.TLS = nil },
		"client cert not required": func(c *Config) { c.TLS = noClientCert },
		"no verifier":              func(c *Config) { c.Verifier = nil },
		"no registry":              func(c *Config) { c.Registry = nil },
		"no decider":               func(c *Config) { c.Decider = nil },
		"no address":               func(c *Config) { c.Addr = "" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := good
			mod(&cfg)
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted the config")
			}
		})
	}
	// Positive control: the unmodified config is accepted.
	gw, err := New(good)
	if err != nil {
		t.Fatalf("New(good): %v", err)
	}
	_ = gw.Close()
}

func TestPublishAllowedDeliveredDeniedNot(t *testing.T) {
	e := newEnv(t, engine(t))
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	if got := ctl.subscribe(t, sub("devices/+/telemetry/#", 1)); got[0] != 1 {
		t.Fatalf("controller SUBACK = %#x, want 1", got[0])
	}

	// Denied: another device's telemetry, at QoS 1 (PUBACK 0x87), QoS 2
	// (PUBREC 0x87) and QoS 0 (dropped).
	for qos := byte(0); qos <= 2; qos++ {
		code := sensor.publish(t, &paho.Publish{Topic: "devices/sensor-2/telemetry/temp", QoS: qos, Payload: []byte("forged")})
		want := byte(0x87)
		if qos == 0 {
			want = 0
		}
		if code != want {
			t.Errorf("QoS %d forged publish: reason %#x, want %#x", qos, code, want)
		}
	}
	// Allowed, after the denied ones on the same path.
	if code := sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/temp", QoS: 1, Payload: []byte("21.5")}); code != 0 {
		t.Fatalf("allowed publish: reason %#x", code)
	}
	m := ctl.expectOnly(t, "devices/sensor-1/telemetry/temp")
	if string(m.Payload) != "21.5" {
		t.Fatalf("payload %q", m.Payload)
	}
	if !strings.Contains(e.logs.String(), "topic=devices/sensor-2/telemetry/temp") {
		t.Error("denied publish not in the decision log")
	}
}

func TestConnectRefused(t *testing.T) {
	e := newEnv(t, engine(t))
	unenrolled := e.svid(spiffeid.RequireFromSegments(testTD, "device", "stranger"))
	suspended := e.enroll("sleeper", nil)
	if _, err := e.reg.SetStatus("sleeper", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	revoked := e.enroll("gone", nil)
	if _, err := e.reg.SetStatus("gone", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	enrolled := e.enroll("sensor-1", nil)

	for name, cfg := range map[string]*tls.Config{
		"unenrolled": unenrolled,
		"suspended":  suspended,
		"revoked":    revoked,
	} {
		t.Run(name, func(t *testing.T) {
			// Username and password grant nothing.
			_, ack, err := e.connect(cfg, &paho.Connect{ClientID: name, CleanStart: true,
				UsernameFlag: true, Username: "admin", PasswordFlag: true, Password: []byte("admin")})
			if err == nil || ack == nil || ack.ReasonCode != 0x87 {
				t.Fatalf("CONNACK = %+v, err %v; want 0x87", ack, err)
			}
			c := e.dial311(cfg)
			if code := c.Connect(t, name); code != 0x05 {
				t.Fatalf("MQTT 3.1.1 CONNACK = %#x, want 0x05", code)
			}
			c.ExpectClosed(t)
		})
	}

	// Positive control: the enrolled, active device connects, in both versions.
	c, ack, err := e.connect(enrolled, &paho.Connect{ClientID: "sensor-1", CleanStart: true})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("enrolled device: %+v, %v", ack, err)
	}
	raw := e.dial311(enrolled)
	if code := raw.Connect(t, "sensor-1-v4"); code != 0 {
		t.Fatalf("enrolled device over 3.1.1: CONNACK %#x", code)
	}
	sessions := e.gw.Sessions()
	if len(sessions) != 2 {
		t.Fatalf("sessions = %+v, want the two enrolled connections", sessions)
	}
	for _, s := range sessions {
		if s.Device != "sensor-1" || s.SPIFFEID != "spiffe://example.org/device/sensor-1" {
			t.Errorf("session %+v", s)
		}
	}
	_ = c
}

func TestConnectRefusedByPolicy(t *testing.T) {
	d := &switchDecider{next: engine(t)}
	e := newEnv(t, d)
	cfg := e.enroll("sensor-1", nil)
	d.denyConnect.Store(true)
	if _, ack, err := e.connect(cfg, &paho.Connect{ClientID: "a", CleanStart: true}); err == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("CONNACK %+v, %v; want 0x87", ack, err)
	}
	d.denyConnect.Store(false)
	if _, _, err := e.connect(cfg, &paho.Connect{ClientID: "a", CleanStart: true}); err != nil {
		t.Fatalf("positive control: %v", err)
	}
}

func TestSubscribeReasonCodePerFilter(t *testing.T) {
	e := newEnv(t, engine(t))
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")

	filters := []struct {
		filter string
		want   byte
	}{
		{"devices/sensor-1/commands/#", 1},
		{"devices/sensor-2/commands/#", 0x87},
		{"#", 0x87},
		{"+/#", 0x87},
		{"devices/+/commands/#", 0x87},
		{"$SYS/#", 0x87},
		{"$share/g/devices/sensor-1/commands/reboot", 1},
		{"$SHARE/g/devices/sensor-2/commands/#", 0x87},
		{"$Share/g/#", 0x87},
		{"$share/g/$share/h/devices/sensor-1/commands/#", 0x87},
		{"devices/sensor-1/commands/ping", 0}, // granted QoS 0
	}
	var opts []paho.SubscribeOptions
	for _, f := range filters {
		opts = append(opts, sub(f.filter, 1))
	}
	opts[len(opts)-1].QoS = 0
	got := sensor.subscribe(t, opts...)
	if len(got) != len(filters) {
		t.Fatalf("SUBACK has %d codes for %d filters", len(got), len(filters))
	}
	for i, f := range filters {
		if got[i] != f.want {
			t.Errorf("%s: reason %#x, want %#x", f.filter, got[i], f.want)
		}
	}

	// The granted ones work. mochi merges a client's matching
	// subscriptions into one delivery; a second connection holds only a
	// shared subscription, to see that one deliver too.
	shared := e.mustConnect(e.enroll("sensor-1b", nil), "sensor-1b")
	if got := shared.subscribe(t, sub("$share/h/devices/sensor-1b/commands/#", 1)); got[0] != 1 {
		t.Fatalf("shared SUBACK %#x", got[0])
	}
	for _, dev := range []string{"sensor-1", "sensor-1b"} {
		if code := ctl.publish(t, &paho.Publish{Topic: "devices/" + dev + "/commands/reboot", QoS: 1}); code != 0 {
			t.Fatalf("controller command: %#x", code)
		}
	}
	sensor.expectOnly(t, "devices/sensor-1/commands/reboot")
	shared.expectOnly(t, "devices/sensor-1b/commands/reboot")
}

func TestTopicAliasResolvedBeforeDecision(t *testing.T) {
	e := newEnv(t, engine(t))
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/telemetry/#", 1))

	alias := func(a uint16) *paho.PublishProperties { return &paho.PublishProperties{TopicAlias: u16(a)} }
	// Alias 1: an allowed topic; alias 2: a forbidden one (the controller
	// could receive it, so only the publish decision keeps it away).
	if code := sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/a", QoS: 1, Properties: alias(1), Payload: []byte("1")}); code != 0 {
		t.Fatalf("set alias 1: %#x", code)
	}
	if code := sensor.publish(t, &paho.Publish{Topic: "devices/sensor-2/telemetry/a", QoS: 1, Properties: alias(2), Payload: []byte("2")}); code != 0x87 {
		t.Fatalf("set alias 2 on a forbidden topic: %#x, want 0x87", code)
	}
	for qos := byte(0); qos <= 1; qos++ {
		if code := sensor.publish(t, &paho.Publish{QoS: qos, Properties: alias(2), Payload: []byte("via alias 2")}); code != qos*0x87 {
			t.Fatalf("QoS %d alias-only publish to the forbidden topic: %#x", qos, code)
		}
	}
	if code := sensor.publish(t, &paho.Publish{QoS: 1, Properties: alias(3), Payload: []byte("unknown alias")}); code != 0x87 {
		t.Fatalf("alias-only publish on an unset alias: %#x, want 0x87", code)
	}
	if code := sensor.publish(t, &paho.Publish{QoS: 1, Properties: alias(1), Payload: []byte("via alias 1")}); code != 0 {
		t.Fatalf("alias-only publish to the allowed topic: %#x", code)
	}

	if m := ctl.expectOnly(t, "devices/sensor-1/telemetry/a"); string(m.Payload) != "1" {
		t.Fatalf("first message %q", m.Payload)
	}
	if m := ctl.expectOnly(t, "devices/sensor-1/telemetry/a"); string(m.Payload) != "via alias 1" {
		t.Fatalf("second message %q", m.Payload)
	}
}

func TestWillRefusedAtConnect(t *testing.T) {
	e := newEnv(t, engine(t))
	cfg := e.enroll("sensor-1", nil)
	for _, topic := range []string{"devices/sensor-2/state", "devices/sensor-1/telemetry/x", "$SYS/broker/x"} {
		_, ack, err := e.connect(cfg, &paho.Connect{ClientID: "w", CleanStart: true,
			WillMessage: &paho.WillMessage{Topic: topic, Payload: []byte("offline")}})
		if err == nil || ack == nil || ack.ReasonCode != 0x87 {
			t.Errorf("will on %s: CONNACK %+v, %v; want 0x87", topic, ack, err)
		}
	}
	// Positive control: its own state topic.
	if _, _, err := e.connect(cfg, &paho.Connect{ClientID: "w", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "devices/sensor-1/state", Payload: []byte("offline")}}); err != nil {
		t.Fatalf("allowed will: %v", err)
	}
}

func TestWillDecidedWhenSent(t *testing.T) {
	d := &switchDecider{next: engine(t)}
	e := newEnv(t, d)
	sensorCfg := e.enroll("sensor-1", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/state", 1))
	sensor := e.mustConnect(sensorCfg, "pinger")

	connectWithWill := func(payload string, delay *uint32) *client {
		c, _, err := e.connect(sensorCfg, &paho.Connect{ClientID: "willing", CleanStart: true,
			Properties:     &paho.ConnectProperties{SessionExpiryInterval: u32(60)},
			WillMessage:    &paho.WillMessage{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte(payload)},
			WillProperties: &paho.WillProperties{WillDelayInterval: delay}})
		if err != nil {
			t.Fatalf("connect with will: %v", err)
		}
		return c
	}
	marker := func(payload string) {
		if code := sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte(payload)}); code != 0 {
			t.Fatalf("marker: %#x", code)
		}
	}
	expect := func(payload string) {
		t.Helper()
		if m := ctl.expectOnly(t, "devices/sensor-1/state"); string(m.Payload) != payload {
			t.Fatalf("received %q, want %q", m.Payload, payload)
		}
	}

	// Positive control: an allowed will is sent when the connection drops.
	c := connectWithWill("will-1", nil)
	c.TerminateConnectionForTest()
	expect("will-1")

	// Allowed at CONNECT, denied by the time it would be sent.
	c = connectWithWill("will-2", nil)
	d.denyWill.Store(true)
	c.TerminateConnectionForTest()
	poll(t, "session to end", func() bool { return len(e.gw.Sessions()) == 2 })
	marker("marker-2")
	expect("marker-2")
	d.denyWill.Store(false)

	// A delayed will is decided when the delay is over (the test makes it
	// over at once): allowed...
	c = connectWithWill("will-3", u32(3600))
	c.TerminateConnectionForTest()
	poll(t, "will to be scheduled", func() bool { return e.gw.wills.len() == 1 })
	e.gw.wills.fireAllForTest(t)
	expect("will-3")

	// ...and denied when the device was suspended during the delay.
	c = connectWithWill("will-4", u32(3600))
	c.TerminateConnectionForTest()
	poll(t, "will to be scheduled", func() bool { return e.gw.wills.len() == 1 })
	if _, err := e.reg.SetStatus("sensor-1", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	e.gw.wills.fireAllForTest(t)
	if _, err := e.reg.SetStatus("sensor-1", registry.StatusActive); err != nil {
		t.Fatal(err)
	}
	sensor = e.mustConnect(sensorCfg, "pinger-2")
	marker("marker-4")
	expect("marker-4")

	// A session that resumes before the delay is over cancels its will.
	c = connectWithWill("will-5", u32(3600))
	c.TerminateConnectionForTest()
	poll(t, "will to be scheduled", func() bool { return e.gw.wills.len() == 1 })
	if _, _, err := e.connect(sensorCfg, &paho.Connect{ClientID: "willing", CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(60)}}); err != nil {
		t.Fatal(err)
	}
	if n := e.gw.wills.len(); n != 0 {
		t.Fatalf("%d wills still pending after the session resumed", n)
	}
	marker("marker-5")
	expect("marker-5")
}

func TestSessionTakeoverByAnotherIdentity(t *testing.T) {
	e := newEnv(t, engine(t))
	victimCfg := e.enroll("victim", nil)
	attackerCfg := e.enroll("attacker", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	persistent := func(cfg *tls.Config) (*client, *paho.Connack) {
		c, ack, err := e.connect(cfg, &paho.Connect{ClientID: "shared-id", CleanStart: false,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		return c, ack
	}
	command := func(payload string) {
		if code := ctl.publish(t, &paho.Publish{Topic: "devices/victim/commands/x", QoS: 1, Payload: []byte(payload)}); code != 0 {
			t.Fatalf("command: %#x", code)
		}
	}

	victim, _ := persistent(victimCfg)
	victim.subscribe(t, sub("devices/victim/commands/#", 1))

	// A live victim is not taken over: the attacker's CONNECT with the same
	// client ID gets a session of its own, and the victim keeps its own.
	// (Its session ends with its connection: no expiry interval.)
	attacker, ack, err := e.connect(attackerCfg, &paho.Connect{ClientID: "shared-id", CleanStart: false})
	if err != nil {
		t.Fatal(err)
	}
	if ack.SessionPresent {
		t.Fatal("attacker was handed a session")
	}
	command("live")
	victim.expectOnly(t, "devices/victim/commands/x")

	// An offline victim's queued messages stay queued for the victim.
	_ = victim.Disconnect(&paho.Disconnect{})
	poll(t, "victim offline", func() bool { return len(e.gw.Sessions()) == 2 })
	command("queued")
	_ = attacker.Disconnect(&paho.Disconnect{})
	poll(t, "attacker offline", func() bool { return len(e.gw.Sessions()) == 1 })
	attacker, ack = persistent(attackerCfg)
	if ack.SessionPresent {
		t.Fatal("attacker was handed a session")
	}
	if cl, ok := e.gw.server.Clients.Get("spiffe://example.org/device/attacker shared-id"); !ok ||
		cl.State.Subscriptions.Len() != 0 || cl.State.Inflight.Len() != 0 {
		t.Fatal("attacker's session holds subscriptions or messages")
	}
	// Positive control: the victim resumes and gets its message.
	victim, ack = persistent(victimCfg)
	if !ack.SessionPresent {
		t.Fatal("victim's session was lost")
	}
	if m := victim.expectOnly(t, "devices/victim/commands/x"); string(m.Payload) != "queued" {
		t.Fatalf("victim received %q", m.Payload)
	}
	if m, ok := attacker.Msgs.Take(0); ok {
		t.Fatalf("attacker received %s %q", m.Topic, m.Payload)
	}

	// Inside the broker the two sessions are keyed apart.
	for _, id := range []string{"spiffe://example.org/device/victim shared-id", "spiffe://example.org/device/attacker shared-id"} {
		if _, ok := e.gw.server.Clients.Get(id); !ok {
			t.Errorf("no broker session %q", id)
		}
	}
	if _, ok := e.gw.server.Clients.Get("shared-id"); ok {
		t.Error("a broker session is keyed by the bare client ID")
	}
}

func TestResumedSessionPrunedToWhatMayBeReadNow(t *testing.T) {
	d := &switchDecider{next: engine(t)}
	e := newEnv(t, d)
	cfg := e.enroll("sensor-1", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	persistent := func() (*client, *paho.Connack) {
		c, ack, err := e.connect(cfg, &paho.Connect{ClientID: "s1", CleanStart: false,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		return c, ack
	}
	c, _ := persistent()
	c.subscribe(t, sub("devices/sensor-1/commands/#", 1))
	_ = c.Disconnect(&paho.Disconnect{})
	poll(t, "offline", func() bool { return len(e.gw.Sessions()) == 1 })
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/a", QoS: 1, Payload: []byte("queued")}); code != 0 {
		t.Fatal(code)
	}
	poll(t, "message queued", func() bool {
		old, ok := e.gw.server.Clients.Get("spiffe://example.org/device/sensor-1 s1")
		return ok && old.State.Inflight.Len() == 1
	})

	// The policy changes while the client is offline: no more receiving
	// nor subscribing commands.
	d.denyReceive.Store(true)
	d.denySubcribe.Store(true)
	c, ack := persistent()
	if !ack.SessionPresent {
		t.Fatal("session not resumed")
	}
	cl, _ := e.gw.server.Clients.Get("spiffe://example.org/device/sensor-1 s1")
	if n := cl.State.Inflight.Len(); n != 0 {
		t.Fatalf("%d queued messages survived the resume", n)
	}
	if n := cl.State.Subscriptions.Len(); n != 0 {
		t.Fatalf("%d denied subscriptions survived the resume", n)
	}
	d.denyReceive.Store(false)
	d.denySubcribe.Store(false)

	// Positive control: with the policy back, the same path delivers.
	c.subscribe(t, sub("devices/sensor-1/commands/#", 1))
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/b", QoS: 1, Payload: []byte("live")}); code != 0 {
		t.Fatal(code)
	}
	c.expectOnly(t, "devices/sensor-1/commands/b")
}

func TestRevokeDisconnectsLiveSessions(t *testing.T) {
	for _, st := range []registry.Status{registry.StatusRevoked, registry.StatusSuspended, "deleted"} {
		t.Run(string(st), func(t *testing.T) {
			e := newEnv(t, engine(t))
			cfg := e.enroll("sensor-1", nil)
			other := e.mustConnect(e.enroll("sensor-2", nil), "sensor-2")
			c := e.mustConnect(cfg, "sensor-1")
			raw := e.dial311(cfg)
			if code := raw.Connect(t, "sensor-1-v4"); code != 0 {
				t.Fatalf("3.1.1 connect: %#x", code)
			}
			if n := len(e.gw.Sessions()); n != 3 {
				t.Fatalf("%d sessions, want 3", n)
			}

			var err error
			if st == "deleted" {
				err = e.reg.Delete("sensor-1")
			} else {
				_, err = e.reg.SetStatus("sensor-1", st)
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := c.WaitDisconnect(t, waitFor); d.ReasonCode != 0x87 {
				t.Errorf("DISCONNECT reason %#x, want 0x87", d.ReasonCode)
			}
			raw.ExpectClosed(t)
			poll(t, "sessions to end", func() bool {
				s := e.gw.Sessions()
				return len(s) == 1 && s[0].Device == "sensor-2"
			})
			if _, ack, err := e.connect(cfg, &paho.Connect{ClientID: "sensor-1", CleanStart: true}); err == nil || ack.ReasonCode != 0x87 {
				t.Fatalf("reconnect: %+v, %v; want 0x87", ack, err)
			}
			// Positive control: the other device is still connected.
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if _, err := other.Publish(ctx, &paho.Publish{Topic: "devices/sensor-2/state", QoS: 1, Payload: []byte("up")}); err != nil {
				t.Fatalf("other device: %v", err)
			}
		})
	}
}

func TestLabelChangeRebuildsSubject(t *testing.T) {
	e := newEnv(t, engine(t))
	ctlCfg := e.enroll("ctl", nil) // not yet a controller
	sensor := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	ctl := e.mustConnect(ctlCfg, "ctl")
	if got := ctl.subscribe(t, sub("devices/+/telemetry/#", 1)); got[0] != 0x87 {
		t.Fatalf("SUBACK %#x before the label", got[0])
	}
	if _, err := e.reg.SetLabels("ctl", controllerLabels); err != nil {
		t.Fatal(err)
	}
	poll(t, "subject rebuilt", func() bool {
		for _, s := range e.gw.sessionsOf("spiffe://example.org/device/ctl") {
			if d := s.subject.Load().Device; d != nil && d.Labels["role"] == "controller" {
				return true
			}
		}
		return false
	})
	if got := ctl.subscribe(t, sub("devices/+/telemetry/#", 1)); got[0] != 1 {
		t.Fatalf("SUBACK %#x after the label", got[0])
	}
	sensor.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1})
	ctl.expectOnly(t, "devices/sensor-1/telemetry/t")
}

func TestServerTopicsNeverReachDevices(t *testing.T) {
	// Whatever the policy says, devices get no '$' topics ($SYS included)
	// and cannot use them.
	e := newEnv(t, allowAll)
	a := e.mustConnect(e.enroll("a", nil), "a")
	b := e.mustConnect(e.enroll("b", nil), "b")
	got := a.subscribe(t, sub("$SYS/#", 0), sub("$share/g/$SYS/#", 0), sub("$ztgate/#", 0), sub("#", 0))
	if got[0] != 0x87 || got[1] != 0x87 || got[2] != 0x87 || got[3] != 0 {
		t.Fatalf("SUBACK %#v, want [0x87 0x87 0x87 0]", got)
	}
	// mochi retains its $SYS topics at start; "#" must not bring them. The
	// retained deliveries of the SUBSCRIBE are queued before a's next
	// packet is handled, so a's own message comes first if none is.
	a.publish(t, &paho.Publish{Topic: "barrier", QoS: 1})
	a.expectOnly(t, "barrier")
	for _, topic := range []string{"$ztgate/x", "$share/g/x"} {
		if code := b.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("server topic")}); code == 0 {
			t.Errorf("publish to %s acknowledged", topic)
		}
	}
	b.publish(t, &paho.Publish{Topic: "plain/topic", QoS: 0})
	a.expectOnly(t, "plain/topic")
}

func TestMQTT311DeniedPublish(t *testing.T) {
	e := newEnv(t, engine(t))
	cfg := e.enroll("sensor-1", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/telemetry/#", 0))
	c := e.dial311(cfg)
	if code := c.Connect(t, "v4"); code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	pub := func(topic string, qos byte, id uint16) {
		c.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, PacketID: id, Payload: []byte(topic)})
	}
	// QoS 0 denied: dropped, the connection stays.
	pub("devices/sensor-2/telemetry/t", 0, 0)
	pub("devices/sensor-1/telemetry/t", 1, 7)
	if pk, err := c.Read(); err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 {
		t.Fatalf("allowed QoS 1: %+v, %v", pk.FixedHeader, err)
	}
	ctl.expectOnly(t, "devices/sensor-1/telemetry/t")
	// QoS 1 denied: 3.1.1 has no negative PUBACK, so the connection ends.
	pub("devices/sensor-2/telemetry/t", 1, 8)
	c.ExpectClosed(t)
	// The subscriber got nothing in between: the next allowed message is
	// the next one it sees.
	e.mustConnect(cfg, "again").publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/u", QoS: 0})
	ctl.expectOnly(t, "devices/sensor-1/telemetry/u")
}

func TestMQTT311SubscribeDeniedIs0x80(t *testing.T) {
	e := newEnv(t, engine(t))
	c := e.dial311(e.enroll("sensor-1", nil))
	if code := c.Connect(t, "v4"); code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	c.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 3,
		Filters: packets.Subscriptions{{Filter: "devices/sensor-1/commands/#", Qos: 1}, {Filter: "#", Qos: 1}}})
	pk, err := c.Read()
	if err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK: %+v, %v", pk.FixedHeader, err)
	}
	if len(pk.ReasonCodes) != 2 || pk.ReasonCodes[0] != 1 || pk.ReasonCodes[1] != 0x80 {
		t.Fatalf("SUBACK codes %#v, want [1 0x80]", pk.ReasonCodes)
	}
}

func TestRetainedDecidedOnReceive(t *testing.T) {
	d := &switchDecider{next: engine(t)}
	e := newEnv(t, d)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/mode", QoS: 1, Retain: true, Payload: []byte("eco")}); code != 0 {
		t.Fatal(code)
	}
	s1 := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")

	// The subscription is allowed, the retained message may not be read.
	d.denyReceive.Store(true)
	if got := s1.subscribe(t, sub("devices/sensor-1/commands/#", 1)); got[0] != 1 {
		t.Fatalf("SUBACK %#x", got[0])
	}
	// mochi handles a client's packets in order: once this PUBLISH is
	// acknowledged, the retained deliveries of the SUBSCRIBE are queued.
	if code := s1.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1}); code != 0 {
		t.Fatal(code)
	}
	// A live message is decided the same way.
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/denied", QoS: 1}); code != 0 {
		t.Fatal(code)
	}
	// mochi acknowledges a PUBLISH before delivering it; the next PUBLISH
	// of the same client is handled only after that delivery.
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-2/commands/barrier", QoS: 1}); code != 0 {
		t.Fatal(code)
	}
	d.denyReceive.Store(false)
	if code := ctl.publish(t, &paho.Publish{Topic: "devices/sensor-1/commands/live", QoS: 1}); code != 0 {
		t.Fatal(code)
	}
	s1.expectOnly(t, "devices/sensor-1/commands/live")

	// Positive control: the same subscription again (retained messages are
	// sent on every SUBSCRIBE) now that receiving is allowed.
	if got := s1.subscribe(t, sub("devices/sensor-1/commands/#", 1)); got[0] != 1 {
		t.Fatalf("SUBACK %#x", got[0])
	}
	m := s1.expectOnly(t, "devices/sensor-1/commands/mode")
	if string(m.Payload) != "eco" || !m.Retain {
		t.Fatalf("retained message %q (retain %v)", m.Payload, m.Retain)
	}
}

func TestCloseIsIdempotentAndEndsSessions(t *testing.T) {
	e := newEnv(t, engine(t))
	c := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	if err := e.gw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.gw.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(waitFor):
		t.Fatal("client still connected after Close")
	}
	if err := e.gw.Start(); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

func TestConcurrentClientsRace(t *testing.T) {
	// Many clients connecting, publishing and subscribing at once while the
	// registry changes: run under -race, it checks the hook's concurrency.
	e := newEnv(t, engine(t))
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/telemetry/#", 0))
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		name := "sensor-" + string(rune('a'+i))
		cfg := e.enroll(name, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := e.connect(cfg, &paho.Connect{ClientID: name, CleanStart: true})
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			for j := 0; j < 50; j++ {
				_, _ = c.Publish(ctx, &paho.Publish{Topic: "devices/" + name + "/telemetry/t", Payload: []byte("x")})
				if j%10 == 0 {
					_, _ = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{sub("devices/"+name+"/commands/#", 0)}})
				}
			}
		}()
	}
	for i := 0; i < 5; i++ {
		if _, err := e.reg.SetLabels("ctl", map[string]string{"role": "controller", "n": string(rune('0' + i))}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

// sessionsOf returns the sessions of one identity (tests only).
func (g *Gateway) sessionsOf(spiffeID string) []*session {
	var out []*session
	g.sessions.Range(func(_, v any) bool {
		if s := v.(*session); s.spiffeID == spiffeID {
			out = append(out, s)
		}
		return true
	})
	return out
}

// fireAllForTest makes every pending delayed will due now and waits until
// they have been handled.
func (w *delayedWills) fireAllForTest(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	for _, pw := range w.pending {
		pw.timer.Reset(0)
	}
	w.mu.Unlock()
	poll(t, "delayed wills to fire", func() bool { return w.len() == 0 })
	// fire registers in running before it leaves pending.
	w.running.Wait()
}

// len returns the number of pending delayed wills (tests only).
func (w *delayedWills) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

func TestTakeoverBySameIdentity(t *testing.T) {
	e := newEnv(t, engine(t))
	cfg := e.enroll("sensor-1", nil)
	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	ctl.subscribe(t, sub("devices/+/state", 1))

	first, _, err := e.connect(cfg, &paho.Connect{ClientID: "dup", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte("first gone")}})
	if err != nil {
		t.Fatal(err)
	}
	second := e.mustConnect(cfg, "dup")
	if d := first.WaitDisconnect(t, waitFor); d.ReasonCode != 0x8E {
		t.Errorf("DISCONNECT %#x, want 0x8E (session taken over)", d.ReasonCode)
	}
	// The will of the connection taken over is sent (it is decided like
	// any will), and the new connection works.
	if m := ctl.expectOnly(t, "devices/sensor-1/state"); string(m.Payload) != "first gone" {
		t.Fatalf("received %q", m.Payload)
	}
	if code := second.publish(t, &paho.Publish{Topic: "devices/sensor-1/state", QoS: 1, Payload: []byte("second")}); code != 0 {
		t.Fatal(code)
	}
	ctl.expectOnly(t, "devices/sensor-1/state")
	poll(t, "old session state to go", func() bool {
		return len(e.gw.sessionsOf("spiffe://example.org/device/sensor-1")) == 1
	})
}

func TestOnlyVerifiedTLSClientsReachMQTT(t *testing.T) {
	e := newEnvWith(t, allowAll, nil)
	enrolled := e.enroll("sensor-1", nil)

	// Plain TCP: no TLS, no MQTT. The CONNECT is never answered.
	plain, err := net.DialTimeout("tcp", e.addr, waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	raw := testclient.NewRaw(plain, 0)
	raw.Write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "plain"}})
	if pk, err := raw.Read(); err == nil {
		t.Fatalf("plaintext CONNECT answered: %+v", pk.FixedHeader)
	}

	// TLS without a client certificate: the handshake fails.
	noCert := enrolled.Clone()
	noCert.Certificates = nil
	noCert.GetClientCertificate = nil
	if c, err := tls.Dial("tcp", e.addr, noCert); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(waitFor))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("TLS without a client certificate accepted")
		}
		_ = c.Close()
	}

	// Positive control.
	e.mustConnect(enrolled, "ok")
}

func TestConnectRechecksPeerIdentity(t *testing.T) {
	// A TLS config that verifies nothing still admits no one: OnConnect
	// verifies the peer's chain itself.
	foreign, err := identity.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), testTD)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, allowAll, func(c *Config) {
		c.TLS = c.TLS.Clone()
		c.TLS.VerifyConnection = nil
	})
	chain, key, err := foreign.IssueSVID(spiffeid.RequireFromSegments(testTD, "device", "sensor-1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := identity.ClientTLSConfigPEM(chain, key, e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	e.enroll("sensor-1", nil)
	if _, ack, err := e.connect(forged, &paho.Connect{ClientID: "forged", CleanStart: true}); err == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("foreign-CA SVID: CONNACK %+v, %v; want 0x87", ack, err)
	}
	// Positive control: an SVID of the trusted CA.
	e.mustConnect(e.svid(spiffeid.RequireFromSegments(testTD, "device", "sensor-1")), "genuine")
}

func TestConnectDeadline(t *testing.T) {
	// A peer that never completes TLS and CONNECT is cut off.
	e := newEnvWith(t, allowAll, nil)
	_ = e.gw.Close()
	gw, err := New(Config{Addr: "127.0.0.1:0", TLS: e.gw.tls, Verifier: e.gw.verifier, Registry: e.reg, Decider: allowAll, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	gw.connectTimeout = 50 * time.Millisecond
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	c, err := net.DialTimeout("tcp", gw.Addr().String(), waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(waitFor))
	_, err = c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle connection not closed by the gateway: %v", err)
	}
}

func TestInactiveDeviceRefusedWhateverThePolicy(t *testing.T) {
	// The registry status is the gateway's own floor under the policy: even
	// an allow-all policy admits no suspended or revoked device.
	e := newEnv(t, allowAll)
	cfg := e.enroll("sensor-1", nil)
	live := e.mustConnect(cfg, "live") // positive control
	if _, err := e.reg.SetStatus("sensor-1", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if d := live.WaitDisconnect(t, waitFor); d.ReasonCode != 0x87 {
		t.Errorf("DISCONNECT %#x, want 0x87", d.ReasonCode)
	}
	if _, ack, err := e.connect(cfg, &paho.Connect{ClientID: "again", CleanStart: true}); err == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("suspended device: CONNACK %+v, %v; want 0x87", ack, err)
	}
	// An identity that is not enrolled is the policy's to decide.
	if _, _, err := e.connect(e.svid(spiffeid.RequireFromSegments(testTD, "device", "stranger")), &paho.Connect{ClientID: "s", CleanStart: true}); err != nil {
		t.Fatalf("unenrolled identity under allow-all: %v", err)
	}
}
