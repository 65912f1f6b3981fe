package policy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ztgate/ztgate/policy"
)

// small is a policy exercising every way a decision can come out.
const small = `package ztgate.authz

default allow := false

allow if input.action == "connect"

allow if {
	input.action == "publish"
	mqtt.topic_matches("devices/+/telemetry/#", input.topic)
}

allow if {
	input.action == "subscribe"
	mqtt.filter_within("devices/a/#", input.filter)
}

reasons contains "not connect" if input.action != "connect"

reasons contains "no topic" if {
	not allow
	input.action == "publish"
}
`

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mapFS(files map[string]string) fstest.MapFS {
	m := fstest.MapFS{}
	for name, text := range files {
		m[name] = &fstest.MapFile{Data: []byte(text)}
	}
	return m
}

func newEngine(t *testing.T, files map[string]string, opts policy.Options) *policy.Engine {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	e, err := policy.NewEngine(mapFS(files), opts)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	return e
}

func subject(name string) *policy.Subject {
	return &policy.Subject{
		Identity: policy.Identity{
			SPIFFEID:    "spiffe://example.org/device/" + name,
			TrustDomain: "example.org",
			Path:        "/device/" + name,
			Segments:    []string{"device", name},
		},
		Device: &policy.Device{Name: name, Labels: map[string]string{"role": "sensor"}, Status: "active"},
		Client: policy.Client{ID: name, RemoteAddr: "127.0.0.1:50412", ProtocolVersion: 5},
	}
}

