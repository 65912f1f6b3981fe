package policy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/policy"
)

// A policy and its tests: connect is allowed for an active device, and the
// tests say so (with a positive control and the builtins).
const (
	basePolicy = `package ztgate.authz

default allow := false

allow if {
	input.action == "connect"
	input.device.status == "active"
}

allow if {
	input.action == "publish"
	mqtt.topic_matches("devices/+/telemetry/#", input.topic)
}

reasons contains "not active" if {
	not allow
	input.device.status != "active"
}
`
	baseTests = `package ztgate.authz_test

import data.ztgate.authz

test_connect_active if authz.allow with input as {"action": "connect", "device": {"status": "active"}}

test_connect_suspended if not authz.allow with input as {"action": "connect", "device": {"status": "suspended"}}

test_publish_telemetry if authz.allow with input as {"action": "publish", "topic": "devices/a/telemetry/t"}
`
)

func baseFiles() map[string]string {
	return map[string]string{"authz.rego": basePolicy, "authz_test.rego": baseTests}
}

// with returns files with the given files added or replaced; an empty
// content removes a file.
func with(files map[string]string, changes ...string) map[string]string {
	out := map[string]string{}
	for k, v := range files {
		out[k] = v
	}
	for i := 0; i+1 < len(changes); i += 2 {
		if changes[i+1] == "" {
			delete(out, changes[i])
		} else {
			out[changes[i]] = changes[i+1]
		}
	}
	return out
}

// revisionOf is the revision a set of files gets, from an engine of its own.
func revisionOf(t *testing.T, files map[string]string) string {
	t.Helper()
	return newEngine(t, files, policy.Options{}).Revision()
}

var (
	connectActive    = &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}
	connectSuspended = &policy.Input{Action: policy.ActionConnect, Subject: func() *policy.Subject {
		s := subject("a")
		s.Device.Status = "suspended"
		return s
	}()}
)

