package registry

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func TestReopenKeepsData(t *testing.T) {
	s, path := openTemp(t)
	mustCreate(t, s, device("a", "role", "sensor"))
	mustCreate(t, s, Device{Name: "admin-dev", SPIFFEID: td + "/admin/dev", Labels: map[string]string{"role": "admin"}})
	mustCreate(t, s, device("b"))
	mustCreate(t, s, device("c"))
	if _, err := s.SetStatus("b", StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetLabels("a", map[string]string{"role": "controller", "site": "lab"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetStatus("c", StatusRevoked); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, device("d"))
	if err := s.Delete("d"); err != nil {
		t.Fatal(err)
	}
	before, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	after, err := s2.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) || s2.Len() != len(before) {
		t.Fatalf("reopened with %d devices (Len %d), want %d", len(after), s2.Len(), len(before))
	}
	for i := range before {
		if err := sameDevice(before[i], after[i]); err != nil {
			t.Errorf("device %d: %v", i, err)
		}
		if after[i].CreatedAt.Location() != time.UTC || after[i].UpdatedAt.Location() != time.UTC {
			t.Errorf("%s: timestamps not UTC after reload", after[i].Name)
		}
	}
	// Indexes are rebuilt too, not just the primary one.
	if d, err := s2.GetBySPIFFEID(td + "/admin/dev"); err != nil || d.Name != "admin-dev" {
		t.Errorf("GetBySPIFFEID after reopen: %v, %v", d, err)
	}
	if ds, _ := s2.ListByLabel("site", "lab"); len(ds) != 1 || ds[0].Name != "a" {
		t.Errorf("label index after reopen: %v", ds)
	}
	// Revoked stays final across restarts.
	if _, err := s2.SetStatus("c", StatusActive); !errors.Is(err, ErrRevoked) {
		t.Errorf("resume revoked after reopen: err = %v, want ErrRevoked", err)
	}
}

func TestOpenCreatesFileAndDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "registry")
	path := filepath.Join(dir, "devices.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", di.Mode().Perm())
	}
	if s.Len() != 0 {
		t.Errorf("new store has %d devices", s.Len())
	}
	if _, err := Open(""); err == nil {
		t.Error("Open(\"\") succeeded")
	}
}

func TestOpenLocked(t *testing.T) {
	old := lockTimeout
	lockTimeout = 100 * time.Millisecond
	defer func() { lockTimeout = old }()

	_, path := openTemp(t)
	s2, err := Open(path)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a file in use succeeded")
	}
	if !strings.Contains(err.Error(), "locked") {
		t.Errorf("err = %v, want a message about the lock", err)
	}
}

// writeRaw puts raw records (and meta values) into a closed store's file.
// checkOpen opens the store at path: it must succeed when wantMsg is empty,
// else fail with a "registry: " error that mentions wantMsg.
func checkOpen(t *testing.T, path, wantMsg string) {
	t.Helper()
	s, err := Open(path)
	if wantMsg == "" {
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		s.Close()
		return
	}
	if err == nil {
		s.Close()
		t.Fatalf("Open accepted a bad store, want an error mentioning %s", wantMsg)
	}
	if !strings.Contains(err.Error(), wantMsg) || !strings.HasPrefix(err.Error(), "registry: ") {
		t.Fatalf("err = %v, want it to mention %s", err, wantMsg)
	}
}

