package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// allAudit reads the whole audit log page by page.
func allAudit(t testing.TB, s *Store) []AuditEntry {
	t.Helper()
	var out []AuditEntry
	var after uint64
	for range 1000 {
		page, err := s.ListAudit(after, maxPageSize)
		if err != nil {
			t.Fatalf("ListAudit(%d): %v", after, err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].ID
	}
	t.Fatal("audit log did not end")
	return nil
}

// TestAuditEntryPerChange: every mutating method records one entry with the
// actor it was given, in the same order as the changes; refused and no-op
// calls record none.
func TestAuditEntryPerChange(t *testing.T) {
	const actor = td + "/admin/alice"
	s, _ := openTemp(t)
	var tok string
	steps := []struct {
		name   string
		do     func() error
		action string // "" means no entry
		target string
		detail string // substring of the detail
	}{
		{"create", func() error {
			_, err := s.Create(device("a", "role", "sensor"), WithActor(actor), WithDetail("remote 127.0.0.1:1"))
			return err
		}, ActionDeviceCreate, "a", "labels {role=sensor}; remote 127.0.0.1:1"},
		{"create refused", func() error {
			if _, err := s.Create(device("a"), WithActor(actor)); !errors.Is(err, ErrExists) {
				return fmt.Errorf("err = %v, want ErrExists", err)
			}
			return nil
		}, "", "", ""},
		{"suspend", func() error { _, err := s.SetStatus("a", StatusSuspended, WithActor(actor)); return err },
			ActionDeviceSuspend, "a", "active -> suspended"},
		{"suspend again (no-op)", func() error { _, err := s.SetStatus("a", StatusSuspended, WithActor(actor)); return err },
			"", "", ""},
		{"resume", func() error { _, err := s.SetStatus("a", StatusActive, WithActor(actor)); return err },
			ActionDeviceResume, "a", "suspended -> active"},
		{"labels", func() error {
			_, err := s.SetLabels("a", map[string]string{"role": "controller", "site": "x"}, WithActor(actor))
			return err
		}, ActionDeviceLabels, "a", "{role=sensor} -> {role=controller,site=x}"},
		{"same labels (no-op)", func() error {
			_, err := s.SetLabels("a", map[string]string{"role": "controller", "site": "x"}, WithActor(actor))
			return err
		}, "", "", ""},
		{"revoke", func() error { _, err := s.SetStatus("a", StatusRevoked, WithActor(actor)); return err },
			ActionDeviceRevoke, "a", "active -> revoked"},
		{"delete refused", func() error {
			if err := s.Delete("a", WithActor(actor)); !errors.Is(err, ErrRevoked) {
				return fmt.Errorf("err = %v, want ErrRevoked", err)
			}
			return nil
		}, "", "", ""},
		{"create b (no actor)", func() error { _, err := s.Create(device("b")); return err }, ActionDeviceCreate, "b", "spiffe_id " + td + "/device/b"},
		{"delete", func() error { return s.Delete("b", WithActor(actor)) }, ActionDeviceDelete, "b", "was active"},
		{"token", func() error {
			var err error
			tok, _, err = s.CreateToken("c", time.Hour, nil, td+"/device/c", actor)
			return err
		}, ActionTokenCreate, "c", "new pending device"},
		{"redeem refused", func() error {
			if _, err := s.RedeemToken(flipSecret(tok), time.Now()); err != ErrTokenInvalid {
				return fmt.Errorf("err = %v, want ErrTokenInvalid", err)
			}
			return nil
		}, "", "", ""},
		{"redeem", func() error {
			// WithActor cannot change who redeems: the token holder.
			_, err := s.RedeemToken(tok, time.Now(), WithActor(actor), WithDetail("remote 127.0.0.1:2"))
			return err
		}, ActionTokenRedeem, "c", "remote 127.0.0.1:2"},
		{"import", func() error {
			res, err := s.Import([]Device{device("d"), device("c")}, actor)
			if err == nil && (res[0].Result != ImportCreated || res[1].Result != ImportUnchanged) {
				err = fmt.Errorf("results %+v", res)
			}
			return err
		}, ActionDeviceCreate, "d", "; import"},
		{"record", func() error {
			return s.RecordAudit(AuditEntry{Actor: actor, Action: "svid.issue", Target: "d", Result: ResultOK, Detail: "serial 1"})
		}, "svid.issue", "d", "serial 1"},
	}
	prev := 0
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		entries := allAudit(t, s)
		if st.action == "" {
			if len(entries) != prev {
				t.Fatalf("%s: wrote %d audit entries, want none", st.name, len(entries)-prev)
			}
			continue
		}
		if len(entries) != prev+1 {
			t.Fatalf("%s: wrote %d audit entries, want 1", st.name, len(entries)-prev)
		}
		prev++
		e := entries[len(entries)-1]
		wantActor := actor
		switch {
		case st.action == ActionTokenRedeem:
			wantActor = ActorBootstrapToken
		case strings.Contains(st.name, "no actor"):
			wantActor = ActorSystem
		}
		if e.ID != uint64(prev) || e.Action != st.action || e.Target != st.target || e.Actor != wantActor ||
			e.Result != ResultOK || !strings.Contains(e.Detail, st.detail) || e.Time.Location() != time.UTC {
			t.Fatalf("%s: entry %+v; want #%d %s on %s by %s with detail containing %q",
				st.name, e, prev, st.action, st.target, wantActor, st.detail)
		}
	}
}

