package api

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// statusBlindPolicy is plausible and wrong: it grants the admin API by label
// and never looks at the status. One rule admits an unenrolled break-glass
// identity, which only the policy can decide.
const statusBlindPolicy = `package ztgate.authz

default allow := false

allow if {
	input.action == "admin"
	input.device.labels.role == "admin"
}

allow if {
	input.action == "admin"
	input.device == null
	input.identity.path == "/ops/break-glass"
}
`

// An enrolled identity that is not active is refused on every route that
// takes a client certificate, before the policy is asked, whatever the
// policy would say; an unenrolled one is still the policy's to decide.
func TestNonActiveIdentitiesRefusedBeforePolicy(t *testing.T) {
	var mu sync.Mutex
	decisions := map[string]int{} // SPIFFE ID -> decisions
	e := newEnv(t, withPolicy(t, map[string]string{"authz.rego": statusBlindPolicy}), func(c *Config) {
		next := c.Decider
		c.Decider = policy.DeciderFunc(func(ctx context.Context, in *policy.Input) policy.Decision {
			mu.Lock()
			decisions[in.Subject.Identity.SPIFFEID]++
			mu.Unlock()
			return next.Decide(ctx, in)
		})
	})
	e.createDevice("target", nil)
	admin := map[string]string{"role": "admin"}
	revoked := e.enrolledClient("admin-2", admin)
	suspended := e.enrolledClient("admin-3", admin)
	for name, st := range map[string]registry.Status{"admin-2": registry.StatusRevoked, "admin-3": registry.StatusSuspended} {
		if _, err := e.reg.SetStatus(name, st); err != nil {
			t.Fatal(err)
		}
	}
	pendingID := spiffeid.RequireFromPath(td, "/device/admin-4")
	if _, _, err := e.reg.CreateToken("admin-4", time.Hour, admin, pendingID.String(), "test"); err != nil {
		t.Fatal(err)
	}
	pending := e.clientFor(pendingID)

	callers := []struct {
		name   string
		id     string
		c      *http.Client
		status registry.Status
	}{
		{"revoked", "spiffe://example.org/device/admin-2", revoked, registry.StatusRevoked},
		{"suspended", "spiffe://example.org/device/admin-3", suspended, registry.StatusSuspended},
		{"pending", pendingID.String(), pending, registry.StatusPending},
	}
	for _, who := range callers {
		for _, rt := range routes {
			if rt.access == publicAccess {
				continue
			}
			path, ct, body := adminRequest(t, rt, "intruder")
			switch {
			case rt.pattern() == "POST /v1/svid/renew":
				_, csrPEM := newCSR(t, nil)
				ct, body = "application/x-pem-file", csrPEM
			case strings.Contains(rt.path, "{name}") && !strings.HasPrefix(rt.path, "/v1/policy"):
				path, ct, body = adminRequest(t, rt, "target")
			}
			r := e.do(who.c, rt.method, path, ct, body)
			if r.Status != http.StatusForbidden {
				t.Errorf("%s %s as a %s admin: %d %s, want 403", rt.method, path, who.name, r.Status, r.Body)
				continue
			}
			if msg := r.StrictError(t); !strings.Contains(msg, string(who.status)) {
				t.Errorf("%s %s as a %s admin: message %q does not name the status", rt.method, path, who.name, msg)
			}
		}
		// An unknown route too: nothing is decided for such a caller.
		if r := e.do(who.c, http.MethodGet, "/v1/nothing", "", nil); r.Status != http.StatusForbidden {
			t.Errorf("unknown route as a %s admin: %d, want 403", who.name, r.Status)
		}
	}
	mu.Lock()
	for _, who := range callers {
		if n := decisions[who.id]; n != 0 {
			t.Errorf("the policy was asked %d times about the %s admin", n, who.name)
		}
	}
	mu.Unlock()

	// Nothing the refused requests asked for happened.
	for _, name := range []string{"intruder", "intruder-imported", "intruder-token"} {
		if _, err := e.reg.Get(name); err == nil {
			t.Fatalf("a refused request enrolled %s", name)
		}
	}
	if d, _ := e.reg.Get("target"); d.Status != registry.StatusActive {
		t.Fatalf("a refused request changed target to %s", d.Status)
	}

	// The refusals are audited like denials by policy, under the caller.
	var denied []string
	for _, a := range e.auditEntries() {
		if a.Actor == "spiffe://example.org/device/admin-2" && a.Result == registry.ResultDenied {
			denied = append(denied, a.Action+" "+a.Target)
		}
	}
	for _, want := range []string{"device.create POST /v1/devices", "svid.issue POST /v1/devices/target/svid", "device.list GET /v1/devices"} {
		if !slices.Contains(denied, want) {
			t.Errorf("no denial %q for the revoked admin in the audit log: %q", want, denied)
		}
	}

	// Controls: the active admin creates a device and gets an SVID signed;
	// an unenrolled identity the policy admits gets in.
	if r := e.postJSON(e.admin, "/v1/devices", CreateDeviceRequest{Name: "made-by-admin"}); r.Status != http.StatusCreated {
		t.Fatalf("active admin creates a device: %d %s", r.Status, r.Body)
	}
	_, csrPEM := newCSR(t, nil)
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/target/svid", "application/x-pem-file", csrPEM); r.Status != http.StatusOK {
		t.Fatalf("active admin signs an SVID: %d %s", r.Status, r.Body)
	}
	glass := e.clientFor(spiffeid.RequireFromPath(td, "/ops/break-glass"))
	if r := e.do(glass, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusOK {
		t.Fatalf("unenrolled identity admitted by the policy: %d %s", r.Status, r.Body)
	}
	if r := e.do(e.stranger, http.MethodGet, "/v1/devices", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("unenrolled identity refused by the policy: %d %s", r.Status, r.Body)
	}
	mu.Lock()
	defer mu.Unlock()
	if decisions["spiffe://example.org/ops/break-glass"] == 0 || decisions["spiffe://example.org/device/ghost"] == 0 {
		t.Fatalf("unenrolled identities were not decided by the policy: %v", decisions)
	}
}