// Load activates a revision only if it compiles and its own tests pass.
func TestLoadGatesOnTests(t *testing.T) {
	base := baseFiles()
	tests := []struct {
		name     string
		files    map[string]string
		accepted bool
		errHas   string
	}{
		{"positive control: a change with passing tests", with(base, "extra.rego", "package ztgate.authz\nallow if input.action == \"admin\"\n",
			"extra_test.rego", "package ztgate.authz_test\ntest_admin if data.ztgate.authz.allow with input as {\"action\": \"admin\"}\n"), true, ""},
		{"a policy without tests compiles only", map[string]string{"authz.rego": basePolicy + "\nallow if input.action == \"admin\"\n"}, true, ""},
		{"a failing test", with(base, "authz_test.rego", baseTests+"\ntest_wrong if authz.allow with input as {\"action\": \"subscribe\"}\n"), false, "test_wrong"},
		{"a change its own tests refuse", with(base, "authz.rego", strings.Replace(basePolicy, `"active"`, `"suspended"`, 1)), false, "test_connect_active"},
		{"a test that errors", with(base, "more_test.rego", "package ztgate.authz_test\ntest_err if to_number(\"x\") > 0\n"), false, "test_err"},
		{"a test file that does not parse", with(base, "more_test.rego", "package ztgate.authz_test\ntest_x if {\n"), false, "more_test.rego"},
		{"a test file that does not compile", with(base, "more_test.rego", "package ztgate.authz_test\ntest_x if undefined_fn(1)\n"), false, "undefined_fn"},
		{"a policy that does not compile", with(base, "authz.rego", basePolicy+"\nallow if count(1) > 0\n"), false, "compile"},
		{"package ztgate.authz missing", map[string]string{
			"authz.rego":      strings.Replace(basePolicy, "package ztgate.authz", "package ztgate.other", 1),
			"authz_test.rego": "package ztgate.other_test\ntest_ok if data.ztgate.other.allow with input as {\"action\": \"connect\", \"device\": {\"status\": \"active\"}}\n",
		}, false, "package ztgate.authz"},
		{"tests only", map[string]string{"authz_test.rego": baseTests}, false, "no policy modules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEngine(t, base, policy.Options{})
			first := e.Revision()
			var activated, refused atomic.Int32
			e.OnActivate(func(policy.Status) { activated.Add(1) })
			e.OnReject(func(error) { refused.Add(1) })

			err := e.Load(mapFS(tt.files))
			st := e.Status()
			if tt.accepted {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if e.Revision() == first || st.Revision != e.Revision() || st.LastError != "" || activated.Load() != 1 || refused.Load() != 0 {
					t.Errorf("accepted: revision %s (was %s), status %+v, %d activations, %d refusals",
						short(e.Revision()), short(first), st, activated.Load(), refused.Load())
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !errors.Is(err, policy.ErrPolicyRejected) {
				t.Errorf("err = %v, want it to wrap ErrPolicyRejected", err)
			}
			if !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("err = %v, want it to mention %q", err, tt.errHas)
			}
			if e.Revision() != first || st.Revision != first {
				t.Errorf("revision changed to %s", short(e.Revision()))
			}
			if st.LastError != err.Error() || st.LastErrorAt.IsZero() {
				t.Errorf("status %+v, want LastError = %q", st, err)
			}
			if activated.Load() != 0 || refused.Load() != 1 {
				t.Errorf("%d activations, %d refusals; want 0, 1", activated.Load(), refused.Load())
			}
			if d := e.Decide(context.Background(), connectActive); !d.Allow || d.Revision != first {
				t.Errorf("decision after refusal: %+v", d)
			}
		})
	}
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// A policy whose tests fail does not start.
func TestNewEngineRunsTests(t *testing.T) {
	files := with(baseFiles(), "authz_test.rego", baseTests+"\ntest_wrong if authz.allow with input as {}\n")
	_, err := policy.NewEngine(mapFS(files), policy.Options{Logger: quietLogger()})
	if err == nil || !errors.Is(err, policy.ErrPolicyRejected) || !strings.Contains(err.Error(), "test_wrong") {
		t.Fatalf("NewEngine = %v, want a rejection naming test_wrong", err)
	}
	// The report shows the failing expression, as `ztgate policy test` does.
	if !strings.Contains(err.Error(), "1 of 4 tests failed") {
		t.Errorf("err = %v", err)
	}
	// Positive control.
	if _, err := policy.NewEngine(mapFS(baseFiles()), policy.Options{Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
}

// Only a change of the policy modules is an activation; a change of the
// tests alone is checked and recorded but keeps the revision.
func TestLoadTestOnlyChanges(t *testing.T) {
	e := newEngine(t, baseFiles(), policy.Options{})
	rev := e.Revision()
	at := e.Status().ActivatedAt
	var activated atomic.Int32
	e.OnActivate(func(policy.Status) { activated.Add(1) })

	// The same files again: nothing happens.
	if err := e.Load(mapFS(baseFiles())); err != nil || activated.Load() != 0 || e.Status().ActivatedAt != at {
		t.Fatalf("reload of the same files: err %v, %d activations, status %+v", err, activated.Load(), e.Status())
	}
	// A new passing test: accepted, same revision, listed.
	more := with(baseFiles(), "more_test.rego", "package ztgate.authz_test\ntest_more if not data.ztgate.authz.allow with input as {}\n")
	if err := e.Load(mapFS(more)); err != nil {
		t.Fatal(err)
	}
	st := e.Status()
	if st.Revision != rev || activated.Load() != 0 || st.ActivatedAt != at || !strings.Contains(strings.Join(st.Modules, ","), "more_test.rego") {
		t.Errorf("after a test-only change: %+v, %d activations", st, activated.Load())
	}
	// A failing test alone: refused, reported.
	failing := with(more, "more_test.rego", "package ztgate.authz_test\ntest_more if data.ztgate.authz.allow with input as {}\n")
	if err := e.Load(mapFS(failing)); !errors.Is(err, policy.ErrPolicyRejected) {
		t.Fatalf("Load(failing test) = %v", err)
	}
	if st := e.Status(); st.Revision != rev || !strings.Contains(st.LastError, "test_more") {
		t.Errorf("after a failing test-only change: %+v", st)
	}
}

func TestStatus(t *testing.T) {
	before := time.Now().UTC()
	e := newEngine(t, baseFiles(), policy.Options{})
	st := e.Status()
	if st.Revision != e.Revision() || len(st.Revision) != 64 || st.ActivatedAt.Before(before.Truncate(time.Second)) ||
		strings.Join(st.Modules, ",") != "authz.rego,authz_test.rego" || st.Dir != "" || st.LastError != "" || !st.LastErrorAt.IsZero() {
		t.Fatalf("initial status %+v", st)
	}
	// The copy is the caller's.
	st.Modules[0] = "x"
	if e.Status().Modules[0] != "authz.rego" {
		t.Error("Status shares its Modules slice")
	}

	bad := with(baseFiles(), "authz.rego", "package ztgate.authz\nallow if {\n")
	if err := e.Load(mapFS(bad)); err == nil {
		t.Fatal("Load(bad) succeeded")
	}
	st = e.Status()
	if st.Revision != e.Revision() || st.LastError == "" || st.LastErrorAt.IsZero() {
		t.Errorf("after a refusal: %+v", st)
	}
	// Accepting the files in force again clears the error: what is offered
	// is what is enforced.
	if err := e.Load(mapFS(baseFiles())); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.LastError != "" || !st.LastErrorAt.IsZero() {
		t.Errorf("after reloading the good files: %+v", st)
	}
}

// Decisions made while refused revisions come and go get the old answers,
// from the old revision; then an accepted one takes over.
func TestRefusedReloadKeepsDeciding(t *testing.T) {
	// Loads run tests beside the decisions; on a small machine under -race
	// a decision may wait for a CPU far longer than the default timeout.
	e := newEngine(t, baseFiles(), policy.Options{Timeout: time.Minute})
	old := e.Revision()
	bad := []map[string]string{
		with(baseFiles(), "authz.rego", "package ztgate.authz\nallow := true\n"),                                                    // fails its tests
		with(baseFiles(), "authz.rego", basePolicy+"\nallow if {\n"),                                                                // does not parse
		with(baseFiles(), "authz.rego", "package ztgate.other\nallow := true\n", "authz_test.rego", ""),                             // no ztgate.authz
		with(baseFiles(), "x_test.rego", "package x_test\ntest_slow if count([1 | some i in numbers.range(1, 1000); i < 0]) > 0\n"), // fails
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				a := e.Decide(context.Background(), connectActive)
				s := e.Decide(context.Background(), connectSuspended)
				if (a.Revision == old && !a.Allow) || (s.Revision == old && (s.Allow || strings.Join(s.Reasons, ",") != "not active")) {
					select {
					case errs <- fmt.Sprintf("old revision answered %+v / %+v", a, s):
					default:
					}
				}
				if a.Revision != old && a.Allow {
					select {
					case errs <- fmt.Sprintf("decision from revision %s", short(a.Revision)):
					default:
					}
				}
			}
		})
	}
	for range 3 {
		for i, files := range bad {
			if err := e.Load(mapFS(files)); err == nil {
				t.Errorf("bad policy %d accepted", i)
			}
			_ = e.Status() // concurrently with the decisions
		}
	}
	// Positive control: an accepted revision takes over (it denies connect).
	denyAll := map[string]string{"authz.rego": "package ztgate.authz\nallow := false\n"}
	if err := e.Load(mapFS(denyAll)); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(context.Background(), connectActive); d.Allow || d.Revision == old {
		t.Errorf("after the accepted reload: %+v", d)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
}

func TestCallbacks(t *testing.T) {
	e := newEngine(t, baseFiles(), policy.Options{})
	var got []string
	e.OnActivate(func(st policy.Status) { got = append(got, "activate "+short(st.Revision)) })
	e.OnActivate(func(st policy.Status) {
		if st.Revision != e.Status().Revision {
			got = append(got, "status lags the callback")
		}
	})
	e.OnReject(func(err error) {
		got = append(got, fmt.Sprintf("reject %v", errors.Is(err, policy.ErrPolicyRejected)))
	})
	e.OnActivate(nil)
	e.OnReject(nil)

	next := map[string]string{"authz.rego": "package ztgate.authz\nallow := false\n"}
	_ = e.Load(mapFS(next))                                         // activate
	_ = e.Load(mapFS(next))                                         // same: nothing
	_ = e.Load(mapFS(map[string]string{"authz.rego": "package x"})) // reject
	_ = e.LoadDir(filepath.Join(t.TempDir(), "missing"))            // reject, not the policy's fault
	want := []string{"activate " + short(revisionOf(t, next)), "reject true", "reject false"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("callbacks: %q, want %q", got, want)
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshot is every file under dir with its content.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func dirEngine(t *testing.T, files map[string]string) (*policy.Engine, string) {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	e := newEngine(t, files, policy.Options{})
	if err := e.LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.Dir != dir {
		t.Fatalf("Status().Dir = %q, want %q", st.Dir, dir)
	}
	return e, dir
}

func TestEngineLoadDir(t *testing.T) {
	e, dir := dirEngine(t, baseFiles())
	rev := e.Revision()
	file := filepath.Join(dir, "authz.rego")
	for name, path := range map[string]string{
		"missing": filepath.Join(dir, "missing"),
		"a file":  file,
		"no rego": t.TempDir(),
		"tests failed": func() string {
			d := t.TempDir()
			writeFiles(t, d, with(baseFiles(), "authz.rego", "package ztgate.authz\n"))
			return d
		}(),
	} {
		if err := e.LoadDir(path); err == nil {
			t.Errorf("%s: LoadDir succeeded", name)
		}
		if st := e.Status(); st.Revision != rev || st.Dir != dir || st.LastError == "" {
			t.Errorf("%s: status %+v", name, st)
		}
	}
	// Load from elsewhere: no backing directory any more.
	if err := e.Load(mapFS(baseFiles())); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.Dir != "" {
		t.Errorf("after Load: Dir = %q", st.Dir)
	}
	if err := e.PutModule("x.rego", []byte("package ztgate.x\n")); !errors.Is(err, policy.ErrNoBackingDir) {
		t.Errorf("PutModule without a backing dir = %v", err)
	}
}

func TestPutModuleNames(t *testing.T) {
	e, dir := dirEngine(t, baseFiles())
	for i, tt := range []struct {
		name string
		ok   bool
	}{
		{"lib.rego", true},
		{"lib_test.rego", false}, // a valid name, but has no test: see below
		{"Site-1.v2_x.rego", true},
		{"_lib.rego", true},
		{"-lib.rego", true},
		{"", false},
		{".rego", false},
		{"lib", false},
		{"lib.rego.bak", false},
		{"lib.REGO", false},
		{".hidden.rego", false},
		{"../lib.rego", false},
		{"..", false},
		{"sub/lib.rego", false},
		{`sub\lib.rego`, false},
		{"/lib.rego", false},
		{"lib .rego", false},
		{"lib\x00.rego", false},
		{"lïb.rego", false},
		{strings.Repeat("a", 251) + ".rego", false},
		{strings.Repeat("a", 250) + ".rego", true},
	} {
		err := e.PutModule(tt.name, fmt.Appendf(nil, "package ztgate.lib%d\nok := true\n", i))
		if tt.name == "lib_test.rego" {
			// Valid name: a test module without tests is accepted.
			if err != nil {
				t.Errorf("PutModule(%q) = %v", tt.name, err)
			}
			continue
		}
		if tt.ok != (err == nil) || (!tt.ok && !errors.Is(err, policy.ErrInvalidModuleName)) {
			t.Errorf("PutModule(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
	// Nothing was written outside the directory or under a bad name.
	for name := range snapshot(t, dir) {
		if strings.Contains(name, "/") || strings.HasPrefix(name, ".") {
			t.Errorf("unexpected file %q", name)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "lib.rego")); err == nil {
		t.Error("a module escaped the directory")
	}
}

func TestPutModule(t *testing.T) {
	admin := "package ztgate.authz\n\nallow if input.action == \"admin\"\n"
	adminTest := "package ztgate.authz_test\n\ntest_admin if data.ztgate.authz.allow with input as {\"action\": \"admin\"}\n"
	admin2 := "package ztgate.authz\n\nallow if input.action == \"subscribe\"\n"
	adminReq := &policy.Input{Action: policy.ActionAdmin, Subject: subject("a")}

	t.Run("accepted: written, then activated", func(t *testing.T) {
		e, dir := dirEngine(t, baseFiles())
		var activations []string
		e.OnActivate(func(st policy.Status) {
			// The module is on disk before anyone hears of the revision.
			b, err := os.ReadFile(filepath.Join(dir, "admin.rego"))
			activations = append(activations, fmt.Sprintf("%s %v", b, err))
		})
		if d := e.Decide(context.Background(), adminReq); d.Allow {
			t.Fatal("positive control: admin allowed before the upload")
		}
		if err := e.PutModule("admin.rego", []byte(admin)); err != nil {
			t.Fatal(err)
		}
		want := with(baseFiles(), "admin.rego", admin)
		if got := snapshot(t, dir); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("directory holds %q, want %q", got, want)
		}
		if e.Revision() != revisionOf(t, want) || e.Status().Dir != dir {
			t.Errorf("revision %s, want that of the directory's files", short(e.Revision()))
		}
		if d := e.Decide(context.Background(), adminReq); !d.Allow {
			t.Errorf("admin denied after the upload: %+v", d)
		}
		if len(activations) != 1 || activations[0] != admin+" <nil>" {
			t.Errorf("activations %q", activations)
		}
		// Loading the directory now changes nothing: no second activation.
		if err := e.LoadDir(dir); err != nil || len(activations) != 1 {
			t.Errorf("LoadDir after PutModule: %v, %d activations", err, len(activations))
		}
		// The same module again: written, nothing activated.
		if err := e.PutModule("admin.rego", []byte(admin)); err != nil || len(activations) != 1 {
			t.Errorf("PutModule again: %v, %d activations", err, len(activations))
		}
		// Replacing it.
		if err := e.PutModule("admin.rego", []byte(admin2)); err != nil {
			t.Fatal(err)
		}
		if d := e.Decide(context.Background(), adminReq); d.Allow {
			t.Error("replaced module still allows admin")
		}
		if got := snapshot(t, dir)["admin.rego"]; got != admin2 || len(activations) != 2 {
			t.Errorf("after replacing: %q, %d activations", got, len(activations))
		}
	})

	t.Run("a module with its tests", func(t *testing.T) {
		e, dir := dirEngine(t, baseFiles())
		if err := e.PutModule("admin.rego", []byte(admin)); err != nil {
			t.Fatal(err)
		}
		if err := e.PutModule("admin_test.rego", []byte(adminTest)); err != nil {
			t.Fatal(err)
		}
		// Now a change that breaks the uploaded test is refused.
		if err := e.PutModule("admin.rego", []byte(admin2)); !errors.Is(err, policy.ErrPolicyRejected) || !strings.Contains(err.Error(), "test_admin") {
			t.Errorf("PutModule(breaking its test) = %v", err)
		}
		if snapshot(t, dir)["admin.rego"] != admin {
			t.Error("the refused module reached the directory")
		}
	})

	for _, tt := range []struct{ name, module, src string }{
		{"does not parse", "admin.rego", "package ztgate.authz\nallow if {\n"},
		{"does not compile", "admin.rego", "package ztgate.authz\nallow if undefined_fn(1)\n"},
		{"conflicts with the policy", "admin.rego", "package ztgate.authz\nallow := 1\n"},
		{"fails the tests", "admin.rego", "package ztgate.authz\nallow if input.action == \"subscribe\"\nallow if input.device.status == \"suspended\"\n"},
		{"a failing test", "admin_test.rego", "package ztgate.authz_test\ntest_admin if data.ztgate.authz.allow with input as {\"action\": \"admin\"}\n"},
		{"replaces the policy with a wrong package", "authz.rego", "package ztgate.other\nallow := true\n"},
		{"too large", "admin.rego", "package ztgate.authz\n" + strings.Repeat("#\n", policy.MaxModuleSize/2)},
		{"empty", "admin.rego", ""},
	} {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			e, dir := dirEngine(t, baseFiles())
			rev := e.Revision()
			before := snapshot(t, dir)
			err := e.PutModule(tt.module, []byte(tt.src))
			if !errors.Is(err, policy.ErrPolicyRejected) {
				t.Fatalf("PutModule = %v, want ErrPolicyRejected", err)
			}
			if after := snapshot(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("directory changed: %q -> %q", before, after)
			}
			if st := e.Status(); st.Revision != rev || st.LastError != err.Error() {
				t.Errorf("status %+v", st)
			}
			if d := e.Decide(context.Background(), connectActive); !d.Allow || d.Revision != rev {
				t.Errorf("decision after refusal: %+v", d)
			}
		})
	}
}

// A module that cannot be written is not activated: nothing acknowledged
// lives only in memory.
func TestPutModuleWriteFailure(t *testing.T) {
	e, dir := dirEngine(t, baseFiles())
	rev := e.Revision()
	// A directory where the module would go: the rename over it fails
	// (whoever runs the test, root included).
	writeFiles(t, dir, map[string]string{"admin.rego/keep": "x"})
	if err := e.LoadDir(dir); err != nil || e.Revision() != rev {
		t.Fatalf("positive control: LoadDir = %v", err)
	}
	before := snapshot(t, dir)
	err := e.PutModule("admin.rego", []byte("package ztgate.authz\nallow if input.action == \"admin\"\n"))
	if err == nil || errors.Is(err, policy.ErrPolicyRejected) {
		t.Fatalf("PutModule over a directory = %v, want a write error", err)
	}
	if e.Revision() != rev {
		t.Error("activated a module that was not written")
	}
	if after := snapshot(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("directory changed: %q -> %q", before, after)
	}
}

// PutModule and loads run concurrently with decisions and Status.
func TestConcurrentPutAndStatus(t *testing.T) {
	e, _ := dirEngine(t, baseFiles())
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			src := fmt.Sprintf("package ztgate.authz\n\nallow if input.client.id == %q\n", fmt.Sprint("c", i))
			if err := e.PutModule(fmt.Sprintf("m%d.rego", i), []byte(src)); err != nil {
				t.Error(err)
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 50 {
				st := e.Status()
				_ = e.Decide(context.Background(), connectActive)
				if st.Revision == "" {
					t.Error("empty revision")
				}
			}
		})
	}
	wg.Wait()
	if got := len(e.Status().Modules); got != 6 {
		t.Errorf("%d modules, want 6: %q", got, e.Status().Modules)
	}
}
