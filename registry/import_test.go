package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
)

func TestImportIdempotent(t *testing.T) {
	s, path := openTemp(t)
	rows := []Device{
		device("a", "role", "sensor"),
		device("b"),
		{Name: "c", SPIFFEID: td + "/device/c", Status: StatusSuspended},
		{Name: "admin-dev", SPIFFEID: td + "/admin/dev", Labels: map[string]string{"role": "admin"}},
	}
	res, err := s.Import(rows, adminID)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Row != i || r.Name != rows[i].Name || r.Result != ImportCreated || r.Error != "" {
			t.Fatalf("first import, row %d: %+v", i, r)
		}
	}
	wantStatus(t, s, "a", StatusActive)
	wantStatus(t, s, "c", StatusSuspended)
	created := allAudit(t, s)
	if len(created) != len(rows) {
		t.Fatalf("%d audit entries, want one per created device", len(created))
	}
	before, _ := s.List()

	// Again, after a restart, and after a status change the rows did not
	// ask for: nothing changes, nothing is written.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.SetStatus("b", StatusSuspended); err != nil {
		t.Fatal(err)
	}
	before, _ = s2.List()
	audit := allAudit(t, s2)
	watch := s2.Watch()
	res, err = s2.Import(rows, adminID)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Result != ImportUnchanged || r.Error != "" {
			t.Fatalf("second import, row %d: %+v", i, r)
		}
	}
	after, _ := s2.List()
	for i := range after {
		if err := sameDevice(after[i], before[i]); err != nil {
			t.Errorf("re-import changed a device: %v", err)
		}
	}
	if got := allAudit(t, s2); len(got) != len(audit) {
		t.Errorf("re-import wrote %d audit entries", len(got)-len(audit))
	}
	if fired(watch) {
		t.Error("re-import fired the watch")
	}
}

func TestImportPerRowErrors(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("exists", "role", "sensor"))
	d := device("suspended")
	d.Status = StatusSuspended
	mustCreate(t, s, d)

	rows := []struct {
		row     Device
		want    string
		wantMsg string
	}{
		{device("good-1"), ImportCreated, ""},
		{device("Bad"), ImportError, "invalid device name"},
		{Device{Name: "no-id"}, ImportError, "spiffe_id is required"},
		{Device{Name: "bad-id", SPIFFEID: "https://x/y"}, ImportError, "spiffe_id"},
		{device("bad-label", "a b", "c"), ImportError, "label key"},
		{Device{Name: "bad-status", SPIFFEID: td + "/device/bad-status", Status: "deleted"}, ImportError, "status"},
		{Device{Name: "exists", SPIFFEID: td + "/device/other", Labels: map[string]string{"role": "sensor"}}, ImportError, "different spiffe_id"},
		{device("exists", "role", "controller"), ImportError, "different labels ({role=sensor}, not {role=controller})"},
		{device("exists", "role", "sensor"), ImportUnchanged, ""},
		{Device{Name: "suspended", SPIFFEID: td + "/device/suspended", Status: StatusActive, Labels: map[string]string{}}, ImportError, "different status"},
		{device("suspended"), ImportUnchanged, ""}, // no status in the row: not compared
		{Device{Name: "thief", SPIFFEID: td + "/device/exists"}, ImportError, `used by device "exists"`},
		{device("good-2", "role", "sensor"), ImportCreated, ""},
		{device("good-2", "role", "sensor"), ImportUnchanged, ""},            // twice in one import
		{device("good-2", "role", "other"), ImportError, "different labels"}, // and a conflicting third
		{device("good-3"), ImportCreated, ""},
	}
	in := make([]Device, len(rows))
	for i, r := range rows {
		in[i] = r.row
	}
	res, err := s.Import(in, adminID)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if len(res) != len(rows) {
		t.Fatalf("%d results for %d rows", len(res), len(rows))
	}
	for i, r := range rows {
		got := res[i]
		if got.Row != i || got.Name != r.row.Name || got.Result != r.want || !strings.Contains(got.Error, r.wantMsg) ||
			(r.want == ImportError) != (got.Error != "") {
			t.Errorf("row %d (%s): %+v; want %s mentioning %q", i, r.row.Name, got, r.want, r.wantMsg)
		}
	}
	// The good rows are in, the bad ones are not, the existing ones as they were.
	for _, name := range []string{"good-1", "good-2", "good-3"} {
		wantStatus(t, s, name, StatusActive)
	}
	for _, name := range []string{"no-id", "bad-id", "bad-label", "bad-status", "thief"} {
		if _, err := s.Get(name); !errors.Is(err, ErrNotFound) {
			t.Errorf("refused row %s was stored: %v", name, err)
		}
	}
	if d, _ := s.Get("exists"); d.SPIFFEID != td+"/device/exists" || d.Labels["role"] != "sensor" {
		t.Errorf("existing device changed: %+v", d)
	}
	wantStatus(t, s, "suspended", StatusSuspended)
	if s.Len() != 5 {
		t.Errorf("Len = %d, want 5", s.Len())
	}
}

// TestImportBatches: rows are written in transactions of importBatch rows; a
// batch that fails on disk leaves the earlier batches in place, and is
// itself not applied at all.
func TestImportBatches(t *testing.T) {
	s, path := openTemp(t)
	const n = 2*importBatch + 34
	rows := make([]Device, n)
	for i := range rows {
		rows[i] = device(fmt.Sprintf("d-%05d", i))
	}
	commits := 0
	s.beforeCommit = func(*bbolt.Tx) error {
		commits++
		if commits == 2 {
			return errors.New("injected")
		}
		return nil
	}
	res, err := s.Import(rows, adminID)
	if err == nil || !strings.Contains(err.Error(), "write to disk") {
		t.Fatalf("Import: err = %v, want the injected disk failure", err)
	}
	if len(res) != importBatch {
		t.Fatalf("%d results, want the %d of the first batch", len(res), importBatch)
	}
	if s.Len() != importBatch {
		t.Fatalf("Len = %d, want %d", s.Len(), importBatch)
	}

	// Importing again finishes the job in batches: one transaction each.
	s.beforeCommit = func(*bbolt.Tx) error { commits++; return nil }
	commits = 0
	res, err = s.Import(rows, adminID)
	if err != nil {
		t.Fatal(err)
	}
	if commits != 2 {
		// The first batch is all unchanged and writes nothing.
		t.Errorf("%d bbolt transactions, want 2", commits)
	}
	created, unchanged := 0, 0
	for _, r := range res {
		switch r.Result {
		case ImportCreated:
			created++
		case ImportUnchanged:
			unchanged++
		default:
			t.Fatalf("row %d: %+v", r.Row, r)
		}
	}
	if created != n-importBatch || unchanged != importBatch {
		t.Fatalf("created %d, unchanged %d; want %d, %d", created, unchanged, n-importBatch, importBatch)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Len() != n {
		t.Fatalf("after reopen Len = %d, want %d", s2.Len(), n)
	}
	if got := allAudit(t, s2); len(got) != n {
		t.Fatalf("after reopen %d audit entries, want %d (one per device created)", len(got), n)
	}
}

func TestImportEmpty(t *testing.T) {
	s, _ := openTemp(t)
	res, err := s.Import(nil, adminID)
	if err != nil || len(res) != 0 {
		t.Fatalf("Import(nil) = %v, %v", res, err)
	}
	if _, err := s.Import([]Device{device("x")}, "bad\nactor"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad actor: err = %v, want ErrInvalid", err)
	}
	if s.Len() != 0 {
		t.Fatal("an import with a bad actor stored devices")
	}
}
