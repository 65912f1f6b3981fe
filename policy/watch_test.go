package policy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/policy"
)

// watchDebounce is short so the tests run fast; the deadline below is far
// longer than any reload needs.
const (
	watchDebounce = 50 * time.Millisecond
	watchDeadline = 5 * time.Second
)

// startWatch runs Watch on a temp dir holding files until the test ends and
// waits for its first load. A zero debounce is Watch's default.
func startWatch(t *testing.T, files map[string]string, debounce time.Duration) (*policy.Engine, string) {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	e := newEngine(t, files, policy.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- policy.Watch(ctx, e, dir, debounce, quietLogger()) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch returned %v", err)
			}
		case <-time.After(watchDeadline):
			t.Error("Watch did not return after cancel")
		}
	})
	waitStatus(t, e, "the first load", func(st policy.Status) bool { return st.Dir == dir })
	return e, dir
}

// waitStatus polls e.Status until ok holds, failing the test at the deadline.
func waitStatus(t *testing.T, e *policy.Engine, what string, ok func(policy.Status) bool) policy.Status {
	t.Helper()
	deadline := time.Now().Add(watchDeadline)
	for {
		st := e.Status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within %s; status %+v", what, watchDeadline, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// renameInto writes a file the way many editors and deploy tools do: a
// temporary file next to it, renamed over it.
func renameInto(t *testing.T, dir, name, text string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".swp")
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, filepath.FromSlash(name))); err != nil {
		t.Fatal(err)
	}
}

const adminModule = "package ztgate.authz\n\nallow if input.action == \"admin\"\n"

func TestWatchActivatesRefusesRecovers(t *testing.T) {
	e, dir := startWatch(t, baseFiles(), 0) // as deployed
	first := e.Revision()
	adminReq := &policy.Input{Action: policy.ActionAdmin, Subject: subject("a")}
	if d := e.Decide(context.Background(), adminReq); d.Allow {
		t.Fatal("positive control: admin allowed before the change")
	}

	// A new module: activated.
	written := time.Now()
	writeFiles(t, dir, map[string]string{"admin.rego": adminModule})
	want := revisionOf(t, with(baseFiles(), "admin.rego", adminModule))
	st := waitStatus(t, e, "activation", func(st policy.Status) bool { return st.Revision == want })
	t.Logf("activated %s after the write", time.Since(written).Round(time.Millisecond))
	if st.LastError != "" || e.Revision() != want {
		t.Errorf("status %+v", st)
	}
	if d := e.Decide(context.Background(), adminReq); !d.Allow || d.Revision != want {
		t.Errorf("admin after activation: %+v", d)
	}

	// A broken module: refused, reported; the revision in force decides.
	writeFiles(t, dir, map[string]string{"admin.rego": "package ztgate.authz\n\nallow if {\n"})
	st = waitStatus(t, e, "the refusal", func(st policy.Status) bool { return st.LastError != "" })
	if st.Revision != want || !strings.Contains(st.LastError, "admin.rego") {
		t.Errorf("after the broken write: %+v", st)
	}
	if d := e.Decide(context.Background(), adminReq); !d.Allow || d.Revision != want {
		t.Errorf("admin after the refusal: %+v", d)
	}

	// A module that compiles but fails the directory's tests: refused too.
	// (The test first: the module alone would pass the tests there are.)
	noSubscribeTest := "package ztgate.authz_test\n\ntest_no_subscribe if not data.ztgate.authz.allow with input as {\"action\": \"subscribe\"}\n"
	writeFiles(t, dir, map[string]string{"admin_test.rego": noSubscribeTest})
	writeFiles(t, dir, map[string]string{"admin.rego": "package ztgate.authz\n\nallow if input.action == \"subscribe\"\n"})
	waitStatus(t, e, "the test failure", func(st policy.Status) bool { return strings.Contains(st.LastError, "test_no_subscribe") })
	if e.Revision() != want {
		t.Errorf("revision changed to %s", short(e.Revision()))
	}

	// Fixed: activated, the error cleared.
	fixedModule := adminModule + "\n# fixed\n"
	writeFiles(t, dir, map[string]string{"admin.rego": fixedModule})
	fixed := revisionOf(t, with(baseFiles(), "admin.rego", fixedModule, "admin_test.rego", noSubscribeTest))
	st = waitStatus(t, e, "the fix", func(st policy.Status) bool { return st.Revision == fixed })
	if st.LastError != "" || st.Revision == first || !strings.Contains(strings.Join(st.Modules, ","), "admin_test.rego") {
		t.Errorf("after the fix: %+v", st)
	}
}

