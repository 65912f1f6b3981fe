package test

import (
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testutil"
)

// pub runs mosquitto_pub as dev with extra arguments.
func pub(t *testing.T, env *testutil.Env, dev *testutil.Device, args ...string) testutil.Result {
	t.Helper()
	return testclient.Run(t, "mosquitto_pub", append(env.MosquittoArgs(dev), args...)...)
}

// The README's quickstart, with standard clients: an enrolled device
// publishes telemetry with mosquitto_pub and a controller subscribed with
// mosquitto_sub -v receives it.
func TestMQTT311_Quickstart(t *testing.T) {
	testclient.RequireMosquitto(t)
	t.Parallel()
	f := newFleet(t)

	sub := testclient.StartSub(t, append(f.env.MosquittoArgs(f.ctl),
		"-V", "mqttv311", "-d", "-v", "-t", "devices/+/telemetry/#", "-C", "1", "-W", "20")...)
	sub.WaitLine(t, "Subscribed (mid: 1): 0", wait)

	res := pub(t, f.env, f.s1, "-t", "devices/sensor-1/telemetry/temp", "-m", "21.5")
	if res.ExitCode != 0 {
		t.Fatalf("mosquitto_pub: exit %d: %s", res.ExitCode, res.Output())
	}
	sub.WaitLine(t, "devices/sensor-1/telemetry/temp 21.5", wait)
	if code := sub.Wait(t, wait); code != 0 {
		t.Fatalf("mosquitto_sub: exit %d: %s", code, sub.Output())
	}
}

// MQTT 3.1.1 CONNECT refusals are CONNACK 0x05 (not authorised): for a
// valid SVID that is not enrolled, and for an enrolled device asking for a
// forbidden Last Will. The same commands for an enrolled device with an
// allowed will are the positive control.
func TestMQTT311_ConnectRefused(t *testing.T) {
	testclient.RequireMosquitto(t)
	t.Parallel()
	f := newFleet(t)
	stranger := f.env.Issue(t, f.env.DeviceID("stranger"))

	ok := pub(t, f.env, f.s1, "-V", "mqttv311", "-t", "devices/sensor-1/telemetry/t", "-m", "x",
		"--will-topic", "devices/sensor-1/state", "--will-payload", "offline")
	if ok.ExitCode != 0 {
		t.Fatalf("control: mosquitto_pub as sensor-1: exit %d: %s", ok.ExitCode, ok.Output())
	}

	for name, run := range map[string]func() testutil.Result{
		"unenrolled": func() testutil.Result {
			return pub(t, f.env, stranger, "-V", "mqttv311", "-t", "devices/stranger/telemetry/t", "-m", "x")
		},
		"unenrolled with password": func() testutil.Result {
			return pub(t, f.env, stranger, "-V", "mqttv311", "-u", "admin-dev", "-P", "admin", "-t", "devices/stranger/telemetry/t", "-m", "x")
		},
		"forbidden will": func() testutil.Result {
			return pub(t, f.env, f.s1, "-V", "mqttv311", "-t", "devices/sensor-1/telemetry/t", "-m", "x",
				"--will-topic", "devices/sensor-2/state", "--will-payload", "forged")
		},
	} {
		res := run()
		if res.ExitCode == 0 || !strings.Contains(res.Output(), "not authorised") {
			t.Errorf("%s: exit %d, output %q; want CONNACK 0x05 (not authorised)", name, res.ExitCode, res.Output())
		}
	}
}

