package policy_test

import (
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/policy"
)

// The limits rule is optional: without it, or undefined for the input,
// Limits returns nothing; defined, an object of names to numbers; any
// other shape is an error, for the caller to fail closed on.
func TestLimitsRule(t *testing.T) {
	in := &policy.Input{Action: policy.ActionConnect, Subject: subject("sensor-1")}
	cases := []struct {
		name, rule string
		want       policy.Limits
		err        string
	}{
		{"no rule", ``, nil, ""},
		{"undefined for the input", `limits := {"publish_rate": 5} if input.client.id == "other"`, nil, ""},
		{"an object", `limits := {"publish_rate": 1000, "max_sessions_per_identity": 16} if input.action == "connect"`,
			policy.Limits{"publish_rate": 1000, "max_sessions_per_identity": 16}, ""},
		{"not an object", `limits := [1]`, nil, "want an object"},
		{"a string value", `limits := {"publish_rate": "fast"}`, nil, "want a number"},
		{"a negative value", `limits := {"publish_rate": -1}`, nil, "non-negative"},
		{"a non-string key", `limits := {1: 2}`, nil, "not a string"},
		{"an error", `limits := {"x": 1 / 0}`, nil, "limits"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, map[string]string{"a.rego": "package ztgate.authz\n\nallow := true\n\n" + tc.rule}, policy.Options{})
			got, err := e.Limits(context.Background(), in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// A canceled context or an input without subject is an error, not the
// configured limits.
func TestLimitsFailsClosed(t *testing.T) {
	e := newEngine(t, map[string]string{"a.rego": "package ztgate.authz\n\nallow := true\n\nlimits := {\"publish_rate\": 5}\n"}, policy.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Limits(ctx, &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}); err == nil {
		t.Fatal("canceled context: no error")
	}
	if _, err := e.Limits(context.Background(), &policy.Input{Action: policy.ActionConnect}); err == nil {
		t.Fatal("no subject: no error")
	}
	if got, err := e.Limits(context.Background(), &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}); err != nil || got["publish_rate"] != 5 {
		t.Fatalf("positive control: %v, %v", got, err)
	}
}
