package test

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testmosquitto"
	"github.com/ztgate/ztgate/internal/testutil"
)

// bridgeRig is a gateway bridged to a real Mosquitto on loopback (TLS,
// client certificates both ways) and a watcher subscribed to everything
// upstream.
type bridgeRig struct {
	up      *testmosquitto.Broker
	node    *testutil.Node
	obs     *testutil.Observed // reads node's decision log
	watcher *testclient.Client
}

// startBridgeRig starts the upstream and a gateway with one bridge,
// "cloud": telemetry (and, for the policy to refuse, commands) out under
// plant-a/, commands in from plant-a/; state has no out rule.
func startBridgeRig(t *testing.T) *bridgeRig {
	t.Helper()
	up := testmosquitto.Start(t)
	certFile, keyFile := up.ClientCertFiles(t, "ztgate-plant-a", t.TempDir())
	logPath := filepath.Join(t.TempDir(), "decisions.log")
	node := testutil.StartNode(t, testutil.WithConfig(func(c *app.Config) {
		c.DecisionLog.Path = logPath
		c.DecisionLog.AggregateInterval = 0 // every deny in full
		c.Bridges = []bridge.Config{cloudBridge(up, certFile, keyFile,
			bridge.OutRule{Filter: "devices/+/telemetry/#", RemotePrefix: "plant-a/", QoS: 1},
			// Wider than the default policy lets out: the policy must
			// still stop what it does not grant.
			bridge.OutRule{Filter: "devices/+/commands/#", RemotePrefix: "plant-a/", QoS: 1},
		)}
	}))
	r := &bridgeRig{up: up, node: node, obs: &testutil.Observed{Env: node.Env, DecisionLogPath: logPath}}
	r.watcher = r.upstreamClient(t, "watcher")
	r.watcher.Sub(t, "#")
	r.waitConnected(t)
	return r
}

// cloudBridge is the bridge "cloud" to up as the client ztgate-plant-a
// (MQTT 5) with the out rules out, and commands in from plant-a/.
func cloudBridge(up *testmosquitto.Broker, certFile, keyFile string, out ...bridge.OutRule) bridge.Config {
	return bridge.Config{
		Name:            "cloud",
		URL:             "mqtts://" + up.Addr,
		CAFile:          up.CAFile,
		CertFile:        certFile,
		KeyFile:         keyFile,
		ClientID:        "ztgate-plant-a",
		ProtocolVersion: 5,
		Out:             out,
		In:              []bridge.InRule{{Filter: "plant-a/devices/+/commands/#", StripPrefix: "plant-a/", QoS: 1}},
	}
}

// upstreamClient connects an MQTT 5 client straight to the upstream.
func (r *bridgeRig) upstreamClient(t *testing.T, cn string) *testclient.Client {
	t.Helper()
	return upstreamClientOf(t, r.up, cn)
}

// upstreamClientOf connects an MQTT 5 client straight to up.
func upstreamClientOf(t *testing.T, up *testmosquitto.Broker, cn string) *testclient.Client {
	t.Helper()
	d := testclient.Dialer{Addr: up.Addr, TLS: up.TLSConfig(up.ClientCert(t, cn)), Name: "upstream " + cn}
	return d.MustConnect(t, cn, nil)
}

// bridgeStatus is the bridge "cloud" as GET /v1/bridges reports it.
func (r *bridgeRig) bridgeStatus(t *testing.T) bridge.Status {
	t.Helper()
	res := r.node.API(t, r.node.Admin, http.MethodGet, "/v1/bridges", nil)
	if res.Status != http.StatusOK {
		t.Fatalf("GET /v1/bridges: %d %s", res.Status, res.Body)
	}
	var all []bridge.Status
	if err := json.Unmarshal(res.Body, &all); err != nil || len(all) != 1 || all[0].Name != "cloud" {
		t.Fatalf("GET /v1/bridges: %v %s", err, res.Body)
	}
	return all[0]
}

