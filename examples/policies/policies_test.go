package policies_test

import (
	"bytes"
	"context"
	"io/fs"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/format"

	"github.com/ztgate/ztgate/examples/policies"
	"github.com/ztgate/ztgate/policy"
)

func TestEmbedded(t *testing.T) {
	for _, name := range []string{"authz.rego", "authz_test.rego"} {
		if _, err := fs.Stat(policies.FS, name); err != nil {
			t.Errorf("%s not embedded: %v", name, err)
		}
	}
}

// The default policy's Rego tests, run as `ztgate policy test` runs them.
func TestDefaultPolicy(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := policy.RunTests(context.Background(), policies.FS, &out, testing.Verbose())
	t.Log(out.String())
	if err != nil || failed != 0 || passed == 0 {
		t.Fatalf("%d passed, %d failed, err %v", passed, failed, err)
	}
}

func TestDefaultPolicyCompiles(t *testing.T) {
	e, err := policy.NewEngine(policies.FS, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Revision() == "" {
		t.Error("no revision")
	}
}

// The policy is the reference others copy: keep it in `opa fmt` form.
func TestFormatted(t *testing.T) {
	names, err := fs.Glob(policies.FS, "*.rego")
	if err != nil || len(names) == 0 {
		t.Fatalf("no policy files: %v", err)
	}
	for _, name := range names {
		src, err := fs.ReadFile(policies.FS, name)
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
