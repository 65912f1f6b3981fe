package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/brokerstore"
)

// storage: on by default; its keys parse; a mistake is one line naming the
// key.
func TestStorageConfig(t *testing.T) {
	if d := DefaultConfig().Storage; !d.Enabled || d.Fsync {
		t.Errorf("default storage %+v, want enabled without fsync", d)
	}
	for _, tc := range []struct {
		yaml    string
		want    StorageConfig
		wantErr string
	}{
		{"storage:\n  fsync: true\n", StorageConfig{Enabled: true, Fsync: true}, ""},
		{"storage:\n  enabled: false\n", StorageConfig{}, ""},
		{"storage:\n  enabled: false\n  fsync: true\n", StorageConfig{}, "storage.fsync"},
		{"storage:\n  fsynk: true\n", StorageConfig{}, `unknown key "storage.fsynk"`},
		{"storage:\n  enabled: sometimes\n", StorageConfig{}, "storage"},
	} {
		got, err := LoadConfig(writeConfig(t, tc.yaml))
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%q: error %v, want one line naming %s", tc.yaml, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case got.Storage != tc.want:
			t.Errorf("%q: storage %+v, want %+v", tc.yaml, got.Storage, tc.want)
		}
	}
}

// The app keeps the broker state in DataDir/broker.db when storage is on,
// and writes no such file when it is off.
func TestStorageWiring(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		cfg := testConfig(t)
		cfg.PolicyWatch = false
		cfg.Storage.Enabled = enabled
		if err := start(t, cfg).Close(); err != nil {
			t.Fatal(err)
		}
		_, err := os.Stat(filepath.Join(cfg.DataDir, brokerstore.FileName))
		if exists := err == nil; exists != enabled {
			t.Errorf("storage %v: broker.db exists %v", enabled, exists)
		}
	}
}
