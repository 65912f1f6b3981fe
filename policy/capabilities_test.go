package policy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// listener is a loopback HTTP server that counts the requests it gets: what
// a policy that reaches the network would touch.
func listener(t *testing.T) (url string, hits *atomic.Int64) {
	t.Helper()
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"type": "object"}`))
	}))
	t.Cleanup(srv.Close)
	return srv.URL, hits
}

// networkModules are policies and tests that would reach url when compiled
// and run: a policy module, a test module (run at every load and upload),
// a JSON schema $ref, and a DNS lookup. builtin is what the refusal names.
func networkModules(url string) []struct{ name, builtin, file, src string } {
	send := fmt.Sprintf(`http.send({"method": "GET", "url": %q}).status_code == 200`, url+"/policy")
	return []struct{ name, builtin, file, src string }{
		{"http.send in the policy", "http.send", "net.rego",
			"package ztgate.authz\n\nallow if " + send + "\n"},
		{"http.send in a test", "http.send", "net_test.rego",
			"package ztgate.net_test\n\ntest_reaches_out if " + send + "\n"},
		{"http.send in a function", "http.send", "fn.rego",
			"package ztgate.authz\n\nprobe(u) := http.send({\"method\": \"GET\", \"url\": u})\n\nallow if probe(\"" + url + "/fn\").status_code == 200\n"},
		{"json schema $ref", "json.match_schema", "schema_test.rego",
			fmt.Sprintf("package ztgate.schema_test\n\ntest_schema if json.match_schema({}, {\"$ref\": %q})[0]\n", url+"/schema.json")},
		{"net.lookup_ip_addr", "net.lookup_ip_addr", "dns.rego",
			"package ztgate.authz\n\nallow if count(net.lookup_ip_addr(\"localhost\")) > 0\n"},
	}
}

// A module that can reach the network is refused wherever policy is
// compiled: at load (NewEngine, Load), at upload (PutModule, the lifecycle
// gate behind PUT /v1/policy/modules/NAME) and by the test runner behind
// `ztgate policy test`. The refusal names the builtin, and nothing is sent.
func TestNetworkBuiltinsRefused(t *testing.T) {
	url, hits := listener(t)
	for _, m := range networkModules(url) {
		t.Run(m.name, func(t *testing.T) {
			files := with(baseFiles(), m.file, m.src)
			check := func(where string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s: accepted", where)
				}
				if !strings.Contains(err.Error(), m.builtin) || !strings.Contains(err.Error(), "not allowed") {
					t.Errorf("%s: error %q does not say that %s is not allowed", where, err, m.builtin)
				}
			}

			_, err := policy.NewEngine(mapFS(files), policy.Options{Logger: quietLogger()})
			check("NewEngine", err)

			e, _ := dirEngine(t, baseFiles())
			rev := e.Revision()
			err = e.PutModule(m.file, []byte(m.src))
			check("PutModule", err)
			if !errors.Is(err, policy.ErrPolicyRejected) {
				t.Errorf("PutModule: %v does not wrap ErrPolicyRejected", err)
			}
			if e.Revision() != rev {
				t.Error("PutModule: the revision changed")
			}
			check("Load", e.Load(mapFS(files)))

			_, _, err = policy.RunTests(context.Background(), mapFS(files), &bytes.Buffer{}, false)
			check("RunTests", err)
		})
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback server got %d requests from policies that should not compile", n)
	}
}

// Builtins whose result is not a function of their arguments are refused
// by default as well: the clock, randomness, the gateway's environment.
func TestNondeterministicBuiltinsRefused(t *testing.T) {
	for _, tt := range []struct{ builtin, expr string }{
		{"time.now_ns", `time.now_ns() > 0`},
		{"rand.intn", `rand.intn("x", 10) >= 0`},
		{"uuid.rfc4122", `uuid.rfc4122("x") != ""`},
		{"opa.runtime", `opa.runtime().env.HOME != ""`},
		{"io.jwt.decode_verify", `io.jwt.decode_verify("x.y.z", {"secret": "s"})[0]`},
	} {
		t.Run(tt.builtin, func(t *testing.T) {
			_, err := policy.NewEngine(mapFS(map[string]string{"p.rego": "package ztgate.authz\n\nallow if " + tt.expr + "\n"}), policy.Options{Logger: quietLogger()})
			if err == nil || !strings.Contains(err.Error(), tt.builtin) {
				t.Fatalf("NewEngine = %v, want a refusal naming %s", err, tt.builtin)
			}
		})
	}
}

// Positive control: the default policy, and the pure builtins a policy
// needs (CIDR matching, certificates, the MQTT builtins), still compile and
// pass their tests.
func TestPureBuiltinsAllowed(t *testing.T) {
	if _, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: quietLogger()}); err != nil {
		t.Fatalf("default policy: %v", err)
	}
	files := map[string]string{
		"p.rego": `package ztgate.authz

