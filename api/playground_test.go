package api

import (
	"encoding/json"
	"net/http"
	"testing"
)

func TestEvalPlaygroundShorthand(t *testing.T) {
	e := newEnv(t)
	e.createDevice("sensor-1", map[string]string{"role": "sensor"})
	eval := func(body string) (response, EvalResponse) {
		t.Helper()
		r := e.do(e.admin, http.MethodPost, "/v1/policy/eval", "application/json", []byte(body))
		var out EvalResponse
		if r.Status == http.StatusOK {
			r.DecodeJSON(t, &out)
		}
		return r, out
	}

	// The default policy: a sensor publishes under its own name only.
	r, own := eval(`{"device":"sensor-1","action":"publish","topic":"devices/sensor-1/telemetry"}`)
	if r.Status != http.StatusOK || !own.Allow || own.Revision == "" {
		t.Fatalf("own topic: %d %s", r.Status, r.Body)
	}
	var in map[string]any
	if err := json.Unmarshal(own.Input, &in); err != nil {
		t.Fatalf("input echo %s: %v", own.Input, err)
	}
	dev, _ := in["device"].(map[string]any)
	ident, _ := in["identity"].(map[string]any)
	if in["action"] != "publish" || in["topic"] != "devices/sensor-1/telemetry" || dev["name"] != "sensor-1" ||
		ident["spiffe_id"] != "spiffe://example.org/device/sensor-1" {
		t.Fatalf("built input %s", own.Input)
	}
	r, other := eval(`{"device":"sensor-1","action":"publish","topic":"devices/sensor-2/telemetry","client_id":"c1"}`)
	if r.Status != http.StatusOK || other.Allow || len(other.Reasons) == 0 {
		t.Fatalf("other's topic: %d %s", r.Status, r.Body)
	}

	for _, tc := range []struct {
		body   string
		status int
	}{
		{`{"device":"nope","action":"publish","topic":"t"}`, http.StatusNotFound},
		{`{"device":"sensor-1","action":"fly","topic":"t"}`, http.StatusBadRequest},
		{`{"device":"sensor-1","action":"publish","topic":"a/#"}`, http.StatusBadRequest},
		{`{"device":"sensor-1","action":"publish"}`, http.StatusBadRequest},
		{`{"device":"sensor-1","action":"publish","topic":7}`, http.StatusBadRequest},
		{`{"device":"Bad Name","action":"publish","topic":"t"}`, http.StatusBadRequest},
	} {
		if r, _ := eval(tc.body); r.Status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.body, r.Status, r.Body, tc.status)
		}
	}
	// A raw input document is still evaluated as it is: a "device" key
	// beside other input fields is no shorthand.
	r, raw := eval(`{"action":"admin","device":null,"identity":{"spiffe_id":"spiffe://example.org/x"}}`)
	if r.Status != http.StatusOK || raw.Allow || raw.Input != nil {
		t.Fatalf("raw input: %d %s", r.Status, r.Body)
	}
}