// TestAuditAtomicWithChange makes the bbolt transaction of each write fail
// at its very end, after the change and its audit entry were both put: the
// rollback must take both, in memory and on disk, and leave no gap in the
// audit sequence.
func TestAuditAtomicWithChange(t *testing.T) {
	writes := []struct {
		name string
		do   func(s *Store, tok string) error
	}{
		{"create", func(s *Store, _ string) error { _, err := s.Create(device("new"), WithActor(adminID)); return err }},
		{"set status", func(s *Store, _ string) error {
			_, err := s.SetStatus("dev", StatusRevoked, WithActor(adminID))
			return err
		}},
		{"set labels", func(s *Store, _ string) error {
			_, err := s.SetLabels("dev", map[string]string{"role": "admin"}, WithActor(adminID))
			return err
		}},
		{"delete", func(s *Store, _ string) error { return s.Delete("dev", WithActor(adminID)) }},
		{"revoke pending", func(s *Store, _ string) error { _, err := s.SetStatus("pend", StatusRevoked); return err }},
		{"create token", func(s *Store, _ string) error {
			_, _, err := s.CreateToken("new", time.Hour, nil, td+"/device/new", adminID)
			return err
		}},
		{"replace token", func(s *Store, _ string) error {
			_, _, err := s.CreateToken("pend", time.Hour, nil, td+"/device/pend", adminID)
			return err
		}},
		{"redeem token", func(s *Store, tok string) error { _, err := s.RedeemToken(tok, time.Now()); return err }},
		{"import", func(s *Store, _ string) error {
			_, err := s.Import([]Device{device("new"), device("new2")}, adminID)
			return err
		}},
		{"record audit", func(s *Store, _ string) error {
			return s.RecordAudit(AuditEntry{Action: "svid.issue", Target: "dev", Result: ResultOK})
		}},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			s, path := openTemp(t)
			mustCreate(t, s, device("dev", "role", "sensor"))
			tok := mustToken(t, s, "pend")
			devices, _ := s.List()
			tokMem, _ := tokenCounts(t, s)
			audit := allAudit(t, s)
			watch := s.Watch()

			failed := errors.New("injected failure before commit")
			s.beforeCommit = func(tx *bbolt.Tx) error {
				// The audit entry is in this transaction, beside the change.
				if seq := tx.Bucket(bucketAudit).Sequence(); seq <= uint64(len(audit)) {
					t.Errorf("no audit entry in the failing transaction (sequence %d)", seq)
				}
				return failed
			}
			err := w.do(s, tok)
			if !errors.Is(err, failed) || !strings.Contains(err.Error(), "write to disk") {
				t.Fatalf("err = %v, want the injected disk failure", err)
			}
			check := func(s *Store, where string) {
				t.Helper()
				after, err := s.List()
				if err != nil {
					t.Fatal(err)
				}
				if len(after) != len(devices) {
					t.Fatalf("%s: %d devices, want %d", where, len(after), len(devices))
				}
				for i := range after {
					if err := sameDevice(after[i], devices[i]); err != nil {
						t.Errorf("%s: device changed: %v", where, err)
					}
				}
				if got := allAudit(t, s); len(got) != len(audit) {
					t.Errorf("%s: %d audit entries, want %d", where, len(got), len(audit))
				}
				if mem, disk := tokenCounts(t, s); mem != tokMem || disk != tokMem {
					t.Errorf("%s: tokens %d in memory, %d on disk; want %d", where, mem, disk, tokMem)
				}
			}
			check(s, "in memory")
			if fired(watch) {
				t.Error("watch fired for a failed write")
			}

			// Positive control: the same write without the failure works, and
			// its entry follows the last one without a gap.
			s.beforeCommit = nil
			if err := w.do(s, tok); err != nil {
				t.Fatalf("control write: %v", err)
			}
			got := allAudit(t, s)
			if len(got) <= len(audit) || got[len(audit)].ID != uint64(len(audit)+1) {
				t.Fatalf("control write: audit %+v, want entry #%d next", got, len(audit)+1)
			}

			// On disk: the control write's entries and nothing else.
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s2, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if after := allAudit(t, s2); len(after) != len(got) {
				t.Fatalf("after reopen: %d audit entries, want %d", len(after), len(got))
			}
		})
	}
}