allow if {
	net.cidr_contains("127.0.0.0/8", "127.0.0.1")
	mqtt.topic_matches("a/#", input.topic)
	time.parse_rfc3339_ns(input.time) > 0
}
`,
		"p_test.rego": `package ztgate.p_test

test_allow if data.ztgate.authz.allow with input as {"topic": "a/b", "time": "2026-11-28T12:00:00Z"}

test_trace if trace("pure")
`,
	}
	if _, err := policy.NewEngine(mapFS(files), policy.Options{Logger: quietLogger()}); err != nil {
		t.Fatalf("pure builtins: %v", err)
	}
	if passed, failed, err := policy.RunTests(context.Background(), mapFS(files), &bytes.Buffer{}, false); err != nil || passed != 2 || failed != 0 {
		t.Fatalf("RunTests = %d passed, %d failed, %v", passed, failed, err)
	}
}

// AllowBuiltins re-admits a restricted builtin, in the policy and in its
// tests (which then reach the listener: the control that the listener
// would see a policy's request). Names that are not restricted builtins
// are refused.
func TestAllowBuiltins(t *testing.T) {
	url, hits := listener(t)
	mods := networkModules(url)
	allow := policy.Options{Logger: quietLogger(), AllowBuiltins: []string{"http.send"}}
	for _, m := range mods[:3] {
		// The first and third allow what the base tests deny: their
		// tests fail, but they compile.
		if _, err := policy.NewEngine(mapFS(with(baseFiles(), m.file, m.src)), allow); errors.Is(err, policy.ErrBuiltinNotAllowed) {
			t.Errorf("%s with http.send allowed: %v", m.name, err)
		}
	}
	if hits.Load() == 0 {
		t.Fatal("the allowed http.send in a test reached nothing: the refusal tests prove nothing")
	}
	passed, failed, err := policy.RunTestsWith(context.Background(), mapFS(with(baseFiles(), mods[1].file, mods[1].src)), &bytes.Buffer{},
		policy.TestOptions{AllowBuiltins: []string{"http.send"}})
	if err != nil || failed != 0 || passed != 4 {
		t.Errorf("RunTestsWith(http.send allowed) = %d passed, %d failed, %v", passed, failed, err)
	}
	// Allowing one builtin allows no other.
	if _, err := policy.NewEngine(mapFS(with(baseFiles(), mods[4].file, mods[4].src)), allow); !errors.Is(err, policy.ErrBuiltinNotAllowed) {
		t.Errorf("net.lookup_ip_addr with only http.send allowed: %v", err)
	}

	for _, bad := range [][]string{{"http.sned"}, {"count"}, {"mqtt.topic_matches"}, {"http.send", ""}} {
		if _, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: quietLogger(), AllowBuiltins: bad}); err == nil || !strings.HasPrefix(err.Error(), "policy: ") {
			t.Errorf("AllowBuiltins %q: %v, want an error", bad, err)
		}
		if err := policy.CheckAllowBuiltins(bad); err == nil {
			t.Errorf("CheckAllowBuiltins(%q) passed", bad)
		}
	}
	if err := policy.CheckAllowBuiltins(policy.RestrictedBuiltins()); err != nil {
		t.Errorf("CheckAllowBuiltins(RestrictedBuiltins()) = %v", err)
	}
	for _, name := range []string{"http.send", "net.lookup_ip_addr", "opa.runtime", "time.now_ns", "rand.intn", "uuid.rfc4122", "json.match_schema"} {
		if !slices.Contains(policy.RestrictedBuiltins(), name) {
			t.Errorf("%s is not restricted", name)
		}
	}
}

// Tests that passed with a builtin allowed do not let the same files past
// an engine that does not allow it: a pass is remembered per builtin set.
func TestTestPassIsPerBuiltinSet(t *testing.T) {
	url, hits := listener(t)
	m := networkModules(url)[1] // http.send in a test only
	files := with(baseFiles(), m.file, m.src)
	if _, err := policy.NewEngine(mapFS(files), policy.Options{Logger: quietLogger(), AllowBuiltins: []string{"http.send"}}); err != nil {
		t.Fatal(err)
	}
	before := hits.Load()
	if _, err := policy.NewEngine(mapFS(files), policy.Options{Logger: quietLogger()}); !errors.Is(err, policy.ErrBuiltinNotAllowed) {
		t.Fatalf("the same files without http.send allowed: %v", err)
	}
	if hits.Load() != before {
		t.Fatal("the refused engine sent a request")
	}
}
