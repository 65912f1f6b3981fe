package api

import (
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/registry"
)

// listNames fetches every page of GET /v1/devices?query with page size
// limit and returns the names in order, failing on a repeated name.
func (e *env) listNames(query string, limit int) []string {
	e.t.Helper()
	var names []string
	seen := map[string]bool{}
	after := ""
	for range 100 {
		q, err := url.ParseQuery(query)
		if err != nil {
			e.t.Fatal(err)
		}
		q.Set("limit", fmt.Sprint(limit))
		if after != "" {
			q.Set("after", after)
		}
		r := e.do(e.admin, http.MethodGet, "/v1/devices?"+q.Encode(), "", nil)
		if r.Status != http.StatusOK {
			e.t.Fatalf("list %s: %d %s", q.Encode(), r.Status, r.Body)
		}
		var page DeviceList
		r.DecodeJSON(e.t, &page)
		if len(page.Devices) > limit {
			e.t.Fatalf("page of %d devices, limit %d", len(page.Devices), limit)
		}
		for _, d := range page.Devices {
			if seen[d.Name] {
				e.t.Fatalf("%s on two pages", d.Name)
			}
			seen[d.Name] = true
			names = append(names, d.Name)
		}
		if page.Next == "" {
			return names
		}
		after = page.Next
	}
	e.t.Fatal("pagination does not end")
	return nil
}

func TestListDevicesSelectorsAndPages(t *testing.T) {
	e := newEnv(t)
	fleet := []struct {
		name       string
		site, role string
		suspend    bool
	}{
		{"a-1", "plant-a", "sensor", false},
		{"a-2", "plant-a", "sensor", true},
		{"a-3", "plant-a", "controller", false},
		{"b-1", "plant-b", "sensor", false},
		{"b-2", "plant-b", "sensor", false},
		{"a-4", "plant-a", "sensor", false},
	}
	for _, d := range fleet {
		e.createDevice(d.name, map[string]string{"site": d.site, "role": d.role})
		if d.suspend {
			if r := e.do(e.admin, http.MethodPost, "/v1/devices/"+d.name+"/suspend", "", nil); r.Status != http.StatusOK {
				t.Fatal(r.Status)
			}
		}
	}
	cases := []struct {
		query string
		want  []string
	}{
		{"", []string{"a-1", "a-2", "a-3", "a-4", "admin-dev", "b-1", "b-2", "sensor-0"}},
		{"selector=site=plant-a", []string{"a-1", "a-2", "a-3", "a-4"}},
		{"selector=site=plant-a,role=sensor", []string{"a-1", "a-2", "a-4"}},
		{"selector= role = sensor , site = plant-b", []string{"b-1", "b-2"}},
		{"selector=site=plant-a,role=sensor&status=active", []string{"a-1", "a-4"}},
		{"status=suspended", []string{"a-2"}},
		{"selector=site=plant-c", nil},
		{"selector=role=admin", []string{"admin-dev"}},
	}
	for _, tc := range cases {
		for _, limit := range []int{1, 2, 1000} {
			if got := e.listNames(tc.query, limit); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%q limit %d: %v, want %v", tc.query, limit, got, tc.want)
			}
		}
	}
	// The cursor is exact: a page starts right after it.
	r := e.do(e.admin, http.MethodGet, "/v1/devices?limit=2&after=a-2", "", nil)
	var page DeviceList
	r.DecodeJSON(t, &page)
	if len(page.Devices) != 2 || page.Devices[0].Name != "a-3" || page.Next != "a-4" {
		t.Fatalf("page after a-2: %+v", page)
	}

	for _, q := range []string{
		"selector=site",          // not key=value
		"selector=site!=plant-a", // only equality
		"selector=a=1,a=2",       // key twice
		"selector=bad key=1",     // not a label key
		"status=bogus",           // no such state
		"after=A",                // not a device name
		"limit=0", "limit=-1", "limit=x", "limit=1001",
		"selectors=site=plant-a",         // a typo must not list everything
		"status=active&status=suspended", // given twice
	} {
		r := e.do(e.admin, http.MethodGet, "/v1/devices?"+q, "", nil)
		if r.Status != http.StatusBadRequest {
			t.Errorf("%q: %d %s, want 400", q, r.Status, r.Body)
			continue
		}
		r.StrictError(t)
	}
}