// TestAuditFailedWriteOnDisk checks the disk side of a failed write through a
// reopen: nothing of it is in the file.
func TestAuditFailedWriteOnDisk(t *testing.T) {
	s, path := openTemp(t)
	mustCreate(t, s, device("dev"))
	s.beforeCommit = func(*bbolt.Tx) error { return errors.New("injected") }
	if _, err := s.SetStatus("dev", StatusRevoked, WithActor(adminID)); err == nil {
		t.Fatal("write succeeded despite the injected failure")
	}
	if _, err := s.Create(device("other"), WithActor(adminID)); err == nil {
		t.Fatal("write succeeded despite the injected failure")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	wantStatus(t, s2, "dev", StatusActive)
	if _, err := s2.Get("other"); !errors.Is(err, ErrNotFound) {
		t.Errorf("failed create on disk: %v", err)
	}
	if got := allAudit(t, s2); len(got) != 1 || got[0].Action != ActionDeviceCreate || got[0].Target != "dev" {
		t.Fatalf("audit after reopen = %+v, want only the create of dev", got)
	}
}

func TestAuditSurvivesReopen(t *testing.T) {
	s, path := openTemp(t)
	mustCreate(t, s, device("a"))
	if _, err := s.SetStatus("a", StatusSuspended, WithActor(adminID)); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordAudit(AuditEntry{Action: "api.denied", Actor: td + "/device/x", Target: "/v1/devices", Result: ResultDenied}); err != nil {
		t.Fatal(err)
	}
	before := allAudit(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	after := allAudit(t, s2)
	if len(after) != len(before) || len(before) != 3 {
		t.Fatalf("after reopen %d entries, before %d; want 3", len(after), len(before))
	}
	for i := range before {
		b, a := before[i], after[i]
		if !b.Time.Equal(a.Time) || a.Time.Location() != time.UTC {
			t.Errorf("entry %d time %v, want %v in UTC", i, a.Time, b.Time)
		}
		b.Time, a.Time = time.Time{}, time.Time{}
		if a != b {
			t.Errorf("entry %d: %+v, want %+v", i, a, b)
		}
	}
	// Numbering continues; no ID is used twice.
	mustCreate(t, s2, device("b"))
	if got := allAudit(t, s2); got[len(got)-1].ID != 4 {
		t.Fatalf("next entry after reopen has ID %d, want 4", got[len(got)-1].ID)
	}
}

func TestRecordAudit(t *testing.T) {
	long := strings.Repeat("x", maxActorLen+1)
	tests := []struct {
		name    string
		entry   AuditEntry
		wantErr bool
		check   func(t *testing.T, e AuditEntry)
	}{
		{"denied request", AuditEntry{Actor: td + "/device/x", Action: "api.request", Target: "POST /v1/devices", Result: ResultDenied, Detail: "policy"}, false,
			func(t *testing.T, e AuditEntry) {
				if e.Result != ResultDenied || e.Actor != td+"/device/x" || e.Detail != "policy" {
					t.Errorf("entry = %+v", e)
				}
			}},
		{"no actor", AuditEntry{Action: "svid.issue", Result: ResultOK}, false,
			func(t *testing.T, e AuditEntry) {
				if e.Actor != ActorSystem {
					t.Errorf("actor = %q, want %q", e.Actor, ActorSystem)
				}
			}},
		{"caller time and id ignored", AuditEntry{ID: 999, Time: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), Action: "x", Result: ResultError}, false,
			func(t *testing.T, e AuditEntry) {
				if e.ID == 999 || e.Time.Year() == 2000 {
					t.Errorf("caller's ID or time kept: %+v", e)
				}
			}},
		{"detail cleaned and cut", AuditEntry{Action: "x", Result: ResultOK, Detail: "a\x1b[31mb\n\xff" + strings.Repeat("é", maxDetailLen)}, false,
			func(t *testing.T, e AuditEntry) {
				if len(e.Detail) > maxDetailLen || !strings.HasPrefix(e.Detail, "a [31mb \uFFFD") ||
					!strings.HasSuffix(e.Detail, "é...") {
					t.Errorf("detail = %q (%d bytes)", e.Detail[:min(40, len(e.Detail))], len(e.Detail))
				}
			}},
		{"no action", AuditEntry{Result: ResultOK}, true, nil},
		{"long action", AuditEntry{Action: strings.Repeat("a", maxActionLen+1), Result: ResultOK}, true, nil},
		{"no result", AuditEntry{Action: "x"}, true, nil},
		{"bad result", AuditEntry{Action: "x", Result: "maybe"}, true, nil},
		{"long actor", AuditEntry{Action: "x", Result: ResultOK, Actor: long}, true, nil},
		{"actor with newline", AuditEntry{Action: "x", Result: ResultOK, Actor: "a\nb"}, true, nil},
		{"long target", AuditEntry{Action: "x", Result: ResultOK, Target: long}, true, nil},
	}
	s, _ := openTemp(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := allAudit(t, s)
			err := s.RecordAudit(tc.entry)
			after := allAudit(t, s)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("RecordAudit: err = %v, want ErrInvalid", err)
				}
				if len(after) != len(before) {
					t.Fatal("a refused entry was written")
				}
				return
			}
			if err != nil {
				t.Fatalf("RecordAudit: %v", err)
			}
			if len(after) != len(before)+1 {
				t.Fatalf("%d entries written, want 1", len(after)-len(before))
			}
			e := after[len(after)-1]
			if time.Since(e.Time) > time.Minute || e.Action != tc.entry.Action {
				t.Errorf("entry = %+v", e)
			}
			tc.check(t, e)
		})
	}
	// A write option with a bad actor refuses the change itself.
	if _, err := s.Create(device("x"), WithActor("bad\x00actor")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create with a bad actor: err = %v, want ErrInvalid", err)
	}
	if _, err := s.Get("x"); !errors.Is(err, ErrNotFound) {
		t.Fatal("Create with a bad actor changed the registry")
	}
}

