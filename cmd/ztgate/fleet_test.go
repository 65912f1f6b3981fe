package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/registry"
)

// apiFlagsOf are the flags that reach a's API as its admin.
func apiFlagsOf(a *app.App) []string {
	return []string{"--api", a.APIURL(), "--admin-dir", a.AdminDir()}
}

// localhostURL is a's API by the name on its certificate.
func localhostURL(a *app.App) string {
	_, port, _ := net.SplitHostPort(a.APIAddr().String())
	return "https://localhost:" + port
}

// keyValues parses the k=v lines of `device token`.
func keyValues(t *testing.T, out string) map[string]string {
	t.Helper()
	kv := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("line %q of %q is not k=v", l, out)
		}
		kv[k] = v
	}
	return kv
}

// mqttConnect makes a TLS connection to a's MQTT listener with conf and sends
// an MQTT 5 CONNECT; it returns the CONNACK's reason code.
func mqttConnect(t *testing.T, a *app.App, conf *tls.Config, clientID string) (byte, error) {
	t.Helper()
	conf = conf.Clone()
	conf.ServerName = "localhost"
	d := testclient.Dialer{Addr: a.MQTTAddr().String(), TLS: conf}
	c, ca, err := d.Dial(t, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if ca == nil && err != nil {
		return 0, err
	}
	if err == nil {
		c.Close()
	}
	return ca.ReasonCode, nil
}

func TestBootstrapEnrollment(t *testing.T) {
	a := startApp(t)
	admin := apiFlagsOf(a)
	pin := identity.CAPin(a.CA().Certificate())

	kv := keyValues(t, ok(t, append([]string{"device", "token", "sensor-2", "--label", "site=lab", "--ttl", "30m"}, admin...)...))
	token := kv["token"]
	if token == "" || kv["ca_pin"] != pin || kv["spiffe_id"] != "spiffe://example.org/device/sensor-2" {
		t.Fatalf("device token printed %v; want token, ca_pin %s and the SPIFFE ID", kv, pin)
	}
	exp, err := time.Parse(time.RFC3339, kv["expires_at"])
	if err != nil || time.Until(exp) > 31*time.Minute || time.Until(exp) < 25*time.Minute {
		t.Fatalf("expires_at %q (%v): want about 30 minutes from now", kv["expires_at"], err)
	}
	dev, err := a.Registry().Get("sensor-2")
	if err != nil || dev.Status != registry.StatusPending || dev.Labels["site"] != "lab" {
		t.Fatalf("after device token, the registry holds %+v, %v; want a pending device with its label", dev, err)
	}

	// The device side, from a clean directory, as a new user runs it.
	work := t.TempDir()
	out := filepath.Join(work, "sensor-2")
	enroll := func(args ...string) []string {
		return append([]string{"enroll", "--api", localhostURL(a), "--out", out}, args...)
	}

	otherCA, err := identity.LoadOrCreateCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("example.org"))
	if err != nil {
		t.Fatal(err)
	}
	wrongPin := identity.CAPin(otherCA.Certificate())
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no pin", enroll("--token", token), "--ca-pin is required"},
		{"empty pin", enroll("--token", token, "--ca-pin", ""), "--ca-pin is required"},
		{"malformed pin", enroll("--token", token, "--ca-pin", "md5:abc"), "--ca-pin"},
		{"pin of another CA", enroll("--token", token, "--ca-pin", wrongPin), "the token was not sent"},
		{"no token", enroll("--ca-pin", pin), "--token is required"},
		{"plain http", []string{"enroll", "--api", "http://localhost:1", "--token", token, "--ca-pin", pin}, "want an https:// URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			failsWith(t, tc.want, tc.args...)
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("a refused enroll wrote %s (%v)", out, err)
			}
		})
	}
	// The refusals above never reached the token: it still works.
	stdout := ok(t, enroll("--token", token, "--ca-pin", pin)...)
	if !strings.Contains(stdout, "enrolled as spiffe://example.org/device/sensor-2") {
		t.Fatalf("enroll output:\n%s", stdout)
	}
	checkSVIDDir(t, a, out, "spiffe://example.org/device/sensor-2")
	if dev, err := a.Registry().Get("sensor-2"); err != nil || dev.Status != registry.StatusActive {
		t.Fatalf("after enroll, the device is %+v, %v; want active", dev, err)
	}

	// The gateway accepts the new identity: TLS handshake and MQTT CONNECT.
	conf, err := identity.LoadSVIDDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if code, err := mqttConnect(t, a, conf, "sensor-2"); err != nil || code != 0 {
		t.Fatalf("CONNECT with the enrolled SVID: reason %#x, %v; want success", code, err)
	}

	// A used token is refused, in one line that says why.
	again := filepath.Join(work, "again")
	failsWith(t, "the API refused the token: it is wrong, expired, or already used with another key",
		"enroll", "--api", localhostURL(a), "--out", again, "--token", token, "--ca-pin", pin)
	failsWith(t, "the API refused the token", "enroll", "--api", localhostURL(a), "--out", again, "--token", "not-a-token", "--ca-pin", pin)

	// The token may come from the environment; --json prints the API's answer.
	var resp tokenResponse
	if err := json.Unmarshal([]byte(ok(t, append([]string{"device", "token", "sensor-3", "--json"}, admin...)...)), &resp); err != nil || resp.Token == "" || resp.CAPin != pin {
		t.Fatalf("device token --json: %+v, %v", resp, err)
	}
	envOut := filepath.Join(work, "sensor-3")
	r := ztgate(t, map[string]string{"ZTGATE_TOKEN": resp.Token, "ZTGATE_API": localhostURL(a)}, "", "enroll", "--ca-pin", pin, "--out", envOut)
	if r.code != 0 {
		t.Fatalf("enroll with ZTGATE_TOKEN and ZTGATE_API: %+v", r)
	}
	checkSVIDDir(t, a, envOut, "spiffe://example.org/device/sensor-3")

	// Token requests are checked before anything is sent.
	failsWith(t, "invalid device name", append([]string{"device", "token", "Bad/Name"}, admin...)...)
	failsWith(t, "--ttl", append([]string{"device", "token", "ok-1", "--ttl", "0s"}, admin...)...)
	failsWith(t, "--ttl", append([]string{"device", "token", "ok-1", "--ttl", "200h"}, admin...)...)
	// An active device gets no token: its identity cannot be taken over.
	failsWith(t, "HTTP 409", append([]string{"device", "token", "sensor-2"}, admin...)...)
}

