package policy

import (
	"reflect"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/registry"
)

// NewSubject is the one place a verified identity and its registry record
// become a policy subject, for the gateway and the API alike.
func TestNewSubject(t *testing.T) {
	client := Client{ID: "c1", RemoteAddr: "127.0.0.1:50412", ProtocolVersion: 5}
	for _, tc := range []struct {
		name   string
		id     string
		dev    *registry.Device
		client Client
		want   *Subject
	}{
		{
			name: "enrolled, with labels",
			id:   "spiffe://example.org/device/a",
			dev: &registry.Device{Name: "a", SPIFFEID: "spiffe://example.org/device/a",
				Labels: map[string]string{"role": "sensor", "team": "ops"}, Status: registry.StatusActive},
			client: client,
			want: &Subject{
				Identity: Identity{SPIFFEID: "spiffe://example.org/device/a", TrustDomain: "example.org",
					Path: "/device/a", Segments: []string{"device", "a"}},
				Device: &Device{Name: "a", Labels: map[string]string{"role": "sensor", "team": "ops"}, Status: "active"},
				Client: client,
			},
		},
		{
			// A device without labels has an empty label object, not
			// null: `input.device.labels.x` is then undefined, never an
			// error, whoever built the subject.
			name:   "enrolled, no labels",
			id:     "spiffe://example.org/admin/dev",
			dev:    &registry.Device{Name: "adm", Status: registry.StatusSuspended},
			client: Client{RemoteAddr: "127.0.0.1:1"},
			want: &Subject{
				Identity: Identity{SPIFFEID: "spiffe://example.org/admin/dev", TrustDomain: "example.org",
					Path: "/admin/dev", Segments: []string{"admin", "dev"}},
				Device: &Device{Name: "adm", Labels: map[string]string{}, Status: "suspended"},
				Client: Client{RemoteAddr: "127.0.0.1:1"},
			},
		},
		{
			name:   "not enrolled",
			id:     "spiffe://example.org/device/ghost",
			client: client,
			want: &Subject{
				Identity: Identity{SPIFFEID: "spiffe://example.org/device/ghost", TrustDomain: "example.org",
					Path: "/device/ghost", Segments: []string{"device", "ghost"}},
				Client: client,
			},
		},
		{
			// The trust domain's own ID has no path: no segments, and
			// an empty list rather than null.
			name:   "no path",
			id:     "spiffe://example.org",
			client: client,
			want: &Subject{
				Identity: Identity{SPIFFEID: "spiffe://example.org", TrustDomain: "example.org",
					Path: "", Segments: []string{}},
				Client: client,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NewSubject(spiffeid.RequireFromString(tc.id), tc.dev, tc.client)
			if !reflect.DeepEqual(got.Identity, tc.want.Identity) {
				t.Errorf("identity %+v, want %+v", got.Identity, tc.want.Identity)
			}
			if !reflect.DeepEqual(got.Device, tc.want.Device) {
				t.Errorf("device %+v, want %+v", got.Device, tc.want.Device)
			}
			if got.Client != tc.want.Client {
				t.Errorf("client %+v, want %+v", got.Client, tc.want.Client)
			}
		})
	}
}

// A subject must not change after its first decision (the engine and the
// cache keep its converted form): it owns its labels, so a later change to
// the registry record it came from does not reach it.
func TestNewSubjectOwnsItsLabels(t *testing.T) {
	dev := &registry.Device{Name: "a", Labels: map[string]string{"team": "ops"}, Status: registry.StatusActive}
	s := NewSubject(spiffeid.RequireFromString("spiffe://example.org/device/a"), dev, Client{})
	dev.Labels["team"] = "dev"
	dev.Labels["role"] = "admin"
	dev.Name = "b"
	want := &Device{Name: "a", Labels: map[string]string{"team": "ops"}, Status: "active"}
	if !reflect.DeepEqual(s.Device, want) {
		t.Fatalf("device %+v after the record changed, want %+v", s.Device, want)
	}
}
