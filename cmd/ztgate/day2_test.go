package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testutil"
)

// day2Env is a gateway for the day-2 commands, with the flags that reach
// its API as the admin.
type day2Env struct {
	*testutil.Env
	admin []string
}

func startDay2(t *testing.T, mods ...func(*app.Config)) *day2Env {
	t.Helper()
	e := testutil.Start(t, testutil.WithConfig(mods...))
	return &day2Env{Env: e, admin: apiFlagsOf(e.App)}
}

// run is the command line args followed by the admin's API flags.
func (e *day2Env) run(args ...string) []string {
	return append(append([]string{}, args...), e.admin...)
}

// deviceJSON decodes `device show NAME`.
func (e *day2Env) show(t *testing.T, name string) map[string]any {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal([]byte(ok(t, e.run("device", "show", name)...)), &d); err != nil {
		t.Fatalf("device show %s: %v", name, err)
	}
	return d
}

// labelsOf is the labels map of a device JSON.
func labelsOf(d map[string]any) map[string]string {
	out := map[string]string{}
	m, _ := d["labels"].(map[string]any)
	for k, v := range m {
		out[k], _ = v.(string)
	}
	return out
}

// unreachable are API flags that reach nothing: a command that fails with
// them before saying "cannot reach" sent no request.
func unreachable(t *testing.T, e *day2Env) []string {
	return []string{"--api", "https://" + testclient.ClosedAddr(t), "--admin-dir", e.App.AdminDir()}
}

func TestDeviceLabelCommand(t *testing.T) {
	e := startDay2(t)
	e.Enroll(t, "sensor-1", map[string]string{"site": "plant-a", "role": "sensor", "old": "x"})
	e.Enroll(t, "sensor-2", map[string]string{"site": "plant-a"})

	out := ok(t, e.run("device", "label", "sensor-1", "site=plant-b", "zone=north", "old-")...)
	if !strings.Contains(out, "sensor-1") || !strings.Contains(out, "role=sensor,site=plant-b,zone=north") {
		t.Fatalf("device label output:\n%s", out)
	}
	want := map[string]string{"site": "plant-b", "role": "sensor", "zone": "north"}
	if got := labelsOf(e.show(t, "sensor-1")); !equalMaps(got, want) {
		t.Fatalf("labels after device label = %v, want %v", got, want)
	}
	// Positive control: the other device is unchanged.
	if got := labelsOf(e.show(t, "sensor-2")); !equalMaps(got, map[string]string{"site": "plant-a"}) {
		t.Fatalf("sensor-2 labels changed: %v", got)
	}
	// --json prints the API's device.
	var d map[string]any
	if err := json.Unmarshal([]byte(ok(t, e.run("device", "label", "sensor-1", "zone-", "--json")...)), &d); err != nil {
		t.Fatal(err)
	}
	if d["name"] != "sensor-1" || labelsOf(d)["zone"] != "" || labelsOf(d)["site"] != "plant-b" {
		t.Fatalf("device label --json = %v", d)
	}
	// A value may hold '=' and ','; only the first '=' splits.
	ok(t, e.run("device", "label", "sensor-1", "note=a=b,c")...)
	if got := labelsOf(e.show(t, "sensor-1"))["note"]; got != "a=b,c" {
		t.Fatalf("note = %q, want a=b,c", got)
	}

	// Bad syntax is refused before any request: the unreachable API is
	// never mentioned.
	dead := unreachable(t, e)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no key", []string{"=v"}, `"=v": want key=value or key-`},
		{"no value or minus", []string{"site"}, `"site": want key=value or key-`},
		{"bare minus", []string{"-"}, `"-": want key=value or key-`},
		{"invalid key", []string{"Site!=x"}, `label key "Site!"`},
		{"key with space", []string{"a b=x"}, `label key "a b"`},
		{"invalid key removed", []string{"a,b-"}, `label key "a,b"`},
		{"set and removed", []string{"site=x", "site-"}, `"site" is both set and removed`},
		{"set twice", []string{"site=x", "site=y"}, `"site" is set twice`},
		{"bad name", []string{"x=y"}, "invalid device name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "sensor-1"
			if tc.name == "bad name" {
				name = "Sensor/1"
			}
			args := append(append([]string{"device", "label", name}, tc.args...), dead...)
			failsWith(t, tc.want, args...)
		})
	}
	// The API's refusals, one line each: an unknown device (404), a value
	// the registry refuses (400).
	failsWith(t, "not found", e.run("device", "label", "ghost", "a=b")...)
	failsWith(t, "(HTTP 400)", e.run("device", "label", "sensor-1", "a="+strings.Repeat("v", 300))...)
	// Nothing to change is a usage error.
	usageFails(t, "requires at least 2 arg(s)", e.run("device", "label", "sensor-1")...)
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestDeviceDeleteCommand(t *testing.T) {
	e := startDay2(t)
	dev := e.Enroll(t, "sensor-1", map[string]string{"site": "plant-a"})
	other := e.Enroll(t, "sensor-2", nil)
	c := e.MustConnect(t, dev, "sensor-1", nil)
	c2 := e.MustConnect(t, other, "sensor-2", nil)

	out := ok(t, e.run("device", "delete", "sensor-1")...)
	for _, want := range []string{"deleted device sensor-1", e.DeviceID("sensor-1"), "site=plant-a"} {
		if !strings.Contains(out, want) {
			t.Fatalf("device delete output %q lacks %q", out, want)
		}
	}
	// Its identity is no longer enrolled: the session ends, and the
	// registry does not know it.
	c.WaitClosed(t, testutil.Wait)
	failsWith(t, "not found", e.run("device", "show", "sensor-1")...)
	failsWith(t, "not found", e.run("device", "delete", "sensor-1")...)
	// Positive control: the other device is still there and connected.
	if d := e.show(t, "sensor-2"); d["status"] != "active" {
		t.Fatalf("sensor-2 = %v", d)
	}
	if c2.Closed() {
		t.Fatal("deleting sensor-1 ended sensor-2's session")
	}

	var d map[string]any
	if err := json.Unmarshal([]byte(ok(t, e.run("device", "delete", "sensor-2", "--json")...)), &d); err != nil {
		t.Fatal(err)
	}
	if d["name"] != "sensor-2" || d["spiffe_id"] != e.DeviceID("sensor-2") {
		t.Fatalf("device delete --json = %v", d)
	}
	failsWith(t, "invalid device name", append([]string{"device", "delete", "../x"}, unreachable(t, e)...)...)
	usageFails(t, "accepts 1 arg(s), received 2", e.run("device", "delete", "a", "b")...)
}