func TestImportDevices(t *testing.T) {
	e := newEnv(t)
	e.createDevice("existing", map[string]string{"site": "a"})
	req := ImportRequest{Devices: []ImportDevice{
		{Name: "imp-1", Labels: map[string]string{"site": "b"}},
		{Name: "imp-2", SPIFFEID: "spiffe://example.org/workload/imp-2"},
		{Name: "Bad Name"},
		{Name: "imp-3", SPIFFEID: "spiffe://other.org/device/imp-3"},
		{Name: "existing", Labels: map[string]string{"site": "other"}},
		{Name: "existing", Labels: map[string]string{"site": "a"}},
		{Name: "imp-4", Status: "suspended"},
		{Name: "imp-5", Status: "asleep"},
		{Name: "imp-6", SPIFFEID: "spiffe://example.org/device/imp-1"},
		{Name: "imp-1"}, // the same name twice in one file
	}}
	want := []string{"created", "created", "error", "error", "error", "unchanged", "created", "error", "error", "error"}

	results := func(r response) []ImportResult {
		t.Helper()
		if r.Status != http.StatusOK {
			t.Fatalf("import: %d %s", r.Status, r.Body)
		}
		var out ImportResponse
		r.DecodeJSON(t, &out)
		if len(out.Results) != len(req.Devices) {
			t.Fatalf("%d results for %d rows", len(out.Results), len(req.Devices))
		}
		for i, res := range out.Results {
			if res.Row != i || res.Name != req.Devices[i].Name {
				t.Fatalf("result %d is %+v", i, res)
			}
			if (res.Result == "error") != (res.Error != "") {
				t.Fatalf("row %d: result %s with error %q", i, res.Result, res.Error)
			}
		}
		return out.Results
	}
	first := results(e.postJSON(e.admin, "/v1/devices/import", req))
	for i, res := range first {
		if res.Result != want[i] {
			t.Errorf("row %d (%s): %s %q, want %s", i, res.Name, res.Result, res.Error, want[i])
		}
	}
	for name, st := range map[string]registry.Status{"imp-1": "active", "imp-2": "active", "imp-4": "suspended"} {
		if d, err := e.reg.Get(name); err != nil || d.Status != st {
			t.Errorf("%s: %+v %v, want %s", name, d, err, st)
		}
	}
	if d, _ := e.reg.Get("imp-2"); d.SPIFFEID != "spiffe://example.org/workload/imp-2" {
		t.Errorf("imp-2 spiffe_id %s", d.SPIFFEID)
	}
	if d, _ := e.reg.Get("existing"); d.Labels["site"] != "a" {
		t.Error("an import changed an existing device")
	}
	for _, name := range []string{"imp-3", "imp-5", "imp-6"} {
		if _, err := e.reg.Get(name); err == nil {
			t.Errorf("refused row %s was created", name)
		}
	}
	n := e.reg.Len()

	// Idempotent: the same rows again create nothing; what was created is
	// unchanged and what was refused is refused again.
	second := results(e.postJSON(e.admin, "/v1/devices/import", req))
	for i, res := range second {
		w := want[i]
		if w == "created" {
			w = "unchanged"
		}
		if res.Result != w {
			t.Errorf("again, row %d (%s): %s %q, want %s", i, res.Name, res.Result, res.Error, w)
		}
	}
	if e.reg.Len() != n {
		t.Fatalf("the second import changed the device count: %d -> %d", n, e.reg.Len())
	}

	// The creates are audited under the admin, with the import itself.
	var creates []string
	imports := 0
	for _, a := range e.auditEntries() {
		switch {
		case a.Action == registry.ActionDeviceCreate && strings.HasPrefix(a.Target, "imp-"):
			if a.Actor != "spiffe://example.org/admin/dev" || !strings.Contains(a.Detail, "import") {
				t.Errorf("create entry %+v", a)
			}
			creates = append(creates, a.Target)
		case a.Action == actionImport:
			imports++
			if a.Actor != "spiffe://example.org/admin/dev" || a.Result != registry.ResultOK {
				t.Errorf("import entry %+v", a)
			}
		}
	}
	if !reflect.DeepEqual(creates, []string{"imp-1", "imp-2", "imp-4"}) || imports != 2 {
		t.Fatalf("audit: creates %v, %d imports", creates, imports)
	}

	// Limits and access.
	big := ImportRequest{Devices: make([]ImportDevice, maxImportRows+1)}
	for i := range big.Devices {
		big.Devices[i].Name = fmt.Sprintf("bulk-%d", i)
	}
	if r := e.postJSON(e.admin, "/v1/devices/import", big); r.Status != http.StatusBadRequest {
		t.Fatalf("%d rows: %d, want 400", len(big.Devices), r.Status)
	}
	big.Devices = big.Devices[:maxImportRows]
	if r := e.postJSON(e.device, "/v1/devices/import", big); r.Status != http.StatusForbidden {
		t.Fatalf("device: %d, want 403", r.Status)
	}
	if _, err := e.reg.Get("bulk-0"); err == nil {
		t.Fatal("a refused import created devices")
	}
	// Control: the largest allowed import, as an admin.
	r := e.postJSON(e.admin, "/v1/devices/import", big)
	var out ImportResponse
	r.DecodeJSON(t, &out)
	if r.Status != http.StatusOK || len(out.Results) != maxImportRows || out.Results[maxImportRows-1].Result != "created" {
		t.Fatalf("%d rows: %d", maxImportRows, r.Status)
	}
}

