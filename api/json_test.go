package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// JSON field names are matched exactly: a body that spells a field in
// another case is refused as an unknown field on every route that takes
// JSON, instead of being read as the field it resembles.
func TestJSONFieldNamesAreCaseSensitive(t *testing.T) {
	e := newEnv(t)
	e.createDevice("target", nil)
	tok := e.createToken("newbie", "1h", nil).Token
	_, csrPEM := newCSR(t, nil)
	csr, _ := json.Marshal(string(csrPEM))
	tokJSON, _ := json.Marshal(tok)

	cases := []struct {
		name, path string
		c          *http.Client
		bad        []string // each must be 400
		good       string   // the control, 2xx
	}{
		{"create device", "/v1/devices", e.admin,
			[]string{`{"Name":"x1"}`, `{"NAME":"x1"}`, `{"name":"x1","Labels":{"role":"admin"}}`, `{"name":"x1","Spiffe_ID":"spiffe://example.org/x"}`},
			`{"name":"x1","labels":{"Role":"any case is fine in a label"}}`},
		{"import", "/v1/devices/import", e.admin,
			[]string{`{"Devices":[{"name":"x2"}]}`, `{"devices":[{"NAME":"x2"}]}`, `{"devices":[{"name":"x2","Status":"revoked"}]}`},
			`{"devices":[{"name":"x2","status":"active"}]}`},
		{"token", "/v1/tokens", e.admin,
			[]string{`{"Name":"x3"}`, `{"name":"x3","TTL":"168h"}`},
			`{"name":"x3","ttl":"1h"}`},
		{"sign SVID", "/v1/devices/target/svid", e.admin,
			[]string{`{"CSR":` + string(csr) + `}`, `{"Csr":` + string(csr) + `}`},
			`{"csr":` + string(csr) + `}`},
		{"renew", "/v1/svid/renew", e.device,
			[]string{`{"CSR":` + string(csr) + `}`},
			`{"csr":` + string(csr) + `}`},
		{"enroll", "/v1/enroll", e.anon,
			[]string{`{"Token":` + string(tokJSON) + `,"csr":` + string(csr) + `}`, `{"token":` + string(tokJSON) + `,"CSR":` + string(csr) + `}`},
			`{"token":` + string(tokJSON) + `,"csr":` + string(csr) + `}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, body := range tc.bad {
				r := e.do(tc.c, http.MethodPost, tc.path, "application/json", []byte(body))
				if r.Status != http.StatusBadRequest {
					t.Errorf("%s: %d %s, want 400", body, r.Status, r.Body)
					continue
				}
				if msg := r.StrictError(t); !strings.Contains(msg, "unknown field") {
					t.Errorf("%s: message %q", body, msg)
				}
			}
			if r := e.do(tc.c, http.MethodPost, tc.path, "application/json", []byte(tc.good)); r.Status/100 != 2 {
				t.Errorf("control %s: %d %s, want 2xx", tc.good, r.Status, r.Body)
			}
		})
	}
	// The controls did what they asked for.
	for _, name := range []string{"x1", "x2", "x3"} {
		if _, err := e.reg.Get(name); err != nil {
			t.Errorf("control did not create %s: %v", name, err)
		}
	}
}

// Every route that takes a JSON body is in the table above.
func TestJSONRoutesCovered(t *testing.T) {
	takesJSON := map[string]bool{
		"POST /v1/devices":             true,
		"POST /v1/devices/import":      true,
		"POST /v1/tokens":              true,
		"POST /v1/devices/{name}/svid": true,
		"POST /v1/svid/renew":          true,
		"POST /v1/enroll":              true,
		// PATCH: TestPatchLabelsFieldNamesAreCaseSensitive.
		"PATCH /v1/devices/{name}/labels": true,
		// The input document of a dry run is the policy's, not ours:
		// Rego matches its keys, exactly.
		"POST /v1/policy/eval": false,
	}
	spec := loadSpec(t)
	for _, rt := range routes {
		var op struct {
			RequestBody struct {
				Content map[string]any `yaml:"content"`
			} `yaml:"requestBody"`
		}
		node := spec.Paths[rt.path][strings.ToLower(rt.method)]
		if err := node.Decode(&op); err != nil {
			t.Fatalf("%s: %v", rt.pattern(), err)
		}
		if _, ok := op.RequestBody.Content["application/json"]; ok {
			if _, listed := takesJSON[rt.pattern()]; !listed {
				t.Errorf("%s takes JSON but is not in the case-sensitivity test", rt.pattern())
			}
		}
	}
}

// BenchmarkDecodeImportBody decodes a full import (maxImportRows rows) the
// way the API does (strict, field names checked exactly) and, as the
// baseline, with encoding/json alone.
func BenchmarkDecodeImportBody(b *testing.B) {
	req := ImportRequest{}
	for i := range maxImportRows {
		req.Devices = append(req.Devices, ImportDevice{Name: "sensor-" + strconv.Itoa(i),
			Labels: map[string]string{"role": "sensor", "site": "north"}})
	}
	body, err := json.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("api", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			r := httptest.NewRequest(http.MethodPost, "/v1/devices/import", bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			var out ImportRequest
			if err := decodeJSON(r, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			var out ImportRequest
			if err := dec.Decode(&out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
