package policy_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// The default policy through the engine with inputs built in Go, as the
// gateway builds them: the Rego tests build their inputs by hand, this checks
// that the real input document meets the same rules.
func TestDefaultPolicyThroughEngine(t *testing.T) {
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	dev := subject("sensor-1")
	other := subject("sensor-2")
	ctl := &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/workload/ctl", TrustDomain: "example.org", Path: "/workload/ctl", Segments: []string{"workload", "ctl"}},
		Device:   &policy.Device{Name: "ctl", Labels: map[string]string{"role": "controller"}, Status: "active"},
		Client:   policy.Client{ID: "ctl", RemoteAddr: "127.0.0.1:1", ProtocolVersion: 4},
	}
	admin := &policy.Subject{
		Identity: policy.Identity{SPIFFEID: "spiffe://example.org/admin/dev", TrustDomain: "example.org", Path: "/admin/dev", Segments: []string{"admin", "dev"}},
		Device:   &policy.Device{Name: "admin-dev", Labels: map[string]string{"role": "admin"}, Status: "active"},
	}
	unenrolled := subject("sensor-1")
	unenrolled.Device = nil
	suspended := subject("sensor-1")
	suspended.Device.Status = "suspended"
	pending := subject("sensor-1")
	pending.Device.Status = "pending"

	pub := func(s *policy.Subject, topic string) *policy.Input {
		return &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: topic, QoS: 1, PayloadSize: 4}
	}
	sub := func(s *policy.Subject, filter string) *policy.Input {
		return &policy.Input{Action: policy.ActionSubscribe, Subject: s, Filter: filter, QoS: 1}
	}
	recv := func(s *policy.Subject, topic string) *policy.Input {
		return &policy.Input{Action: policy.ActionReceive, Subject: s, Topic: topic, QoS: 1}
	}
	tests := []struct {
		name   string
		in     *policy.Input
		allow  bool
		reason string
	}{
		{"connect", &policy.Input{Action: policy.ActionConnect, Subject: dev}, true, ""},
		{"connect unenrolled", &policy.Input{Action: policy.ActionConnect, Subject: unenrolled}, false, "identity not enrolled"},
		{"connect suspended", &policy.Input{Action: policy.ActionConnect, Subject: suspended}, false, "device suspended"},
		{"connect pending", &policy.Input{Action: policy.ActionConnect, Subject: pending}, false, "device pending enrollment"},
		{"publish pending", pub(pending, "devices/sensor-1/telemetry/temp"), false, "device pending enrollment"},
		{"publish telemetry", pub(dev, "devices/sensor-1/telemetry/temp"), true, ""},
		{"publish other telemetry", pub(dev, "devices/sensor-2/telemetry/temp"), false, "topic not granted"},
		{"publish retained telemetry", &policy.Input{Action: policy.ActionPublish, Subject: dev, Topic: "devices/sensor-1/telemetry/temp", Retain: true}, false, "topic not granted"},
		{"publish retained state", &policy.Input{Action: policy.ActionPublish, Subject: dev, Topic: "devices/sensor-1/state", Retain: true}, true, ""},
		{"will on state", &policy.Input{Action: policy.ActionPublish, Subject: dev, Topic: "devices/sensor-1/state", Will: true}, true, ""},
		{"will on telemetry", &policy.Input{Action: policy.ActionPublish, Subject: dev, Topic: "devices/sensor-1/telemetry", Will: true}, false, "last will topic not granted"},
		{"subscribe commands", sub(dev, "devices/sensor-1/commands/#"), true, ""},
		{"subscribe #", sub(dev, "#"), false, "filter not granted"},
		{"subscribe other commands", sub(other, "devices/sensor-1/commands/#"), false, "filter not granted"},
		{"receive commands", recv(dev, "devices/sensor-1/commands/reboot"), true, ""},
		{"receive other commands", recv(other, "devices/sensor-1/commands/reboot"), false, "topic not granted"},
		{"controller subscribe", sub(ctl, "devices/+/telemetry/#"), true, ""},
		{"controller receive", recv(ctl, "devices/sensor-1/state"), true, ""},
		{"controller publish command", pub(ctl, "devices/sensor-1/commands/reboot"), true, ""},
		{"controller subscribe commands", sub(ctl, "devices/+/commands/#"), false, "filter not granted"},
		{"admin", &policy.Input{Action: policy.ActionAdmin, Subject: admin, Request: &policy.Request{Method: "GET", Path: "/v1/devices"}}, true, ""},
		{"admin by device", &policy.Input{Action: policy.ActionAdmin, Subject: dev, Request: &policy.Request{Method: "GET", Path: "/v1/devices"}}, false, "admin role required"},
		{"sys by controller", sub(ctl, "$SYS/#"), false, "filter not granted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.Time = time.Now()
			d := e.Decide(context.Background(), tt.in)
			if d.Err != nil || d.Allow != tt.allow {
				t.Fatalf("Decide = %+v, want allow %v", d, tt.allow)
			}
			if tt.reason != "" && !strings.Contains(strings.Join(d.Reasons, "|"), tt.reason) {
				t.Errorf("Reasons = %q, want %q among them", d.Reasons, tt.reason)
			}
			if tt.allow && len(d.Reasons) != 0 {
				t.Errorf("allowed with reasons %q", d.Reasons)
			}
		})
	}
}