func TestListAuditPaging(t *testing.T) {
	s, _ := openTemp(t)
	const n = 1203
	rows := make([]Device, n)
	for i := range rows {
		rows[i] = device(fmt.Sprintf("d-%04d", i))
	}
	if _, err := s.Import(rows, adminID); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		after     uint64
		limit     int
		wantFirst uint64 // 0: empty page
		wantLen   int
	}{
		{0, 0, 1, defaultPageSize},
		{0, 10, 1, 10},
		{10, 10, 11, 10},
		{0, 5000, 1, maxPageSize},
		{1200, 10, 1201, 3},
		{1203, 10, 0, 0},
		{^uint64(0), 10, 0, 0},
	}
	for _, tc := range tests {
		page, err := s.ListAudit(tc.after, tc.limit)
		if err != nil {
			t.Fatalf("ListAudit(%d, %d): %v", tc.after, tc.limit, err)
		}
		if len(page) != tc.wantLen {
			t.Fatalf("ListAudit(%d, %d): %d entries, want %d", tc.after, tc.limit, len(page), tc.wantLen)
		}
		for i, e := range page {
			if e.ID != tc.wantFirst+uint64(i) {
				t.Fatalf("ListAudit(%d, %d)[%d].ID = %d, want %d", tc.after, tc.limit, i, e.ID, tc.wantFirst+uint64(i))
			}
		}
	}
	all := allAudit(t, s)
	if len(all) != n {
		t.Fatalf("%d entries in all, want %d", len(all), n)
	}
	names := map[string]bool{}
	for _, e := range all {
		names[e.Target] = true
	}
	if len(names) != n {
		t.Fatalf("%d distinct targets, want one per imported device", len(names))
	}
	if _, err := s.ListAudit(0, -1); !errors.Is(err, ErrInvalidQuery) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative limit: err = %v, want ErrInvalidQuery", err)
	}
}

func TestNewMethodsAfterClose(t *testing.T) {
	s, _ := openTemp(t)
	tok := mustToken(t, s, "p")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"CreateToken": func() error {
			_, _, err := s.CreateToken("q", time.Hour, nil, td+"/device/q", adminID)
			return err
		},
		"RedeemToken": func() error { _, err := s.RedeemToken(tok, time.Now()); return err },
		"RecordAudit": func() error { return s.RecordAudit(AuditEntry{Action: "x", Result: ResultOK}) },
		"ListAudit":   func() error { _, err := s.ListAudit(0, 10); return err },
		"ListDevices": func() error { _, _, err := s.ListDevices(Query{}); return err },
		"Import":      func() error { _, err := s.Import([]Device{device("z")}, adminID); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", name, err)
		}
	}
}
