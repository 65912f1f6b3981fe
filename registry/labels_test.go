package registry

import (
	"errors"
	"fmt"
	"maps"
	"testing"
)

func TestPatchLabels(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("a", "role", "sensor", "site", "x"))
	full := device("full")
	for i := range maxLabels {
		full.Labels[fmt.Sprintf("k%d", i)] = "v"
	}
	mustCreate(t, s, full)

	refused := []struct {
		name   string
		dev    string
		set    map[string]string
		remove []string
		want   error
	}{
		{"bad key", "a", map[string]string{"bad key": "v"}, nil, ErrInvalid},
		{"bad removed key", "a", nil, []string{"bad key"}, ErrInvalid},
		{"set and removed", "a", map[string]string{"role": "x"}, []string{"role"}, ErrInvalid},
		{"over the bound", "full", map[string]string{"one-more": "v"}, nil, ErrInvalid},
		{"unknown device", "nope", map[string]string{"k": "v"}, nil, ErrNotFound},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.PatchLabels(tc.dev, tc.set, tc.remove); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if cur, _ := s.Get("a"); !maps.Equal(cur.Labels, map[string]string{"role": "sensor", "site": "x"}) {
		t.Fatalf("refused patches changed labels to %v", cur.Labels)
	}

	got, err := s.PatchLabels("a", map[string]string{"role": "controller", "zone": "1"}, []string{"site", "absent"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"role": "controller", "zone": "1"}; !maps.Equal(got.Labels, want) {
		t.Fatalf("labels = %v, want %v", got.Labels, want)
	}
	if ds, _ := s.ListByLabel("site", "x"); len(ds) != 0 {
		t.Errorf("removed label still indexed: %v", ds)
	}
	// The full device may still swap a label: the bound is on the result.
	if _, err := s.PatchLabels("full", map[string]string{"new": "v"}, []string{"k0"}); err != nil {
		t.Fatalf("swap on a full device: %v", err)
	}

	// A patch that changes nothing writes nothing and wakes no watcher.
	before, _ := s.ListAudit(0, 1000)
	ch := s.Watch()
	if _, err := s.PatchLabels("a", map[string]string{"zone": "1"}, []string{"site"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
		t.Error("a no-op patch fired the watch")
	default:
	}
	if after, _ := s.ListAudit(0, 1000); len(after) != len(before) {
		t.Errorf("a no-op patch wrote %d audit entries", len(after)-len(before))
	}
}