// Every admin and enrollment action leaves an entry naming who did it.
func TestAuditTrail(t *testing.T) {
	e := newEnv(t)
	const admin = "spiffe://example.org/admin/dev"
	const dev = "spiffe://example.org/device/sensor-0"

	e.createDevice("meter-1", nil)
	e.do(e.admin, http.MethodPost, "/v1/devices/meter-1/suspend", "", nil)
	_, csrPEM := newCSR(t, nil)
	e.do(e.admin, http.MethodPost, "/v1/devices/sensor-0/svid", "application/x-pem-file", csrPEM)
	tr := e.createToken("meter-2", "1h", nil)
	if r, _ := e.enroll(e.anon, "ztb_0123456789abcdef."+strings.Repeat("A", 43)); r.Status != http.StatusUnauthorized {
		t.Fatal(r.Status)
	}
	if r, _ := e.enroll(e.anon, tr.Token); r.Status != http.StatusOK {
		t.Fatal(r.Status)
	}
	e.do(e.device, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csrPEM)
	e.postJSON(e.device, "/v1/tokens", TokenRequest{Name: "evil"})           // denied by policy
	e.postJSON(e.admin, "/v1/devices", CreateDeviceRequest{Name: "meter-1"}) // fails: exists
	e.do(e.admin, http.MethodPost, "/v1/devices/meter-1/revoke", "", nil)

	type key struct{ actor, action, target, result string }
	var got []key
	all := e.auditEntries()
	for _, a := range all {
		if a.Actor == registry.ActorSystem {
			continue // the fixtures, enrolled directly in the registry
		}
		if a.Time.IsZero() || a.ID == 0 {
			t.Errorf("entry %+v", a)
		}
		if !strings.Contains(a.Detail, "remote 127.0.0.1:") {
			t.Errorf("entry %+v lacks the remote address", a)
		}
		got = append(got, key{a.Actor, a.Action, a.Target, a.Result})
	}
	want := []key{
		{admin, "device.create", "meter-1", "ok"},
		{admin, "device.suspend", "meter-1", "ok"},
		{admin, "svid.issue", "sensor-0", "ok"},
		{admin, "token.create", "meter-2", "ok"},
		{"bootstrap-token", "token.redeem", "token 0123456789abcdef", "denied"},
		{"bootstrap-token", "token.redeem", "meter-2", "ok"},
		{"bootstrap-token", "svid.issue", "meter-2", "ok"},
		{dev, "svid.renew", "sensor-0", "ok"},
		{dev, "token.create", "POST /v1/tokens", "denied"},
		{admin, "device.create", "meter-1", "error"},
		{admin, "device.revoke", "meter-1", "ok"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("audit log:\n%v\nwant\n%v", got, want)
	}

	// Pages chain through the whole log and end with next 0.
	var ids []uint64
	var after uint64
	for range 100 {
		r := e.do(e.admin, http.MethodGet, fmt.Sprintf("/v1/audit?limit=3&after=%d", after), "", nil)
		var page AuditList
		r.DecodeJSON(t, &page)
		for _, a := range page.Entries {
			ids = append(ids, a.ID)
		}
		if page.Next == 0 {
			break
		}
		if len(page.Entries) != 3 {
			t.Fatalf("a page of %d entries is not the last but says next %d", len(page.Entries), page.Next)
		}
		after = page.Next
	}
	if len(ids) != len(all) || ids[0] != 1 || ids[len(ids)-1] != uint64(len(all)) {
		t.Fatalf("paged ids %v, want 1..%d", ids, len(all))
	}
	// Reading the log is not itself an entry, and only admins read it.
	if n := len(e.auditEntries()); n != len(all) {
		t.Fatalf("%d entries after reading, want %d", n, len(all))
	}
	if r := e.do(e.device, http.MethodGet, "/v1/audit", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device reads the audit log: %d", r.Status)
	}
	for _, q := range []string{"after=x", "after=-1", "limit=0", "limit=5000", "since=1"} {
		if r := e.do(e.admin, http.MethodGet, "/v1/audit?"+q, "", nil); r.Status != http.StatusBadRequest {
			t.Errorf("%q: %d, want 400", q, r.Status)
		}
	}
}

// A flood of refusals is bounded on its way to the disk; successes are not.
func TestRefusalAuditIsRateLimited(t *testing.T) {
	e := newEnv(t)
	e.clock.Freeze()
	for range refusalAuditBurst + 5 {
		if r, _ := e.enroll(e.anon, "ztb_guess"); r.Status != http.StatusUnauthorized {
			t.Fatal(r.Status)
		}
	}
	e.createDevice("after-flood", nil)
	refusals, created := 0, false
	for _, a := range e.auditEntries() {
		if a.Result == registry.ResultDenied {
			refusals++
		}
		if a.Target == "after-flood" {
			created = true
		}
	}
	if refusals != refusalAuditBurst || !created {
		t.Fatalf("%d refusals written (want %d), success written: %v", refusals, refusalAuditBurst, created)
	}
	m := e.do(e.admin, http.MethodGet, "/metrics", "", nil)
	if !strings.Contains(string(m.Body), "ztgate_api_audit_suppressed_total 5") {
		t.Error("suppressed refusals are not counted")
	}
}
