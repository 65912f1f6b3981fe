package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `ca init` makes the one CA every node of a cluster starts with; a second
// run keeps it (same pin), and a wrong trust domain or no --dir is a
// one-line error.
func TestCAInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	first := ok(t, "ca", "init", "--dir", dir, "--trust-domain", "plant.example")
	if !strings.Contains(first, "CA of plant.example in "+dir+", pin sha256:") {
		t.Fatalf("output %q", first)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil {
		t.Fatalf("no CA key written: %v", err)
	}
	if again := ok(t, "ca", "init", "--dir", dir, "--trust-domain", "plant.example"); again != first {
		t.Fatalf("second run changed the CA: %q then %q", first, again)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"ca", "init", "--dir", dir, "--trust-domain", "other.example"}, `is not the CA of trust domain "other.example"`},
		{[]string{"ca", "init", "--trust-domain", "plant.example"}, "--dir is required"},
		{[]string{"ca", "init", "--dir", dir, "--trust-domain", "spiffe://plant.example/x"}, "want a bare trust domain name"},
	} {
		r := ztgate(t, nil, "", tt.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tt.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Fatalf("%v: code %d stderr %q, want one line containing %q", tt.args, r.code, r.stderr, tt.want)
		}
	}
}