// Saving by rename, in a subdirectory made after Watch started.
func TestWatchRenamesAndSubdirectories(t *testing.T) {
	e, dir := startWatch(t, baseFiles(), watchDebounce)

	renameInto(t, dir, "admin.rego", adminModule)
	want := revisionOf(t, with(baseFiles(), "admin.rego", adminModule))
	waitStatus(t, e, "a file renamed into place", func(st policy.Status) bool { return st.Revision == want })

	lib := "package ztgate.lib\n\nok := true\n"
	if err := os.MkdirAll(filepath.Join(dir, "lib", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"lib/deep/lib.rego": lib})
	want = revisionOf(t, with(baseFiles(), "admin.rego", adminModule, "lib/deep/lib.rego", lib))
	waitStatus(t, e, "a module in a new subdirectory", func(st policy.Status) bool { return st.Revision == want })

	// Changed in place in that subdirectory, later on.
	lib2 := lib + "\nother := true\n"
	writeFiles(t, dir, map[string]string{"lib/deep/lib.rego": lib2})
	want = revisionOf(t, with(baseFiles(), "admin.rego", adminModule, "lib/deep/lib.rego", lib2))
	waitStatus(t, e, "a change in the subdirectory", func(st policy.Status) bool { return st.Revision == want })

	// Removing a module deactivates it.
	if err := os.RemoveAll(filepath.Join(dir, "lib")); err != nil {
		t.Fatal(err)
	}
	want = revisionOf(t, with(baseFiles(), "admin.rego", adminModule))
	waitStatus(t, e, "a removed subdirectory", func(st policy.Status) bool { return st.Revision == want })
}

// The directory removed under the watcher: reported, enforcement goes on,
// and the directory is picked up again when it is back.
func TestWatchDirectoryRemoved(t *testing.T) {
	e, dir := startWatch(t, baseFiles(), watchDebounce)
	rev := e.Revision()
	var refused atomic.Int32
	e.OnReject(func(error) { refused.Add(1) })

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, e, "the removal", func(st policy.Status) bool { return st.LastError != "" })
	if st.Revision != rev || refused.Load() == 0 {
		t.Errorf("after the removal: %+v, %d refusals", st, refused.Load())
	}
	if d := e.Decide(context.Background(), connectActive); !d.Allow || d.Revision != rev {
		t.Errorf("decision after the removal: %+v", d)
	}

	back := with(baseFiles(), "admin.rego", adminModule)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, back)
	want := revisionOf(t, back)
	st = waitStatus(t, e, "the directory back", func(st policy.Status) bool { return st.Revision == want })
	if st.LastError != "" || st.Dir != dir {
		t.Errorf("after the directory came back: %+v", st)
	}
	// And it is watched again.
	writeFiles(t, dir, map[string]string{"admin.rego": adminModule + "# again\n"})
	want = revisionOf(t, with(back, "admin.rego", adminModule+"# again\n"))
	waitStatus(t, e, "a change after the return", func(st policy.Status) bool { return st.Revision == want })
}

// A module put through the API lands in the watched directory; the watcher
// sees the file, but it is the revision in force: one activation, not two.
func TestWatchPutModuleActivatesOnce(t *testing.T) {
	e, dir := startWatch(t, baseFiles(), watchDebounce)
	var activations atomic.Int32
	e.OnActivate(func(policy.Status) { activations.Add(1) })

	if err := e.PutModule("admin.rego", []byte(adminModule)); err != nil {
		t.Fatal(err)
	}
	if activations.Load() != 1 {
		t.Fatalf("%d activations after PutModule", activations.Load())
	}
	// A later change by hand: once it is active, the watcher has handled
	// the module's own file event too (events arrive in order).
	writeFiles(t, dir, map[string]string{"later.rego": "package ztgate.later\n\nx := 1\n"})
	want := revisionOf(t, with(baseFiles(), "admin.rego", adminModule, "later.rego", "package ztgate.later\n\nx := 1\n"))
	waitStatus(t, e, "the later change", func(st policy.Status) bool { return st.Revision == want })
	if got := activations.Load(); got != 2 {
		t.Errorf("%d activations, want 2 (the module, the later change)", got)
	}
}

// A burst of writes ends in the last one's revision.
func TestWatchBurst(t *testing.T) {
	e, dir := startWatch(t, baseFiles(), watchDebounce)
	var last string
	for i := range 20 {
		last = adminModule + strings.Repeat("#\n", i)
		writeFiles(t, dir, map[string]string{"admin.rego": last})
	}
	want := revisionOf(t, with(baseFiles(), "admin.rego", last))
	waitStatus(t, e, "the last write", func(st policy.Status) bool { return st.Revision == want })
}

func TestWatchErrors(t *testing.T) {
	e := newEngine(t, baseFiles(), policy.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), watchDeadline)
	defer cancel()
	if err := policy.Watch(ctx, e, filepath.Join(t.TempDir(), "missing"), 0, quietLogger()); err == nil {
		t.Error("Watch(missing dir) returned nil")
	}
	if err := policy.Watch(ctx, nil, t.TempDir(), 0, quietLogger()); err == nil {
		t.Error("Watch(nil engine) returned nil")
	}
	// A canceled context ends it, with nil.
	done, stop := context.WithCancel(context.Background())
	stop()
	if err := policy.Watch(done, e, t.TempDir(), 0, quietLogger()); err != nil {
		t.Errorf("Watch(canceled) = %v", err)
	}
}
