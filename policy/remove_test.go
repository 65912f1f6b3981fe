package policy_test

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/ztgate/ztgate/policy"
)

func TestRemoveModule(t *testing.T) {
	// lib_test.rego needs lib.rego: removing lib.rego alone fails the tests.
	libTest := "package ztgate.lib_test\n\nimport data.ztgate.lib\n\ntest_ok if lib.ok\n"
	files := with(baseFiles(), "lib.rego", libModule, "lib_test.rego", libTest, "extra.rego", "package ztgate.extra\n\nx := 1\n")
	e, dir := dirEngine(t, files)
	rev := e.Revision()

	refused := []struct {
		name string
		want error
	}{
		{"nope.rego", policy.ErrModuleNotFound},
		{"../authz.rego", policy.ErrInvalidModuleName},
		{".hidden.rego", policy.ErrInvalidModuleName},
		{"lib.rego", policy.ErrPolicyRejected},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			if err := e.RemoveModule(tc.name); !errors.Is(err, tc.want) {
				t.Fatalf("RemoveModule(%q) = %v, want %v", tc.name, err, tc.want)
			}
		})
	}
	if e.Revision() != rev || !maps.Equal(snapshot(t, dir), files) {
		t.Fatalf("refused removals changed the policy or its directory: %q", snapshot(t, dir))
	}
	if st := e.Status(); st.LastError == "" {
		t.Error("the rejected set left no LastError")
	}

	if err := e.RemoveModule("extra.rego"); err != nil {
		t.Fatal(err)
	}
	want := with(files, "extra.rego", "")
	if got := snapshot(t, dir); !maps.Equal(got, want) {
		t.Errorf("directory %q, want %q", got, want)
	}
	st := e.Status()
	if slices.Contains(st.Modules, "extra.rego") || st.Revision == rev || st.LastError != "" {
		t.Errorf("status after removal %+v", st)
	}
	// The test, then what it tested: both go, and the policy still decides.
	for _, name := range []string{"lib_test.rego", "lib.rego"} {
		if err := e.RemoveModule(name); err != nil {
			t.Fatalf("RemoveModule(%s): %v", name, err)
		}
	}
	if !e.Decide(t.Context(), connectActive).Allow {
		t.Error("the remaining policy no longer allows an active device to connect")
	}
	// authz.rego is the last module that is not a test.
	if err := e.RemoveModule("authz.rego"); !errors.Is(err, policy.ErrPolicyEmpty) {
		t.Fatalf("removing the last module = %v, want ErrPolicyEmpty", err)
	}
	if !maps.Equal(snapshot(t, dir), baseFiles()) {
		t.Errorf("directory %q, want the base files", snapshot(t, dir))
	}

	// Without a backing directory there is nothing to remove from.
	bare := newEngine(t, baseFiles(), policy.Options{})
	if err := bare.RemoveModule("authz_test.rego"); !errors.Is(err, policy.ErrNoBackingDir) {
		t.Fatalf("without a directory = %v, want ErrNoBackingDir", err)
	}
}
