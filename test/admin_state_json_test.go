package test

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testutil"
)

// GET /v1/sessions and GET /v1/retained on a real gateway answer exactly
// the documents of api/openapi.yaml: every field, no other, with the
// gateway's values. The gateway and the API share their types; this pins
// what the operator's tools read, whoever owns the types.
func TestAdminStateJSONShape(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	s1 := env.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
	d1 := env.MustConnect(t, s1, "sensor-1", nil)
	d1.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "up", QoS: 1, Retain: true})

	res := env.API(t, env.Admin, "GET", "/v1/sessions", nil)
	if res.Status != 200 {
		t.Fatalf("GET /v1/sessions: %d %s", res.Status, res.Body)
	}
	var sessions []map[string]any
	res.Decode(t, &sessions)
	i := slices.IndexFunc(sessions, func(s map[string]any) bool { return s["client_id"] == "sensor-1" })
	if i < 0 {
		t.Fatalf("GET /v1/sessions: %s; want sensor-1's session", res.Body)
	}
	s := sessions[i]
	checkKeys(t, "session", s, "client_id", "spiffe_id", "device", "remote_addr", "protocol_version", "connected_at",
		"subscriptions", "queue_depth")
	want := map[string]any{"client_id": "sensor-1", "spiffe_id": s1.ID, "device": "sensor-1", "protocol_version": float64(5),
		"queue_depth": float64(0)}
	if subs, ok := s["subscriptions"].([]any); !ok || len(subs) != 0 {
		t.Errorf("session subscriptions %v, want []", s["subscriptions"])
	}
	for k, v := range want {
		if s[k] != v {
			t.Errorf("session %s = %v, want %v", k, s[k], v)
		}
	}
	if ra, _ := s["remote_addr"].(string); ra == "" {
		t.Errorf("session remote_addr %v, want the client's address", s["remote_addr"])
	}
	if at, _ := s["connected_at"].(string); !parses(at) {
		t.Errorf("session connected_at %v, want an RFC 3339 time", s["connected_at"])
	}

	res = env.API(t, env.Admin, "GET", "/v1/retained?filter=devices/sensor-1/%23", nil)
	if res.Status != 200 {
		t.Fatalf("GET /v1/retained: %d %s", res.Status, res.Body)
	}
	var list map[string]any
	res.Decode(t, &list)
	checkKeys(t, "retained list", list, "messages", "truncated")
	msgs, _ := list["messages"].([]any)
	if len(msgs) != 1 || list["truncated"] != false {
		t.Fatalf("GET /v1/retained: %s; want sensor-1's state, not truncated", res.Body)
	}
	m, _ := msgs[0].(map[string]any)
	checkKeys(t, "retained message", m, "topic", "qos", "payload_size", "spiffe_id", "created")
	wantMsg := map[string]any{"topic": "devices/sensor-1/state", "qos": float64(1), "payload_size": float64(2), "spiffe_id": s1.ID}
	for k, v := range wantMsg {
		if m[k] != v {
			t.Errorf("retained %s = %v, want %v", k, m[k], v)
		}
	}
	if at, _ := m["created"].(string); !parses(at) {
		t.Errorf("retained created %v, want an RFC 3339 time", m["created"])
	}
}

// checkKeys fails unless doc has exactly the keys named.
func checkKeys(t *testing.T, what string, doc map[string]any, keys ...string) {
	t.Helper()
	var got []string
	for k := range doc {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(keys)
	if !reflect.DeepEqual(got, keys) {
		t.Errorf("%s has keys %v, want %v", what, got, keys)
	}
}

func parses(s string) bool {
	_, err := time.Parse(time.RFC3339, s)
	return err == nil
}
