package api

import (
	"net/http"
	"testing"
)

// teamOpsPolicy grants the admin API by a label other than role: nothing
// in the API may assume which labels a policy reads.
const teamOpsPolicy = `package ztgate.authz

default allow := false

allow if {
	input.action == "admin"
	input.device.labels.team == "ops"
}
`

// The admin policy sees every label of the caller's device, as the MQTT
// policy does: a grant by team=ops admits the ops device and no other,
// not even the role=admin device this policy does not name.
func TestAdminPolicyReadsAnyDeviceLabel(t *testing.T) {
	e := newEnv(t, withPolicy(t, map[string]string{"authz.rego": teamOpsPolicy}))
	ops := e.enrolledClient("ops-1", map[string]string{"team": "ops", "site": "north"})
	dev := e.enrolledClient("dev-1", map[string]string{"team": "dev"})
	bare := e.enrolledClient("bare-1", nil)

	for _, tc := range []struct {
		name   string
		c      *http.Client
		status int
	}{
		{"team=ops", ops, http.StatusOK},
		{"team=dev", dev, http.StatusForbidden},
		{"no labels", bare, http.StatusForbidden},
		{"role=admin", e.admin, http.StatusForbidden},
		{"not enrolled", e.stranger, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/v1/devices", "/v1/sessions", "/v1/retained"} {
				if r := e.do(tc.c, http.MethodGet, path, "", nil); r.Status != tc.status {
					t.Errorf("GET %s: %d %s, want %d", path, r.Status, r.Body, tc.status)
				}
			}
		})
	}
}