func TestEngineDecide(t *testing.T) {
	e := newEngine(t, map[string]string{"authz.rego": small}, policy.Options{})
	s := subject("a")
	tests := []struct {
		name    string
		in      *policy.Input
		allow   bool
		reasons []string
	}{
		// Reasons explain a deny: they are not evaluated for an allow.
		{"connect allowed", &policy.Input{Action: policy.ActionConnect, Subject: s}, true, nil},
		{"publish allowed (builtin)", &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/a/telemetry/t"}, true, nil},
		{"publish denied (builtin)", &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/a/state"}, false, []string{"no topic", "not connect"}},
		{"subscribe within", &policy.Input{Action: policy.ActionSubscribe, Subject: s, Filter: "devices/a/+"}, true, nil},
		{"subscribe wider", &policy.Input{Action: policy.ActionSubscribe, Subject: s, Filter: "devices/+/x"}, false, []string{"not connect"}},
		{"unknown action", &policy.Input{Action: "unsubscribe", Subject: s}, false, []string{"not connect"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.Decide(context.Background(), tt.in)
			if d.Err != nil {
				t.Fatalf("Err = %v", d.Err)
			}
			if d.Allow != tt.allow {
				t.Errorf("Allow = %v, want %v", d.Allow, tt.allow)
			}
			if strings.Join(d.Reasons, ",") != strings.Join(tt.reasons, ",") {
				t.Errorf("Reasons = %q, want %q", d.Reasons, tt.reasons)
			}
			if d.Revision == "" || d.Revision != e.Revision() {
				t.Errorf("Revision = %q, engine revision %q", d.Revision, e.Revision())
			}
		})
	}
}

// Every way a policy can fail to say "true" denies.
func TestEngineFailsClosed(t *testing.T) {
	s := subject("a")
	connect := &policy.Input{Action: policy.ActionConnect, Subject: s}
	tests := []struct {
		name    string
		rego    string
		in      *policy.Input
		wantErr bool
	}{
		{"positive control", "package ztgate.authz\nallow := true\n", connect, false},
		{"undefined allow", "package ztgate.authz\nallow if input.action == \"publish\"\n", connect, false},
		{"no allow rule", "package ztgate.authz\nreasons contains \"x\" if true\n", connect, false},
		{"string allow", "package ztgate.authz\nallow := \"true\"\n", connect, false},
		{"number allow", "package ztgate.authz\nallow := 1\n", connect, false},
		{"object allow", "package ztgate.authz\nallow := {\"allow\": true}\n", connect, false},
		{"set allow", "package ztgate.authz\nallow contains true if true\n", connect, false},
		{"allow false", "package ztgate.authz\nallow := false\n", connect, false},
		{"conflict error", "package ztgate.authz\nallow := true if input.action == \"connect\"\nallow := false if input.client.id == \"a\"\n", connect, true},
		{"builtin error", "package ztgate.authz\nallow if to_number(input.client.id) > 0\n", connect, true},
		{"builtin error under not", "package ztgate.authz\nallow if not to_number(input.client.id) > 0\n", connect, true},
		{"mqtt builtin with a non-string", "package ztgate.authz\nallow if not mqtt.topic_matches(input.client.protocol_version, \"a\")\n", connect, true},
		{"nil subject", "package ztgate.authz\nallow := true\n", &policy.Input{Action: policy.ActionConnect}, true},
		{"nil input", "package ztgate.authz\nallow := true\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEngine(t, map[string]string{"p.rego": tt.rego}, policy.Options{})
			d := e.Decide(context.Background(), tt.in)
			if want := tt.name == "positive control"; d.Allow != want {
				t.Errorf("Allow = %v, want %v", d.Allow, want)
			}
			if (d.Err != nil) != tt.wantErr {
				t.Errorf("Err = %v, want error %v", d.Err, tt.wantErr)
			}
		})
	}
}

// slow takes far longer than any timeout in these tests (about 10^8 steps),
// but evaluation checks for cancellation between steps.
const slow = `package ztgate.authz

allow if {
	input.action == "connect"
	r := numbers.range(1, 10000)
	count([1 | some i in r; some j in r; i + j < 0]) == 0
}
`

func TestEngineTimeoutDenies(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	e := newEngine(t, map[string]string{"p.rego": slow}, policy.Options{Timeout: 20 * time.Millisecond, Logger: logger})
	d := e.Decide(context.Background(), &policy.Input{Action: policy.ActionConnect, Subject: subject("a")})
	if d.Allow || d.Err == nil || !strings.Contains(d.Err.Error(), "timed out") {
		t.Fatalf("Decide = %+v, want a timed-out deny", d)
	}
	if !errors.Is(d.Err, context.DeadlineExceeded) {
		t.Errorf("Err = %v, want it to wrap context.DeadlineExceeded", d.Err)
	}
	if !strings.Contains(logs.String(), "decision failed") {
		t.Errorf("the failure was not logged: %q", logs.String())
	}
}

func TestEngineCallerCancelDenies(t *testing.T) {
	e := newEngine(t, map[string]string{"p.rego": slow}, policy.Options{Timeout: time.Minute})
	in := &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if d := e.Decide(ctx, in); d.Allow || !errors.Is(d.Err, context.Canceled) {
		t.Errorf("Decide(canceled ctx) = %+v, want a canceled deny", d)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if d := e.Decide(ctx, in); d.Allow || d.Err == nil {
		t.Errorf("Decide(ctx with deadline) = %+v, want a deny with an error", d)
	}
}

func TestEngineLoadKeepsLastGood(t *testing.T) {
	e := newEngine(t, map[string]string{"authz.rego": small}, policy.Options{})
	first := e.Revision()
	if len(first) != 64 {
		t.Fatalf("Revision() = %q, want 64 hex digits", first)
	}
	connect := &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}
	if d := e.Decide(context.Background(), connect); !d.Allow {
		t.Fatalf("positive control: %+v", d)
	}

	bad := []map[string]string{
		{"authz.rego": "package ztgate.authz\nallow if {\n"},               // syntax
		{"authz.rego": "package ztgate.authz\nallow if undefined_fn(1)\n"}, // compile
		{"authz.rego": "package ztgate.authz\nallow if count(1) > 0\n"},    // type
		{"authz.rego": "package other\nallow := true\n"},                   // wrong package
		{"authz.rego": "allow := true\n"},                                  // no package
		{"authz_test.rego": "package ztgate.authz_test\ntest_x if true\n"}, // tests only
		{},
	}
	for i, files := range bad {
		if err := e.Load(mapFS(files)); err == nil {
			t.Errorf("bad policy %d: Load succeeded", i)
		}
		if e.Revision() != first {
			t.Errorf("bad policy %d: revision changed to %s", i, e.Revision())
		}
		if d := e.Decide(context.Background(), connect); !d.Allow || d.Revision != first {
			t.Errorf("bad policy %d: decision %+v, want the last good policy's", i, d)
		}
	}

	// A good policy replaces it.
	if err := e.Load(mapFS(map[string]string{"authz.rego": "package ztgate.authz\nallow := false\n"})); err != nil {
		t.Fatal(err)
	}
	if e.Revision() == first {
		t.Error("revision did not change")
	}
	if d := e.Decide(context.Background(), connect); d.Allow || d.Revision != e.Revision() {
		t.Errorf("after reload: %+v", d)
	}
	// Same content, same revision.
	if err := e.Load(mapFS(map[string]string{"authz.rego": small})); err != nil || e.Revision() != first {
		t.Errorf("reloading the first policy: revision %s, err %v; want %s", e.Revision(), err, first)
	}
}

func TestNewEngineErrors(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"empty":       {},
		"syntax":      {"a.rego": "package ztgate.authz\nallow if {"},
		"v0 syntax":   {"a.rego": "package ztgate.authz\nallow { true }\n"},
		"no package":  {"a.rego": "package ztgate.other\nallow := true\n"},
		"only tests":  {"a_test.rego": "package ztgate.authz\nallow := true\n"},
		"only README": {"README.md": "hi"},
	} {
		if _, err := policy.NewEngine(mapFS(files), policy.Options{Logger: quietLogger()}); err == nil {
			t.Errorf("%s: NewEngine succeeded", name)
		}
	}
}

