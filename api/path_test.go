package api

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ztgate/ztgate/policy"
)

// Two plausible ways of keeping operators away from the policy
// administration: by the path the policy sees, and by the route's name.
// Both allow role=admin everything.
const (
	operatorByPathPolicy = `package ztgate.authz

default allow := false

allow if {
	input.action == "admin"
	input.device.labels.role == "admin"
}

allow if {
	input.action == "admin"
	input.device.labels.role == "operator"
	not startswith(input.request.path, "/v1/policy")
}
`
	operatorByRoutePolicy = `package ztgate.authz

default allow := false

allow if {
	input.action == "admin"
	input.device.labels.role == "admin"
}

allow if {
	input.action == "admin"
	input.device.labels.role == "operator"
	not startswith(input.request.route, "policy.")
}
`
	// escalation is the module an operator would upload to make itself
	// an admin.
	escalation = "package ztgate.authz\n\nallow if input.device.labels.role == \"operator\"\n"
)

// The policy decides on the path the router matched: an escaped spelling
// of a path the policy refuses is not a way around it, neither to read the
// policy nor to upload a module that would make the operator an admin.
func TestAdminPolicySeesTheRoutedPath(t *testing.T) {
	for name, src := range map[string]string{"by path": operatorByPathPolicy, "by route": operatorByRoutePolicy} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, withPolicy(t, map[string]string{"authz.rego": src}))
			op := e.enrolledClient("op-1", map[string]string{"role": "operator"})
			rev := e.engine.Status().Revision

			// Controls: the policy works as written.
			if r := e.do(op, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusOK {
				t.Fatalf("operator GET /v1/devices: %d %s, want 200", r.Status, r.Body)
			}
			if r := e.do(op, http.MethodGet, "/v1/policy", "", nil); r.Status != http.StatusForbidden {
				t.Fatalf("operator GET /v1/policy: %d %s, want 403", r.Status, r.Body)
			}
			if r := e.do(e.admin, http.MethodGet, "/v1/policy", "", nil); r.Status != http.StatusOK {
				t.Fatalf("admin GET /v1/policy: %d %s, want 200", r.Status, r.Body)
			}

			for _, target := range []string{"/v1/%70olicy", "/v1/%70%6f%6c%69%63%79", "/v1/POLICY/../policy", "/v1/devices/../policy"} {
				r := e.raw(op, http.MethodGet, target, "", nil)
				if r.Status == http.StatusOK || r.Status/100 != 4 {
					t.Errorf("operator GET %s: %d %s, want 400 or 403", target, r.Status, r.Body)
				}
			}
			for _, target := range []string{"/v1/%70olicy/modules/zz.rego", "/v1/policy/modules/%7a%7a.rego", "/v1/devices/../policy/modules/zz.rego"} {
				r := e.raw(op, http.MethodPut, target, "text/plain", []byte(escalation))
				if r.Status == http.StatusOK || r.Status/100 != 4 {
					t.Errorf("operator PUT %s: %d %s, want 400 or 403", target, r.Status, r.Body)
				}
			}
			if got := e.engine.Status().Revision; got != rev {
				t.Fatal("the operator changed the policy")
			}
			// The operator is still no admin.
			if r := e.do(op, http.MethodGet, "/v1/policy", "", nil); r.Status != http.StatusForbidden {
				t.Fatalf("operator GET /v1/policy after the attempts: %d, want 403", r.Status)
			}
			// Control: the admin uploads the same module through the
			// canonical path.
			if r := e.do(e.admin, http.MethodPut, "/v1/policy/modules/zz.rego", "text/plain", []byte(escalation)); r.Status != http.StatusOK {
				t.Fatalf("admin PUT: %d %s, want 200", r.Status, r.Body)
			}
		})
	}
}