func writeRaw(t *testing.T, path string, devices, meta map[string]string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		for k, v := range devices {
			if err := tx.Bucket(bucketDevices).Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		for k, v := range meta {
			if err := tx.Bucket(bucketMeta).Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesBadRecords(t *testing.T) {
	const ts = `"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"`
	rec := func(name, id, status string) string {
		return `{"name":"` + name + `","spiffe_id":"` + id + `","labels":{"role":"x"},"status":"` + status + `",` + ts + `}`
	}
	tests := []struct {
		name    string
		records map[string]string
		meta    map[string]string
		wantMsg string // "" means Open must succeed
	}{
		{"valid record (control)", map[string]string{"ok": rec("ok", td+"/device/ok", "active")}, nil, ""},
		{"null labels (control)", map[string]string{"ok": `{"name":"ok","spiffe_id":"` + td + `/device/ok","labels":null,"status":"revoked",` + ts + `}`}, nil, ""},
		{"garbage", map[string]string{"junk": "not json"}, nil, `record "junk"`},
		{"truncated", map[string]string{"cut": rec("cut", td+"/device/cut", "active")[:30]}, nil, `record "cut"`},
		{"trailing data", map[string]string{"tr": rec("tr", td+"/device/tr", "active") + "{}"}, nil, `record "tr"`},
		{"unknown field", map[string]string{"uf": `{"name":"uf","spiffe_id":"` + td + `/device/uf","status":"active","admin":true}`}, nil, `record "uf"`},
		{"key differs from name", map[string]string{"k1": rec("other", td+"/device/other", "active")}, nil, `record "k1"`},
		{"bad name", map[string]string{"a..b": rec("a..b", td+"/device/x", "active")}, nil, `record "a..b"`},
		{"bad status", map[string]string{"bs": rec("bs", td+"/device/bs", "deleted")}, nil, `record "bs"`},
		{"no status", map[string]string{"ns": rec("ns", td+"/device/ns", "")}, nil, `record "ns"`},
		{"bad spiffe id", map[string]string{"bi": rec("bi", "spiffe://example.org", "active")}, nil, `record "bi"`},
		{"bad label", map[string]string{"bl": `{"name":"bl","spiffe_id":"` + td + `/device/bl","labels":{"a b":"c"},"status":"active"}`}, nil, `record "bl"`},
		{"duplicate spiffe id", map[string]string{
			"d1": rec("d1", td+"/device/same", "active"),
			"d2": rec("d2", td+"/device/same", "active"),
		}, nil, `is also used by "d1"`},
		{"future schema", nil, map[string]string{"schema_version": "2"}, "unsupported schema version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, path := openTemp(t)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			writeRaw(t, path, tc.records, tc.meta)
			checkOpen(t, path, tc.wantMsg)
		})
	}
}

func TestOpenRefusesDataWithoutVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket(bucketDevices)
		if err != nil {
			return err
		}
		return b.Put([]byte("x"), []byte("{}"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path); err == nil {
		s.Close()
		t.Fatal("Open accepted devices without a schema version")
	}
}

// TestDiskFailureLeavesMemoryUnchanged breaks the bbolt handle under the
// store, so every write fails on disk, and checks that nothing of the write
// became visible: the state in memory never runs ahead of the disk.
func TestDiskFailureLeavesMemoryUnchanged(t *testing.T) {
	writes := []struct {
		name string
		do   func(s *Store) error
	}{
		{"create", func(s *Store) error { _, err := s.Create(device("new")); return err }},
		{"set status", func(s *Store) error { _, err := s.SetStatus("dev", StatusRevoked); return err }},
		{"set labels", func(s *Store) error {
			_, err := s.SetLabels("dev", map[string]string{"role": "admin"})
			return err
		}},
		{"delete", func(s *Store) error { return s.Delete("dev") }},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			s, _ := openTemp(t)
			orig := mustCreate(t, s, device("dev", "role", "sensor"))

			// Positive control: the same write works on a healthy store.
			healthy, _ := openTemp(t)
			mustCreate(t, healthy, device("dev", "role", "sensor"))
			if err := w.do(healthy); err != nil {
				t.Fatalf("control write failed: %v", err)
			}

			watch := s.Watch()
			_, devWatch, err := s.WatchDevice(orig.SPIFFEID)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.bolt.Close(); err != nil {
				t.Fatal(err)
			}
			err = w.do(s)
			if err == nil {
				t.Fatal("write succeeded with the disk gone")
			}
			if !strings.Contains(err.Error(), "write to disk") {
				t.Errorf("err = %v, want a disk write error", err)
			}

			if s.Len() != 1 {
				t.Errorf("Len = %d, want 1", s.Len())
			}
			got, err := s.Get("dev")
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if err := sameDevice(got, orig); err != nil {
				t.Errorf("device changed in memory: %v", err)
			}
			if _, err := s.Get("new"); !errors.Is(err, ErrNotFound) {
				t.Errorf("failed Create visible in memory: %v", err)
			}
			if ds, _ := s.ListByLabel("role", "admin"); len(ds) != 0 {
				t.Errorf("failed SetLabels visible in the label index")
			}
			select {
			case <-watch:
				t.Error("Watch fired for a write that failed")
			default:
			}
			select {
			case <-devWatch:
				t.Error("WatchDevice fired for a write that failed")
			default:
			}
		})
	}
}
