package api

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/bridge"
)

// GET /v1/bridges: an empty array without bridges, the provider's status
// in the documented shape with one, admins only.
func TestBridges(t *testing.T) {
	e := newEnv(t)
	if r := e.do(e.admin, http.MethodGet, "/v1/bridges", "", nil); r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != "[]" {
		t.Fatalf("no bridges: %d %s, want 200 []", r.Status, r.Body)
	}
	at := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	e = newEnv(t, func(c *Config) {
		c.Bridges = func() []bridge.Status {
			return []bridge.Status{{Name: "cloud", URL: "mqtts://127.0.0.1:8883", Connected: true, Since: at,
				Queued: 2, Forwarded: 10, Denied: 1, Dropped: 0, Received: 3}}
		}
	})
	r := e.do(e.admin, http.MethodGet, "/v1/bridges", "", nil)
	var raw []map[string]any
	r.DecodeJSON(t, &raw)
	want := []map[string]any{{"name": "cloud", "url": "mqtts://127.0.0.1:8883", "connected": true,
		"since": "2026-12-04T12:00:00Z", "queued": float64(2), "forwarded": float64(10), "denied": float64(1),
		"dropped": float64(0), "received": float64(3)}}
	if !reflect.DeepEqual(raw, want) {
		t.Fatalf("bridges %v, want %v", raw, want)
	}
	if r := e.do(e.device, http.MethodGet, "/v1/bridges", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device: %d, want 403", r.Status)
	}
	if r := e.do(e.anon, http.MethodGet, "/v1/bridges", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous: %d, want 401", r.Status)
	}
}
