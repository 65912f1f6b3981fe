package identity_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

func TestDeviceID(t *testing.T) {
	tests := []struct {
		name string
		td   spiffeid.TrustDomain
		dev  string
		want string
	}{
		{"plain name", td, "sensor-1", "spiffe://example.org/device/sensor-1"},
		{"dots and underscores", td, "a.b_c", "spiffe://example.org/device/a.b_c"},
		{"empty name", td, "", ""},
		{"slash adds a segment", td, "a/b", ""},
		{"parent segment", td, "..", ""},
		{"current segment", td, ".", ""},
		{"MQTT single-level wildcard", td, "+", ""},
		{"MQTT multi-level wildcard", td, "#", ""},
		{"space", td, "a b", ""},
		{"zero trust domain", spiffeid.TrustDomain{}, "sensor-1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := identity.DeviceID(tt.td, tt.dev)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("DeviceID(%q) = %s, want an error", tt.dev, id)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("DeviceID(%q) = %v, %v; want %s", tt.dev, id, err, tt.want)
			}
		})
	}
}