func TestDeviceListSelectorAndPaging(t *testing.T) {
	a := startApp(t)
	td := a.TrustDomain()
	for _, d := range []struct {
		name   string
		labels map[string]string
		status registry.Status
	}{
		{"pump-1", map[string]string{"site": "north", "role": "sensor"}, registry.StatusActive},
		{"pump-2", map[string]string{"site": "north", "role": "sensor"}, registry.StatusSuspended},
		{"pump-3", map[string]string{"site": "north", "role": "valve"}, registry.StatusActive},
		{"pump-4", map[string]string{"site": "south", "role": "sensor"}, registry.StatusActive},
		{"pump-5", map[string]string{"site": "north", "role": "sensor"}, registry.StatusActive},
	} {
		id, _ := identity.DeviceID(td, d.name)
		if _, err := a.Registry().Create(registry.Device{Name: d.name, SPIFFEID: id.String(), Labels: d.labels, Status: d.status}); err != nil {
			t.Fatal(err)
		}
	}
	names := func(args ...string) string {
		t.Helper()
		table := ok(t, append(append([]string{"device", "list"}, args...), apiFlagsOf(a)...)...)
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if strings.Join(strings.Fields(lines[0]), " ") != "NAME SPIFFE-ID STATUS LABELS" {
			t.Fatalf("device list %v header:\n%s", args, table)
		}
		var out []string
		for _, l := range lines[1:] {
			out = append(out, strings.Fields(l)[0])
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "admin-dev,pump-1,pump-2,pump-3,pump-4,pump-5"},
		// Pages of 2: the command follows next to the end.
		{[]string{"--limit", "2"}, "admin-dev,pump-1,pump-2,pump-3,pump-4,pump-5"},
		{[]string{"--limit", "1"}, "admin-dev,pump-1,pump-2,pump-3,pump-4,pump-5"},
		{[]string{"--selector", "site=north"}, "pump-1,pump-2,pump-3,pump-5"},
		{[]string{"--selector", "site=north", "--limit", "2"}, "pump-1,pump-2,pump-3,pump-5"},
		{[]string{"--selector", "site=north,role=sensor", "--limit", "2"}, "pump-1,pump-2,pump-5"},
		{[]string{"--selector", "site=north,role=sensor", "--status", "active", "--limit", "2"}, "pump-1,pump-5"},
		{[]string{"--status", "suspended"}, "pump-2"},
		{[]string{"--selector", "site=west"}, ""},
	} {
		if got := names(tc.args...); got != tc.want {
			t.Errorf("device list %v = %s, want %s", tc.args, got, tc.want)
		}
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(ok(t, append([]string{"device", "list", "--json", "--limit", "2", "--selector", "role=sensor"}, apiFlagsOf(a)...)...)), &list); err != nil || len(list) != 4 {
		t.Fatalf("device list --json: %v, %v", list, err)
	}

	for _, tc := range []struct{ args []string }{
		{[]string{"--selector", "site"}},
		{[]string{"--status", "sleeping"}},
		{[]string{"--limit", "0"}},
		{[]string{"--limit", "1001"}},
	} {
		r := ztgate(t, nil, "", append(append([]string{"device", "list"}, tc.args...), apiFlagsOf(a)...)...)
		assertOneLineError(t, r, tc.args[0], tc.args)
	}
}

