package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testmosquitto"
)

// bridge status: "no bridges configured" without any; with one to a real
// Mosquitto, its row says the link is up, and --json is the API's answer.
func TestBridgeStatusCommand(t *testing.T) {
	none := startDay2(t)
	if out := ok(t, none.run("bridge", "status")...); strings.TrimSpace(out) != "no bridges configured" {
		t.Fatalf("bridge status without bridges: %q", out)
	}

	up := testmosquitto.Start(t)
	certFile, keyFile := up.ClientCertFiles(t, "ztgate", t.TempDir())
	e := startDay2(t, func(c *app.Config) {
		c.Bridges = []bridge.Config{{Name: "cloud", URL: "mqtts://" + up.Addr, CAFile: up.CAFile,
			CertFile: certFile, KeyFile: keyFile,
			Out: []bridge.OutRule{{Filter: "devices/+/telemetry/#", RemotePrefix: "plant-a/", QoS: 1}}}}
	})
	var list []bridge.Status
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := json.Unmarshal([]byte(ok(t, e.run("bridge", "status", "--json")...)), &list); err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 && list[0].Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge status --json: %+v, want cloud connected\n%s", list, up.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if list[0].Name != "cloud" || list[0].URL != "mqtts://"+up.Addr {
		t.Fatalf("bridge status --json: %+v", list)
	}
	table := ok(t, e.run("bridge", "status")...)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 || !strings.HasPrefix(strings.Join(strings.Fields(lines[0]), " "), "BRIDGE URL LINK SINCE QUEUED FORWARDED DENIED DROPPED RECEIVED") {
		t.Fatalf("bridge status:\n%s", table)
	}
	if row := strings.Fields(lines[1]); len(row) < 3 || row[0] != "cloud" || row[2] != "up" {
		t.Fatalf("bridge status row %q", lines[1])
	}
	usageFails(t, `unknown command "extra" for "ztgate bridge status"`, e.run("bridge", "status", "extra")...)
	usageFails(t, `unknown command "stauts" for "ztgate bridge"`, e.run("bridge", "stauts")...)
}
