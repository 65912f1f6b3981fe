package api

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/registry"
)

func TestPolicyStatusShape(t *testing.T) {
	var dir string
	e := newEnv(t, withPolicyDir(t, &dir))
	r := e.do(e.admin, http.MethodGet, "/v1/policy", "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	var raw map[string]any
	r.DecodeJSON(t, &raw)
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	// No error yet: last_error and last_error_at are absent.
	if want := []string{"activated_at", "dir", "modules", "revision"}; !reflect.DeepEqual(keys, want) {
		t.Fatalf("keys %v, want %v (%s)", keys, want, r.Body)
	}
	var st PolicyStatus
	r.DecodeJSON(t, &st)
	if st.Revision == "" || st.Revision != e.engine.Status().Revision || st.ActivatedAt.IsZero() ||
		!slices.Contains(st.Modules, "authz.rego") || st.Dir != dir {
		t.Fatalf("status %+v", st)
	}
	if r := e.do(e.device, http.MethodGet, "/v1/policy", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device: %d, want 403", r.Status)
	}

	none := newEnv(t, func(c *Config) { c.Policy = nil })
	for _, rq := range []struct{ method, path, ct, body string }{
		{"GET", "/v1/policy", "", ""},
		{"PUT", "/v1/policy/modules/x.rego", "text/plain", "package x\n"},
		{"POST", "/v1/policy/eval", "application/json", "{}"},
	} {
		r := none.do(none.admin, rq.method, rq.path, rq.ct, []byte(rq.body))
		if r.Status != http.StatusNotImplemented || r.StrictError(t) != "policy administration not configured" {
			t.Errorf("%s %s without policy administration: %d %s, want 501", rq.method, rq.path, r.Status, r.Body)
		}
	}
}

func TestPutPolicyModule(t *testing.T) {
	var dir string
	e := newEnv(t, withPolicyDir(t, &dir))
	before := e.engine.Status().Revision
	put := func(name, src string) response {
		t.Helper()
		return e.do(e.admin, http.MethodPut, "/v1/policy/modules/"+name, "text/plain; charset=utf-8", []byte(src))
	}

	// A module that compiles and whose tests pass becomes the revision.
	const good = "package ztgate.extra\n\nhello := true\n"
	const goodTest = "package ztgate.extra_test\n\nimport data.ztgate.extra\n\ntest_hello if extra.hello\n"
	r := put("extra_test.rego", goodTest)
	if r.Status != http.StatusUnprocessableEntity {
		// The test refers to a rule that does not exist yet.
		t.Fatalf("test before its module: %d %s, want 422", r.Status, r.Body)
	}
	r = put("extra.rego", good)
	if r.Status != http.StatusOK {
		t.Fatalf("good module: %d %s", r.Status, r.Body)
	}
	var st PolicyStatus
	r.DecodeJSON(t, &st)
	if st.Revision == before || st.Revision != e.engine.Status().Revision || !slices.Contains(st.Modules, "extra.rego") {
		t.Fatalf("after the upload: %+v (before %s)", st, before)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "extra.rego")); err != nil || string(b) != good {
		t.Fatalf("module on disk: %q %v", b, err)
	}
	if r := put("extra_test.rego", goodTest); r.Status != http.StatusOK {
		t.Fatalf("test after its module: %d %s", r.Status, r.Body)
	}
	active := e.engine.Status().Revision

	// Refused revisions leave the active one in force.
	cases := []struct {
		name, module, src, want string
	}{
		{"syntax error", "broken.rego", "package ztgate.extra\n\nallow if {\n", "rego_parse_error"},
		{"compile error", "broken.rego", "package ztgate.extra\n\nx := undefined_function(1)\n", "undefined_function"},
		{"failing test", "extra_test.rego", "package ztgate.extra_test\n\ntest_fails if false\n", "test_fails"},
		{"a test that breaks the default policy's guarantees", "authz.rego", "package ztgate.authz\n\nallow := true\n", "FAIL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := put(tc.module, tc.src)
			if r.Status != http.StatusUnprocessableEntity {
				t.Fatalf("%d %s, want 422", r.Status, r.Body)
			}
			if msg := r.StrictError(t); !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not mention %q", msg, tc.want)
			}
			if got := e.engine.Status(); got.Revision != active || got.LastError == "" {
				t.Fatalf("after a refused module: revision %s (want %s), last error %q", got.Revision, active, got.LastError)
			}
		})
	}
	// The refusal shows in the status; the last good module is on disk.
	r = e.do(e.admin, http.MethodGet, "/v1/policy", "", nil)
	r.DecodeJSON(t, &st)
	if st.Revision != active || st.LastError == "" || st.LastErrorAt.IsZero() {
		t.Fatalf("status after refusals: %+v", st)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "extra_test.rego")); string(b) != goodTest {
		t.Fatal("a refused module replaced the file on disk")
	}

	for _, tc := range []struct {
		name, ct, src string
		status        int
	}{
		{"not .rego", "text/plain", good, 400},
		{".hidden.rego", "text/plain", good, 400},
		{"x.rego", "application/octet-stream", good, 415},
		{"x.rego", "text/plain", "  \n", 400},
	} {
		r := e.do(e.admin, http.MethodPut, "/v1/policy/modules/"+tc.name, tc.ct, []byte(tc.src))
		if r.Status != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.name, tc.ct, r.Status, r.Body, tc.status)
		}
	}
	if r := e.do(e.admin, http.MethodPut, "/v1/policy/modules/..%2Fescape.rego", "text/plain", []byte(good)); r.Status/100 != 4 {
		t.Errorf("escaped path: %d", r.Status)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape.rego")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a module was written outside the policy directory")
	}
	if r := e.do(e.device, http.MethodPut, "/v1/policy/modules/x.rego", "text/plain", []byte(good)); r.Status != http.StatusForbidden {
		t.Fatalf("device: %d, want 403", r.Status)
	}
	if e.engine.Status().Revision != active {
		t.Fatal("a refused request changed the revision")
	}

	// Uploads are audited, refused ones as errors with the reason.
	var got []string
	for _, a := range e.auditEntries() {
		if a.Action == actionPolicyPut {
			got = append(got, a.Result+" "+a.Target)
			if a.Actor != "spiffe://example.org/admin/dev" && a.Result != registry.ResultDenied {
				t.Errorf("entry %+v", a)
			}
		}
	}
	if len(got) < 7 || got[1] != "ok policy module extra.rego" || got[0] != "error policy module extra_test.rego" {
		t.Fatalf("policy audit entries %q", got)
	}
}

