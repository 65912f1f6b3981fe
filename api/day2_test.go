package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/registry"
)

// auditHas reports whether the audit log holds an entry of action on
// target with result.
func (e *env) auditHas(action, target, result string) bool {
	e.t.Helper()
	return slices.ContainsFunc(e.auditEntries(), func(a AuditEntry) bool {
		return a.Action == action && a.Target == target && a.Result == result
	})
}

func TestPatchLabels(t *testing.T) {
	e := newEnv(t)
	e.createDevice("lab", map[string]string{"zone": "a", "floor": "1", "old": "x"})
	patch := func(c *http.Client, name, body string) response {
		return e.do(c, http.MethodPatch, "/v1/devices/"+name+"/labels", "application/json", []byte(body))
	}
	refused := []struct {
		name, body string
		client     *http.Client
		status     int
		msg        string
	}{
		{"bad key", `{"set":{"bad key":"v"}}`, e.admin, 400, "label key"},
		{"bad value", `{"set":{"k":"a\u0007b"}}`, e.admin, 400, "control characters"},
		{"bad removed key", `{"remove":["bad key"]}`, e.admin, 400, "label key"},
		{"set and removed", `{"set":{"zone":"b"},"remove":["zone"]}`, e.admin, 400, "both set and removed"},
		{"nothing to do", `{}`, e.admin, 400, "set or remove"},
		{"empty both", `{"set":{},"remove":[]}`, e.admin, 400, "set or remove"},
		{"unknown field", `{"add":{"k":"v"}}`, e.admin, 400, "unknown field"},
		{"bad device name", `{"set":{"k":"v"}}`, e.admin, 400, "invalid device name"},
		{"unknown device", `{"set":{"k":"v"}}`, e.admin, 404, "not found"},
		{"not an admin", `{"set":{"k":"v"}}`, e.device, 403, "forbidden"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			name := "lab"
			switch tc.name {
			case "bad device name":
				name = "Lab"
			case "unknown device":
				name = "nope"
			}
			r := patch(tc.client, name, tc.body)
			if r.Status != tc.status || !strings.Contains(r.StrictError(t), tc.msg) {
				t.Fatalf("%d %s, want %d with %q", r.Status, r.Body, tc.status, tc.msg)
			}
		})
	}
	// None of the refused patches changed anything.
	if d, _ := e.reg.Get("lab"); !reflect.DeepEqual(d.Labels, map[string]string{"zone": "a", "floor": "1", "old": "x"}) {
		t.Fatalf("labels after refused patches: %v", d.Labels)
	}

	r := patch(e.admin, "lab", `{"set":{"zone":"b","new":"y"},"remove":["old","absent"]}`)
	if r.Status != http.StatusOK {
		t.Fatalf("patch: %d %s", r.Status, r.Body)
	}
	var d Device
	r.DecodeJSON(t, &d)
	if want := map[string]string{"zone": "b", "floor": "1", "new": "y"}; d.Name != "lab" || !reflect.DeepEqual(d.Labels, want) {
		t.Fatalf("patched device %+v, want labels %v", d, want)
	}
	if got := e.do(e.admin, http.MethodGet, "/v1/devices/lab", "", nil); !strings.Contains(string(got.Body), `"new":"y"`) {
		t.Fatalf("GET after patch: %s", got.Body)
	}
	if !e.auditHas(registry.ActionDeviceLabels, "lab", registry.ResultOK) {
		t.Error("no audit entry for the label change")
	}
	if !e.auditHas("device.label", "PATCH /v1/devices/lab/labels", registry.ResultDenied) {
		t.Error("no audit entry for the refused non-admin patch")
	}
	// Removing only is a patch too.
	if r := patch(e.admin, "lab", `{"remove":["new"]}`); r.Status != http.StatusOK || strings.Contains(string(r.Body), `"new"`) {
		t.Fatalf("remove only: %d %s", r.Status, r.Body)
	}
}

