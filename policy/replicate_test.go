package policy_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/policy"
)

const (
	adminTestModule = "package ztgate.authz_test\n\ntest_admin if data.ztgate.authz.allow with input as {\"action\": \"admin\"}\n"
	libModule       = "package ztgate.lib\n\nok := true\n"
)

var adminReq = &policy.Input{Action: policy.ActionAdmin, Subject: subject("a")}

func asBytes(files map[string]string) map[string][]byte {
	out := make(map[string][]byte, len(files))
	for k, v := range files {
		out[k] = []byte(v)
	}
	return out
}

func asStrings(mods map[string][]byte) map[string]string {
	out := make(map[string]string, len(mods))
	for k, v := range mods {
		out[k] = string(v)
	}
	return out
}

// Modules returns the set in force, tests included, under a revision that
// ModulesRevision reproduces, and a copy the caller cannot change it by.
func TestModules(t *testing.T) {
	e := newEngine(t, baseFiles(), policy.Options{})
	rev, mods := e.Modules()
	if !maps.Equal(asStrings(mods), baseFiles()) {
		t.Fatalf("Modules() = %q, want %q", mods, baseFiles())
	}
	if rev == "" || rev != policy.ModulesRevision(mods) {
		t.Errorf("revision %q, ModulesRevision %q", rev, policy.ModulesRevision(mods))
	}
	// The set revision covers the tests; the policy revision does not.
	other := with(baseFiles(), "authz_test.rego", baseTests+"\ntest_more if true\n")
	if policy.ModulesRevision(asBytes(other)) == rev {
		t.Error("a test change does not change the set revision")
	}
	mods["authz.rego"][0] = 'X'
	delete(mods, "authz_test.rego")
	if _, again := e.Modules(); !maps.Equal(asStrings(again), baseFiles()) {
		t.Error("changing the returned map changed the engine's set")
	}
}