// Modules load from subdirectories too; tests run but are no part of the
// decisions; hidden files and directories are not policy at all.
func TestEngineLoadsRecursivelyTestsApart(t *testing.T) {
	e := newEngine(t, map[string]string{
		"authz.rego":        "package ztgate.authz\nallow if data.ztgate.lib.ok\nreasons contains \"no\" if not allow\n",
		"lib/lib.rego":      "package ztgate.lib\nok if input.action == \"connect\"\n",
		"lib/lib_test.rego": "package ztgate.lib_test\ntest_ok if data.ztgate.lib.ok with input as {\"action\": \"connect\"}\n",
		// Same package as the policy: seen by the tests, not by decisions.
		"authz_test.rego":     "package ztgate.authz\nreasons contains \"from a test file\" if true\ntest_reason if \"from a test file\" in reasons\n",
		"notes.txt":           "not rego",
		".scratch.rego":       "this is not rego",
		".git/objects/x.rego": "this is not rego",
		"lib/.#lib.rego":      "this is not rego",
	}, policy.Options{})
	if d := e.Decide(context.Background(), &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}); !d.Allow || d.Err != nil {
		t.Errorf("Decide = %+v", d)
	}
	d := e.Decide(context.Background(), &policy.Input{Action: policy.ActionPublish, Subject: subject("a")})
	if d.Allow || strings.Join(d.Reasons, ",") != "no" {
		t.Errorf("Decide(publish) = %+v, want a deny with the policy's reason only", d)
	}
	want := []string{"authz.rego", "authz_test.rego", "lib/lib.rego", "lib/lib_test.rego"}
	if got := e.Status().Modules; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Modules = %q, want %q", got, want)
	}
}

func TestEngineData(t *testing.T) {
	rego := "package ztgate.authz\nallow if input.identity.trust_domain == data.ztgate.config.trust_domain\n"
	in := &policy.Input{Action: policy.ActionConnect, Subject: subject("a")}
	for td, want := range map[string]bool{"example.org": true, "other.org": false} {
		e := newEngine(t, map[string]string{"p.rego": rego}, policy.Options{
			Data: map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": td}}},
		})
		if d := e.Decide(context.Background(), in); d.Allow != want || d.Err != nil {
			t.Errorf("trust domain %s: %+v, want allow %v", td, d, want)
		}
	}
}

func TestDecideJSON(t *testing.T) {
	e := newEngine(t, map[string]string{"authz.rego": small}, policy.Options{})
	ctx := context.Background()
	d, err := e.DecideJSON(ctx, []byte(`{"action": "publish", "topic": "devices/x/telemetry/t"}`))
	if err != nil || !d.Allow || d.Revision != e.Revision() {
		t.Errorf("DecideJSON(allowed) = %+v, %v", d, err)
	}
	d, err = e.DecideJSON(ctx, []byte(`{"action": "publish", "topic": "devices/x/state"}`))
	if err != nil || d.Allow || strings.Join(d.Reasons, ",") != "no topic,not connect" {
		t.Errorf("DecideJSON(denied) = %+v, %v", d, err)
	}
	for _, raw := range []string{``, `{`, `{"action": "connect"} x`, `{"action": "connect"}{}`} {
		if d, err := e.DecideJSON(ctx, []byte(raw)); err == nil || d.Allow || d.Err == nil {
			t.Errorf("DecideJSON(%q) = %+v, %v; want an error", raw, d, err)
		}
	}
	// Not an object: evaluated as is, and nothing matches.
	if d, err := e.DecideJSON(ctx, []byte(`"connect"`)); err != nil || d.Allow {
		t.Errorf("DecideJSON(string) = %+v, %v", d, err)
	}
	// An evaluation error is returned too.
	e2 := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\nallow if to_number(input.x) > 0\n"}, policy.Options{})
	if d, err := e2.DecideJSON(ctx, []byte(`{"x": "y"}`)); err == nil || d.Allow {
		t.Errorf("DecideJSON(eval error) = %+v, %v", d, err)
	}
}

// Decisions run concurrently with each other and with reloads; every decision
// comes from one whole revision. Run with -race.
func TestEngineConcurrent(t *testing.T) {
	allowAll := map[string]string{"p.rego": "package ztgate.authz\nallow := true\n"}
	denyAll := map[string]string{"p.rego": "package ztgate.authz\nallow := false\n"}
	e := newEngine(t, allowAll, policy.Options{})
	allowRev := e.Revision()
	if err := e.Load(mapFS(denyAll)); err != nil {
		t.Fatal(err)
	}
	denyRev := e.Revision()

	s := subject("a") // one subject shared by every goroutine, as a session does
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				in := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/a/telemetry", QoS: byte(i % 3)}
				d := e.Decide(context.Background(), in)
				if d.Err != nil || (d.Allow && d.Revision != allowRev) || (!d.Allow && d.Revision != denyRev) {
					select {
					case errs <- fmt.Sprintf("goroutine %d: inconsistent decision %+v", g, d):
					default:
					}
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 20 {
			files := allowAll
			if i%2 == 1 {
				files = denyAll
			}
			if err := e.Load(mapFS(files)); err != nil {
				errs <- err.Error()
			}
		}
	})
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