// Patches of one device made at once all land: none is lost to another's
// read-modify-write.
func TestPatchLabelsConcurrent(t *testing.T) {
	e := newEnv(t)
	e.createDevice("busy", nil)
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, _ := json.Marshal(LabelsPatch{Set: map[string]string{"k" + string(rune('a'+i)): "v"}})
			if r, err := e.try(e.admin, http.MethodPatch, "/v1/devices/busy/labels", "application/json", body, nil); err != nil || r.Status != http.StatusOK {
				t.Errorf("patch %d: %v %d %s", i, err, r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	if d, _ := e.reg.Get("busy"); len(d.Labels) != n {
		t.Fatalf("labels %v, want %d", d.Labels, n)
	}
}

func TestDeleteDevice(t *testing.T) {
	e := newEnv(t)
	created := e.createDevice("gone", map[string]string{"zone": "a"})
	e.createDevice("dead", nil)
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/dead/revoke", "", nil); r.Status != http.StatusOK {
		t.Fatalf("revoke: %d", r.Status)
	}

	if r := e.do(e.device, http.MethodDelete, "/v1/devices/gone", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("non-admin delete: %d %s, want 403", r.Status, r.Body)
	}
	if _, err := e.reg.Get("gone"); err != nil {
		t.Fatalf("the refused delete removed the device: %v", err)
	}
	r := e.do(e.admin, http.MethodDelete, "/v1/devices/gone", "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	var d Device
	r.DecodeJSON(t, &d)
	if d.Name != "gone" || d.SPIFFEID != created.SPIFFEID || d.Labels["zone"] != "a" {
		t.Fatalf("deleted %+v, want %+v", d, created)
	}
	if r := e.do(e.admin, http.MethodGet, "/v1/devices/gone", "", nil); r.Status != http.StatusNotFound {
		t.Fatalf("get after delete: %d", r.Status)
	}
	if !e.auditHas(registry.ActionDeviceDelete, "gone", registry.ResultOK) {
		t.Error("no audit entry for the delete")
	}
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/v1/devices/gone", 404},
		{"/v1/devices/Gone", 400},
		// A revoked record keeps its name and SPIFFE ID from coming back.
		{"/v1/devices/dead", 409},
	} {
		if r := e.do(e.admin, http.MethodDelete, tc.path, "", nil); r.Status != tc.status {
			t.Errorf("DELETE %s: %d %s, want %d", tc.path, r.Status, r.Body, tc.status)
		} else {
			r.StrictError(t)
		}
	}
}

func TestSessionsDeviceFilter(t *testing.T) {
	at := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	sessions := []brokerview.Session{
		{ClientID: "c1", SPIFFEID: "spiffe://example.org/device/sensor-0", Device: "sensor-0", RemoteAddr: "127.0.0.1:5000",
			ProtocolVersion: 5, ConnectedAt: at, QueueDepth: 3,
			Subscriptions: []brokerview.Subscription{{Filter: "devices/sensor-0/commands/#", QoS: 1}}},
		{ClientID: "c2", SPIFFEID: "spiffe://example.org/admin/dev", Device: "admin-dev", RemoteAddr: "127.0.0.1:5001",
			ProtocolVersion: 4, ConnectedAt: at},
	}
	e := newEnv(t, func(c *Config) {
		c.Sessions = func(context.Context, string) ([]brokerview.Session, error) { return sessions, nil }
	})
	r := e.do(e.admin, http.MethodGet, "/v1/sessions?device=sensor-0", "", nil)
	var raw []map[string]any
	r.DecodeJSON(t, &raw)
	want := []map[string]any{{"client_id": "c1", "spiffe_id": "spiffe://example.org/device/sensor-0",
		"device": "sensor-0", "remote_addr": "127.0.0.1:5000", "protocol_version": float64(5),
		"connected_at": "2026-11-28T12:00:00Z", "queue_depth": float64(3),
		"subscriptions": []any{map[string]any{"filter": "devices/sensor-0/commands/#", "qos": float64(1)}}}}
	if !reflect.DeepEqual(raw, want) {
		t.Fatalf("sessions %v, want %v", raw, want)
	}
	// Unfiltered: both; a session without subscriptions lists none as [].
	r = e.do(e.admin, http.MethodGet, "/v1/sessions", "", nil)
	r.DecodeJSON(t, &raw)
	if len(raw) != 2 || !reflect.DeepEqual(raw[1]["subscriptions"], []any{}) || raw[1]["queue_depth"] != float64(0) {
		t.Fatalf("all sessions %v", raw)
	}
	// An enrolled device without sessions: [].
	e.createDevice("idle", nil)
	if r := e.do(e.admin, http.MethodGet, "/v1/sessions?device=idle", "", nil); r.Status != 200 || strings.TrimSpace(string(r.Body)) != "[]" {
		t.Fatalf("idle device: %d %s, want 200 []", r.Status, r.Body)
	}
	for _, tc := range []struct {
		query  string
		client *http.Client
		status int
	}{
		{"?device=nope", e.admin, 404},
		{"?device=Bad", e.admin, 400},
		{"?device=", e.admin, 400},
		{"?device=a&device=b", e.admin, 400},
		{"?name=sensor-0", e.admin, 400},
		{"?device=sensor-0", e.device, 403},
	} {
		if r := e.do(tc.client, http.MethodGet, "/v1/sessions"+tc.query, "", nil); r.Status != tc.status {
			t.Errorf("GET /v1/sessions%s: %d %s, want %d", tc.query, r.Status, r.Body, tc.status)
		}
	}
}

// fakeKicker stands in for the gateway's kick.
type fakeKicker struct {
	mu    sync.Mutex
	calls []string
	n     int
	err   error
}

func (f *fakeKicker) kick(_ context.Context, spiffeID string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, spiffeID)
	return f.n, f.err
}