func TestEvalPolicy(t *testing.T) {
	e := newEnv(t)
	rev := e.engine.Status().Revision
	eval := func(input string) EvalResponse {
		t.Helper()
		r := e.do(e.admin, http.MethodPost, "/v1/policy/eval", "application/json", []byte(input))
		if r.Status != http.StatusOK {
			t.Fatalf("eval: %d %s", r.Status, r.Body)
		}
		var out EvalResponse
		r.DecodeJSON(t, &out)
		return out
	}
	now := time.Now().UTC().Format(time.RFC3339)
	publish := func(topic string) string {
		return `{"action":"publish","identity":{"spiffe_id":"spiffe://example.org/device/a","trust_domain":"example.org",
			"path":"/device/a","segments":["device","a"]},"device":{"name":"a","labels":{},"status":"active"},
			"client":{"id":"a","remote_addr":"127.0.0.1:1","protocol_version":5},"topic":"` + topic + `",
			"qos":0,"retain":false,"will":false,"payload_size":1,"time":"` + now + `"}`
	}
	if out := eval(publish("devices/a/telemetry/t")); !out.Allow || out.Revision != rev || out.Error != "" {
		t.Fatalf("own telemetry: %+v", out)
	}
	out := eval(publish("devices/b/telemetry/t"))
	if out.Allow || out.Revision != rev || out.Reasons == nil {
		t.Fatalf("another device's topic: %+v", out)
	}
	if len(out.Reasons) == 0 {
		t.Errorf("a deny without reasons: %+v", out)
	}
	// A dry run enforces nothing and records nothing.
	n := len(e.auditEntries())
	eval(publish("devices/b/telemetry/t"))
	if len(e.auditEntries()) != n {
		t.Error("eval wrote to the audit log")
	}
	for _, bad := range []string{``, `[]`, `"x"`, `null`, `{"a":`, `{} {}`} {
		r := e.do(e.admin, http.MethodPost, "/v1/policy/eval", "application/json", []byte(bad))
		if r.Status != http.StatusBadRequest {
			t.Errorf("input %q: %d %s, want 400", bad, r.Status, r.Body)
		}
	}
}

func TestReadyz(t *testing.T) {
	e := newEnv(t)
	r := e.do(e.anon, http.MethodGet, "/readyz", "", nil)
	var rd Readiness
	r.DecodeJSON(t, &rd)
	// An anonymous probe learns readiness, not the revision (see
	// TestReadyzRevisionOnlyForAdmins).
	if r.Status != http.StatusOK || rd != (Readiness{Status: "ready", Store: "ok"}) {
		t.Fatalf("%d %+v", r.Status, rd)
	}

	// The process says it is not ready.
	var ready error = errors.New("MQTT listener not started")
	gated := newEnv(t, func(c *Config) { c.Ready = func() error { return ready } })
	if r := gated.do(gated.anon, http.MethodGet, "/readyz", "", nil); r.Status != http.StatusServiceUnavailable ||
		!strings.Contains(r.StrictError(t), "MQTT listener not started") {
		t.Fatalf("process not ready: %d %s", r.Status, r.Body)
	}

	// The store is closed: not ready, and the answer names the store
	// without the error's details.
	if err := e.reg.Close(); err != nil {
		t.Fatal(err)
	}
	r = e.do(e.anon, http.MethodGet, "/readyz", "", nil)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("closed store: %d %s, want 503", r.Status, r.Body)
	}
	if msg := r.StrictError(t); msg != "not ready: store unavailable" {
		t.Fatalf("message %q", msg)
	}
	// Liveness is not readiness.
	if r := e.do(e.anon, http.MethodGet, "/healthz", "", nil); r.Status != http.StatusOK {
		t.Fatalf("healthz with a closed store: %d", r.Status)
	}
}