func TestApplyModules(t *testing.T) {
	t.Run("accepted: written, then activated", func(t *testing.T) {
		e, dir := dirEngine(t, with(baseFiles(), "extra.rego", libModule))
		writeFiles(t, dir, map[string]string{"notes.txt": "kept", ".scratch.rego": "hidden, kept"})
		var activations []string
		e.OnActivate(func(st policy.Status) {
			b, err := os.ReadFile(filepath.Join(dir, "admin.rego"))
			activations = append(activations, fmt.Sprintf("%s %v", b, err))
		})
		if d := e.Decide(context.Background(), adminReq); d.Allow {
			t.Fatal("positive control: admin allowed before the change")
		}
		set := with(baseFiles(), "admin.rego", adminModule, "admin_test.rego", adminTestModule, "lib/util.rego", libModule)
		if err := e.ApplyModules(asBytes(set)); err != nil {
			t.Fatal(err)
		}
		// extra.rego left the set, so it left the directory; the rest is
		// not policy and stays.
		want := with(set, "notes.txt", "kept", ".scratch.rego", "hidden, kept")
		if got := snapshot(t, dir); !maps.Equal(got, want) {
			t.Errorf("directory holds %q, want %q", got, want)
		}
		if rev, mods := e.Modules(); rev != policy.ModulesRevision(asBytes(set)) || !maps.Equal(asStrings(mods), set) {
			t.Errorf("Modules() = %s %q", short(rev), mods)
		}
		if e.Revision() != revisionOf(t, set) || e.Status().Dir != dir || e.Status().LastError != "" {
			t.Errorf("status %+v", e.Status())
		}
		if d := e.Decide(context.Background(), adminReq); !d.Allow {
			t.Errorf("admin denied after the change: %+v", d)
		}
		if len(activations) != 1 || activations[0] != adminModule+" <nil>" {
			t.Errorf("activations %q", activations)
		}
		// The same set again changes nothing.
		if err := e.ApplyModules(asBytes(set)); err != nil || len(activations) != 1 {
			t.Errorf("ApplyModules again: %v, %d activations", err, len(activations))
		}
		// A restart reads the new set from the directory.
		again := newEngine(t, baseFiles(), policy.Options{})
		if err := again.LoadDir(dir); err != nil {
			t.Fatal(err)
		}
		if r1, _ := again.Modules(); r1 != policy.ModulesRevision(asBytes(set)) {
			t.Errorf("after a restart: set %s, want %s", short(r1), short(policy.ModulesRevision(asBytes(set))))
		}
	})

	t.Run("without a backing directory", func(t *testing.T) {
		e := newEngine(t, baseFiles(), policy.Options{})
		set := with(baseFiles(), "admin.rego", adminModule)
		if err := e.ApplyModules(asBytes(set)); err != nil {
			t.Fatal(err)
		}
		if e.Revision() != revisionOf(t, set) || e.Status().Dir != "" {
			t.Errorf("status %+v", e.Status())
		}
	})

	tooMany := map[string]string{"authz.rego": basePolicy}
	for i := range policy.MaxModules {
		tooMany[fmt.Sprintf("m%d.rego", i)] = libModule
	}
	for _, tt := range []struct {
		name    string
		set     map[string]string
		badName bool
		errHas  string
	}{
		{"a failing test", with(baseFiles(), "admin_test.rego", adminTestModule), false, "test_admin"},
		{"a change its tests refuse", with(baseFiles(), "authz.rego", strings.Replace(basePolicy, `"active"`, `"suspended"`, 1)), false, "test_connect_active"},
		{"does not parse", with(baseFiles(), "admin.rego", "package ztgate.authz\nallow if {\n"), false, "admin.rego"},
		{"no policy module", map[string]string{"authz_test.rego": baseTests}, false, "no policy modules"},
		{"empty set", map[string]string{}, false, "no policy modules"},
		{"too large", with(baseFiles(), "admin.rego", "package ztgate.authz\n"+strings.Repeat("#\n", policy.MaxModuleSize/2)), false, "more than"},
		{"too many", tooMany, false, "modules"},
		{"parent directory", with(baseFiles(), "../evil.rego", libModule), true, ""},
		{"dot-dot inside", with(baseFiles(), "lib/../../evil.rego", libModule), true, ""},
		{"absolute", with(baseFiles(), "/tmp/evil.rego", libModule), true, ""},
		{"hidden file", with(baseFiles(), ".evil.rego", libModule), true, ""},
		{"hidden directory", with(baseFiles(), ".git/evil.rego", libModule), true, ""},
		{"not rego", with(baseFiles(), "evil.txt", libModule), true, ""},
		{"backslash", with(baseFiles(), `lib\evil.rego`, libModule), true, ""},
		{"empty segment", with(baseFiles(), "lib//evil.rego", libModule), true, ""},
		{"dot segment", with(baseFiles(), "./evil.rego", libModule), true, ""},
	} {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			e, dir := dirEngine(t, baseFiles())
			rev, _ := e.Modules()
			before := snapshot(t, dir)
			var activated int
			e.OnActivate(func(policy.Status) { activated++ })
			err := e.ApplyModules(asBytes(tt.set))
			if !errors.Is(err, policy.ErrPolicyRejected) || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("ApplyModules = %v, want ErrPolicyRejected mentioning %q", err, tt.errHas)
			}
			if tt.badName != errors.Is(err, policy.ErrInvalidModuleName) {
				t.Errorf("ApplyModules = %v, ErrInvalidModuleName %v", err, tt.badName)
			}
			if after := snapshot(t, dir); !maps.Equal(after, before) {
				t.Errorf("directory changed: %q -> %q", before, after)
			}
			if now, _ := e.Modules(); now != rev || activated != 0 {
				t.Errorf("set %s (was %s), %d activations", short(now), short(rev), activated)
			}
			if st := e.Status(); st.LastError != err.Error() {
				t.Errorf("LastError %q, want %q", st.LastError, err.Error())
			}
			if d := e.Decide(context.Background(), connectActive); !d.Allow {
				t.Errorf("decision after refusal: %+v", d)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(os.TempDir(), "evil.rego")); err == nil {
		t.Error("a module escaped the directory")
	}
}

// regularFiles is snapshot for a directory that may hold symlinks, which
// it names without following.
func regularFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.Type()&os.ModeSymlink != 0 {
			out[filepath.ToSlash(rel)] = "symlink"
			return nil
		}
		b, err := os.ReadFile(p)
		out[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A set that cannot be written whole is not activated, and what was written
// of it is undone: a restart reads the revision in force.
func TestApplyModulesWriteFailure(t *testing.T) {
	outside := t.TempDir()
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{"a file where a directory goes", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{"zz": "not a directory"})
		}},
		{"a symlink where a directory goes", func(t *testing.T, dir string) {
			if err := os.Symlink(outside, filepath.Join(dir, "zz")); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, dir := dirEngine(t, baseFiles())
			tt.setup(t, dir)
			rev, _ := e.Modules()
			before := regularFiles(t, dir)
			// authz.rego sorts before zz/lib.rego: it is written, then undone.
			set := with(baseFiles(), "authz.rego", basePolicy+"\nallow if input.action == \"admin\"\n", "zz/lib.rego", libModule)
			err := e.ApplyModules(asBytes(set))
			if err == nil || errors.Is(err, policy.ErrPolicyRejected) {
				t.Fatalf("ApplyModules = %v, want a write error", err)
			}
			if after := regularFiles(t, dir); !maps.Equal(after, before) {
				t.Errorf("directory changed: %q -> %q", before, after)
			}
			if now, _ := e.Modules(); now != rev || e.Status().LastError == "" {
				t.Errorf("set %s (was %s), status %+v", short(now), short(rev), e.Status())
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Errorf("written through the symlink: %v", entries)
			}
			// Positive control: the same set without the blocked module.
			if err := e.ApplyModules(asBytes(with(set, "zz/lib.rego", ""))); err != nil {
				t.Errorf("positive control: %v", err)
			}
		})
	}
}

