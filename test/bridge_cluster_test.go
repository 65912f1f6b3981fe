package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testmosquitto"
	"github.com/ztgate/ztgate/internal/testutil"
)

// TestBridge_Cluster: three nodes, each with the bridge "cloud" to one real
// Mosquitto. Every node keeps its own link (its own client ID: all three
// stay connected at once). A message published on B leaves once, through
// B. Commands published upstream are each handed to one node (a shared
// subscription), which publishes them to the cluster: the device on A gets
// every one exactly once, whichever node took it.
func TestBridge_Cluster(t *testing.T) {
	up := testmosquitto.Start(t)
	certFile, keyFile := up.ClientCertFiles(t, "ztgate-plant-a", t.TempDir())
	c := testutil.StartCluster(t, 3, testutil.WithConfig(func(cfg *app.Config) {
		cfg.Bridges = []bridge.Config{cloudBridge(up, certFile, keyFile,
			bridge.OutRule{Filter: "devices/+/telemetry/#", RemotePrefix: "plant-a/", QoS: 1})}
	}))
	a, b := c.Nodes[0], c.Nodes[1]
	status := func(e *testutil.Env) bridge.Status {
		t.Helper()
		res := e.API(t, e.Admin, http.MethodGet, "/v1/bridges", nil)
		var all []bridge.Status
		if err := json.Unmarshal(res.Body, &all); err != nil || res.Status != http.StatusOK || len(all) != 1 {
			t.Fatalf("GET /v1/bridges: %d %s", res.Status, res.Body)
		}
		return all[0]
	}
	allConnected := func() bool {
		for _, e := range c.Nodes {
			if !status(e).Connected {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(20 * time.Second); !allConnected(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the nodes' bridges are not all connected after 20 s\nupstream log:\n%s", up.Log())
		}
	}
	watcher := upstreamClientOf(t, up, "watcher")
	watcher.Sub(t, "plant-a/devices/+/telemetry/#")

	dev := a.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
	waitDevice(t, b, "sensor-1")
	onA := a.MustConnect(t, dev, "s1-a", nil)
	onA.Sub(t, "devices/sensor-1/commands/#")
	onB := b.MustConnect(t, dev, "s1-b", nil)

	// Out: published on B, forwarded by B alone.
	for i := range 5 {
		onB.Pub(t, testclient.Msg{Topic: "devices/sensor-1/telemetry/t", Payload: strconv.Itoa(i), QoS: 1})
	}
	for i := range 5 {
		watcher.Msgs.ExpectPayload(t, "plant-a/devices/sensor-1/telemetry/t", strconv.Itoa(i), wait)
	}

	// In: each command once on A, whichever node the upstream gave it to.
	before := 0
	for _, e := range c.Nodes {
		before += int(status(e).Received)
	}
	cloud := upstreamClientOf(t, up, "cloud-app")
	const commands = 12
	for i := range commands {
		cloud.Pub(t, testclient.Msg{Topic: "plant-a/devices/sensor-1/commands/c", Payload: strconv.Itoa(i), QoS: 1})
	}
	var got []string
	for len(got) < commands {
		m, ok := onA.Msgs.Take(wait)
		if !ok {
			t.Fatalf("the device on A got %d of %d commands: %v", len(got), commands, got)
		}
		if m.Topic != "devices/sensor-1/commands/c" {
			t.Fatalf("the device on A got %s %q", m.Topic, m.Payload)
		}
		got = append(got, string(m.Payload))
	}
	slices.SortFunc(got, func(x, y string) int { return mustAtoi(t, x) - mustAtoi(t, y) })
	for i, p := range got {
		if p != strconv.Itoa(i) {
			t.Fatalf("commands on A: %v, want each of 0..%d once", got, commands-1)
		}
	}
	onA.Msgs.ExpectNone(t, quiet)
	watcher.Msgs.ExpectNone(t, quiet) // nothing forwarded twice

	after, perNode := 0, []uint64{}
	for _, e := range c.Nodes {
		st := status(e)
		after += int(st.Received)
		perNode = append(perNode, st.Received)
		if !st.Connected {
			t.Fatalf("a node's bridge lost its link during the test: %+v", st)
		}
	}
	if after-before != commands {
		t.Fatalf("the nodes received %d commands from upstream (per node %v), want %d: each once, by one node",
			after-before, perNode, commands)
	}
	t.Logf("commands taken per node: %v", perNode)
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(fmt.Errorf("payload %q: %w", s, err))
	}
	return n
}
