package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
	"github.com/ztgate/ztgate/registry"
)

// wait bounds every poll for something that must happen.
const wait = 10 * time.Second

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deviceTLS enrolls name in a's registry as an active device with labels,
// issues it an SVID and returns a client TLS configuration presenting it.
func deviceTLS(t *testing.T, a *App, name string, labels map[string]string) *tls.Config {
	t.Helper()
	id, err := identity.DeviceID(a.TrustDomain(), name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Registry().Create(registry.Device{Name: name, SPIFFEID: id.String(), Labels: labels, Status: registry.StatusActive}); err != nil {
		t.Fatal(err)
	}
	chain, key, err := a.CA().IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := identity.ClientTLSConfigPEM(chain, key, a.CA().BundlePEM())
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

// deviceClient enrolls name in a's registry with labels, issues it an SVID
// and returns an HTTPS client of the API that presents it.
func deviceClient(t *testing.T, a *App, name string, labels map[string]string) *http.Client {
	t.Helper()
	conf := deviceTLS(t, a, name, labels)
	c := &http.Client{Timeout: wait, Transport: &http.Transport{TLSClientConfig: conf}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func adminClient(t *testing.T, a *App) *http.Client {
	t.Helper()
	conf, err := identity.LoadSVIDDir(a.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: wait, Transport: &http.Transport{TLSClientConfig: conf}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// readDecisions reads the decision log file at path ("" when missing).
func readDecisions(t *testing.T, path string) []decisionlog.Entry {
	t.Helper()
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []decisionlog.Entry
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e decisionlog.Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("decision log line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

func TestDecisionLogRecordsDeniedAdminRequest(t *testing.T) {
	cfg := testConfig(t)
	logPath := filepath.Join(t.TempDir(), "logs", "decisions.log")
	cfg.DecisionLog.Path = logPath // a path alone turns the log on
	a := start(t, cfg)
	if a.DecisionLog() == nil {
		t.Fatal("decision log off although a path is configured")
	}

	// Positive control: the admin is allowed, and with sample_allow 0 the
	// allow is not logged.
	if code, body := get(t, adminClient(t, a), a.APIURL()+"/v1/devices"); code != http.StatusOK {
		t.Fatalf("admin GET /v1/devices: %d %s", code, body)
	}
	sensor := deviceClient(t, a, "sensor-1", nil)
	if code, body := get(t, sensor, a.APIURL()+"/v1/devices"); code != http.StatusForbidden {
		t.Fatalf("device GET /v1/devices: %d %s, want 403", code, body)
	}

	var deny *decisionlog.Entry
	eventually(t, "deny entry in the decision log", func() bool {
		for _, e := range readDecisions(t, logPath) {
			if !e.Result.Allow && strings.Contains(string(e.Input), "spiffe://example.org/device/sensor-1") {
				deny = &e
				return true
			}
		}
		return false
	})
	var in struct {
		Action  string `json:"action"`
		Request struct {
			Method, Path string
		} `json:"request"`
	}
	if err := json.Unmarshal(deny.Input, &in); err != nil {
		t.Fatal(err)
	}
	if in.Action != "admin" || in.Request.Path != "/v1/devices" || deny.DecisionID == "" ||
		deny.Revision != a.Engine().Revision() || deny.Path != decisionlog.Path {
		t.Fatalf("deny entry = %+v (input %s)", deny, deny.Input)
	}
	for _, e := range readDecisions(t, logPath) {
		if e.Result.Allow {
			t.Errorf("an allow was logged with sample_allow 0: %s", e.Input)
		}
	}
	if st, err := os.Stat(logPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("decision log mode: %v %v, want 0600", st.Mode().Perm(), err)
	}
}

func TestDecisionLogOff(t *testing.T) {
	off, on := false, true
	for _, tc := range []struct {
		name string
		dl   DecisionLogConfig
		want bool
	}{
		{"default", DecisionLogConfig{}, false},
		{"path", DecisionLogConfig{Path: "x.log"}, true},
		{"stdout by dash", DecisionLogConfig{Path: "-"}, true},
		{"enabled, stdout", DecisionLogConfig{Enabled: &on}, true},
		{"disabled wins over a path", DecisionLogConfig{Enabled: &off, Path: "x.log"}, false},
	} {
		if got := tc.dl.On(); got != tc.want {
			t.Errorf("%s: On() = %v, want %v", tc.name, got, tc.want)
		}
	}
	a := start(t, testConfig(t))
	if a.DecisionLog() != nil {
		t.Fatal("decision log on by default")
	}
}

func TestMetricsServed(t *testing.T) {
	a := start(t, testConfig(t))
	admin := adminClient(t, a)
	deviceClient(t, a, "sensor-1", nil)
	if _, err := a.Registry().SetStatus("sensor-1", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ztgate_decisions_total{",
		"ztgate_policy_revision_info{",
		`ztgate_registry_devices{status="active"} 1`,
		`ztgate_registry_devices{status="revoked"} 1`,
		"ztgate_policy_activations_total 1",
		"go_goroutines",
	}
	var body string
	eventually(t, "metrics", func() bool {
		var code int
		code, body = get(t, admin, a.APIURL()+"/metrics")
		if code != http.StatusOK {
			t.Fatalf("GET /metrics: %d %s", code, body)
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
	if !strings.Contains(body, `ztgate_policy_revision_info{revision="`+a.Engine().Revision()+`"} 1`) {
		t.Errorf("the revision in force is not the one exported:\n%s", grepLines(body, "revision_info"))
	}
}

// metricValue is the value of the sample named exactly name in a
// Prometheus text exposition; -1 when there is none.
func metricValue(t *testing.T, body, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			return f
		}
	}
	return -1
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestPolicyDirSeededOnce(t *testing.T) {
	cfg := testConfig(t)
	a := start(t, cfg)
	dir := filepath.Join(cfg.DataDir, PolicySubdir)
	if a.PolicyDir() != dir {
		t.Fatalf("PolicyDir = %s, want %s", a.PolicyDir(), dir)
	}
	// The seed is the embedded default policy at the root of the embedded
	// files, its tests included.
	names := dirNames(t, dir)
	embedded, err := fs.Glob(defaultpolicy.FS, "*.rego")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != strings.Join(embedded, ",") || !slices.Contains(names, "authz_test.rego") {
		t.Fatalf("seeded files %v, want %v", names, embedded)
	}
	for _, n := range names {
		want, _ := defaultpolicy.FS.ReadFile(n)
		if got := readFile(t, filepath.Join(dir, n)); !bytes.Equal(got, want) {
			t.Fatalf("%s is not the embedded default", n)
		}
	}
	seededRev := a.Engine().Revision()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	// An edit survives a restart and is what the engine enforces.
	edited := append(readFile(t, filepath.Join(dir, "authz.rego")), []byte("\n# edited by the operator\n")...)
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), edited, 0o600); err != nil {
		t.Fatal(err)
	}
	b := start(t, cfg)
	if got := readFile(t, filepath.Join(dir, "authz.rego")); !bytes.Equal(got, edited) {
		t.Fatal("restart overwrote the edited policy")
	}
	if b.Engine().Revision() == seededRev {
		t.Fatal("the engine does not enforce the edited file")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// A removed file is not brought back either: the directory is the
	// operator's once it exists.
	if err := os.Remove(filepath.Join(dir, "authz_test.rego")); err != nil {
		t.Fatal(err)
	}
	start(t, cfg)
	if names := dirNames(t, dir); slices.Contains(names, "authz_test.rego") || !slices.Contains(names, "authz.rego") {
		t.Fatalf("after removing the tests, the dir holds %v", names)
	}
}

// dirNames lists the names in dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestConfiguredPolicyDirIsNotSeeded(t *testing.T) {
	cfg := testConfig(t)
	cfg.PolicyDir = filepath.Join(t.TempDir(), "nope")
	if a, err := startErr(t, cfg); err == nil {
		a.Close()
		t.Fatal("Start with a missing policy_dir succeeded")
	}
	if _, err := os.Stat(cfg.PolicyDir); !os.IsNotExist(err) {
		t.Fatalf("a configured policy dir was created: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, PolicySubdir)); !os.IsNotExist(err) {
		t.Fatalf("the data dir's policy dir was seeded although policy_dir is set: %v", err)
	}
}

func TestPolicyWatchReloads(t *testing.T) {
	cfg := testConfig(t)
	a := start(t, cfg)
	before := a.Engine().Revision()
	extra := "package ztgate.authz\n\n# an extra module: changes the revision, grants nothing\n"
	if err := os.WriteFile(filepath.Join(a.PolicyDir(), "extra.rego"), []byte(extra), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new revision activated", func() bool { return a.Engine().Revision() != before })

	// A broken file is refused; the revision in force stays and the
	// failure is counted.
	good := a.Engine().Revision()
	if err := os.WriteFile(filepath.Join(a.PolicyDir(), "broken.rego"), []byte("package ztgate.authz\nallow if {"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the broken revision refused", func() bool { return a.Engine().Status().LastError != "" })
	if a.Engine().Revision() != good {
		t.Fatal("a broken policy replaced the good one")
	}
	eventually(t, "the refusal counted", func() bool {
		_, body := get(t, adminClient(t, a), a.APIURL()+"/metrics")
		return metricValue(t, body, "ztgate_policy_activation_failures_total") >= 1
	})
}

func TestAPIListener(t *testing.T) {
	a := start(t, testConfig(t))

	// No client certificate: the handshake completes (enrollment needs
	// it), and the chain ends with the CA, whose pin a device checks.
	conf, err := identity.PinnedClientTLSConfig(identity.CAPin(a.CA().Certificate()))
	if err != nil {
		t.Fatal(err)
	}
	conf.ServerName = "localhost"
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", a.APIAddr().String(), conf)
	if err != nil {
		t.Fatalf("anonymous pinned handshake with the API: %v", err)
	}
	chain := conn.ConnectionState().PeerCertificates
	conn.Close()
	if len(chain) != 2 || !chain[1].Equal(a.CA().Certificate()) {
		t.Fatalf("the API serves a chain of %d certificates, want leaf and CA", len(chain))
	}

	// But without an SVID nothing beyond enrollment and health is served.
	anon := &http.Client{Timeout: wait, Transport: &http.Transport{TLSClientConfig: conf}}
	defer anon.CloseIdleConnections()
	if code, body := get(t, anon, "https://localhost:"+port(a.APIAddr())+"/v1/devices"); code != http.StatusUnauthorized {
		t.Fatalf("anonymous GET /v1/devices: %d %s, want 401", code, body)
	}
	// Readiness for anyone; the policy revision only for an admin.
	if code, body := get(t, anon, "https://localhost:"+port(a.APIAddr())+"/readyz"); code != http.StatusOK || strings.Contains(body, a.Engine().Revision()) {
		t.Fatalf("anonymous GET /readyz: %d %s, want 200 without the revision", code, body)
	}
	if code, body := get(t, adminClient(t, a), a.APIURL()+"/readyz"); code != http.StatusOK || !strings.Contains(body, a.Engine().Revision()) {
		t.Fatalf("admin GET /readyz: %d %s, want 200 naming the revision", code, body)
	}

	// The MQTT listener still requires a client certificate.
	conn, err = tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", a.MQTTAddr().String(), conf)
	if err == nil {
		// TLS 1.3: the server's refusal arrives with the first read.
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("MQTT listener accepted a client without a certificate")
	}
}

func port(addr net.Addr) string {
	_, p, _ := net.SplitHostPort(addr.String())
	return p
}

func startErr(t *testing.T, cfg Config) (*App, error) {
	t.Helper()
	return Start(t.Context(), cfg)
}

// TestPolicyChangeReachesLiveSessions: a revision activated by the
// directory watch is applied to connected clients at once, not at their
// next CONNECT.
func TestPolicyChangeReachesLiveSessions(t *testing.T) {
	dir := t.TempDir()
	allowMQTT := "package ztgate.authz\n\nallow if {\n\tinput.device.status == \"active\"\n\tinput.action in {\"connect\", \"subscribe\", \"receive\"}\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(allowMQTT), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.PolicyDir = dir
	a := start(t, cfg)

	conf := deviceTLS(t, a, "sensor-1", nil)
	conf.ServerName = "localhost"
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", a.MQTTAddr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	disc := make(chan byte, 1)
	c := paho.NewClient(paho.ClientConfig{
		Conn:               packets.NewThreadSafeConn(conn),
		PacketTimeout:      wait,
		OnServerDisconnect: func(d *paho.Disconnect) { disc <- d.ReasonCode },
	})
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "s1", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("CONNECT under the first policy: %v (%v)", err, ca)
	}
	// Positive control: the session is live under the first revision.
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/sensor-1/commands/#"}}}); err != nil {
		t.Fatalf("SUBSCRIBE under the first policy: %v", err)
	}

	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte("package ztgate.authz\n\nallow if input.action == \"admin\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-disc:
		if code != 0x87 {
			t.Fatalf("DISCONNECT reason %#x, want 0x87 (not authorized)", code)
		}
	case <-time.After(wait):
		t.Fatal("the live session survived a revision that refuses its CONNECT")
	}
}
