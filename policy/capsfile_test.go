package policy_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/ztgate/ztgate/policy"
)

// loadCapsFile reads the committed capabilities file the way `opa check
// --capabilities` and Regal read it.
func loadCapsFile(t *testing.T) *ast.Capabilities {
	t.Helper()
	raw, err := os.ReadFile("capabilities.json")
	if err != nil {
		t.Fatal(err)
	}
	caps, err := ast.LoadCapabilitiesJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("capabilities.json does not load as OPA capabilities: %v", err)
	}
	return caps
}

// The committed policy/capabilities.json is what the code generates: a
// builtin added, an MQTT builtin's signature changed or an OPA upgrade
// shows here until the file is regenerated.
func TestCapabilitiesFileInSync(t *testing.T) {
	want, err := policy.CapabilitiesJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("capabilities.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("policy/capabilities.json is out of date: regenerate it with `go run ./cmd/ztgate policy capabilities > policy/capabilities.json`")
	}
}

// The file declares each MQTT builtin with its arity and types, keeps OPA's
// features and keywords, and leaves out what the gateway refuses by
// default, so that `opa check` refuses it too.
func TestCapabilitiesFileContents(t *testing.T) {
	caps := loadCapsFile(t)
	byName := map[string]*ast.Builtin{}
	for _, b := range caps.Builtins {
		byName[b.Name] = b
	}
	for _, name := range []string{"mqtt.topic_matches", "mqtt.filter_within"} {
		b := byName[name]
		if b == nil {
			t.Errorf("%s is not declared", name)
			continue
		}
		if b.Decl == nil || len(b.Decl.FuncArgs().Args) != 2 {
			t.Errorf("%s: decl %v, want 2 arguments", name, b.Decl)
			continue
		}
		if got := b.Decl.String(); got != "(string, string) => boolean" {
			t.Errorf("%s: type %s, want (string, string) => boolean", name, got)
		}
	}
	// Positive control: OPA's own builtins and language features are there.
	for _, name := range []string{"count", "net.cidr_contains", "time.parse_rfc3339_ns", "regex.match"} {
		if byName[name] == nil {
			t.Errorf("OPA builtin %s is missing", name)
		}
	}
	if len(caps.Features) == 0 {
		t.Error("no OPA features listed")
	}
	for _, name := range policy.RestrictedBuiltins() {
		if byName[name] != nil {
			t.Errorf("restricted builtin %s is declared: opa check would accept what the gateway refuses", name)
		}
	}
}

// A policy calling the MQTT builtins type-checks against the file; one
// calling an undeclared mqtt.nope, or the builtins with the wrong types, or
// a restricted builtin, does not.
func TestCapabilitiesFileTypeChecks(t *testing.T) {
	caps := loadCapsFile(t)
	for _, tt := range []struct {
		name, body, wantErr string
	}{
		{"mqtt builtins", `mqtt.topic_matches("a/+", input.topic)
	mqtt.filter_within("a/#", input.filter)`, ""},
		{"opa builtins", `net.cidr_contains("10.0.0.0/8", input.ip)`, ""},
		{"unknown mqtt builtin", `mqtt.nope("a", input.topic)`, "undefined function mqtt.nope"},
		{"wrong argument type", `mqtt.topic_matches(1, input.topic)`, "mqtt.topic_matches"},
		{"wrong arity", `mqtt.filter_within("a/#")`, "mqtt.filter_within"},
		{"restricted builtin", `http.send({"method": "GET", "url": input.url})`, "http.send"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := "package ztgate.authz\n\nallow if {\n\t" + tt.body + "\n}\n"
			mod, err := ast.ParseModuleWithOpts("p.rego", src, ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				t.Fatal(err)
			}
			c := ast.NewCompiler().WithCapabilities(caps).WithDefaultRegoVersion(ast.RegoV1)
			c.Compile(map[string]*ast.Module{"p.rego": mod})
			switch {
			case tt.wantErr == "" && c.Failed():
				t.Fatalf("does not compile against capabilities.json: %v", c.Errors)
			case tt.wantErr != "" && !c.Failed():
				t.Fatalf("compiles against capabilities.json, want an error naming %s", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(c.Errors.Error(), tt.wantErr):
				t.Fatalf("error %q does not name %s", c.Errors, tt.wantErr)
			}
		})
	}
}

// With a restricted builtin allowed, the generated capabilities declare it
// (what a gateway with policy_allow_builtins compiles against); names that
// are not restricted builtins are refused.
func TestCapabilitiesAllowBuiltins(t *testing.T) {
	raw, err := policy.CapabilitiesJSON([]string{"http.send"})
	if err != nil {
		t.Fatal(err)
	}
	caps, err := ast.LoadCapabilitiesJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range caps.Builtins {
		names = append(names, b.Name)
	}
	all := "," + strings.Join(names, ",") + ","
	if !strings.Contains(all, ",http.send,") || !strings.Contains(all, ",mqtt.topic_matches,") {
		t.Error("http.send or mqtt.topic_matches missing with http.send allowed")
	}
	if strings.Contains(all, ",net.lookup_ip_addr,") {
		t.Error("allowing http.send allowed net.lookup_ip_addr")
	}
	if _, err := policy.CapabilitiesJSON([]string{"http.sned"}); err == nil || !strings.HasPrefix(err.Error(), "policy: ") {
		t.Errorf("CapabilitiesJSON(http.sned) = %v, want a policy: error", err)
	}
}