func TestKickSessions(t *testing.T) {
	k := &fakeKicker{n: 2}
	e := newEnv(t, func(c *Config) { c.KickSessions = k.kick })
	if r := e.do(e.device, http.MethodDelete, "/v1/devices/sensor-0/sessions", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("non-admin kick: %d %s", r.Status, r.Body)
	}
	for _, tc := range []struct {
		path   string
		status int
	}{{"/v1/devices/nope/sessions", 404}, {"/v1/devices/Bad/sessions", 400}} {
		if r := e.do(e.admin, http.MethodDelete, tc.path, "", nil); r.Status != tc.status {
			t.Errorf("DELETE %s: %d %s, want %d", tc.path, r.Status, r.Body, tc.status)
		}
	}
	if len(k.calls) != 0 {
		t.Fatalf("refused kicks reached the gateway: %v", k.calls)
	}
	r := e.do(e.admin, http.MethodDelete, "/v1/devices/sensor-0/sessions", "", nil)
	var out KickResponse
	r.DecodeJSON(t, &out)
	if r.Status != http.StatusOK || out != (KickResponse{Device: "sensor-0", Kicked: 2}) {
		t.Fatalf("kick: %d %s", r.Status, r.Body)
	}
	if !reflect.DeepEqual(k.calls, []string{"spiffe://example.org/device/sensor-0"}) {
		t.Fatalf("gateway asked to kick %v", k.calls)
	}
	if !e.auditHas("session.kick", "sensor-0", registry.ResultOK) {
		t.Error("no audit entry for the kick")
	}
	// Without a gateway there is nothing to kick.
	none := newEnv(t)
	r = none.do(none.admin, http.MethodDelete, "/v1/devices/sensor-0/sessions", "", nil)
	r.DecodeJSON(t, &out)
	if r.Status != http.StatusOK || out.Kicked != 0 {
		t.Fatalf("kick without a gateway: %d %s", r.Status, r.Body)
	}
}