// Shared subscriptions are decided on their inner filter: the caller reduces
// them with SplitShared, in any case of $share, and denies malformed ones.
func TestDefaultPolicySharedSubscriptions(t *testing.T) {
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	dev := subject("sensor-1")
	decide := func(filter string) bool {
		inner, _, _, err := policy.SplitShared(filter)
		if err != nil {
			return false
		}
		return e.Decide(context.Background(), &policy.Input{Action: policy.ActionSubscribe, Subject: dev, Filter: inner}).Allow
	}
	for filter, want := range map[string]bool{
		"$share/g/devices/sensor-1/commands/#":          true,
		"$SHARE/g/devices/sensor-1/commands/#":          true,
		"$Share/g/devices/sensor-1/commands/+":          true,
		"$share/g/#":                                    false,
		"$SHARE/g/#":                                    false,
		"$sHaRe/g/devices/+/commands/#":                 false,
		"$share/g/$SYS/#":                               false,
		"$share/#/devices/sensor-1/commands/#":          false,
		"$share//devices/sensor-1/commands/#":           false,
		"$share/g/$share/h/devices/sensor-1/commands/#": false,
	} {
		if got := decide(filter); got != want {
			t.Errorf("subscribe %q: allow = %v, want %v", filter, got, want)
		}
	}
}

func TestRunTestsDefaultPolicy(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := policy.RunTests(context.Background(), defaultpolicy.FS, &out, false)
	if err != nil || failed != 0 || passed < 40 {
		t.Fatalf("RunTests = %d passed, %d failed, %v\n%s", passed, failed, err, out.String())
	}
	if !strings.Contains(out.String(), "PASS: ") {
		t.Errorf("no summary in output:\n%s", out.String())
	}
}

func TestRunTestsReportsFailures(t *testing.T) {
	fsys := mapFS(map[string]string{
		"authz.rego": "package ztgate.authz\nallow if mqtt.topic_matches(\"a/#\", input.topic)\n",
		"authz_test.rego": `package ztgate.authz_test

import data.ztgate.authz

test_builtin_in_tests if authz.allow with input as {"topic": "a/b"}

test_filter_within_in_tests if mqtt.filter_within("a/#", "a/+")

test_fails if authz.allow with input as {"topic": "b"}

test_errors if to_number("x") > 0
`,
	})
	var out bytes.Buffer
	passed, failed, err := policy.RunTests(context.Background(), fsys, &out, true)
	if err != nil || passed != 2 || failed != 2 {
		t.Fatalf("RunTests = %d passed, %d failed, %v\n%s", passed, failed, err, out.String())
	}
	for _, want := range []string{"test_builtin_in_tests: PASS", "test_fails: FAIL", "test_errors: FAIL", "eval_builtin_error", "PASS: 2/4", "FAIL: 1/4", "ERROR: 1/4"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	// Source order, whatever order the tests finished in.
	if strings.Index(out.String(), "test_builtin_in_tests") > strings.Index(out.String(), "test_errors") {
		t.Errorf("results not in source order:\n%s", out.String())
	}
}

func TestRunTestsErrors(t *testing.T) {
	ctx := context.Background()
	for name, files := range map[string]map[string]string{
		"no files":    {},
		"no tests":    {"authz.rego": "package ztgate.authz\nallow := true\n"},
		"parse error": {"authz_test.rego": "package x\ntest_a if {\n"},
		"type error":  {"authz_test.rego": "package x\ntest_a if mqtt.topic_matches(1, \"a\")\n"},
		"unknown fn":  {"authz_test.rego": "package x\ntest_a if mqtt.nope(\"a\")\n"},
	} {
		if _, _, err := policy.RunTests(ctx, mapFS(files), &bytes.Buffer{}, false); err == nil {
			t.Errorf("%s: RunTests succeeded", name)
		}
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	if _, err := policy.LoadDir(dir); err == nil || !strings.Contains(err.Error(), "no .rego files") {
		t.Errorf("LoadDir(empty) = %v", err)
	}
	if _, err := policy.LoadDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadDir(missing) succeeded")
	}
	file := filepath.Join(dir, "f.rego")
	if err := os.WriteFile(file, []byte("package ztgate.authz\nallow := true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.LoadDir(file); err == nil {
		t.Error("LoadDir(file) succeeded")
	}
	fsys, err := policy.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngine(fsys, policy.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(context.Background(), &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}); !d.Allow {
		t.Errorf("Decide = %+v", d)
	}
}
