package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
)

// result is one in-process run of the command line.
type result struct {
	code           int
	stdout, stderr string
}

// ztgate runs the command line in-process with env as the environment.
func ztgate(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb testpki.LogBuffer
	code := execute(ctx, args, strings.NewReader(stdin), &out, &errb, func(k string) string { return env[k] })
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// ok runs args and fails the test unless they succeed.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	r := ztgate(t, nil, "", args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("ztgate %s: exit %d, stderr %q, stdout %q", strings.Join(args, " "), r.code, r.stderr, r.stdout)
	}
	return r.stdout
}

// failsWith runs args and fails the test unless they exit 1 with exactly one
// line "ztgate: ..." on stderr containing want. It returns that line.
func failsWith(t *testing.T, want string, args ...string) string {
	t.Helper()
	r := ztgate(t, nil, "", args...)
	assertOneLineError(t, r, want, args)
	return r.stderr
}

func assertOneLineError(t *testing.T, r result, want string, args []string) {
	t.Helper()
	if r.code != 1 {
		t.Fatalf("ztgate %s: exit %d, want 1 (stdout %q, stderr %q)", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, "ztgate: ") || strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") {
		t.Fatalf("ztgate %s: stderr %q, want one line \"ztgate: ...\"", strings.Join(args, " "), r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Fatalf("ztgate %s: stderr %q, want it to mention %q", strings.Join(args, " "), r.stderr, want)
	}
}

// startApp runs a gateway on loopback ports chosen by the kernel
// (testutil's, its log shown if the test fails).
func startApp(t *testing.T, mods ...func(*app.Config)) *app.App {
	t.Helper()
	return testutil.Start(t, testutil.WithConfig(mods...)).App
}

func TestDeviceCommands(t *testing.T) {
	a := startApp(t)
	api := []string{"--api", a.APIURL(), "--admin-dir", a.AdminDir()}
	dev := func(args ...string) []string { return append(append([]string{"device"}, args...), api...) }
	out := filepath.Join(t.TempDir(), "sensor-1")

	// enroll writes a usable SVID, key and bundle.
	stdout := ok(t, dev("enroll", "sensor-1", "--out", out)...)
	if !strings.Contains(stdout, "spiffe://example.org/device/sensor-1") {
		t.Errorf("enroll output does not name the SPIFFE ID:\n%s", stdout)
	}
	svid := checkSVIDDir(t, a, out, "spiffe://example.org/device/sensor-1")

	// The SVID is accepted by the gateway's TLS listener.
	conf, err := identity.LoadSVIDDir(out)
	if err != nil {
		t.Fatal(err)
	}
	conf.ServerName = "localhost"
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", a.MQTTAddr().String(), conf)
	if err != nil {
		t.Fatalf("TLS handshake with the gateway using the enrolled SVID: %v", err)
	}
	conn.Close()

	// Enrolling again issues a new SVID for the same device.
	stdout = ok(t, dev("enroll", "sensor-1", "--out", out)...)
	if !strings.Contains(stdout, "already enrolled") {
		t.Errorf("second enroll output:\n%s", stdout)
	}
	if again := checkSVIDDir(t, a, out, "spiffe://example.org/device/sensor-1"); bytes.Equal(again, svid) {
		t.Error("second enroll did not write a new SVID")
	}

	ctlOut := filepath.Join(t.TempDir(), "ctl-1")
	ok(t, dev("enroll", "ctl-1", "--label", "role=controller", "--label", "site=lab", "--out", ctlOut)...)
	checkSVIDDir(t, a, ctlOut, "spiffe://example.org/device/ctl-1")

	// list: a table with a header, and JSON.
	table := ok(t, dev("list")...)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "NAME SPIFFE-ID STATUS LABELS" {
		t.Fatalf("device list:\n%s", table)
	}
	wantRows := []string{
		"admin-dev spiffe://example.org/admin/dev active role=admin",
		"ctl-1 spiffe://example.org/device/ctl-1 active role=controller,site=lab",
		"sensor-1 spiffe://example.org/device/sensor-1 active -",
	}
	for i, want := range wantRows {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); got != want {
			t.Errorf("device list row %d = %q, want %q", i+1, got, want)
		}
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(ok(t, dev("list", "--json")...)), &list); err != nil || len(list) != 3 {
		t.Fatalf("device list --json: %v, %v", list, err)
	}

	show := func(name string) map[string]any {
		t.Helper()
		var d map[string]any
		if err := json.Unmarshal([]byte(ok(t, dev("show", name)...)), &d); err != nil {
			t.Fatalf("device show %s: %v", name, err)
		}
		return d
	}
	if d := show("sensor-1"); d["status"] != "active" || d["spiffe_id"] != "spiffe://example.org/device/sensor-1" {
		t.Fatalf("device show sensor-1 = %v", d)
	}

	// suspend / resume / revoke, each visible in show.
	for _, step := range []struct{ verb, status string }{
		{"suspend", "suspended"}, {"resume", "active"}, {"revoke", "revoked"},
	} {
		if got := ok(t, dev(step.verb, "sensor-1")...); got != "device sensor-1: "+step.status+"\n" {
			t.Errorf("device %s output %q", step.verb, got)
		}
		if d := show("sensor-1"); d["status"] != step.status {
			t.Fatalf("after %s, show says status %v, want %s", step.verb, d["status"], step.status)
		}
	}
	if d := show("ctl-1"); d["status"] != "active" {
		t.Fatalf("revoking sensor-1 changed ctl-1: %v", d)
	}

	// A revoked device gets no new SVID; the refusal is one clear line.
	failsWith(t, "revoked", dev("enroll", "sensor-1", "--out", filepath.Join(t.TempDir(), "x"))...)
	failsWith(t, "revoked", dev("resume", "sensor-1")...)
	failsWith(t, "not found", dev("show", "nosuch")...)
	failsWith(t, "not found", dev("revoke", "nosuch")...)
}