// waitConnected waits until the bridge reports its upstream link up.
func (r *bridgeRig) waitConnected(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := r.bridgeStatus(t)
		if st.Connected {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge not connected after 20 s: %+v\nupstream log:\n%s", st, r.up.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Telemetry goes upstream with its prefix. A topic outside every out rule
// (the device's state) and a topic an out rule covers but the policy does
// not let out (a controller's command) never arrive upstream, though both
// were published locally (seen by local subscribers, the positive
// control); the deny is counted and in the decision log.
func TestBridge_OutboundScopedAndDecided(t *testing.T) {
	r := startBridgeRig(t)
	s1 := r.node.MustConnect(t, r.node.Enroll(t, "sensor-1", nil), "sensor-1", nil)
	ctl := r.node.MustConnect(t, r.node.Enroll(t, "ctl-1", map[string]string{"role": "controller"}), "ctl-1", nil)
	s1.Sub(t, "devices/sensor-1/commands/#")
	ctl.Sub(t, "devices/+/state")

	s1.Pub(t, testclient.Msg{Topic: "devices/sensor-1/telemetry/temp", Payload: "21.5", QoS: 1})
	r.watcher.Msgs.ExpectPayload(t, "plant-a/devices/sensor-1/telemetry/temp", "21.5", wait)

	s1.Pub(t, testclient.Msg{Topic: "devices/sensor-1/state", Payload: "online", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/state", "online", wait)

	before := r.bridgeStatus(t)
	ctl.Pub(t, testclient.Msg{Topic: "devices/sensor-1/commands/reboot", Payload: "now", QoS: 1})
	s1.Msgs.ExpectPayload(t, "devices/sensor-1/commands/reboot", "now", wait)

	// Order is kept on the one upstream link: once this is seen, anything
	// forwarded before it would have been seen too.
	s1.Pub(t, testclient.Msg{Topic: "devices/sensor-1/telemetry/after", Payload: "x", QoS: 1})
	r.watcher.Msgs.ExpectPayload(t, "plant-a/devices/sensor-1/telemetry/after", "x", wait)
	r.watcher.Msgs.Never(t, "plant-a/devices/sensor-1/state")
	r.watcher.Msgs.Never(t, "plant-a/devices/sensor-1/commands/reboot")
	r.watcher.Msgs.Never(t, "devices/sensor-1/telemetry/temp") // never without its prefix

	if after := r.bridgeStatus(t); after.Denied <= before.Denied {
		t.Fatalf("denied count %d -> %d, want it to grow", before.Denied, after.Denied)
	}
	var found bool
	for _, e := range r.obs.Decisions(t) {
		var in struct {
			Action string `json:"action"`
			Topic  string `json:"topic"`
			Bridge struct {
				Name        string `json:"name"`
				RemoteTopic string `json:"remote_topic"`
			} `json:"bridge"`
		}
		if json.Unmarshal(e.Input, &in) == nil && in.Action == "bridge_out" && !e.Result.Allow &&
			in.Topic == "devices/sensor-1/commands/reboot" && in.Bridge.Name == "cloud" &&
			in.Bridge.RemoteTopic == "plant-a/devices/sensor-1/commands/reboot" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no bridge_out deny of devices/sensor-1/commands/reboot in the decision log")
	}
}

// Upstream down: 100 QoS 1 messages are acknowledged to the device and
// kept on disk; the upstream and the gateway restart, and all 100 arrive
// upstream exactly once, in order.
func TestBridge_StoreAndForwardAcrossRestart(t *testing.T) {
	r := startBridgeRig(t)
	dev := r.node.Enroll(t, "sensor-1", nil)
	r.up.Stop()
	s1 := r.node.MustConnect(t, dev, "sensor-1", nil)
	const n = 100
	for i := range n {
		s1.Pub(t, testclient.Msg{Topic: "devices/sensor-1/telemetry/seq", Payload: strconv.Itoa(i), QoS: 1})
	}
	deadline := time.Now().Add(10 * time.Second)
	for st := r.bridgeStatus(t); st.Queued != n; st = r.bridgeStatus(t) {
		if time.Now().After(deadline) {
			t.Fatalf("queued %d, want %d: %+v", st.Queued, n, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s1.Close()

	r.node.Stop(t)
	r.up.Restart(t)
	r.watcher = r.upstreamClient(t, "watcher-2")
	r.watcher.Sub(t, "plant-a/#")
	r.node.Restart(t)

	for i := range n {
		m := r.watcher.Msgs.Next(t, 20*time.Second)
		if m.Topic != "plant-a/devices/sensor-1/telemetry/seq" || string(m.Payload) != strconv.Itoa(i) {
			t.Fatalf("message %d upstream: %s %q, want plant-a/devices/sensor-1/telemetry/seq %q", i, m.Topic, m.Payload, strconv.Itoa(i))
		}
	}
	r.watcher.Msgs.ExpectNone(t, time.Second) // no duplicates
	if st := r.bridgeStatus(t); st.Queued != 0 || st.Forwarded < n {
		t.Fatalf("after the drain: %+v", st)
	}
}

// A command published upstream reaches its device only: sensor-2 is
// subscribed to what it may read and gets nothing of sensor-1's, and the
// device gets it from the bridge's identity.
func TestBridge_InboundCommandReachesOnlyItsDevice(t *testing.T) {
	r := startBridgeRig(t)
	s1 := r.node.MustConnect(t, r.node.Enroll(t, "sensor-1", nil), "sensor-1", nil)
	s2 := r.node.MustConnect(t, r.node.Enroll(t, "sensor-2", nil), "sensor-2", nil)
	ctl := r.node.MustConnect(t, r.node.Enroll(t, "ctl-1", map[string]string{"role": "controller"}), "ctl-1", nil)
	s1.Sub(t, "devices/sensor-1/commands/#")
	s2.Sub(t, "devices/sensor-2/commands/#")
	ctl.Sub(t, "devices/+/telemetry/#")

	cloud := r.upstreamClient(t, "cloud-app")
	cloud.Pub(t, testclient.Msg{Topic: "plant-a/devices/sensor-1/commands/reboot", Payload: "now", QoS: 1})
	s1.Msgs.ExpectPayload(t, "devices/sensor-1/commands/reboot", "now", wait)
	// A message the bridge must not bring in (not a command) and one
	// outside the strip prefix never arrive; a command for sensor-2
	// published after them does (positive control, in order).
	cloud.Pub(t, testclient.Msg{Topic: "plant-a/devices/sensor-1/telemetry/fake", Payload: "x", QoS: 1})
	cloud.Pub(t, testclient.Msg{Topic: "plant-b/devices/sensor-2/commands/x", Payload: "x", QoS: 1})
	cloud.Pub(t, testclient.Msg{Topic: "plant-a/devices/sensor-2/commands/ping", Payload: "p", QoS: 1})
	s2.Msgs.ExpectPayload(t, "devices/sensor-2/commands/ping", "p", wait)
	s2.Msgs.Never(t, "devices/sensor-1/commands/reboot")
	s1.Msgs.Never(t, "devices/sensor-2/commands/ping")
	ctl.Msgs.Never(t, "devices/sensor-1/telemetry/fake")
	s2.Msgs.Never(t, "devices/sensor-2/commands/x")

	// No loop: what came in is not sent out again. The watcher upstream
	// sees the cloud app's four messages once each, and no second copy
	// (or a plant-a/plant-a/ one) from the gateway.
	for _, topic := range []string{"plant-a/devices/sensor-1/commands/reboot", "plant-a/devices/sensor-1/telemetry/fake",
		"plant-b/devices/sensor-2/commands/x", "plant-a/devices/sensor-2/commands/ping"} {
		r.watcher.Msgs.ExpectNext(t, topic, wait)
	}
	r.watcher.Msgs.ExpectNone(t, 500*time.Millisecond)
	if st := r.bridgeStatus(t); st.Received < 2 {
		t.Fatalf("bridge status after inbound: %+v", st)
	}
}
