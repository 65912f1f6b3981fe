package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"gopkg.in/yaml.v3"
)

type specDoc struct {
	OpenAPI    string                          `yaml:"openapi"`
	Security   []map[string][]string           `yaml:"security"`
	Paths      map[string]map[string]yaml.Node `yaml:"paths"`
	Components struct {
		SecuritySchemes map[string]struct {
			Type string `yaml:"type"`
		} `yaml:"securitySchemes"`
		Schemas map[string]struct {
			Properties map[string]any `yaml:"properties"`
		} `yaml:"schemas"`
		Responses map[string]specResponse `yaml:"responses"`
	} `yaml:"components"`
}

type specOperation struct {
	OperationID string                  `yaml:"operationId"`
	Responses   map[string]specResponse `yaml:"responses"`
	// Security overrides the document's; an empty list means no client
	// certificate is needed.
	Security *[]map[string][]string `yaml:"security"`
}

type specResponse struct {
	Ref     string `yaml:"$ref"`
	Content map[string]struct {
		Schema struct {
			Ref string `yaml:"$ref"`
		} `yaml:"schema"`
	} `yaml:"content"`
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadSpec(t *testing.T) *specDoc {
	t.Helper()
	b, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc specDoc
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	return &doc
}

// operations returns the spec's operations keyed "METHOD /path", the form
// of the route table's patterns.
func (d *specDoc) operations(t *testing.T) map[string]specOperation {
	t.Helper()
	ops := make(map[string]specOperation)
	for path, item := range d.Paths {
		for key, node := range item {
			if !slices.Contains(httpMethods, key) {
				continue
			}
			var op specOperation
			if err := node.Decode(&op); err != nil {
				t.Fatalf("%s %s: %v", key, path, err)
			}
			ops[strings.ToUpper(key)+" "+path] = op
		}
	}
	return ops
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestOpenAPIDocumentsExactlyTheRoutes(t *testing.T) {
	doc := loadSpec(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	var served []string
	for _, rt := range routes {
		served = append(served, rt.pattern())
	}
	var documented []string
	for k := range doc.operations(t) {
		documented = append(documented, k)
	}
	if !sameSet(served, documented) {
		slices.Sort(served)
		slices.Sort(documented)
		t.Fatalf("routes and spec differ:\nserved     %q\ndocumented %q", served, documented)
	}

	// The server registers exactly the table: each pattern routes to itself.
	e := newEnv(t)
	for _, rt := range routes {
		path := strings.ReplaceAll(rt.path, "{name}", "x")
		req, _ := http.NewRequest(rt.method, "https://localhost"+path, nil)
		if _, p := e.srv.mux.Handler(req); p != rt.pattern() {
			t.Errorf("%s routes to %q", rt.pattern(), p)
		}
	}
}

func TestOpenAPIStructure(t *testing.T) {
	doc := loadSpec(t)
	// Mutual TLS is the only security scheme, and it applies everywhere
	// but on the public routes, which the spec marks `security: []`.
	if len(doc.Components.SecuritySchemes) != 1 {
		t.Fatalf("securitySchemes %+v", doc.Components.SecuritySchemes)
	}
	if s, ok := doc.Components.SecuritySchemes["mutualTLS"]; !ok || s.Type != "mutualTLS" {
		t.Fatalf("securitySchemes %+v", doc.Components.SecuritySchemes)
	}
	if len(doc.Security) != 1 || doc.Security[0]["mutualTLS"] == nil {
		t.Fatalf("top-level security %+v", doc.Security)
	}
	access := map[string]access{}
	for _, rt := range routes {
		access[rt.pattern()] = rt.access
	}
	ids := map[string]bool{}
	for key, op := range doc.operations(t) {
		public := op.Security != nil && len(*op.Security) == 0
		if op.Security != nil && !public {
			t.Errorf("%s: security %v; only `security: []` may override the document's", key, *op.Security)
		}
		if public != (access[key] == publicAccess) {
			t.Errorf("%s: spec says public=%v, the route table says access %d", key, public, access[key])
		}
		if op.OperationID == "" || ids[op.OperationID] {
			t.Errorf("%s: missing or duplicate operationId %q", key, op.OperationID)
		}
		ids[op.OperationID] = true
		if len(op.Responses) == 0 {
			t.Errorf("%s: no responses", key)
		}
		for code, resp := range op.Responses {
			if _, err := strconv.Atoi(code); err != nil {
				t.Errorf("%s: response key %q", key, code)
			}
			if code[0] != '4' && code[0] != '5' {
				continue
			}
			// The console's sign-in answers a browser that followed
			// a link: its refusals are pages.
			if _, html := resp.Content["text/html"]; html && strings.Contains(key, " /ui/") {
				continue
			}
			// Every error response is the Error schema.
			if resp.Ref != "" {
				name := strings.TrimPrefix(resp.Ref, "#/components/responses/")
				r, ok := doc.Components.Responses[name]
				if !ok {
					t.Errorf("%s %s: dangling $ref %q", key, code, resp.Ref)
					continue
				}
				resp = r
			}
			if got := resp.Content["application/json"].Schema.Ref; got != "#/components/schemas/Error" {
				t.Errorf("%s %s: error schema %q", key, code, got)
			}
		}
	}
	// Every $ref in the document resolves.
	b, _ := os.ReadFile("openapi.yaml")
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == "$ref" {
					if !resolves(&root, n.Content[i+1].Value) {
						t.Errorf("line %d: $ref %q does not resolve", n.Content[i+1].Line, n.Content[i+1].Value)
					}
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&root)
}

func resolves(root *yaml.Node, ref string) bool {
	if !strings.HasPrefix(ref, "#/") {
		return false
	}
	n := root.Content[0]
	for _, part := range strings.Split(ref[2:], "/") {
		if n.Kind != yaml.MappingNode {
			return false
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return false
		}
		n = next
	}
	return true
}

// The statuses the spec documents are the ones the server answers with.
func TestOpenAPIErrorStatusesMatchServer(t *testing.T) {
	doc := loadSpec(t)
	ops := doc.operations(t)
	var dir string
	e := newEnv(t, withPolicyDir(t, &dir), func(c *Config) { c.EnrollRate, c.EnrollBurst = 1, 4 })
	e.clock.Freeze()
	e.createDevice("live", nil)
	e.createDevice("dead", nil)
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/dead/revoke", "", nil); r.Status != http.StatusOK {
		t.Fatalf("revoke: %d", r.Status)
	}
	_, csr := newCSR(t, nil)
	csrJSON := func(token string) string {
		b, _ := json.Marshal(EnrollRequest{Token: token, CSR: string(csr)})
		return string(b)
	}
	tok := e.createToken("newbie", "1h", nil).Token
	noDir := newEnv(t)                                        // policy without a directory
	noPolicy := newEnv(t, func(c *Config) { c.Policy = nil }) // no policy administration
	closed := newEnv(t)
	if err := closed.reg.Close(); err != nil {
		t.Fatal(err)
	}
	limited := newEnv(t, func(c *Config) { c.RenewRate, c.RenewBurst = rate.Every(time.Minute), 1 })
	limited.clock.Freeze()
	if r := limited.do(limited.device, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csr); r.Status != http.StatusOK {
		t.Fatalf("first renewal: %d %s", r.Status, r.Body)
	}
	e.retained.put("devices/live/state", 1)

	cases := []struct {
		route, path, ct, body string
		client                *http.Client
		status                int
	}{
		{"POST /v1/devices", "/v1/devices", "application/json", `{"name":"live"}`, e.admin, 409},
		{"POST /v1/devices", "/v1/devices", "application/json", `{"name":"A"}`, e.admin, 400},
		{"POST /v1/devices", "/v1/devices", "text/plain", `{"name":"b"}`, e.admin, 415},
		{"POST /v1/devices", "/v1/devices", "application/json", `{"name":"b","x":"` + strings.Repeat("x", maxBodyBytes) + `"}`, e.admin, 413},
		{"POST /v1/devices", "/v1/devices", "application/json", `{"name":"b"}`, e.device, 403},
		{"POST /v1/devices", "/v1/devices", "application/json", `{"name":"b"}`, e.admin, 201},
		{"GET /v1/devices", "/v1/devices", "", ``, e.stranger, 403},
		{"GET /v1/devices/{name}", "/v1/devices/nope", "", ``, e.admin, 404},
		{"GET /v1/devices/{name}", "/v1/devices/A", "", ``, e.admin, 400},
		{"POST /v1/devices/{name}/svid", "/v1/devices/dead/svid", "application/x-pem-file", string(csr), e.admin, 409},
		{"POST /v1/devices/{name}/svid", "/v1/devices/live/svid", "application/x-pem-file", "junk", e.admin, 400},
		{"POST /v1/devices/{name}/svid", "/v1/devices/live/svid", "text/plain", string(csr), e.admin, 415},
		{"POST /v1/devices/{name}/svid", "/v1/devices/nope/svid", "application/x-pem-file", string(csr), e.admin, 404},
		{"POST /v1/devices/{name}/svid", "/v1/devices/live/svid", "application/x-pem-file", string(csr), e.admin, 200},
		{"POST /v1/devices/{name}/resume", "/v1/devices/dead/resume", "", ``, e.admin, 409},
		{"POST /v1/devices/{name}/suspend", "/v1/devices/dead/suspend", "", ``, e.admin, 409},
		{"POST /v1/devices/{name}/revoke", "/v1/devices/nope/revoke", "", ``, e.admin, 404},
		{"GET /v1/devices", "/v1/devices?status=bogus", "", ``, e.admin, 400},
		{"GET /v1/devices", "/v1/devices", "", ``, e.anon, 401},
		{"GET /v1/devices", "/v1/devices?selector=role=sensor", "", ``, e.admin, 200},
		{"POST /v1/devices/import", "/v1/devices/import", "application/json", `{"rows":[]}`, e.admin, 400},
		{"POST /v1/devices/import", "/v1/devices/import", "text/csv", `name`, e.admin, 415},
		{"POST /v1/devices/import", "/v1/devices/import", "application/json", `{"devices":[]}`, e.device, 403},
		{"POST /v1/devices/import", "/v1/devices/import", "application/json", `{"devices":[{"name":"x","labels":{"k":"` + strings.Repeat("v", maxImportBodyBytes) + `"}}]}`, e.admin, 413},
		{"POST /v1/devices/import", "/v1/devices/import", "application/json", `{"devices":[{"name":"imp"},{"name":"A"}]}`, e.admin, 200},
		{"POST /v1/tokens", "/v1/tokens", "application/json", `{"name":"live"}`, e.admin, 409},
		{"POST /v1/tokens", "/v1/tokens", "application/json", `{"name":"t1","ttl":"forever"}`, e.admin, 400},
		{"POST /v1/tokens", "/v1/tokens", "text/plain", `{"name":"t1"}`, e.admin, 415},
		{"POST /v1/tokens", "/v1/tokens", "application/json", `{"name":"t1","x":"` + strings.Repeat("x", maxBodyBytes) + `"}`, e.admin, 413},
		{"POST /v1/tokens", "/v1/tokens", "application/json", `{"name":"t1"}`, e.device, 403},
		{"POST /v1/tokens", "/v1/tokens", "application/json", `{"name":"t1"}`, e.admin, 201},
		{"POST /v1/enroll", "/v1/enroll", "application/json", `{"token":"x","csr":"junk"}`, e.anon, 400},
		{"POST /v1/enroll", "/v1/enroll", "text/plain", `{}`, e.anon, 415},
		{"POST /v1/enroll", "/v1/enroll", "application/json", `{"token":"` + strings.Repeat("x", maxBodyBytes) + `"}`, e.anon, 413},
		{"POST /v1/enroll", "/v1/enroll", "application/json", csrJSON("ztb_wrong"), e.anon, 401},
		{"POST /v1/enroll", "/v1/enroll", "application/json", csrJSON(tok), e.anon, 429}, // the fifth attempt: burst 4, clock frozen
		{"POST /v1/svid/renew", "/v1/svid/renew", "application/x-pem-file", "junk", e.device, 400},
		{"POST /v1/svid/renew", "/v1/svid/renew", "text/plain", string(csr), e.device, 415},
		{"POST /v1/svid/renew", "/v1/svid/renew", "application/x-pem-file", string(csr) + strings.Repeat("#", maxBodyBytes), e.device, 413},
		{"POST /v1/svid/renew", "/v1/svid/renew", "application/x-pem-file", string(csr), e.anon, 401},
		{"POST /v1/svid/renew", "/v1/svid/renew", "application/x-pem-file", string(csr), e.stranger, 403},
		{"POST /v1/svid/renew", "/v1/svid/renew", "application/x-pem-file", string(csr), e.device, 200},
		{"GET /v1/audit", "/v1/audit?after=-1", "", ``, e.admin, 400},
		{"GET /v1/audit", "/v1/audit", "", ``, e.device, 403},
		{"GET /v1/audit", "/v1/audit", "", ``, e.anon, 401},
		{"GET /v1/audit", "/v1/audit?limit=5", "", ``, e.admin, 200},
		{"GET /v1/policy", "/v1/policy", "", ``, e.device, 403},
		{"GET /v1/policy", "/v1/policy", "", ``, e.admin, 200},
		{"PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.txt", "text/plain", "package x", e.admin, 400},
		{"PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "application/json", "package x", e.admin, 415},
		{"PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "text/plain", "package x\n" + strings.Repeat("#", maxModuleBodyBytes), e.admin, 413},
		{"PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "text/plain", "package x\nallow if {", e.admin, 422},
		{"PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "text/plain", "package x\n", e.device, 403},
		{"PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "text/plain", "package x\n", e.admin, 200},
		{"POST /v1/policy/eval", "/v1/policy/eval", "application/json", `[1]`, e.admin, 400},
		{"POST /v1/policy/eval", "/v1/policy/eval", "text/plain", `{}`, e.admin, 415},
		{"POST /v1/policy/eval", "/v1/policy/eval", "application/json", `{"x":"` + strings.Repeat("x", maxBodyBytes) + `"}`, e.admin, 413},
		{"POST /v1/policy/eval", "/v1/policy/eval", "application/json", `{}`, e.device, 403},
		{"POST /v1/policy/eval", "/v1/policy/eval", "application/json", `{"action":"admin"}`, e.admin, 200},
		{"GET /v1/sessions", "/v1/sessions", "", ``, e.device, 403},
		{"GET /v1/sessions", "/v1/sessions?device=nope", "", ``, e.admin, 404},
		{"GET /v1/sessions", "/v1/sessions?device=A", "", ``, e.admin, 400},
		{"GET /v1/sessions", "/v1/sessions?device=live", "", ``, e.admin, 200},
		{"PATCH /v1/devices/{name}/labels", "/v1/devices/live/labels", "application/json", `{"set":{"bad key":"v"}}`, e.admin, 400},
		{"PATCH /v1/devices/{name}/labels", "/v1/devices/live/labels", "text/plain", `{"set":{"k":"v"}}`, e.admin, 415},
		{"PATCH /v1/devices/{name}/labels", "/v1/devices/live/labels", "application/json", `{"set":{"k":"` + strings.Repeat("v", maxBodyBytes) + `"}}`, e.admin, 413},
		{"PATCH /v1/devices/{name}/labels", "/v1/devices/nope/labels", "application/json", `{"set":{"k":"v"}}`, e.admin, 404},
		{"PATCH /v1/devices/{name}/labels", "/v1/devices/live/labels", "application/json", `{"set":{"k":"v"}}`, e.anon, 401},
		{"PATCH /v1/devices/{name}/labels", "/v1/devices/live/labels", "application/json", `{"set":{"k":"v"}}`, e.device, 403},
		{"PATCH /v1/devices/{name}/labels", "/v1/devices/live/labels", "application/json", `{"set":{"k":"v"},"remove":["x"]}`, e.admin, 200},
		{"DELETE /v1/devices/{name}/sessions", "/v1/devices/A/sessions", "", ``, e.admin, 400},
		{"DELETE /v1/devices/{name}/sessions", "/v1/devices/nope/sessions", "", ``, e.admin, 404},
		{"DELETE /v1/devices/{name}/sessions", "/v1/devices/live/sessions", "", ``, e.anon, 401},
		{"DELETE /v1/devices/{name}/sessions", "/v1/devices/live/sessions", "", ``, e.device, 403},
		{"DELETE /v1/devices/{name}/sessions", "/v1/devices/live/sessions", "", ``, e.admin, 200},
		{"DELETE /v1/policy/modules/{name}", "/v1/policy/modules/x.txt", "", ``, e.admin, 400},
		{"DELETE /v1/policy/modules/{name}", "/v1/policy/modules/nope.rego", "", ``, e.admin, 404},
		{"DELETE /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "", ``, e.device, 403},
		{"DELETE /v1/policy/modules/{name}", "/v1/policy/modules/authz.rego", "", ``, e.admin, 422},
		{"DELETE /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "", ``, e.admin, 200},
		{"DELETE /v1/devices/{name}", "/v1/devices/A", "", ``, e.admin, 400},
		{"DELETE /v1/devices/{name}", "/v1/devices/dead", "", ``, e.admin, 409},
		{"DELETE /v1/devices/{name}", "/v1/devices/live", "", ``, e.device, 403},
		{"DELETE /v1/devices/{name}", "/v1/devices/live", "", ``, e.admin, 200},
		{"DELETE /v1/devices/{name}", "/v1/devices/live", "", ``, e.admin, 404},
		{"GET /v1/bridges", "/v1/bridges", "", ``, e.anon, 401},
		{"GET /v1/bridges", "/v1/bridges", "", ``, e.device, 403},
		{"GET /v1/bridges", "/v1/bridges", "", ``, e.admin, 200},
		{"GET /v1/retained", "/v1/retained?filter=a/%23/b", "", ``, e.admin, 400},
		{"GET /v1/retained", "/v1/retained", "", ``, e.anon, 401},
		{"GET /v1/retained", "/v1/retained", "", ``, e.device, 403},
		{"GET /v1/retained", "/v1/retained?filter=devices/%2B/state", "", ``, e.admin, 200},
		{"DELETE /v1/retained", "/v1/retained?topic=a/%2B", "", ``, e.admin, 400},
		{"DELETE /v1/retained", "/v1/retained?topic=a", "", ``, e.anon, 401},
		{"DELETE /v1/retained", "/v1/retained?topic=devices/live/state", "", ``, e.device, 403},
		{"DELETE /v1/retained", "/v1/retained?topic=devices/live/state", "", ``, e.admin, 204},
		{"DELETE /v1/retained", "/v1/retained?topic=devices/live/state", "", ``, e.admin, 404},
		{"GET /metrics", "/metrics", "", ``, e.device, 403},
		{"GET /healthz", "/healthz", "", ``, e.device, 200},
		{"GET /healthz", "/healthz", "", ``, e.anon, 200},
		{"GET /readyz", "/readyz", "", ``, e.anon, 200},
	}
	noCA := newEnv(t, withoutCA) // identity from files: nothing is signed
	bundle := newEnv(t, func(c *Config) {
		c.BundleEndpoint = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"keys":[]}`)) })
	})
	// Answers that need another server.
	other := []struct {
		e                     *env
		route, path, ct, body string
		status                int
	}{
		{noCA, "POST /v1/devices/{name}/svid", "/v1/devices/sensor-0/svid", "application/x-pem-file", string(csr), 409},
		{noCA, "POST /v1/tokens", "/v1/tokens", "application/json", `{"name":"t1"}`, 409},
		{noCA, "POST /v1/enroll", "/v1/enroll", "application/json", csrJSON("ztb_x"), 409},
		{noCA, "POST /v1/svid/renew", "/v1/svid/renew", "application/x-pem-file", string(csr), 409},
		{bundle, "GET /v1/bundle", "/v1/bundle", "", "", 200},
		{noCA, "GET /v1/bundle", "/v1/bundle", "", "", 404},
		{noDir, "PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "text/plain", "package x\n", 409},
		{noPolicy, "PUT /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "text/plain", "package x\n", 501},
		{noPolicy, "GET /v1/policy", "/v1/policy", "", "", 501},
		{noPolicy, "DELETE /v1/policy/modules/{name}", "/v1/policy/modules/x.rego", "", "", 501},
		{noDir, "DELETE /v1/policy/modules/{name}", "/v1/policy/modules/authz.rego", "", "", 409},
		{noPolicy, "POST /v1/policy/eval", "/v1/policy/eval", "application/json", "{}", 501},
		{closed, "GET /readyz", "/readyz", "", "", 503},
	}
	// Renewals over the limit, and a failing retained store.
	if _, ok := ops["POST /v1/svid/renew"].Responses["429"]; !ok {
		t.Error("POST /v1/svid/renew: the spec does not document 429")
	}
	if r := limited.do(limited.device, http.MethodPost, "/v1/svid/renew", "application/x-pem-file", csr); r.Status != http.StatusTooManyRequests {
		t.Errorf("POST /v1/svid/renew over the limit: %d %s, want 429", r.Status, r.Body)
	}
	broken := newEnv(t)
	broken.retained.err = errors.New("store on fire")
	for _, q := range []struct{ route, path string }{
		{"GET /v1/retained", "/v1/retained"},
		{"DELETE /v1/retained", "/v1/retained?topic=a"},
	} {
		if _, ok := ops[q.route].Responses["500"]; !ok {
			t.Errorf("%s: the spec does not document 500", q.route)
		}
		method, _, _ := strings.Cut(q.route, " ")
		if r := broken.do(broken.admin, method, q.path, "", nil); r.Status != http.StatusInternalServerError {
			t.Errorf("%s with a failing store: %d %s, want 500", q.route, r.Status, r.Body)
		}
	}
	for _, o := range other {
		op, ok := ops[o.route]
		if !ok {
			t.Errorf("%s not in the spec", o.route)
			continue
		}
		if _, ok := op.Responses[strconv.Itoa(o.status)]; !ok {
			t.Errorf("%s: the spec does not document %d", o.route, o.status)
		}
		method, _, _ := strings.Cut(o.route, " ")
		if r := o.e.do(o.e.admin, method, o.path, o.ct, []byte(o.body)); r.Status != o.status {
			t.Errorf("%s %s: server answers %d %s, want %d", method, o.path, r.Status, r.Body, o.status)
		}
	}
	for _, tc := range cases {
		op, ok := ops[tc.route]
		if !ok {
			t.Errorf("%s not in the spec", tc.route)
			continue
		}
		if _, ok := op.Responses[strconv.Itoa(tc.status)]; !ok {
			t.Errorf("%s: the spec does not document %d", tc.route, tc.status)
		}
		method, _, _ := strings.Cut(tc.route, " ")
		var body []byte
		if tc.body != "" {
			body = []byte(tc.body)
		}
		if r := e.do(tc.client, method, tc.path, tc.ct, body); r.Status != tc.status {
			t.Errorf("%s %s: server answers %d %s, want %d", method, tc.path, r.Status, r.Body, tc.status)
		}
	}
}

// The access rules of the route table are in the spec: a route that needs
// a client SVID documents its 401, one decided by policy its 403, and every
// route a success.
func TestOpenAPIDocumentsAccessStatuses(t *testing.T) {
	ops := loadSpec(t).operations(t)
	for _, rt := range routes {
		op := ops[rt.pattern()]
		success := false
		for code := range op.Responses {
			// The console's sign-in and sign-out succeed with a 303.
			success = success || code[0] == '2' || code == "303"
		}
		if !success {
			t.Errorf("%s documents no success", rt.pattern())
		}
		if _, ok := op.Responses["401"]; rt.access != publicAccess && !ok {
			t.Errorf("%s needs a client SVID but documents no 401", rt.pattern())
		}
		if _, ok := op.Responses["403"]; rt.access == adminAccess && !ok {
			t.Errorf("%s is decided by policy but documents no 403", rt.pattern())
		}
	}
}