// checkSVIDDir checks dir holds svid.pem (verifying for want under a's CA),
// svid.key (0600, matching) and bundle.pem (a's CA), and returns svid.pem.
func checkSVIDDir(t *testing.T, a *app.App, dir, want string) []byte {
	t.Helper()
	st, err := os.Stat(filepath.Join(dir, "svid.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("svid.key mode %v, want 0600", st.Mode().Perm())
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"))
	if err != nil {
		t.Fatalf("SVID in %s does not load: %v", dir, err)
	}
	id, err := a.Verifier().Verify(svid.Certificates)
	if err != nil || id.String() != want {
		t.Fatalf("SVID in %s verifies as %v, %v; want %s", dir, id, err, want)
	}
	bundle, err := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	if err != nil || !bytes.Equal(bundle, a.CA().BundlePEM()) {
		t.Fatalf("bundle.pem in %s is not the CA bundle (%v)", dir, err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "svid.pem"))
	return raw
}

func TestClientErrors(t *testing.T) {
	a := startApp(t)
	dead := "https://" + testclient.ClosedAddr(t)
	live := []string{"--api", a.APIURL(), "--admin-dir", a.AdminDir()}
	unreachable := []string{"--api", dead, "--admin-dir", a.AdminDir()}
	with := func(flags []string, args ...string) []string {
		return append(append([]string{"device"}, args...), flags...)
	}

	tests := []struct {
		name string
		args []string
		want string
	}{
		// Names and labels are checked before anything is sent: these fail
		// the same way with no API to reach.
		{"upper-case name", with(unreachable, "enroll", "Sensor-1"), "invalid device name"},
		{"name with slash", with(unreachable, "enroll", "a/b"), "invalid device name"},
		{"name with dots", with(unreachable, "enroll", "a..b"), "invalid device name"},
		{"name with plus", with(unreachable, "enroll", "+"), "invalid device name"},
		{"name with hash", with(unreachable, "enroll", "dev#1"), "invalid device name"},
		{"empty name", with(unreachable, "enroll", ""), "invalid device name"},
		{"label without =", with(unreachable, "enroll", "ok-1", "--label", "role"), `--label "role": want key=value`},
		{"label without key", with(unreachable, "enroll", "ok-1", "--label", "=x"), "want key=value"},
		{"label twice", with(unreachable, "enroll", "ok-1", "--label", "a=1", "--label", "a=2"), "given twice"},
		{"bad spiffe id", with(unreachable, "enroll", "ok-1", "--spiffe-id", "not an id"), "--spiffe-id"},
		{"show bad name", with(unreachable, "show", "../x"), "invalid device name"},

		{"unreachable API", with(unreachable, "list"), "cannot reach the API at " + dead + " (is `ztgate dev` running?)"},
		{"unreachable API on enroll", with(unreachable, "enroll", "ok-1"), "cannot reach the API"},
		{"plain http API", with([]string{"--api", "http://" + strings.TrimPrefix(a.APIURL(), "https://"), "--admin-dir", a.AdminDir()}, "list"), "want an https:// URL"},
		{"missing admin dir", with([]string{"--api", a.APIURL(), "--admin-dir", filepath.Join(t.TempDir(), "none")}, "list"), "cannot load the admin identity"},

		// API answers: the {"error": ...} message on one line.
		{"spiffe id of another device", with(live, "enroll", "ok-2", "--spiffe-id", "spiffe://example.org/device/other", "--out", filepath.Join(t.TempDir(), "o")), "device namespace"},
		{"show unknown", with(live, "show", "ghost"), "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			failsWith(t, tc.want, tc.args...)
		})
	}
	// A command line that does not parse is a usage error: exit 2.
	usageFails(t, "accepts 1 arg(s), received 0", with(live, "enroll")...)
	usageFails(t, `unknown command "devices"`, "devices")
	usageFails(t, "unknown flag: --nope", "device", "list", "--nope")
	usageFails(t, `required flag(s) "config" not set`, "serve")

	// Positive controls: the same calls against the live API succeed.
	out := filepath.Join(t.TempDir(), "ok-1")
	ok(t, with(live, "enroll", "ok-1", "--label", "role=sensor", "--spiffe-id", "spiffe://example.org/device/ok-1", "--out", out)...)
	checkSVIDDir(t, a, out, "spiffe://example.org/device/ok-1")
	ok(t, with(live, "list")...)
}

func TestClientEnvironment(t *testing.T) {
	a := startApp(t)
	dead := "https://" + testclient.ClosedAddr(t)
	env := map[string]string{"ZTGATE_API": a.APIURL(), "ZTGATE_ADMIN_DIR": a.AdminDir()}

	r := ztgate(t, env, "", "device", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "admin-dev") {
		t.Fatalf("device list with ZTGATE_API and ZTGATE_ADMIN_DIR: %+v", r)
	}
	// A flag wins over the environment.
	r = ztgate(t, env, "", "device", "list", "--api", dead)
	assertOneLineError(t, r, "cannot reach the API at "+dead, nil)
	r = ztgate(t, map[string]string{"ZTGATE_API": dead, "ZTGATE_ADMIN_DIR": a.AdminDir()}, "", "device", "list", "--api", a.APIURL())
	if r.code != 0 {
		t.Fatalf("--api did not override ZTGATE_API: %+v", r)
	}
	// Without either, the defaults point at the dev data dir.
	t.Chdir(t.TempDir())
	r = ztgate(t, nil, "", "device", "list")
	assertOneLineError(t, r, "cannot load the admin identity from ./ztgate-data/admin", nil)
}

const policyDir = "../../policy/defaultpolicy"

func TestPolicyTest(t *testing.T) {
	stdout := ok(t, "policy", "test", policyDir)
	if !strings.Contains(stdout, "PASS") {
		t.Errorf("policy test output:\n%s", stdout)
	}

	failing := t.TempDir()
	writeFile(t, filepath.Join(failing, "p.rego"), "package ztgate.authz\n\ndefault allow := false\n")
	writeFile(t, filepath.Join(failing, "p_test.rego"), "package ztgate.authz_test\n\nimport data.ztgate.authz\n\n"+
		"test_denies if not authz.allow\n\ntest_allows if authz.allow\n")
	r := ztgate(t, nil, "", "policy", "test", failing)
	assertOneLineError(t, r, "1 of 2 tests failed", nil)
	if !strings.Contains(r.stdout, "test_allows") {
		t.Errorf("the report does not name the failing test:\n%s", r.stdout)
	}

	empty := t.TempDir()
	writeFile(t, filepath.Join(empty, "p.rego"), "package ztgate.authz\n\ndefault allow := false\n")
	failsWith(t, "no", "policy", "test", empty)
	failsWith(t, "policy directory", "policy", "test", filepath.Join(t.TempDir(), "missing"))
}

func TestPolicyEval(t *testing.T) {
	input := func(topic string) string {
		return `{"action": "publish",
			"identity": {"spiffe_id": "spiffe://example.org/device/sensor-1", "trust_domain": "example.org",
			             "path": "/device/sensor-1", "segments": ["device", "sensor-1"]},
			"device": {"name": "sensor-1", "labels": {}, "status": "active"},
			"client": {"id": "sensor-1", "remote_addr": "127.0.0.1:50412", "protocol_version": 5},
			"topic": "` + topic + `", "qos": 0, "retain": false, "will": false, "payload_size": 4,
			"time": "2026-11-28T12:00:00Z"}`
	}
	dir := t.TempDir()
	allowFile := filepath.Join(dir, "allow.json")
	denyFile := filepath.Join(dir, "deny.json")
	writeFile(t, allowFile, input("devices/sensor-1/telemetry/temp"))
	writeFile(t, denyFile, input("devices/sensor-2/telemetry/temp"))

	type decision struct {
		Allow    bool     `json:"allow"`
		Reasons  []string `json:"reasons"`
		Revision string   `json:"revision"`
	}
	eval := func(stdin string, args ...string) decision {
		t.Helper()
		r := ztgate(t, nil, stdin, append([]string{"policy", "eval"}, args...)...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("policy eval %v: %+v", args, r)
		}
		var d decision
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || d.Revision == "" || d.Reasons == nil {
			t.Fatalf("policy eval %v printed %q (%v)", args, r.stdout, err)
		}
		return d
	}

	if d := eval("", "--input", allowFile); !d.Allow {
		t.Errorf("own telemetry denied: %+v", d)
	}
	if d := eval("", "--input", denyFile); d.Allow || !contains(d.Reasons, "topic not granted") {
		t.Errorf("another device's telemetry: %+v, want a deny with its reason", d)
	}
	if d := eval(input("devices/sensor-1/telemetry/temp"), "--input", "-"); !d.Allow {
		t.Errorf("stdin input denied: %+v", d)
	}
	// The trust domain the gateway serves is part of the decision.
	if d := eval("", "--input", allowFile, "--trust-domain", "other.example"); d.Allow {
		t.Errorf("identity of an unserved trust domain allowed: %+v", d)
	}
	// --policy-dir replaces the embedded policy.
	custom := t.TempDir()
	writeFile(t, filepath.Join(custom, "p.rego"), "package ztgate.authz\n\nallow if input.topic == \"devices/sensor-2/telemetry/temp\"\n")
	if d := eval("", "--input", denyFile, "--policy-dir", custom); !d.Allow {
		t.Errorf("--policy-dir policy not used: %+v", d)
	}
	if d := eval("", "--input", allowFile, "--policy-dir", custom); d.Allow {
		t.Errorf("--policy-dir policy allowed what it does not grant: %+v", d)
	}

	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, "{not json")
	failsWith(t, "not valid JSON", "policy", "eval", "--input", bad)
	failsWith(t, "no such file", "policy", "eval", "--input", filepath.Join(dir, "missing.json"))
	usageFails(t, `required flag(s) "input" not set`, "policy", "eval")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestHelpEverywhere(t *testing.T) {
	c := &cli{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
	var paths [][]string
	var walk func(cmd *cobra.Command, path []string)
	walk = func(cmd *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range cmd.Commands() {
			if sub.Name() == "help" {
				continue
			}
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk(c.newRootCmd(), nil)
	if len(paths) < 12 {
		t.Fatalf("only %d commands found: %v", len(paths), paths)
	}
	for _, p := range paths {
		r := ztgate(t, nil, "", append(p, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || r.stderr != "" {
			t.Errorf("ztgate %s --help: %+v", strings.Join(p, " "), r)
		}
	}
}

// background is a long-running command (dev, serve) run in-process.
type background struct {
	out, errb testpki.LogBuffer
	cancel    context.CancelFunc
	done      chan struct{} // closed on exit
	code      int
}

// runInBackground starts args; the command is interrupted when the test ends.
func runInBackground(t *testing.T, args ...string) *background {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &background{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.code = execute(ctx, args, strings.NewReader(""), &b.out, &b.errb, func(string) string { return "" })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-b.done:
		case <-time.After(30 * time.Second):
			t.Error("command did not stop")
		}
	})
	return b
}

// waitFor polls the command's stdout until it contains s.
func (b *background) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(b.out.String(), s) {
		select {
		case <-b.done:
			t.Fatalf("command exited (%d) before printing %q:\n%s\n%s", b.code, s, b.out.String(), b.errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in output:\n%s", s, b.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop interrupts the command and checks it shuts down cleanly.
func (b *background) stop(t *testing.T) {
	t.Helper()
	b.cancel()
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		t.Fatal("did not stop after interrupt")
	}
	if b.code != 0 {
		t.Fatalf("exit %d after interrupt, want 0; stderr %q", b.code, b.errb.String())
	}
	if !strings.Contains(b.out.String(), "shutting down") {
		t.Errorf("no shutdown line:\n%s", b.out.String())
	}
}

// TestDevQuickstart runs `ztgate dev` and then, literally, the commands its
// banner prints: enroll a sensor and a controller, subscribe as the
// controller, publish as the sensor.
func TestDevQuickstart(t *testing.T) {
	work := t.TempDir()
	t.Chdir(work)
	dev := runInBackground(t, "dev", "--mqtt-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--log-level", "error")
	dev.waitFor(t, "stop:")
	banner := dev.out.String()
	if !strings.HasPrefix(banner, "ztgate dev: MQTT (mTLS) on 127.0.0.1:") || !strings.Contains(banner, "admin API on https://127.0.0.1:") {
		t.Fatalf("banner:\n%s", banner)
	}
	hint := func(label string) []string {
		t.Helper()
		var lines []string
		rows := strings.Split(banner, "\n")
		for i, row := range rows {
			if strings.HasPrefix(strings.TrimSpace(row), label) {
				lines = append(lines, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(row), label)))
				if i+1 < len(rows) && strings.HasPrefix(rows[i+1], "      ") {
					lines = append(lines, strings.TrimSpace(rows[i+1]))
				}
			}
		}
		if len(lines) == 0 {
			t.Fatalf("no %q line in banner:\n%s", label, banner)
		}
		return lines
	}
	runEnroll := func(line string) {
		t.Helper()
		i := strings.Index(line, "device enroll ")
		if i < 0 {
			t.Fatalf("not an enroll command: %q", line)
		}
		ok(t, strings.Fields(line[i:])...)
	}
	runEnroll(hint("enroll a device:")[0])
	ctl := hint("a controller:")
	if len(ctl) != 2 {
		t.Fatalf("controller hint: %q", ctl)
	}
	runEnroll(ctl[0])
	for _, dir := range []string{"sensor-1", "ctl-1"} {
		for _, f := range []string{"svid.pem", "svid.key", "bundle.pem"} {
			if _, err := os.Stat(filepath.Join(work, dir, f)); err != nil {
				t.Fatalf("after the banner's enroll: %v", err)
			}
		}
	}

	// The bootstrap pair: a token made as the admin, then the device's own
	// enroll with it, trusting only the pinned CA.
	tokenLine := hint("bootstrap token:")[0]
	i := strings.Index(tokenLine, "device token ")
	if i < 0 {
		t.Fatalf("not a token command: %q", tokenLine)
	}
	kv := keyValues(t, ok(t, strings.Fields(tokenLine[i:])...))
	enrollLine := hint("on the device:")[0]
	j := strings.Index(enrollLine, "enroll --api ")
	if j < 0 || !strings.Contains(enrollLine, "--ca-pin "+kv["ca_pin"]) {
		t.Fatalf("device enroll hint %q: want an enroll with the pin %s", enrollLine, kv["ca_pin"])
	}
	ok(t, strings.Fields(strings.Replace(enrollLine[j:], "TOKEN", kv["token"], 1))...)
	for _, f := range []string{"svid.pem", "svid.key", "bundle.pem"} {
		if _, err := os.Stat(filepath.Join(work, "sensor-2", f)); err != nil {
			t.Fatalf("after the banner's bootstrap enroll: %v", err)
		}
	}
	if !strings.Contains(banner, "decision log:      ztgate-data/decisions.log") ||
		!strings.Contains(banner, "policy:            ztgate-data/policies (watched: true)") {
		t.Errorf("banner does not show the decision log and the policy dir:\n%s", banner)
	}

	pub := hint("publish as it:")[0]
	sub := ctl[1]
	if !strings.HasPrefix(pub, "mosquitto_pub ") || !strings.HasPrefix(sub, "mosquitto_sub ") {
		t.Fatalf("hints: %q %q", pub, sub)
	}
	if _, err := exec.LookPath("mosquitto_sub"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mosquitto clients not installed but CI is set: the banner's MQTT commands must run")
		}
		t.Log("mosquitto clients not installed; not running the banner's MQTT commands")
	} else {
		runMosquittoQuickstart(t, work, pub, sub)
	}

	if e := dev.errb.String(); e != "" {
		t.Errorf("stderr at log level error: %s", e)
	}
	dev.stop(t)
}

// runMosquittoQuickstart runs the banner's subscribe line (exiting after one
// message) and its publish line until the message arrives.
func runMosquittoQuickstart(t *testing.T, dir, pub, sub string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var subOut testpki.LogBuffer
	subCmd := exec.CommandContext(ctx, "sh", "-c", sub+" -C 1")
	subCmd.Dir = dir
	subCmd.Stdout = &subOut
	subCmd.Stderr = &subOut
	if err := subCmd.Start(); err != nil {
		t.Fatal(err)
	}
	subDone := make(chan error, 1)
	go func() { subDone <- subCmd.Wait() }()

	want := "devices/sensor-1/telemetry/temp 21.5"
	// Telemetry is not retained: publish until the subscriber, once it is
	// subscribed, has seen one message.
	for {
		pubCmd := exec.CommandContext(ctx, "sh", "-c", pub)
		pubCmd.Dir = dir
		if b, err := pubCmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", pub, err, b)
		}
		select {
		case err := <-subDone:
			if err != nil || strings.TrimSpace(subOut.String()) != want {
				t.Fatalf("%s: %v, output %q, want %q", sub, err, subOut.String(), want)
			}
			return
		case <-ctx.Done():
			t.Fatalf("the controller never received the sensor's message; subscriber output %q", subOut.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func TestServe(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "ztgate.yaml")
	writeFile(t, cfgPath, "data_dir: "+filepath.Join(dir, "data")+"\nmqtt_addr: 127.0.0.1:0\napi_addr: 127.0.0.1:0\n"+
		"trust_domain: iot.example.com\nlog_level: error\nlog_format: json\nsvid_ttl: 1h\npolicy_watch: false\n"+
		"decision_log:\n  path: "+filepath.Join(dir, "decisions.log")+"\n  sample_allow: 1\n  max_size_mb: 10\n  max_backups: 2\n")
	srv := runInBackground(t, "serve", "--config", cfgPath)
	srv.waitFor(t, "admin API on https://")
	if out := srv.out.String(); strings.Contains(out, "enroll") || !strings.HasPrefix(out, "ztgate: MQTT (mTLS) on 127.0.0.1:") {
		t.Errorf("serve banner:\n%s", out)
	}
	for _, f := range []string{"ca/ca.pem", "registry.db", "admin/svid.pem", "policies/authz.rego"} {
		if _, err := os.Stat(filepath.Join(dir, "data", f)); err != nil {
			t.Errorf("serve did not create %s: %v", f, err)
		}
	}
	// sample_allow 1: the admin's allowed request is logged.
	ok(t, "device", "list", "--api", apiURLFromBanner(t, srv.out.String()), "--admin-dir", filepath.Join(dir, "data", "admin"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		raw, _ := os.ReadFile(filepath.Join(dir, "decisions.log"))
		if strings.Contains(string(raw), `"allow":true`) && strings.Contains(string(raw), "spiffe://iot.example.com/admin/dev") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the configured decision log holds no allow of the admin: %q", raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.stop(t)

	writeFile(t, cfgPath, "mqtt_adress: 127.0.0.1:0\n")
	failsWith(t, `unknown key "mqtt_adress"`, "serve", "--config", cfgPath)
	writeFile(t, cfgPath, "decision_log:\n  pth: x.log\n")
	failsWith(t, `unknown key "decision_log.pth"`, "serve", "--config", cfgPath)
	writeFile(t, cfgPath, "decision_log:\n  sample_allow: 2\n")
	failsWith(t, "decision_log.sample_allow", "serve", "--config", cfgPath)
	failsWith(t, "no such file", "serve", "--config", filepath.Join(dir, "nope.yaml"))
}

// apiURLFromBanner is the admin API URL of a `serve` or `dev` banner.
func apiURLFromBanner(t *testing.T, banner string) string {
	t.Helper()
	_, rest, found := strings.Cut(banner, "admin API on ")
	if !found {
		t.Fatalf("no API URL in banner %q", banner)
	}
	return strings.Fields(rest)[0]
}

func TestDevRefusesBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	failsWith(t, "MQTT listen address "+ln.Addr().String()+": address already in use",
		"dev", "--data-dir", filepath.Join(t.TempDir(), "d"), "--mqtt-addr", ln.Addr().String(), "--api-addr", "127.0.0.1:0", "--log-level", "error")
	failsWith(t, "svid_ttl", "dev", "--svid-ttl", "0s")
	failsWith(t, "trust_domain", "dev", "--trust-domain", "Not Valid")
}