// A path has one spelling: anything else is refused before routing, with
// the API's JSON error, whoever asks and whatever the route.
func TestNonCanonicalPathsRefused(t *testing.T) {
	var mu sync.Mutex
	var decided []string
	e := newEnv(t, func(c *Config) {
		next := c.Decider
		c.Decider = policy.DeciderFunc(func(ctx context.Context, in *policy.Input) policy.Decision {
			mu.Lock()
			decided = append(decided, in.Request.Path)
			mu.Unlock()
			return next.Decide(ctx, in)
		})
	})
	cases := []struct{ name, method, target string }{
		{"escaped unreserved letter", "GET", "/v1/%70olicy"},
		{"escaped unreserved in a name", "GET", "/v1/devices/%73ensor-0"},
		{"escaped dash", "GET", "/v1/devices/sensor%2D0"},
		{"escaped dot", "PUT", "/v1/policy/modules/x%2Erego"},
		{"escaped slash", "GET", "/v1/devices/sensor-0%2Fsvid"},
		{"escaped slash, lower case", "POST", "/v1/devices/sensor-0%2fsuspend"},
		{"escaped plus", "POST", "/v1/devices/a%2Bb/revoke"},
		{"lower-case escape", "GET", "/v1/devices/a%7eb"},
		{"double slash inside", "GET", "/v1//devices"},
		{"double slash first", "GET", "//v1/devices"},
		{"trailing double slash", "GET", "/v1/devices//"},
		{"dot segment", "GET", "/v1/./devices"},
		{"dot segment last", "GET", "/v1/devices/."},
		{"dot-dot segment", "GET", "/v1/devices/../policy"},
		{"dot-dot last", "POST", "/v1/devices/sensor-0/suspend/.."},
		{"escaped dot-dot", "GET", "/v1/devices/%2e%2e/policy"},
		{"trailing slash", "GET", "/v1/devices/"},
		{"trailing slash after a name", "GET", "/v1/devices/sensor-0/"},
		{"public route, escaped", "GET", "/heal%74hz"},
		{"public route, trailing slash", "GET", "/readyz/"},
		{"enrollment, dot segment", "POST", "/v1/./enroll"},
		{"asterisk", "GET", "*"},
		{"absolute form, escaped", "GET", "https://127.0.0.1/v1/%70olicy"},
	}
	for _, who := range []struct {
		name string
		c    *http.Client
	}{{"admin", e.admin}, {"anonymous", nil}} {
		for _, tc := range cases {
			t.Run(who.name+"/"+tc.name, func(t *testing.T) {
				r := e.raw(who.c, tc.method, tc.target, "", nil)
				if r.Status != http.StatusBadRequest {
					t.Fatalf("%s %s: %d %s, want 400", tc.method, tc.target, r.Status, r.Body)
				}
				if msg := r.StrictError(t); !strings.Contains(msg, "path") {
					t.Errorf("message %q does not say what is wrong", msg)
				}
			})
		}
	}
	mu.Lock()
	if len(decided) != 0 {
		t.Errorf("non-canonical paths reached the policy: %q", decided)
	}
	mu.Unlock()
	if d, _ := e.reg.Get("sensor-0"); d.Status != "active" {
		t.Fatalf("a refused request changed sensor-0 to %s", d.Status)
	}

	// Controls: canonical paths, the same way, by the same callers.
	for _, tc := range []struct {
		c              *http.Client
		method, target string
		status         int
	}{
		{e.admin, "GET", "/v1/devices", 200},
		{e.admin, "GET", "/v1/devices/sensor-0", 200},
		{e.admin, "GET", "/v1/devices?limit=5", 200},
		{e.admin, "GET", "/v1/audit?after=0&limit=1", 200},
		{e.admin, "GET", "/v1/nothing", 404},
		{nil, "GET", "/healthz", 200},
		{nil, "GET", "/readyz", 200},
	} {
		if r := e.raw(tc.c, tc.method, tc.target, "", nil); r.Status != tc.status {
			t.Errorf("control %s %s: %d %s, want %d", tc.method, tc.target, r.Status, r.Body, tc.status)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(decided, "/v1/devices/sensor-0") {
		t.Errorf("decided paths %q", decided)
	}
}

// A policy tells routes apart by request.route: every route a client SVID
// reaches has a name of its own.
func TestRouteNamesAreDistinct(t *testing.T) {
	seen := map[string]string{}
	for _, rt := range routes {
		if rt.action == "" {
			t.Errorf("%s has no name", rt.pattern())
		}
		if rt.access == publicAccess {
			continue
		}
		if other, dup := seen[rt.action]; dup {
			t.Errorf("%s and %s are both named %q", other, rt.pattern(), rt.action)
		}
		seen[rt.action] = rt.pattern()
	}
}