// The commit function sees every new set before it is kept or activated,
// and can refuse it; the same set again is not offered.
func TestSetCommit(t *testing.T) {
	errCluster := errors.New("cluster unreachable")
	changes := []struct {
		name   string
		change func(e *policy.Engine, dir string) error
		set    map[string]string
	}{
		{"PutModule", func(e *policy.Engine, dir string) error {
			return e.PutModule("admin.rego", []byte(adminModule))
		}, with(baseFiles(), "admin.rego", adminModule)},
		{"ApplyModules", func(e *policy.Engine, dir string) error {
			return e.ApplyModules(asBytes(with(baseFiles(), "admin.rego", adminModule, "authz_test.rego", "")))
		}, with(baseFiles(), "admin.rego", adminModule, "authz_test.rego", "")},
		{"LoadDir", func(e *policy.Engine, dir string) error {
			writeFiles(t, dir, map[string]string{"admin.rego": adminModule})
			return e.LoadDir(dir)
		}, with(baseFiles(), "admin.rego", adminModule)},
		{"test-only change", func(e *policy.Engine, dir string) error {
			return e.PutModule("admin_test.rego", []byte("package ztgate.authz_test\n\ntest_x if true\n"))
		}, with(baseFiles(), "admin_test.rego", "package ztgate.authz_test\n\ntest_x if true\n")},
		{"RemoveModule", func(e *policy.Engine, dir string) error {
			return e.RemoveModule("authz_test.rego")
		}, with(baseFiles(), "authz_test.rego", "")},
	}
	for _, tt := range changes {
		t.Run(tt.name+": refused", func(t *testing.T) {
			e, dir := dirEngine(t, baseFiles())
			rev, _ := e.Modules()
			var offered []string
			e.SetCommit(func(rev string, mods map[string][]byte) error {
				offered = append(offered, rev)
				return errCluster
			})
			before := snapshot(t, dir)
			err := tt.change(e, dir)
			if !errors.Is(err, policy.ErrNotCommitted) || !errors.Is(err, errCluster) || errors.Is(err, policy.ErrPolicyRejected) {
				t.Fatalf("change = %v, want ErrNotCommitted wrapping the commit's error", err)
			}
			if want := policy.ModulesRevision(asBytes(tt.set)); len(offered) != 1 || offered[0] != want {
				t.Errorf("offered %q, want [%s]", offered, want)
			}
			if now, _ := e.Modules(); now != rev || e.Status().LastError != err.Error() {
				t.Errorf("set %s (was %s), status %+v", short(now), short(rev), e.Status())
			}
			if tt.name != "LoadDir" { // LoadDir reads what someone else wrote
				if after := snapshot(t, dir); !maps.Equal(after, before) {
					t.Errorf("directory changed: %q -> %q", before, after)
				}
			}
		})
		t.Run(tt.name+": committed", func(t *testing.T) {
			e, dir := dirEngine(t, baseFiles())
			var offered []string
			e.SetCommit(func(rev string, mods map[string][]byte) error {
				if rev != policy.ModulesRevision(mods) {
					t.Errorf("offered revision %s for another set", short(rev))
				}
				// Kept before it is committed: a commit is never for a
				// set this node could not keep.
				if got := snapshot(t, dir); !maps.Equal(got, tt.set) {
					t.Errorf("at commit the directory holds %q", got)
				}
				offered = append(offered, rev)
				return nil
			})
			if err := tt.change(e, dir); err != nil {
				t.Fatal(err)
			}
			if now, _ := e.Modules(); now != policy.ModulesRevision(asBytes(tt.set)) || len(offered) != 1 || offered[0] != now {
				t.Errorf("set %s, offered %q", short(now), offered)
			}
			// Unchanged sets are not offered again.
			if err := e.LoadDir(dir); err != nil || len(offered) != 1 {
				t.Errorf("LoadDir of the same set: %v, offered %d times", err, len(offered))
			}
			e.SetCommit(nil)
			if err := e.PutModule("other.rego", []byte(libModule)); err != nil || len(offered) != 1 {
				t.Errorf("after SetCommit(nil): %v, offered %d times", err, len(offered))
			}
		})
	}
}