func TestDeviceImport(t *testing.T) {
	a := startApp(t)
	dir := t.TempDir()
	admin := apiFlagsOf(a)
	importFile := func(path string) result {
		return ztgate(t, nil, "", append([]string{"device", "import", path}, admin...)...)
	}

	csvFile := filepath.Join(dir, "fleet.csv")
	writeFile(t, csvFile, strings.Join([]string{
		"name,spiffe_id,labels,status",                // row 1
		"pump-1,,site=north;role=sensor,",             // 2
		"pump-2,spiffe://example.org/device/pump-2,,", // 3
		"Bad Name,,,",       // 4: refused by the registry
		"pump-3,,site,",     // 5: labels do not parse
		"pump-4,,,",         // 6
		"pump-5,,,sleeping", // 7: no such status
		"pump-6,,",          // 8: a field short
		"pump-7,spiffe://example.org/device/other,,", // 9: another device's namespace
		"valve-1,,site=south,suspended",              // 10
		"",                                           // blank lines are skipped
		`"valve-2",,"site=south;room=a,b",`,          // 12: quoted, with a comma
	}, "\n")+"\n")

	wantErrors := []string{"row 4 (Bad Name): ", "row 5 (pump-3): labels", "row 7 (pump-5): ", "row 8 (pump-6): 3 fields, want 4", "row 9 (pump-7): "}
	check := func(r result, created, unchanged int) {
		t.Helper()
		assertOneLineError(t, r, "import: 5 of 10 rows failed", nil)
		for _, w := range wantErrors {
			if !strings.Contains(r.stdout, "\n"+w) && !strings.HasPrefix(r.stdout, w) {
				t.Errorf("no %q in the report:\n%s", w, r.stdout)
			}
		}
		if got := strings.Count(r.stdout, "\nrow ") + btoi(strings.HasPrefix(r.stdout, "row ")); got != 5 {
			t.Errorf("%d row errors reported, want 5:\n%s", got, r.stdout)
		}
		summary := fmt.Sprintf("fleet.csv (CSV): 10 rows: %d created, %d unchanged, 5 failed", created, unchanged)
		if !strings.Contains(r.stdout, summary) {
			t.Errorf("no summary %q:\n%s", summary, r.stdout)
		}
	}
	check(importFile(csvFile), 5, 0)
	for name, want := range map[string]string{"pump-1": "role=sensor,site=north", "pump-2": "-", "pump-4": "-", "valve-1": "site=south", "valve-2": "room=a,b,site=south"} {
		d, err := a.Registry().Get(name)
		if err != nil {
			t.Fatalf("%s not imported: %v", name, err)
		}
		if got := formatLabels(d.Labels); got != want {
			t.Errorf("%s labels %s, want %s", name, got, want)
		}
	}
	if d, _ := a.Registry().Get("valve-1"); d.Status != registry.StatusSuspended {
		t.Errorf("valve-1 status %s, want suspended", d.Status)
	}
	for _, name := range []string{"pump-3", "pump-5", "pump-6", "pump-7"} {
		if _, err := a.Registry().Get(name); err == nil {
			t.Errorf("bad row %s was imported", name)
		}
	}
	// Again: the good rows are unchanged, the bad ones still reported.
	check(importFile(csvFile), 0, 5)

	// JSON lines, by extension and by content; a file of good rows exits 0.
	jsonl := filepath.Join(dir, "more.jsonl")
	writeFile(t, jsonl, `{"name": "cam-1", "labels": {"site": "east"}}
{"name": "cam-2", "status": "pending"}
{"name": "cam-3", "labels": {"site": 7}}
{"name": "cam-4", "lables": {}}
not json

{"name": "pump-1", "labels": {"site": "north", "role": "sensor"}}
{"name": "pump-1", "labels": {"site": "elsewhere"}}
`)
	r := importFile(jsonl)
	assertOneLineError(t, r, "import: 4 of 7 rows failed", nil)
	for _, w := range []string{"row 3 (cam-3): JSON", "row 4 (cam-4): JSON", "row 5: JSON", "row 8 (pump-1): "} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("no %q in the report:\n%s", w, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "7 rows: 2 created, 1 unchanged, 4 failed") {
		t.Errorf("summary:\n%s", r.stdout)
	}
	if d, _ := a.Registry().Get("pump-1"); d.Labels["site"] != "north" {
		t.Errorf("a conflicting import row changed pump-1: %v", d.Labels)
	}

	sniffed := filepath.Join(dir, "fleet.txt")
	writeFile(t, sniffed, "{\"name\": \"cam-1\", \"labels\": {\"site\": \"east\"}}\n")
	if out := ok(t, append([]string{"device", "import", sniffed}, admin...)...); !strings.Contains(out, "(JSON lines): 1 rows: 0 created, 1 unchanged, 0 failed") {
		t.Errorf("import of a JSON lines file without extension:\n%s", out)
	}
	r = ztgate(t, nil, "name,labels\ncam-9,site=west\n", append([]string{"device", "import", "-"}, admin...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "- (CSV): 1 rows: 1 created") {
		t.Fatalf("import from stdin: %+v", r)
	}

	// Whole-file problems are one error, before anything is sent.
	badHeader := filepath.Join(dir, "bad.csv")
	writeFile(t, badHeader, "name,colour\npump-9,red\n")
	failsWith(t, `unknown column "colour"`, append([]string{"device", "import", badHeader}, admin...)...)
	failsWith(t, "no such file", append([]string{"device", "import", filepath.Join(dir, "none.csv")}, admin...)...)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestDeviceImportBatches(t *testing.T) {
	a := startApp(t)
	// 1201 rows: three requests (500, 500, 201); a bad row in the second
	// batch is reported with its line in the file.
	var b strings.Builder
	for i := 1; i <= 1201; i++ {
		status := ""
		if i == 777 {
			status = `, "status": "sleeping"`
		}
		fmt.Fprintf(&b, "{\"name\": \"dev-%04d\"%s}\n", i, status)
	}
	path := filepath.Join(t.TempDir(), "big.jsonl")
	writeFile(t, path, b.String())
	r := ztgate(t, nil, "", append([]string{"device", "import", path}, apiFlagsOf(a)...)...)
	assertOneLineError(t, r, "import: 1 of 1201 rows failed", nil)
	if !strings.HasPrefix(r.stdout, "row 777 (dev-0777): ") || !strings.Contains(r.stdout, "1201 rows: 1200 created, 0 unchanged, 1 failed") {
		t.Fatalf("report:\n%s", r.stdout)
	}
	if n := a.Registry().Len(); n != 1201 { // 1200 and the admin
		t.Fatalf("registry holds %d devices, want 1201", n)
	}
}

func TestAudit(t *testing.T) {
	a := startApp(t)
	admin := apiFlagsOf(a)
	dev := func(args ...string) []string { return append(append([]string{"device"}, args...), admin...) }
	ok(t, dev("enroll", "sensor-1", "--out", filepath.Join(t.TempDir(), "s"))...)
	ok(t, dev("suspend", "sensor-1")...)
	ok(t, dev("token", "sensor-2")...)

	table := ok(t, append([]string{"audit"}, admin...)...)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if strings.Join(strings.Fields(lines[0]), " ") != "ID TIME ACTOR ACTION TARGET RESULT" {
		t.Fatalf("audit header:\n%s", table)
	}
	adminID := "spiffe://example.org/admin/dev"
	want := [][]string{
		{adminID, "device.create", "sensor-1", "ok"},
		{adminID, "device.suspend", "sensor-1", "ok"},
		{adminID, "token.create", "sensor-2", "ok"},
	}
	var rows [][]string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 6 {
			t.Fatalf("audit row %q: want 6 columns", l)
		}
		if _, err := time.Parse(time.RFC3339, f[1]); err != nil {
			t.Errorf("audit time %q: %v", f[1], err)
		}
		rows = append(rows, f)
	}
	for _, w := range want {
		found := false
		for _, r := range rows {
			found = found || strings.Join(r[2:], " ") == strings.Join(w, " ")
		}
		if !found {
			t.Errorf("no audit row %v in:\n%s", w, table)
		}
	}

	var entries []map[string]any
	if err := json.Unmarshal([]byte(ok(t, append([]string{"audit", "--json", "--limit", "1"}, admin...)...)), &entries); err != nil || len(entries) != len(rows) {
		t.Fatalf("audit --json --limit 1 (pages of one): %d entries, %v; want %d", len(entries), err, len(rows))
	}
	// --after skips what was already seen.
	last := rows[len(rows)-2][0]
	tail := ok(t, append([]string{"audit", "--after", last}, admin...)...)
	if got := strings.Split(strings.TrimSpace(tail), "\n"); len(got) != 2 || strings.Fields(got[1])[0] != rows[len(rows)-1][0] {
		t.Fatalf("audit --after %s:\n%s", last, tail)
	}
	failsWith(t, "--limit", append([]string{"audit", "--limit", "0"}, admin...)...)
}

func TestPolicyStatusAndPush(t *testing.T) {
	// Without the directory watch: its reload of the files a push wrote is
	// a successful load, which clears the last error this test reads.
	a := startApp(t, func(c *app.Config) { c.PolicyWatch = false })
	admin := apiFlagsOf(a)
	status := func() policyStatus {
		t.Helper()
		var st policyStatus
		if err := json.Unmarshal([]byte(ok(t, append([]string{"policy", "status", "--json"}, admin...)...)), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	table := ok(t, append([]string{"policy", "status"}, admin...)...)
	rev := a.Engine().Revision()
	if !strings.Contains(table, "revision:     "+rev) || !strings.Contains(table, "authz.rego") || strings.Contains(table, "last refused") {
		t.Fatalf("policy status:\n%s", table)
	}
	if st := status(); st.Revision != rev || st.Dir == "" {
		t.Fatalf("policy status --json = %+v", st)
	}

	dir := t.TempDir()
	good := filepath.Join(dir, "notes.rego")
	writeFile(t, good, "package ztgate.authz\n\n# grants nothing: only changes the revision\nnotes := \"site rules go here\"\n")
	out := ok(t, append([]string{"policy", "push", good}, admin...)...)
	newRev := a.Engine().Revision()
	if newRev == rev || !strings.Contains(out, "pushed notes.rego") || !strings.Contains(out, newRev) {
		t.Fatalf("policy push: revision %s -> %s, output:\n%s", rev, newRev, out)
	}
	if _, err := os.Stat(filepath.Join(a.PolicyDir(), "notes.rego")); err != nil {
		t.Fatalf("the pushed module is not in the policy directory: %v", err)
	}

	for _, tc := range []struct {
		name, src, want string
	}{
		{"syntax error", "package ztgate.authz\nallow if {", "refused, the policy in force is unchanged"},
		// Compiles, but the default policy's own tests catch it.
		{"allow everything", "package ztgate.authz\n\nallow := true\n", "refused, the policy in force is unchanged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := filepath.Join(dir, "bad.rego")
			writeFile(t, bad, tc.src)
			failsWith(t, tc.want, append([]string{"policy", "push", bad}, admin...)...)
			if a.Engine().Revision() != newRev {
				t.Fatal("a refused module changed the revision in force")
			}
			if _, err := os.Stat(filepath.Join(a.PolicyDir(), "bad.rego")); !os.IsNotExist(err) {
				t.Fatalf("a refused module was written to the policy directory: %v", err)
			}
			if st := status(); st.Revision != newRev || st.LastError == "" {
				t.Fatalf("after a refused push, status = %+v; want the revision in force and the error", st)
			}
		})
	}
	// --name picks the module it replaces; a name with a path is refused
	// before anything is sent.
	ok(t, append([]string{"policy", "push", good, "--name", "notes2.rego"}, admin...)...)
	if _, err := os.Stat(filepath.Join(a.PolicyDir(), "notes2.rego")); err != nil {
		t.Fatal(err)
	}
	failsWith(t, "module name", append([]string{"policy", "push", good, "--name", "../x.rego"}, admin...)...)
	failsWith(t, "module name", append([]string{"policy", "push", good, "--name", "x.txt"}, admin...)...)
}

// TestDevDecisionLogAndMetrics: `ztgate dev` logs every deny to
// DATA-DIR/decisions.log, traceable by decision_id, and serves its metrics
// to the admin.
func TestDevDecisionLogAndMetrics(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	dev := runInBackground(t, "dev", "--data-dir", data, "--mqtt-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--log-level", "error")
	dev.waitFor(t, "stop:")
	apiURL := apiURLFromBanner(t, dev.out.String())
	admin := []string{"--api", apiURL, "--admin-dir", filepath.Join(data, "admin")}
	sensor := filepath.Join(t.TempDir(), "sensor-1")
	ok(t, append([]string{"device", "enroll", "sensor-1", "--out", sensor}, admin...)...)

	// Positive control: the admin's request is allowed (and, with
	// sample_allow 0, not logged); the device's is refused and logged.
	ok(t, append([]string{"device", "list"}, admin...)...)
	failsWith(t, "HTTP 403", "device", "list", "--api", apiURL, "--admin-dir", sensor)

	logPath := filepath.Join(data, "decisions.log")
	var deny map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for deny == nil {
		raw, _ := os.ReadFile(logPath)
		for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(l), &e) == nil && strings.Contains(l, "spiffe://example.org/device/sensor-1") {
				deny = e
			}
			if strings.Contains(l, `"allow":true`) {
				t.Fatalf("an allow was logged with the default sample rate: %s", l)
			}
		}
		if deny == nil && time.Now().After(deadline) {
			t.Fatalf("no deny of sensor-1 in %s: %q", logPath, raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if res, _ := deny["result"].(map[string]any); res["allow"] != false || deny["decision_id"] == "" {
		t.Fatalf("deny entry %v", deny)
	}

	conf, err := identity.LoadSVIDDir(filepath.Join(data, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	client := newHTTPClient(conf)
	defer client.CloseIdleConnections()
	resp, err := client.Get(apiURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ztgate_decisions_total{action="admin",result="deny"}`, `ztgate_decisions_total{action="admin",result="allow"}`, "ztgate_registry_devices"} {
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("GET /metrics: %d, no %q in:\n%s", resp.StatusCode, want, body)
		}
	}
	dev.stop(t)
}

func TestDevDecisionLogFlags(t *testing.T) {
	for _, tc := range []struct {
		name   string
		flags  []string
		banner string // the decision log line of the banner, "" for none
		file   bool   // DATA-DIR/decisions.log exists
	}{
		{"default", nil, "decisions.log", true},
		{"disabled", []string{"--decision-log-enabled=false"}, "", false},
		{"standard output", []string{"--decision-log", "-"}, "standard output", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			args := append([]string{"dev", "--data-dir", data, "--mqtt-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--log-level", "error"}, tc.flags...)
			dev := runInBackground(t, args...)
			dev.waitFor(t, "stop:")
			line := ""
			for _, l := range strings.Split(dev.out.String(), "\n") {
				if v, found := strings.CutPrefix(strings.TrimSpace(l), "decision log:"); found {
					line = strings.TrimSpace(v)
				}
			}
			if (tc.banner == "") != (line == "") || !strings.Contains(line, tc.banner) {
				t.Errorf("banner decision log line %q, want %q", line, tc.banner)
			}
			dev.stop(t)
			if _, err := os.Stat(filepath.Join(data, "decisions.log")); (err == nil) != tc.file {
				t.Errorf("decisions.log exists: %v, want %v", err == nil, tc.file)
			}
		})
	}
}
