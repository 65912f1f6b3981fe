package test

import (
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
)

// operatorPolicy is what a site adds to the default policy to give
// operators the fleet but not the policy: by path, as a first try would.
const operatorPolicy = `package ztgate.authz

allow if {
	input.action == "admin"
	input.device.status == "active"
	input.device.labels.role == "operator"
	not startswith(input.request.path, "/v1/policy")
}
`

// Rule: the admin policy decides on the path the API routes. Another
// spelling of a path the policy refuses (an escaped letter, an escaped
// name, a dot segment, a double slash) is refused with 400 before routing:
// the operator neither reads the policy nor uploads a module that would
// make it an admin. The operator's fleet access and the admin's policy
// access are the controls.
func TestAPI_AdminPolicySeesTheRoutedPath(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t, testutil.WithExtraPolicy("operator.rego", operatorPolicy))
	op := env.Enroll(t, "op-1", map[string]string{"role": "operator"})
	var before struct {
		Revision string `json:"revision"`
	}
	env.API(t, env.Admin, "GET", "/v1/policy", nil).Decode(t, &before)

	if res := env.API(t, op, "GET", "/v1/devices", nil); res.Status != 200 {
		t.Fatalf("operator GET /v1/devices: %d %s; want 200", res.Status, res.Body)
	}
	if res := env.API(t, op, "GET", "/v1/policy", nil); res.Status != 403 {
		t.Fatalf("operator GET /v1/policy: %d %s; want 403", res.Status, res.Body)
	}
	for _, path := range []string{"/v1/%70olicy", "/v1/devices/../policy", "/v1//policy", "/v1/./policy", "/v1/policy/"} {
		res := env.API(t, op, "GET", path, nil)
		if res.Status != 400 {
			t.Errorf("operator GET %s: %d %s; want 400", path, res.Status, truncate(res.Body))
			continue
		}
		res.ErrorMessage(t)
	}
	escalation := []byte("package ztgate.authz\n\nallow if input.device.labels.role == \"operator\"\n")
	for _, path := range []string{"/v1/%70olicy/modules/zz.rego", "/v1/policy/modules/%7a%7a.rego", "/v1/devices/../policy/modules/zz.rego"} {
		res, err := env.APIRaw(op, "PUT", path, "text/plain", escalation)
		if err != nil {
			t.Fatalf("PUT %s: %v", path, err)
		}
		if res.Status != 400 {
			t.Errorf("operator PUT %s: %d %s; want 400", path, res.Status, truncate(res.Body))
		}
	}
	var after struct {
		Revision string `json:"revision"`
	}
	if res := env.API(t, env.Admin, "GET", "/v1/policy", nil); res.Status != 200 {
		t.Fatalf("admin GET /v1/policy: %d %s; want 200", res.Status, res.Body)
	} else {
		res.Decode(t, &after)
	}
	if after.Revision != before.Revision {
		t.Fatalf("the policy changed from %s to %s", before.Revision, after.Revision)
	}
}