// MQTT 3.1.1 SUBACK carries 0x80 for each denied filter while the allowed
// filter of the same SUBSCRIBE is granted and delivers.
func TestMQTT311_SubackFailurePerFilter(t *testing.T) {
	testclient.RequireMosquitto(t)
	t.Parallel()
	f := newFleet(t)

	sub := testclient.StartSub(t, append(f.env.MosquittoArgs(f.s1),
		"-V", "mqttv311", "-d", "-v", "-q", "1",
		"-t", "#", "-t", "devices/sensor-1/commands/#", "-t", "devices/+/state", "-t", "$SYS/#",
		"-C", "1", "-W", "20")...)
	line := sub.WaitLine(t, "Subscribed (mid: 1):", wait)
	if !strings.HasSuffix(line, "Subscribed (mid: 1): 128, 1, 128, 128") {
		t.Errorf("SUBACK %q; want granted QoS list 128, 1, 128, 128", line)
	}

	ctl := f.env.MustConnect(t, f.ctl, "ctl", nil)
	d2 := f.env.MustConnect(t, f.s2, "sensor-2", nil)
	d2.Pub(t, msg{Topic: "devices/sensor-2/state", Payload: "other", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-2/commands/c", Payload: "other", QoS: 1})
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/c", Payload: "mine", QoS: 1})
	sub.WaitLine(t, "devices/sensor-1/commands/c mine", wait)
	if code := sub.Wait(t, wait); code != 0 {
		t.Fatalf("mosquitto_sub: exit %d: %s", code, sub.Output())
	}
	for _, l := range sub.Lines() {
		// -d adds lines starting "Client " and "Subscribed"; -v prints each
		// message as "topic payload".
		if strings.HasPrefix(l, "Client ") || strings.HasPrefix(l, "Subscribed ") {
			if strings.Contains(l, "received PUBLISH") && !strings.Contains(l, "'devices/sensor-1/commands/c'") {
				t.Errorf("mosquitto_sub received denied traffic: %s", l)
			}
			continue
		}
		if l != "devices/sensor-1/commands/c mine" {
			t.Errorf("mosquitto_sub received denied traffic: %s", l)
		}
	}
}

// A denied MQTT 3.1.1 PUBLISH reaches no one: at QoS 0 it is dropped, at
// QoS 1 the client is disconnected. An allowed publish after each is the
// positive control.
func TestMQTT311_PublishRefused(t *testing.T) {
	testclient.RequireMosquitto(t)
	t.Parallel()
	f := newFleet(t)
	spy := f.spyOn(t)

	for _, qos := range []string{"0", "1"} {
		res := pub(t, f.env, f.s1, "-V", "mqttv311", "-q", qos, "-t", "devices/sensor-2/telemetry/t", "-m", "forged-"+qos)
		t.Logf("forbidden publish at QoS %s: exit %d: %s", qos, res.ExitCode, strings.TrimSpace(res.Output()))
		ok := pub(t, f.env, f.s1, "-V", "mqttv311", "-q", qos, "-t", "devices/sensor-1/telemetry/t", "-m", "ok-"+qos)
		if ok.ExitCode != 0 {
			t.Fatalf("control publish at QoS %s: exit %d: %s", qos, ok.ExitCode, ok.Output())
		}
		spy.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/t", "ok-"+qos, wait)
	}
	spy.Msgs.ExpectNone(t, quiet)
}

// MQTT 3.1 (protocol level 3, "MQIsdp") is refused: the policy contract
// knows 3.1.1 and 5 only, and mochi would take 3.1 by default. The same
// device with MQTT 3.1.1 is the positive control.
func TestMQTT31_Refused(t *testing.T) {
	testclient.RequireMosquitto(t)
	t.Parallel()
	f := newFleet(t)

	ok := pub(t, f.env, f.s1, "-V", "mqttv311", "-t", "devices/sensor-1/telemetry/t", "-m", "x")
	if ok.ExitCode != 0 {
		t.Fatalf("control: mosquitto_pub -V mqttv311: exit %d: %s", ok.ExitCode, ok.Output())
	}
	res := pub(t, f.env, f.s1, "-V", "mqttv31", "-t", "devices/sensor-1/telemetry/t", "-m", "x")
	if res.ExitCode == 0 {
		t.Fatalf("mosquitto_pub -V mqttv31 was accepted: %s", res.Output())
	}
	if out := strings.ToLower(res.Output()); !strings.Contains(out, "protocol version") {
		t.Fatalf("mosquitto_pub -V mqttv31: want a refusal naming the protocol version, got: %s", res.Output())
	}
}
