package policy_test

import (
	"testing"

	"github.com/ztgate/ztgate/policy"
)

// Active, what the decision cache reads on every decision, agrees with the
// engine's Revision and InputRefs, follows a new revision, and stays what
// it was for a caller holding the old one.
func TestEngineActive(t *testing.T) {
	const cacheable = "package ztgate.authz\n\nallow if input.topic == \"a\"\n"
	const uncacheable = "package ztgate.authz\n\nallow if input.time > 0\n"
	for _, tt := range []struct {
		name, first, next string
	}{
		{"cacheable then not", cacheable, uncacheable},
		{"not then cacheable", uncacheable, cacheable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEngine(t, map[string]string{"p.rego": tt.first}, policy.Options{})
			before := e.Active()
			checkActive(t, e, before)
			if err := e.Load(mapFS(map[string]string{"p.rego": tt.next})); err != nil {
				t.Fatal(err)
			}
			after := e.Active()
			checkActive(t, e, after)
			if after == before || after.ID == before.ID || after.Cacheable() == before.Cacheable() {
				t.Errorf("after a new revision: before %+v, after %+v", before, after)
			}
			if e.Load(mapFS(map[string]string{"p.rego": tt.next})) != nil || e.Active() != after {
				t.Errorf("the same files again changed Active: %+v, want %+v", e.Active(), after)
			}
		})
	}
	var none policy.Active
	if none.Cacheable() || none.ID != "" {
		t.Errorf("zero Active %+v is cacheable", none)
	}
}

func checkActive(t *testing.T, e *policy.Engine, a policy.Active) {
	t.Helper()
	if a.ID == "" || a.ID != e.Revision() {
		t.Errorf("Active ID %q, Revision %q", a.ID, e.Revision())
	}
	if a.Cacheable() != e.InputRefs().Cacheable() {
		t.Errorf("Active cacheable %v, InputRefs %+v", a.Cacheable(), e.InputRefs())
	}
}
