package api

import (
	"net/http"
	"testing"

	"github.com/ztgate/ztgate/registry"
)

// The policy revision is administrative information: /readyz tells it only
// to a caller the admin decision would let in (the status floor included),
// never to an anonymous probe or a device.
func TestReadyzRevisionOnlyForAdmins(t *testing.T) {
	e := newEnv(t)
	rev := e.engine.Status().Revision
	fallen := e.enrolledClient("admin-2", map[string]string{"role": "admin"})
	if _, err := e.reg.SetStatus("admin-2", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		c       *http.Client
		showRev bool
	}{
		{"anonymous", e.anon, false},
		{"device", e.device, false},
		{"unenrolled", e.stranger, false},
		{"revoked admin", fallen, false},
		{"admin", e.admin, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.c, http.MethodGet, "/readyz", "", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("%d %s, want 200", r.Status, r.Body)
			}
			var raw map[string]any
			r.DecodeJSON(t, &raw)
			got, shown := raw["policy_revision"]
			if shown != tc.showRev {
				t.Fatalf("policy_revision shown=%v (%s), want shown=%v", shown, r.Body, tc.showRev)
			}
			if tc.showRev && got != rev {
				t.Fatalf("policy_revision %v, want %s", got, rev)
			}
			if raw["status"] != "ready" || raw["store"] != "ok" {
				t.Fatalf("readiness %s", r.Body)
			}
		})
	}
	// A probe is not an admin request: nothing of it is in the audit log.
	for _, a := range e.auditEntries() {
		if a.Action == "health" {
			t.Errorf("probe audited: %+v", a)
		}
	}
}