const (
	helperModule     = "package ztgate.helper\n\nanswer := 42\n"
	helperTestModule = "package ztgate.helper_test\n\nimport data.ztgate.helper\n\ntest_answer if helper.answer == 42\n"
)

func TestDeletePolicyModule(t *testing.T) {
	var dir string
	e := newEnv(t, withPolicyDir(t, &dir))
	put := func(name, src string) {
		t.Helper()
		if r := e.do(e.admin, http.MethodPut, "/v1/policy/modules/"+name, "text/plain", []byte(src)); r.Status != http.StatusOK {
			t.Fatalf("put %s: %d %s", name, r.Status, r.Body)
		}
	}
	put("helper.rego", helperModule)
	put("helper_test.rego", helperTestModule)
	put("extra.rego", "package ztgate.extra\n\nx := 1\n")
	before := e.engine.Status()

	for _, tc := range []struct {
		name   string
		client *http.Client
		status int
		msg    string
	}{
		{"nope.rego", e.admin, 404, "no policy module"},
		{"x.txt", e.admin, 400, "module name"},
		{"extra.rego", e.device, 403, "forbidden"},
		// Its test needs it: the set without it fails its tests.
		{"helper.rego", e.admin, 422, "tests failed"},
	} {
		r := e.do(tc.client, http.MethodDelete, "/v1/policy/modules/"+tc.name, "", nil)
		if r.Status != tc.status || !strings.Contains(r.StrictError(t), tc.msg) {
			t.Errorf("DELETE %s: %d %s, want %d with %q", tc.name, r.Status, r.Body, tc.status, tc.msg)
		}
	}
	if st := e.engine.Status(); st.Revision != before.Revision || !slices.Equal(st.Modules, before.Modules) {
		t.Fatalf("refused deletes changed the policy: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(dir, "helper.rego")); err != nil {
		t.Fatalf("a refused delete removed the file: %v", err)
	}

	r := e.do(e.admin, http.MethodDelete, "/v1/policy/modules/extra.rego", "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	var st PolicyStatus
	r.DecodeJSON(t, &st)
	if slices.Contains(st.Modules, "extra.rego") || st.Revision == before.Revision || st.Revision != e.engine.Status().Revision {
		t.Fatalf("status after delete %+v (before %s)", st, before.Revision)
	}
	if _, err := os.Stat(filepath.Join(dir, "extra.rego")); !os.IsNotExist(err) {
		t.Fatalf("extra.rego still in the policy directory: %v", err)
	}
	if !e.auditHas("policy.delete", "policy module extra.rego", registry.ResultOK) {
		t.Error("no audit entry for the delete")
	}
	// The test first, then what it tested: both go.
	for _, name := range []string{"helper_test.rego", "helper.rego"} {
		if r := e.do(e.admin, http.MethodDelete, "/v1/policy/modules/"+name, "", nil); r.Status != http.StatusOK {
			t.Fatalf("delete %s: %d %s", name, r.Status, r.Body)
		}
	}
}

func TestDeleteLastPolicyModule(t *testing.T) {
	admin := "package ztgate.authz\n\ndefault allow := false\n\nallow if input.device.labels.role == \"admin\"\n"
	e := newEnv(t, withPolicy(t, map[string]string{"authz.rego": admin, "authz_test.rego": "package ztgate.authz_test\n\ntest_true if true\n"}))
	r := e.do(e.admin, http.MethodDelete, "/v1/policy/modules/authz.rego", "", nil)
	if r.Status != http.StatusConflict || !strings.Contains(r.StrictError(t), "the policy would be empty") {
		t.Fatalf("delete of the last module: %d %s, want 409", r.Status, r.Body)
	}
	// Positive control: a test file may go.
	if r := e.do(e.admin, http.MethodDelete, "/v1/policy/modules/authz_test.rego", "", nil); r.Status != http.StatusOK {
		t.Fatalf("delete of the test: %d %s", r.Status, r.Body)
	}

	noDir := newEnv(t)
	if r := noDir.do(noDir.admin, http.MethodDelete, "/v1/policy/modules/authz.rego", "", nil); r.Status != http.StatusConflict {
		t.Errorf("without a policy directory: %d %s, want 409", r.Status, r.Body)
	}
	none := newEnv(t, func(c *Config) { c.Policy = nil })
	if r := none.do(none.admin, http.MethodDelete, "/v1/policy/modules/authz.rego", "", nil); r.Status != http.StatusNotImplemented {
		t.Errorf("without policy administration: %d %s, want 501", r.Status, r.Body)
	}
}

// The label patch's field names are matched exactly, as on every JSON
// route (see TestJSONFieldNamesAreCaseSensitive): {"Set": ...} is not a set.
func TestPatchLabelsFieldNamesAreCaseSensitive(t *testing.T) {
	e := newEnv(t)
	e.createDevice("target", nil)
	for _, body := range []string{`{"Set":{"k":"v"}}`, `{"SET":{"k":"v"}}`, `{"set":{"k":"v"},"Remove":["x"]}`} {
		r := e.do(e.admin, http.MethodPatch, "/v1/devices/target/labels", "application/json", []byte(body))
		if r.Status != http.StatusBadRequest || !strings.Contains(r.StrictError(t), "unknown field") {
			t.Errorf("%s: %d %s, want 400 unknown field", body, r.Status, r.Body)
		}
	}
	if r := e.do(e.admin, http.MethodPatch, "/v1/devices/target/labels", "application/json", []byte(`{"set":{"Key":"v"}}`)); r.Status != http.StatusOK {
		t.Errorf("control: %d %s", r.Status, r.Body)
	}
}

// A cluster node that does not answer: the kick is done where the others
// answered, and the answer is 503 saying how many ended and what is
// missing, audited as an error; the list is 503 too. Any other error stays
// a 500 that does not leak it.
func TestSessionsPartlyUnavailable(t *testing.T) {
	missing := fmt.Errorf("%w: 2 of 3 nodes answered within 3s (n0, n1)", ErrUnavailable)
	k := &fakeKicker{n: 1, err: missing}
	e := newEnv(t, func(c *Config) {
		c.KickSessions = k.kick
		c.Sessions = func(context.Context, string) ([]brokerview.Session, error) {
			return []brokerview.Session{{ClientID: "c1"}}, missing
		}
	})
	r := e.do(e.admin, http.MethodDelete, "/v1/devices/sensor-0/sessions", "", nil)
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "1 sessions ended; ") ||
		!strings.Contains(string(r.Body), "2 of 3 nodes answered") {
		t.Fatalf("partial kick: %d %s, want 503 saying 1 ended and which nodes answered", r.Status, r.Body)
	}
	if r.Header.Get("Retry-After") == "" {
		t.Error("partial kick: no Retry-After")
	}
	if !e.auditHas("session.kick", "sensor-0", registry.ResultError) {
		t.Error("no error audit entry for the partial kick")
	}
	if r := e.do(e.admin, http.MethodGet, "/v1/sessions", "", nil); r.Status != http.StatusServiceUnavailable ||
		!strings.Contains(string(r.Body), "2 of 3 nodes answered") {
		t.Fatalf("partial list: %d %s, want 503", r.Status, r.Body)
	}
	// Positive control: the same error without ErrUnavailable is a 500
	// that does not pass the error on.
	k.err = errors.New("secret detail")
	r = e.do(e.admin, http.MethodDelete, "/v1/devices/sensor-0/sessions", "", nil)
	if r.Status != http.StatusInternalServerError || strings.Contains(string(r.Body), "secret") {
		t.Fatalf("failed kick: %d %s, want 500 without the detail", r.Status, r.Body)
	}
}