// sessionJSON is one session of `session list --json`, as the API's
// contract says.
type sessionJSON struct {
	ClientID      string `json:"client_id"`
	Device        string `json:"device"`
	SPIFFEID      string `json:"spiffe_id"`
	RemoteAddr    string `json:"remote_addr"`
	Subscriptions []struct {
		Filter string `json:"filter"`
		QoS    int    `json:"qos"`
	} `json:"subscriptions"`
	QueueDepth *int `json:"queue_depth"`
}

func TestSessionCommands(t *testing.T) {
	e := startDay2(t)
	s1 := e.Enroll(t, "sensor-1", nil)
	s2 := e.Enroll(t, "sensor-2", nil)
	c1 := e.MustConnect(t, s1, "client-s1", nil)
	c1.Sub(t, "devices/sensor-1/commands/#")
	c2 := e.MustConnect(t, s2, "client-s2", nil)

	table := ok(t, e.run("session", "list")...)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "DEVICE CLIENT-ID REMOTE-ADDR PROTOCOL CONNECTED SUBSCRIPTIONS QUEUE" {
		t.Fatalf("session list:\n%s", table)
	}
	row := strings.Fields(lines[1])
	if len(row) != 7 || row[0] != "sensor-1" || row[1] != "client-s1" || !strings.HasPrefix(row[2], "127.0.0.1:") ||
		row[3] != "5" || row[5] != "devices/sensor-1/commands/#:1" || row[6] != "0" {
		t.Fatalf("session list row %q", lines[1])
	}
	if row := strings.Fields(lines[2]); row[0] != "sensor-2" || row[5] != "-" {
		t.Fatalf("session list row %q", lines[2])
	}

	var list []sessionJSON
	if err := json.Unmarshal([]byte(ok(t, e.run("session", "list", "--device", "sensor-1", "--json")...)), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ClientID != "client-s1" || len(list[0].Subscriptions) != 1 ||
		list[0].Subscriptions[0].Filter != "devices/sensor-1/commands/#" || list[0].QueueDepth == nil {
		t.Fatalf("session list --device sensor-1 --json = %+v", list)
	}
	failsWith(t, "(HTTP 404)", e.run("session", "list", "--device", "ghost")...)
	failsWith(t, "invalid device name", append([]string{"session", "list", "--device", "Bad/Name"}, unreachable(t, e)...)...)

	// kick ends sensor-1's session and leaves the device active; sensor-2
	// stays connected.
	if out := ok(t, e.run("session", "kick", "sensor-1")...); out != "device sensor-1: 1 session ended\n" {
		t.Fatalf("session kick output %q", out)
	}
	c1.WaitClosed(t, testutil.Wait)
	if d := e.show(t, "sensor-1"); d["status"] != "active" {
		t.Fatalf("kick changed the device's status: %v", d)
	}
	if c2.Closed() {
		t.Fatal("kicking sensor-1 ended sensor-2's session")
	}
	var kick map[string]any
	if err := json.Unmarshal([]byte(ok(t, e.run("session", "kick", "sensor-1", "--json")...)), &kick); err != nil {
		t.Fatal(err)
	}
	if kick["device"] != "sensor-1" || kick["kicked"] != float64(0) {
		t.Fatalf("second kick --json = %v", kick)
	}
	// The kicked device may come back: it was not suspended.
	e.MustConnect(t, s1, "client-s1", nil)

	failsWith(t, "not found", e.run("session", "kick", "ghost")...)
	usageFails(t, "accepts 1 arg(s), received 0", e.run("session", "kick")...)
}

// In a cluster every session names its node: the table gets a NODE column;
// a single gateway's table has none (TestSessionCommands).
func TestPrintSessionsOfACluster(t *testing.T) {
	at := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	var b strings.Builder
	if err := printSessions(&b, []sessionRow{
		{ClientID: "c1", Device: "sensor-1", RemoteAddr: "127.0.0.1:5000", ProtocolVersion: 5, ConnectedAt: at, Node: "n1"},
		{ClientID: "c2", Device: "sensor-2", RemoteAddr: "127.0.0.1:5001", ProtocolVersion: 4, ConnectedAt: at, Node: "n2"},
	}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "DEVICE CLIENT-ID REMOTE-ADDR PROTOCOL CONNECTED SUBSCRIPTIONS QUEUE NODE" {
		t.Fatalf("cluster session table:\n%s", b.String())
	}
	for i, want := range []string{"n1", "n2"} {
		if row := strings.Fields(lines[i+1]); len(row) != 8 || row[7] != want {
			t.Fatalf("row %d %q: want node %s last", i, lines[i+1], want)
		}
	}
}

func TestRetainedCommands(t *testing.T) {
	e := startDay2(t)
	s1 := e.Enroll(t, "sensor-1", nil)
	s2 := e.Enroll(t, "sensor-2", nil)
	c1 := e.MustConnect(t, s1, "s1", nil)
	c1.Pub(t, testclient.Msg{Topic: "devices/sensor-1/state", Payload: "online", QoS: 1, Retain: true})
	c2 := e.MustConnect(t, s2, "s2", nil)
	c2.Pub(t, testclient.Msg{Topic: "devices/sensor-2/state", Payload: "offline!", QoS: 1, Retain: true})

	table := ok(t, e.run("retained", "list")...)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "TOPIC QOS SIZE CREATED SPIFFE-ID" {
		t.Fatalf("retained list:\n%s", table)
	}
	if row := strings.Fields(lines[1]); row[0] != "devices/sensor-1/state" || row[1] != "1" || row[2] != "6" || row[4] != e.DeviceID("sensor-1") {
		t.Fatalf("retained list row %q", lines[1])
	}
	var page struct {
		Messages []struct {
			Topic string `json:"topic"`
		} `json:"messages"`
		Truncated bool `json:"truncated"`
	}
	if err := json.Unmarshal([]byte(ok(t, e.run("retained", "list", "--filter", "devices/sensor-2/#", "--json")...)), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 1 || page.Messages[0].Topic != "devices/sensor-2/state" || page.Truncated {
		t.Fatalf("retained list --filter --json = %+v", page)
	}
	// A cut list says so, on stderr, beside a table that is still whole.
	r := ztgate(t, nil, "", e.run("retained", "list", "--limit", "1")...)
	if r.code != 0 || strings.Count(strings.TrimSpace(r.stdout), "\n") != 1 || !strings.Contains(r.stderr, "more retained messages match") {
		t.Fatalf("retained list --limit 1: %+v", r)
	}

	if out := ok(t, e.run("retained", "delete", "devices/sensor-1/state")...); out != "deleted the retained message on devices/sensor-1/state\n" {
		t.Fatalf("retained delete output %q", out)
	}
	if out := ok(t, e.run("retained", "list")...); strings.Contains(out, "sensor-1") || !strings.Contains(out, "devices/sensor-2/state") {
		t.Fatalf("after delete, retained list:\n%s", out)
	}
	failsWith(t, `no retained message on topic "devices/sensor-1/state" (HTTP 404)`, e.run("retained", "delete", "devices/sensor-1/state")...)
	var del map[string]any
	if err := json.Unmarshal([]byte(ok(t, e.run("retained", "delete", "devices/sensor-2/state", "--json")...)), &del); err != nil {
		t.Fatal(err)
	}
	if del["topic"] != "devices/sensor-2/state" || del["deleted"] != true {
		t.Fatalf("retained delete --json = %v", del)
	}

	dead := unreachable(t, e)
	failsWith(t, "wildcard", append([]string{"retained", "delete", "devices/+/state"}, dead...)...)
	failsWith(t, "empty", append([]string{"retained", "delete", ""}, dead...)...)
	failsWith(t, "--limit 0", append([]string{"retained", "list", "--limit", "0"}, dead...)...)
	failsWith(t, "(HTTP 400)", e.run("retained", "list", "--filter", "a/#/b")...)
}

func TestPolicyRmCommand(t *testing.T) {
	e := startDay2(t, func(c *app.Config) { c.PolicyWatch = false })
	dir := t.TempDir()
	notes := filepath.Join(dir, "notes.rego")
	writeFile(t, notes, "package ztgate.authz\n\nnotes := \"site rules go here\"\n")
	ok(t, e.run("policy", "push", notes)...)
	withNotes := e.App.Engine().Revision()

	out := ok(t, e.run("policy", "rm", "notes.rego")...)
	rev := e.App.Engine().Revision()
	if rev == withNotes || !strings.Contains(out, "removed notes.rego") || !strings.Contains(out, "revision:     "+rev) {
		t.Fatalf("policy rm: revision %s -> %s, output:\n%s", withNotes, rev, out)
	}
	if _, err := os.Stat(filepath.Join(e.App.PolicyDir(), "notes.rego")); !os.IsNotExist(err) {
		t.Fatalf("the removed module is still in the policy directory: %v", err)
	}
	failsWith(t, "(HTTP 404)", e.run("policy", "rm", "notes.rego")...)

	// The last module that is not a test: refused (409).
	failsWith(t, "the policy would be empty", e.run("policy", "rm", "authz.rego")...)

	// Removing the policy but not its tests leaves a set whose tests do
	// not pass: refused, the revision in force unchanged.
	ok(t, e.run("policy", "push", notes)...)
	failsWith(t, "policy rm authz.rego: refused, the policy in force is unchanged", e.run("policy", "rm", "authz.rego")...)
	if e.App.Engine().Revision() != withNotes {
		t.Fatal("a refused removal changed the revision in force")
	}
	if _, err := os.Stat(filepath.Join(e.App.PolicyDir(), "authz.rego")); err != nil {
		t.Fatalf("a refused removal removed the file: %v", err)
	}

	var st policyStatus
	if err := json.Unmarshal([]byte(ok(t, e.run("policy", "rm", "notes.rego", "--json")...)), &st); err != nil {
		t.Fatal(err)
	}
	if st.Revision != rev || contains(st.Modules, "notes.rego") {
		t.Fatalf("policy rm --json = %+v, want revision %s without notes.rego", st, rev)
	}
	failsWith(t, "module name", append([]string{"policy", "rm", "../x.rego"}, unreachable(t, e)...)...)
}
