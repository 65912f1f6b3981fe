package defaultpolicy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/format"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

func TestEmbedded(t *testing.T) {
	for _, name := range []string{"authz.rego", "authz_test.rego"} {
		if _, err := fs.Stat(defaultpolicy.FS, name); err != nil {
			t.Errorf("%s not embedded: %v", name, err)
		}
	}
}

// The default policy's Rego tests, run as `ztgate policy test` runs them.
func TestDefaultPolicy(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := policy.RunTests(context.Background(), defaultpolicy.FS, &out, testing.Verbose())
	t.Log(out.String())
	if err != nil || failed != 0 || passed == 0 {
		t.Fatalf("%d passed, %d failed, err %v", passed, failed, err)
	}
}

func TestDefaultPolicyCompiles(t *testing.T) {
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Revision() == "" {
		t.Error("no revision")
	}
}

// The policy is the reference others copy: keep it in `opa fmt` form.
func TestFormatted(t *testing.T) {
	names, err := fs.Glob(defaultpolicy.FS, "*.rego")
	if err != nil || len(names) == 0 {
		t.Fatalf("no policy files: %v", err)
	}
	for _, name := range names {
		src, err := fs.ReadFile(defaultpolicy.FS, name)
		if err != nil {
			t.Fatal(err)
		}
		out, err := format.SourceWithOpts(name, src, format.Opts{RegoVersion: ast.RegoV1})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(out, src) {
			t.Errorf("%s is not formatted as opa fmt would", name)
		}
	}
}

// recipesDir holds the worked examples, outside this directory so that
// --policy-dir policy/defaultpolicy loads the default policy alone.
const recipesDir = "../../examples/policy-recipes"

// extraDirs are the worked examples of docs/policy.md: modules added to the
// default policy, each with its own tests.
var extraDirs = []string{"site-isolation", "dashboards", "maintenance-window", "federation"}

