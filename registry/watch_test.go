package registry

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

const watchDeadline = 5 * time.Second

func fired(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitFired waits for ch with a deadline. Registry notifications are issued
// before the write returns, so this only guards against a hung test.
func waitFired(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(watchDeadline):
		t.Fatalf("%s: watch channel not closed within %v", what, watchDeadline)
	}
}

func TestWatch(t *testing.T) {
	s, _ := openTemp(t)
	steps := []struct {
		name  string
		write func() error
		fires bool
	}{
		{"create", func() error { _, err := s.Create(device("a")); return err }, true},
		{"duplicate create (refused)", func() error {
			if _, err := s.Create(device("a")); !errors.Is(err, ErrExists) {
				return fmt.Errorf("err = %v, want ErrExists", err)
			}
			return nil
		}, false},
		{"suspend", func() error { _, err := s.SetStatus("a", StatusSuspended); return err }, true},
		{"suspend again (no-op)", func() error { _, err := s.SetStatus("a", StatusSuspended); return err }, false},
		{"relabel", func() error { _, err := s.SetLabels("a", map[string]string{"role": "x"}); return err }, true},
		{"same labels (no-op)", func() error { _, err := s.SetLabels("a", map[string]string{"role": "x"}); return err }, false},
		{"invalid labels (refused)", func() error {
			if _, err := s.SetLabels("a", map[string]string{"": "x"}); !errors.Is(err, ErrInvalid) {
				return fmt.Errorf("err = %v, want ErrInvalid", err)
			}
			return nil
		}, false},
		{"read", func() error { _, err := s.List(); return err }, false},
		{"delete", func() error { return s.Delete("a") }, true},
	}
	for _, st := range steps {
		ch := s.Watch()
		if fired(ch) {
			t.Fatalf("%s: fresh watch channel already closed", st.name)
		}
		if err := st.write(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if st.fires {
			waitFired(t, ch, st.name)
			if fired(s.Watch()) {
				t.Fatalf("%s: the next watch channel is already closed", st.name)
			}
		} else if fired(ch) {
			t.Fatalf("%s: watch fired without a change", st.name)
		}
	}

	ch := s.Watch()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	waitFired(t, ch, "close")
	if !fired(s.Watch()) {
		t.Error("Watch after Close returns an open channel")
	}
}

func TestWatchFromAnotherGoroutine(t *testing.T) {
	s, _ := openTemp(t)
	got := make(chan *Device, 1)
	ready := make(chan struct{})
	go func() {
		ch := s.Watch()
		close(ready)
		select {
		case <-ch:
			d, _ := s.Get("late")
			got <- d
		case <-time.After(watchDeadline):
			got <- nil
		}
	}()
	<-ready
	mustCreate(t, s, device("late"))
	// A woken watcher sees the change that woke it.
	if d := <-got; d == nil || d.Name != "late" {
		t.Fatalf("watcher saw %v, want device late", d)
	}
}

func TestListWatch(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("a"))
	list, ch, err := s.ListWatch()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || fired(ch) {
		t.Fatalf("ListWatch = %d devices, fired %v", len(list), fired(ch))
	}
	mustCreate(t, s, device("b"))
	waitFired(t, ch, "create after ListWatch")
	list, _, _ = s.ListWatch()
	if len(list) != 2 {
		t.Fatalf("after change: %d devices, want 2", len(list))
	}
}

func TestWatchDevice(t *testing.T) {
	s, _ := openTemp(t)
	a := mustCreate(t, s, device("a"))
	b := mustCreate(t, s, device("b"))
	mustCreate(t, s, device("ab"))

	gotA, chA, err := s.WatchDevice(a.SPIFFEID)
	if err != nil || gotA.Name != "a" {
		t.Fatalf("WatchDevice(a) = %v, %v", gotA, err)
	}
	_, chB, err := s.WatchDevice(b.SPIFFEID)
	if err != nil {
		t.Fatal(err)
	}

	// Changes to other devices, including neighbours in the index, and new
	// devices do not wake a's watcher.
	if _, err := s.SetStatus("b", StatusSuspended); err != nil {
		t.Fatal(err)
	}
	waitFired(t, chB, "b suspended") // positive control
	if _, err := s.SetStatus("ab", StatusSuspended); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, device("a0"))
	if err := s.Delete("a0"); err != nil {
		t.Fatal(err)
	}
	if fired(chA) {
		t.Fatal("a's watch fired for changes to other devices")
	}

	// A change to a fires it, and the new state is visible.
	if _, err := s.SetStatus("a", StatusRevoked); err != nil {
		t.Fatal(err)
	}
	waitFired(t, chA, "a revoked")
	gotA, chA, err = s.WatchDevice(a.SPIFFEID)
	if err != nil || gotA.Status != StatusRevoked {
		t.Fatalf("after revoke: %v, %v", gotA, err)
	}
	if fired(chA) {
		t.Fatal("new watch channel already closed")
	}

	// Deleting a device fires its watch.
	_, chB, _ = s.WatchDevice(b.SPIFFEID)
	if err := s.Delete("b"); err != nil {
		t.Fatal(err)
	}
	waitFired(t, chB, "b deleted")
	if _, _, err := s.WatchDevice(b.SPIFFEID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("WatchDevice(deleted) err = %v, want ErrNotFound", err)
	}
}

func TestWatchDeviceNotYetEnrolled(t *testing.T) {
	s, _ := openTemp(t)
	id := td + "/device/later"
	d, ch, err := s.WatchDevice(id)
	if !errors.Is(err, ErrNotFound) || d != nil {
		t.Fatalf("WatchDevice(unknown) = %v, %v; want nil, ErrNotFound", d, err)
	}
	if ch == nil || fired(ch) {
		t.Fatal("want an open channel for an unknown device")
	}
	mustCreate(t, s, device("later"))
	waitFired(t, ch, "enrolment")
	d, _, err = s.WatchDevice(id)
	if err != nil || d.Name != "later" {
		t.Fatalf("after enrolment: %v, %v", d, err)
	}
}
