package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/identity/svidrenew"
)

// The SVID-issuing routes take an optional lifetime ("ttl"), between
// MinSVIDTTL and the configured svid_ttl. The admin route refuses a longer
// one; the renewal route caps it, because a device cannot know the
// gateway's configuration and must not be locked out of renewal when an
// operator shortens svid_ttl below the lifetime its SVID had.
func TestSVIDTTL(t *testing.T) {
	// The renewing side leaves out a lifetime below the bound rather
	// than have it refused.
	if svidrenew.MinTTL != MinSVIDTTL {
		t.Fatalf("svidrenew.MinTTL %s, want the API's MinSVIDTTL %s", svidrenew.MinTTL, MinSVIDTTL)
	}
	const maxTTL = time.Hour
	e := newEnv(t, func(c *Config) { c.SVIDTTL = maxTTL })
	e.createDevice("sensor-1", nil)

	routes := []struct {
		name, path string
		client     *http.Client
		// above is what a ttl above svid_ttl gets: 0 = a 400.
		above time.Duration
	}{
		{name: "admin", path: "/v1/devices/sensor-1/svid", client: e.admin},
		{name: "renew", path: "/v1/svid/renew", client: e.device, above: maxTTL},
	}
	tests := []struct {
		name string
		ttl  any           // the JSON value of "ttl"; nil: absent
		want time.Duration // the lifetime signed; 0: a 400
		// above marks the case that depends on the route.
		above bool
	}{
		{name: "absent: svid_ttl", want: maxTTL},
		{name: "empty: svid_ttl", ttl: "", want: maxTTL},
		{name: "lower bound", ttl: "10s", want: 10 * time.Second},
		{name: "in between", ttl: "36m", want: 36 * time.Minute},
		{name: "upper bound", ttl: "1h", want: maxTTL},
		{name: "below the lower bound", ttl: "5s"},
		{name: "just below the lower bound", ttl: "9.999s"},
		{name: "zero", ttl: "0s"},
		{name: "negative", ttl: "-1m"},
		{name: "above svid_ttl", ttl: "2h", above: true},
		{name: "garbage", ttl: "a while"},
		{name: "a number, not a duration string", ttl: 20},
	}
	for _, rt := range routes {
		for _, tt := range tests {
			t.Run(rt.name+"/"+tt.name, func(t *testing.T) {
				want := tt.want
				if tt.above {
					want = rt.above
				}
				_, csrPEM := newCSR(t, nil)
				body := map[string]any{"csr": string(csrPEM)}
				if tt.ttl != nil {
					body["ttl"] = tt.ttl
				}
				raw, err := json.Marshal(body)
				if err != nil {
					t.Fatal(err)
				}
				r := e.do(rt.client, http.MethodPost, rt.path, "application/json", raw)
				if want == 0 {
					if r.Status != http.StatusBadRequest {
						t.Fatalf("ttl %v: %d %s, want 400", tt.ttl, r.Status, r.Body)
					}
					msg := r.StrictError(t)
					// The answer names the field, and for a string that is
					// no duration in range, both bounds.
					want := []string{"ttl"}
					if _, isString := tt.ttl.(string); isString {
						want = append(want, "10s", maxTTL.String())
					}
					for _, w := range want {
						if !strings.Contains(msg, w) {
							t.Fatalf("ttl %v: error %q does not mention %q", tt.ttl, msg, w)
						}
					}
					return
				}
				if r.Status != http.StatusOK {
					t.Fatalf("ttl %v: %d %s, want 200", tt.ttl, r.Status, r.Body)
				}
				var sv SVIDResponse
				r.DecodeJSON(t, &sv)
				leaf := parseChain(t, []byte(sv.SVIDPEM))[0]
				// NotBefore is the moment of signing less the CA's
				// backdating, NotAfter that moment plus the lifetime, both
				// at second precision from the same instant.
				if got := leaf.NotAfter.Sub(leaf.NotBefore) - identity.NotBeforeBackdate; got != want {
					t.Fatalf("ttl %v: SVID lives %s, want %s", tt.ttl, got, want)
				}
			})
		}
	}
}