// withDefault is a policy directory holding the default policy and the
// example in examples/policy-recipes/NAME, as an operator would deploy it.
func withDefault(t *testing.T, name string) fstest.MapFS {
	t.Helper()
	out := fstest.MapFS{}
	for _, fsys := range []fs.FS{defaultpolicy.FS, os.DirFS(filepath.Join(recipesDir, name))} {
		err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if _, dup := out[p]; dup {
				return fmt.Errorf("%s: %s shadows a file of the default policy", name, p)
			}
			b, err := fs.ReadFile(fsys, p)
			out[p] = &fstest.MapFile{Data: b}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// Every example passes its own tests and the default policy's, and starts
// an engine (which runs them again, as a reload would).
func TestExtraPolicies(t *testing.T) {
	entries, err := os.ReadDir(recipesDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(extraDirs) {
		t.Errorf("%s holds %d examples, the docs show %d", recipesDir, len(entries), len(extraDirs))
	}
	defaults, _, err := policy.RunTests(context.Background(), defaultpolicy.FS, io.Discard, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range extraDirs {
		t.Run(name, func(t *testing.T) {
			fsys := withDefault(t, name)
			var out bytes.Buffer
			passed, failed, err := policy.RunTests(context.Background(), fsys, &out, testing.Verbose())
			t.Log(out.String())
			if err != nil || failed != 0 || passed <= defaults {
				t.Fatalf("%d passed (the default policy alone: %d), %d failed, err %v", passed, defaults, failed, err)
			}
			if _, err := policy.NewEngine(fsys, policy.Options{Logger: slog.New(slog.DiscardHandler)}); err != nil {
				t.Fatal(err)
			}
			// Formatted as opa fmt would, like the default policy.
			files, _ := filepath.Glob(filepath.Join(recipesDir, name, "*.rego"))
			if len(files) != 2 {
				t.Errorf("want a module and its test, have %q", files)
			}
			for _, f := range files {
				src, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if out, err := format.SourceWithOpts(f, src, format.Opts{RegoVersion: ast.RegoV1}); err != nil || !bytes.Equal(out, src) {
					t.Errorf("%s is not formatted as opa fmt would (err %v)", f, err)
				}
			}
		})
	}
}

// The maintenance window through the engine, with the time the gateway puts
// in the input (Input.Time, any zone, sent as UTC).
func TestMaintenanceWindowThroughEngine(t *testing.T) {
	e, err := policy.NewEngine(withDefault(t, "maintenance-window"), policy.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	updater := &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/workload/updater", TrustDomain: "example.org", Path: "/workload/updater", Segments: []string{"workload", "updater"}},
		Device:   &policy.Device{Name: "updater", Labels: map[string]string{"role": "updater"}, Status: "active"},
		Client:   policy.Client{ID: "u1", RemoteAddr: "127.0.0.1:1", ProtocolVersion: 5},
	}
	berlin := time.FixedZone("CET", 3600)
	for _, tt := range []struct {
		at    time.Time
		allow bool
	}{
		{time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC), true},
		{time.Date(2026, 11, 28, 4, 30, 0, 0, berlin), true},  // 03:30 UTC
		{time.Date(2026, 11, 28, 2, 30, 0, 0, berlin), false}, // 01:30 UTC
		{time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC), false},
	} {
		in := &policy.Input{Action: policy.ActionPublish, Subject: updater, Topic: "devices/s1/commands/firmware", QoS: 1, Time: tt.at}
		d := e.Decide(context.Background(), in)
		if d.Err != nil || d.Allow != tt.allow {
			t.Errorf("at %s: %+v, want allow %v", tt.at, d, tt.allow)
		}
		if !tt.allow && !slices.Contains(d.Reasons, "outside the maintenance window") {
			t.Errorf("at %s: reasons %q", tt.at, d.Reasons)
		}
	}
	// A time that is not RFC 3339 (only a hand-made input can carry one)
	// is an evaluation error: denied, never allowed.
	d, err := e.DecideJSON(context.Background(), []byte(`{"action": "publish", "topic": "devices/s1/commands/firmware",
		"retain": false, "will": false, "time": "tonight",
		"identity": {"trust_domain": "example.org", "segments": ["workload", "updater"]},
		"device": {"name": "updater", "labels": {"role": "updater"}, "status": "active"}}`))
	if err == nil || d.Allow {
		t.Errorf("bad time: %+v, %v; want a failed evaluation", d, err)
	}
}

// `ztgate policy test policy/defaultpolicy` loads the directory from disk,
// recursively, as an operator's copy of it would be: it passes as the
// embedded copy does.
func TestLoadedFromDisk(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := policy.RunTests(context.Background(), os.DirFS("."), &out, false)
	if err != nil || failed != 0 || passed == 0 {
		t.Fatalf("%d passed, %d failed, err %v\n%s", passed, failed, err, out.String())
	}
}

// docs/policy.md shows the examples' modules whole and parts of their tests;
// they must be what is here, and its builtin examples must hold.
func TestPolicyDocs(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	marker := regexp.MustCompile("(?m)^<!-- (file|excerpt): (\\S+) -->\n```rego\n((?s:.*?))```\n")
	found := map[string]bool{}
	for _, m := range marker.FindAllStringSubmatch(string(doc), -1) {
		kind, path, block := m[1], m[2], m[3]
		src, err := os.ReadFile(filepath.Join("..", "..", filepath.FromSlash(path)))
		if err != nil {
			t.Errorf("docs show %s: %v", path, err)
			continue
		}
		found[path] = true
		switch {
		case kind == "file" && block != string(src):
			t.Errorf("docs show %s, but not as it is", path)
		case kind == "excerpt" && !strings.Contains(string(src), block):
			t.Errorf("docs quote %s, but the quote is not in it:\n%s", path, block)
		}
	}
	for _, name := range extraDirs {
		files, _ := filepath.Glob(filepath.Join(recipesDir, name, "*.rego"))
		for _, f := range files {
			// f is relative to this directory: name it from the root.
			if p := path.Join("policy/defaultpolicy", filepath.ToSlash(f)); !found[p] {
				t.Errorf("docs do not show %s", p)
			}
		}
	}

	builtin := regexp.MustCompile(`(?m)^mqtt\.(topic_matches|filter_within)\("([^"]*)", "([^"]*)"\)\s+# (true|false)`)
	examples := builtin.FindAllStringSubmatch(string(doc), -1)
	if len(examples) < 8 {
		t.Fatalf("found %d builtin examples in the docs", len(examples))
	}
	for _, m := range examples {
		f := policy.TopicMatches
		if m[1] == "filter_within" {
			f = policy.FilterWithin
		}
		if got := f(m[2], m[3]); fmt.Sprint(got) != m[4] {
			t.Errorf("docs: mqtt.%s(%q, %q) is %v, not %s", m[1], m[2], m[3], got, m[4])
		}
	}
}
