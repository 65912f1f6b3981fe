package registry

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const td = "spiffe://example.org"

func openTemp(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

func device(name string, labels ...string) Device {
	d := Device{Name: name, SPIFFEID: td + "/device/" + name, Labels: map[string]string{}}
	for i := 0; i+1 < len(labels); i += 2 {
		d.Labels[labels[i]] = labels[i+1]
	}
	return d
}

func mustCreate(t testing.TB, s *Store, d Device) *Device {
	t.Helper()
	got, err := s.Create(d)
	if err != nil {
		t.Fatalf("Create(%s): %v", d.Name, err)
	}
	return got
}

// sameDevice compares two devices field by field (times with Equal).
func sameDevice(a, b *Device) error {
	switch {
	case a == nil || b == nil:
		if a != b {
			return fmt.Errorf("%v != %v", a, b)
		}
	case a.Name != b.Name, a.SPIFFEID != b.SPIFFEID, a.Status != b.Status,
		!maps.Equal(a.Labels, b.Labels),
		!a.CreatedAt.Equal(b.CreatedAt), !a.UpdatedAt.Equal(b.UpdatedAt):
		return fmt.Errorf("%+v != %+v", *a, *b)
	}
	return nil
}

func TestCreateValidation(t *testing.T) {
	manyLabels := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	tests := []struct {
		name    string
		dev     Device
		wantErr error // nil: must succeed
	}{
		{"plain", device("ok-1"), nil},
		{"nil labels", Device{Name: "ok-2", SPIFFEID: td + "/device/ok-2"}, nil},
		{"admin path", Device{Name: "admin-dev", SPIFFEID: td + "/admin/dev", Labels: map[string]string{"role": "admin"}}, nil},
		{"explicit suspended", Device{Name: "ok-3", SPIFFEID: td + "/device/ok-3", Status: StatusSuspended}, nil},
		{"key all allowed chars", device("ok-4", "a.B/c_d-9", "x"), nil},
		{"key 63 chars", device("ok-5", strings.Repeat("k", 63), "v"), nil},
		{"value 253 bytes", device("ok-6", "k", strings.Repeat("v", 253)), nil},
		{"empty value", device("ok-7", "k", ""), nil},
		{"unicode value", device("ok-8", "k", "Küche 温度"), nil},
		{"64 labels", Device{Name: "ok-9", SPIFFEID: td + "/device/ok-9", Labels: manyLabels(64)}, nil},

		{"bad name", device("Bad"), ErrInvalidName},
		{"name with dotdot", Device{Name: "a..b", SPIFFEID: td + "/device/ab"}, ErrInvalidName},
		{"no spiffe id", Device{Name: "x1"}, ErrInvalid},
		{"not spiffe scheme", Device{Name: "x2", SPIFFEID: "https://example.org/device/x2"}, ErrInvalid},
		{"no path", Device{Name: "x3", SPIFFEID: td}, ErrInvalid},
		{"root path", Device{Name: "x4", SPIFFEID: td + "/"}, ErrInvalid},
		{"upper trust domain", Device{Name: "x5", SPIFFEID: "spiffe://Example.org/device/x5"}, ErrInvalid},
		{"dotdot segment", Device{Name: "x6", SPIFFEID: td + "/device/../x6"}, ErrInvalid},
		{"plus in path", Device{Name: "x7", SPIFFEID: td + "/device/+"}, ErrInvalid},
		{"too long id", Device{Name: "x8", SPIFFEID: td + "/" + strings.Repeat("a", 2048)}, ErrInvalid},
		{"bad status", Device{Name: "x9", SPIFFEID: td + "/device/x9", Status: "deleted"}, ErrInvalid},
		{"empty key", device("y1", "", "v"), ErrInvalid},
		{"key 64 chars", device("y2", strings.Repeat("k", 64), "v"), ErrInvalid},
		{"key with space", device("y3", "a b", "v"), ErrInvalid},
		{"key with =", device("y4", "a=b", "v"), ErrInvalid},
		{"key unicode", device("y5", "é", "v"), ErrInvalid},
		{"value 254 bytes", device("y6", "k", strings.Repeat("v", 254)), ErrInvalid},
		{"value with NUL", device("y7", "k", "a\x00b"), ErrInvalid},
		{"value with newline", device("y8", "k", "a\nb"), ErrInvalid},
		{"value bad utf8", device("y9", "k", "a\xffb"), ErrInvalid},
		{"65 labels", Device{Name: "z1", SPIFFEID: td + "/device/z1", Labels: manyLabels(65)}, ErrInvalid},
	}
	s, _ := openTemp(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Len()
			got, err := s.Create(tc.dev)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				if got.Labels == nil {
					t.Error("labels of a created device are nil, want an empty map")
				}
				if s.Len() != before+1 {
					t.Errorf("Len = %d, want %d", s.Len(), before+1)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Create: err = %v, want %v", err, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "registry: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if s.Len() != before {
				t.Errorf("Len = %d after a refused create, want %d", s.Len(), before)
			}
			if _, err := s.Get(tc.dev.Name); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get after refused create: err = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestCreateGetList(t *testing.T) {
	s, _ := openTemp(t)
	names := []string{"sensor-2", "a.b_c", "sensor-10", "sensor-1", "a"}
	start := time.Now()
	for _, n := range names {
		got := mustCreate(t, s, device(n, "role", "sensor"))
		if got.Status != StatusActive {
			t.Errorf("%s: status %q, want active by default", n, got.Status)
		}
		if got.CreatedAt.Location() != time.UTC || !got.CreatedAt.Equal(got.UpdatedAt) {
			t.Errorf("%s: timestamps %v / %v, want equal and UTC", n, got.CreatedAt, got.UpdatedAt)
		}
		if got.CreatedAt.Before(start.Add(-time.Second)) {
			t.Errorf("%s: CreatedAt %v is not now", n, got.CreatedAt)
		}
	}
	if s.Len() != len(names) {
		t.Fatalf("Len = %d, want %d", s.Len(), len(names))
	}

	for _, n := range names {
		byName, err := s.Get(n)
		if err != nil {
			t.Fatalf("Get(%s): %v", n, err)
		}
		byID, err := s.GetBySPIFFEID(td + "/device/" + n)
		if err != nil {
			t.Fatalf("GetBySPIFFEID(%s): %v", n, err)
		}
		if err := sameDevice(byName, byID); err != nil {
			t.Errorf("Get and GetBySPIFFEID differ: %v", err)
		}
		if byName.Name != n || byName.Labels["role"] != "sensor" {
			t.Errorf("Get(%s) = %+v", n, byName)
		}
	}
	for _, miss := range []string{"nope", "", "A"} {
		if _, err := s.Get(miss); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q): err = %v, want ErrNotFound", miss, err)
		}
	}
	for _, miss := range []string{td + "/device/nope", "", td + "/device/sensor-1/", "spiffe://other.org/device/sensor-1"} {
		if _, err := s.GetBySPIFFEID(miss); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetBySPIFFEID(%q): err = %v, want ErrNotFound", miss, err)
		}
	}

	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a.b_c", "sensor-1", "sensor-10", "sensor-2"}
	var got []string
	for _, d := range list {
		got = append(got, d.Name)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("List order = %v, want %v", got, want)
	}
}

func TestCreateIgnoresCallerTimestamps(t *testing.T) {
	s, _ := openTemp(t)
	d := device("t1")
	d.CreatedAt = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	d.UpdatedAt = d.CreatedAt
	got := mustCreate(t, s, d)
	if got.CreatedAt.Year() == 2000 || got.UpdatedAt.Year() == 2000 {
		t.Errorf("caller timestamps kept: %+v", got)
	}
}

func TestCreateDuplicate(t *testing.T) {
	tests := []struct {
		name    string
		dev     Device
		wantErr error
		wantMsg string
	}{
		{"distinct", device("other"), nil, ""},
		{"same name", Device{Name: "dev", SPIFFEID: td + "/device/elsewhere"}, ErrExists, `name "dev"`},
		{"same spiffe id", Device{Name: "dev2", SPIFFEID: td + "/device/dev"}, ErrExists, `spiffe_id "spiffe://example.org/device/dev" is used by device "dev"`},
		{"same both", device("dev"), ErrExists, `name "dev"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTemp(t)
			orig := mustCreate(t, s, device("dev", "role", "sensor"))
			_, err := s.Create(tc.dev)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Create: err = %v, want %v mentioning %s", err, tc.wantErr, tc.wantMsg)
			}
			if s.Len() != 1 {
				t.Errorf("Len = %d, want 1", s.Len())
			}
			got, err := s.Get("dev")
			if err != nil {
				t.Fatal(err)
			}
			if err := sameDevice(got, orig); err != nil {
				t.Errorf("original changed: %v", err)
			}
			byID, err := s.GetBySPIFFEID(orig.SPIFFEID)
			if err != nil || byID.Name != "dev" {
				t.Errorf("GetBySPIFFEID(original) = %v, %v", byID, err)
			}
		})
	}
}

func TestStatusTransitions(t *testing.T) {
	tests := []struct {
		from, to Status
		wantErr  error
	}{
		{StatusActive, StatusSuspended, nil},
		{StatusSuspended, StatusActive, nil},
		{StatusActive, StatusRevoked, nil},
		{StatusSuspended, StatusRevoked, nil},
		{StatusActive, StatusActive, nil},
		{StatusSuspended, StatusSuspended, nil},
		{StatusRevoked, StatusRevoked, nil},
		{StatusRevoked, StatusActive, ErrRevoked},
		{StatusRevoked, StatusSuspended, ErrRevoked},
		{StatusActive, "", ErrInvalid},
		{StatusActive, "deleted", ErrInvalid},
		{StatusActive, "Active", ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s->%q", tc.from, tc.to), func(t *testing.T) {
			s, path := openTemp(t)
			d := device("d1")
			d.Status = tc.from
			created := mustCreate(t, s, d)

			got, err := s.SetStatus("d1", tc.to)
			want := tc.to
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("SetStatus: err = %v, want %v", err, tc.wantErr)
				}
				want = tc.from
			} else {
				if err != nil {
					t.Fatalf("SetStatus: %v", err)
				}
				if got.Status != tc.to {
					t.Fatalf("returned status %q, want %q", got.Status, tc.to)
				}
				if tc.from == tc.to && !got.UpdatedAt.Equal(created.UpdatedAt) {
					t.Errorf("no-op SetStatus changed UpdatedAt")
				}
				if got.UpdatedAt.Before(created.UpdatedAt) {
					t.Errorf("UpdatedAt went back: %v < %v", got.UpdatedAt, created.UpdatedAt)
				}
			}
			if cur, err := s.Get("d1"); err != nil || cur.Status != want {
				t.Fatalf("after SetStatus: %v, %v; want status %q", cur, err, want)
			}
			// The same holds on disk.
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s2, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if cur, err := s2.Get("d1"); err != nil || cur.Status != want {
				t.Fatalf("after reopen: %v, %v; want status %q", cur, err, want)
			}
		})
	}
}

func TestSetStatusUnknown(t *testing.T) {
	s, _ := openTemp(t)
	if _, err := s.SetStatus("ghost", StatusSuspended); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if _, err := s.SetLabels("ghost", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if err := s.Delete("ghost"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestSetLabels(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("a", "role", "sensor", "site", "x"))
	mustCreate(t, s, device("b", "role", "sensor"))
	mustCreate(t, s, device("c", "role", "controller"))

	names := func(role string) string {
		t.Helper()
		ds, err := s.ListByLabel("role", role)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range ds {
			out = append(out, d.Name)
		}
		return strings.Join(out, ",")
	}
	if got := names("sensor"); got != "a,b" {
		t.Fatalf("role=sensor: %q, want a,b", got)
	}

	got, err := s.SetLabels("a", map[string]string{"role": "controller"})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.Labels, map[string]string{"role": "controller"}) {
		t.Errorf("labels = %v", got.Labels)
	}
	if got := names("sensor"); got != "b" {
		t.Errorf("role=sensor after relabel: %q, want b", got)
	}
	if got := names("controller"); got != "a,c" {
		t.Errorf("role=controller after relabel: %q, want a,c", got)
	}
	if ds, _ := s.ListByLabel("site", "x"); len(ds) != 0 {
		t.Errorf("removed label still indexed: %v", ds)
	}

	_, err = s.SetLabels("a", map[string]string{"bad key": "v"})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid labels: err = %v, want ErrInvalid", err)
	}
	if cur, _ := s.Get("a"); !maps.Equal(cur.Labels, map[string]string{"role": "controller"}) {
		t.Errorf("refused SetLabels changed labels to %v", cur.Labels)
	}

	cleared, err := s.SetLabels("a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cleared.Labels == nil || len(cleared.Labels) != 0 {
		t.Errorf("cleared labels = %#v, want empty map", cleared.Labels)
	}
}

func TestDelete(t *testing.T) {
	s, path := openTemp(t)
	mustCreate(t, s, device("gone"))
	mustCreate(t, s, device("kept"))
	rev := mustCreate(t, s, device("rev"))
	if _, err := s.SetStatus("rev", StatusRevoked); err != nil {
		t.Fatal(err)
	}

	if err := s.Delete("gone"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Get("gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete: %v", err)
	}
	if _, err := s.GetBySPIFFEID(td + "/device/gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetBySPIFFEID after delete: %v", err)
	}
	if s.Len() != 2 {
		t.Errorf("Len = %d, want 2", s.Len())
	}

	// A revoked device stays, so its identity cannot be enrolled again.
	if err := s.Delete("rev"); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Delete(revoked): err = %v, want ErrRevoked", err)
	}
	if _, err := s.Create(Device{Name: "rev2", SPIFFEID: rev.SPIFFEID}); !errors.Is(err, ErrExists) {
		t.Errorf("re-enrolling a revoked SPIFFE ID: err = %v, want ErrExists", err)
	}

	// A deleted (not revoked) name may be enrolled again.
	mustCreate(t, s, device("gone"))
	if err := s.Delete("gone"); err != nil {
		t.Fatal(err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Get("gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted device back after reopen: %v", err)
	}
	if _, err := s2.Get("rev"); err != nil {
		t.Errorf("revoked device lost after reopen: %v", err)
	}
	if s2.Len() != 2 {
		t.Errorf("Len after reopen = %d, want 2", s2.Len())
	}
}

func TestCopiesAreNotAliases(t *testing.T) {
	s, _ := openTemp(t)
	in := device("c1", "role", "sensor")
	created := mustCreate(t, s, in)
	in.Labels["role"] = "admin" // the caller's map after Create

	scribble := func(d *Device) {
		d.Labels["role"] = "admin"
		d.Labels["extra"] = "x"
		d.Name = "hijack"
		d.Status = StatusActive
	}
	check := func(step string) {
		t.Helper()
		cur, err := s.Get("c1")
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if !maps.Equal(cur.Labels, map[string]string{"role": "sensor"}) || cur.Name != "c1" {
			t.Fatalf("%s: store changed through a returned value: %+v", step, cur)
		}
		if ds, _ := s.ListByLabel("role", "admin"); len(ds) != 0 {
			t.Fatalf("%s: index sees role=admin", step)
		}
	}
	check("caller map")
	scribble(created)
	check("Create result")

	got, _ := s.Get("c1")
	scribble(got)
	check("Get result")

	got, _ = s.GetBySPIFFEID(td + "/device/c1")
	scribble(got)
	check("GetBySPIFFEID result")

	list, _ := s.List()
	scribble(list[0])
	check("List result")

	byLabel, _ := s.ListByLabel("role", "sensor")
	scribble(byLabel[0])
	check("ListByLabel result")

	got, _, _ = s.WatchDevice(td + "/device/c1")
	scribble(got)
	check("WatchDevice result")

	got, err := s.SetStatus("c1", StatusSuspended)
	if err != nil {
		t.Fatal(err)
	}
	scribble(got)
	check("SetStatus result")

	labels := map[string]string{"role": "sensor"}
	got, err = s.SetLabels("c1", labels)
	if err != nil {
		t.Fatal(err)
	}
	labels["role"] = "admin"
	check("SetLabels argument")
	scribble(got)
	check("SetLabels result")

	clone := created.Clone()
	clone.Labels["z"] = "z"
	if _, ok := created.Labels["z"]; ok {
		t.Error("Clone shares the labels map")
	}
	if (*Device)(nil).Clone() != nil {
		t.Error("nil.Clone() != nil")
	}
}

func TestClose(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("x"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	calls := map[string]func() error{
		"Create":      func() error { _, err := s.Create(device("y")); return err },
		"Get":         func() error { _, err := s.Get("x"); return err },
		"GetBySPIFFE": func() error { _, err := s.GetBySPIFFEID(td + "/device/x"); return err },
		"List":        func() error { _, err := s.List(); return err },
		"ListWatch":   func() error { _, _, err := s.ListWatch(); return err },
		"ListByLabel": func() error { _, err := s.ListByLabel("a", "b"); return err },
		"SetStatus":   func() error { _, err := s.SetStatus("x", StatusRevoked); return err },
		"SetLabels":   func() error { _, err := s.SetLabels("x", nil); return err },
		"Delete":      func() error { return s.Delete("x") },
		"WatchDevice": func() error { _, _, err := s.WatchDevice(td + "/device/x"); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", name, err)
		}
	}
	// The refused writes did not reach memory either.
	txn := s.db.Txn(false)
	defer txn.Abort()
	raw, _ := txn.First(tableDevices, indexID, "x")
	if raw == nil || raw.(*Device).Status != StatusActive {
		t.Errorf("memdb changed after Close: %+v", raw)
	}
	if raw, _ := txn.First(tableDevices, indexID, "y"); raw != nil {
		t.Errorf("Create after Close reached memdb")
	}
}

func TestConcurrentCreateGet(t *testing.T) {
	s, _ := openTemp(t)
	const writers, perWriter, readers = 8, 12, 8
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter+readers)
	done := make(chan struct{})

	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				name := fmt.Sprintf("w%d-%d", w, i)
				if _, err := s.Create(device(name, "writer", fmt.Sprint(w))); err != nil {
					errs <- err
					return
				}
				if i%3 == 0 {
					if _, err := s.SetStatus(name, StatusSuspended); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	var rg sync.WaitGroup
	for r := range readers {
		rg.Go(func() {
			// Bounded: stops when the writers are done, or after many rounds.
			for i := 0; i < 1_000_000; i++ {
				select {
				case <-done:
					return
				default:
				}
				name := fmt.Sprintf("w%d-%d", (r+i)%writers, i%perWriter)
				d, err := s.GetBySPIFFEID(td + "/device/" + name)
				switch {
				case errors.Is(err, ErrNotFound):
				case err != nil:
					errs <- err
					return
				case d.Name != name:
					errs <- fmt.Errorf("GetBySPIFFEID(%s) returned %s", name, d.Name)
					return
				default:
					d.Labels["scribble"] = "x"
				}
				if _, err := s.Get(name); err != nil && !errors.Is(err, ErrNotFound) {
					errs <- err
					return
				}
				if i%50 == 0 {
					if _, err := s.List(); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(done)
	rg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s.Len() != writers*perWriter {
		t.Fatalf("Len = %d, want %d", s.Len(), writers*perWriter)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != writers*perWriter {
		t.Fatalf("List has %d, want %d", len(list), writers*perWriter)
	}
	for _, d := range list {
		if _, ok := d.Labels["scribble"]; ok {
			t.Fatalf("%s: a reader's write reached the store", d.Name)
		}
	}
}
