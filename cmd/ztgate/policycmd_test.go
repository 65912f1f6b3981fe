package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// `ztgate policy test` compiles a policy as the gateway does: a test that
// would reach the network (here a loopback server that counts requests) is
// refused with an error naming the builtin, and sends nothing, unless
// --allow-builtin names it.
func TestPolicyTestRefusesNetworkBuiltins(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.rego"), "package ztgate.authz\n\ndefault allow := false\n")
	writeFile(t, filepath.Join(dir, "p_test.rego"), fmt.Sprintf(
		"package ztgate.authz_test\n\ntest_reaches_out if http.send({\"method\": \"GET\", \"url\": %q}).status_code == 200\n", srv.URL))
	failsWith(t, "builtin http.send is not allowed", "policy", "test", dir)

	dns := t.TempDir()
	writeFile(t, filepath.Join(dns, "p.rego"), "package ztgate.authz\n\nallow if count(net.lookup_ip_addr(\"localhost\")) > 0\n")
	writeFile(t, filepath.Join(dns, "p_test.rego"), "package ztgate.authz_test\n\ntest_a if data.ztgate.authz.allow\n")
	failsWith(t, "builtin net.lookup_ip_addr is not allowed", "policy", "test", dns)
	failsWith(t, "builtin net.lookup_ip_addr is not allowed", "policy", "eval", "--input", "-", "--policy-dir", dns)
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback server got %d requests from a refused policy", n)
	}

	// Control: allowed, the same test runs, and does reach the server.
	if out := ok(t, "policy", "test", "--allow-builtin", "http.send", dir); !strings.Contains(out, "PASS: 1/1") {
		t.Errorf("policy test --allow-builtin http.send:\n%s", out)
	}
	if hits.Load() == 0 {
		t.Fatal("the allowed http.send reached nothing: the refusal above proves nothing")
	}
	failsWith(t, "not a builtin", "policy", "test", "--allow-builtin", "http.sned", dir)
}

// covPolicyFiles writes a policy of three rules (lines 3, 5, 7) whose
// tests evaluate the first two, and, when failing, a test that fails.
func covPolicyFiles(t *testing.T, failing bool) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.rego"), "package ztgate.cov\n\na if input.x == 1\n\nb if mqtt.topic_matches(\"s/+\", input.topic)\n\nc if input.z == 3\n")
	tests := "package ztgate.cov_test\n\nimport data.ztgate.cov\n\ntest_a if cov.a with input as {\"x\": 1}\n\ntest_b if cov.b with input as {\"topic\": \"s/1\"}\n"
	if failing {
		tests += "\ntest_c if cov.c with input as {\"z\": 4}\n"
	}
	writeFile(t, filepath.Join(dir, "p_test.rego"), tests)
	return dir
}

type testJSON struct {
	Package  string `json:"package"`
	Name     string `json:"name"`
	Result   string `json:"result"`
	Fail     bool   `json:"fail"`
	Duration *int64 `json:"duration"`
	Location struct {
		File string `json:"file"`
		Row  int    `json:"row"`
	} `json:"location"`
	Failure *struct {
		Location struct {
			File string `json:"file"`
			Row  int    `json:"row"`
		} `json:"location"`
	} `json:"failure"`
}

func TestPolicyTestFormatJSON(t *testing.T) {
	// Passing module: exit 0, a JSON array with a result per test.
	var results []testJSON
	if err := json.Unmarshal([]byte(ok(t, "policy", "test", "--format", "json", covPolicyFiles(t, false))), &results); err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || results[0].Name != "test_a" || results[0].Result != "pass" || results[0].Package != "data.ztgate.cov_test" ||
		results[0].Duration == nil || results[0].Location.File != "p_test.rego" || results[0].Location.Row != 5 {
		t.Fatalf("results: %+v", results)
	}

	// Failing module: exit 1 with the one-line summary on stderr, the JSON
	// (with the failing test and where it failed) on stdout.
	args := []string{"policy", "test", "--format", "json", covPolicyFiles(t, true)}
	r := ztgate(t, nil, "", args...)
	assertOneLineError(t, r, "1 of 3 tests failed", args)
	results = nil
	if err := json.Unmarshal([]byte(r.stdout), &results); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	if len(results) != 3 || results[2].Name != "test_c" || results[2].Result != "fail" || !results[2].Fail ||
		results[2].Failure == nil || results[2].Failure.Location.Row != 9 {
		t.Fatalf("results: %+v", results)
	}
	if results[0].Result != "pass" || results[1].Result != "pass" {
		t.Errorf("the passing tests: %+v", results[:2])
	}
}

func TestPolicyTestCoverage(t *testing.T) {
	dir := covPolicyFiles(t, false)
	out := ok(t, "policy", "test", "--coverage", dir)
	if !strings.Contains(out, "PASS: 2/2") {
		t.Errorf("no test report:\n%s", out)
	}
	found := false
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == "p.rego 2 1 66.67% 7" {
			found = true
		}
	}
	if !found {
		t.Errorf("no coverage row `p.rego 2 1 66.67%% 7`:\n%s", out)
	}

	var rep struct {
		Tests    []testJSON `json:"tests"`
		Coverage struct {
			Files map[string]struct {
				CoveredLines    int     `json:"covered_lines"`
				NotCoveredLines int     `json:"not_covered_lines"`
				Coverage        float64 `json:"coverage"`
			} `json:"files"`
			Coverage float64 `json:"coverage"`
		} `json:"coverage"`
	}
	if err := json.Unmarshal([]byte(ok(t, "policy", "test", "--coverage", "--format", "json", dir)), &rep); err != nil {
		t.Fatal(err)
	}
	p := rep.Coverage.Files["p.rego"]
	if len(rep.Tests) != 2 || p.CoveredLines != 2 || p.NotCoveredLines != 1 || math.Abs(p.Coverage-200.0/3) > 1e-9 {
		t.Fatalf("coverage: %+v, tests %+v", rep.Coverage, rep.Tests)
	}

	// The default policy's tests cover it.
	if out := ok(t, "policy", "test", "--coverage", policyDir); !strings.Contains(out, "authz.rego") {
		t.Errorf("default policy coverage:\n%s", out)
	}

	// With a failing test: still the report and the coverage, exit 1.
	args := []string{"policy", "test", "--coverage", covPolicyFiles(t, true)}
	r := ztgate(t, nil, "", args...)
	assertOneLineError(t, r, "1 of 3 tests failed", args)
	if !strings.Contains(r.stdout, "test_c") || !strings.Contains(r.stdout, "p_test.rego:9") || !strings.Contains(r.stdout, "p.rego") {
		t.Errorf("report:\n%s", r.stdout)
	}
}

// An unknown --format is a usage error like an unknown flag: one line
// naming the value and the formats, the exit code of a usage error, and
// no test is run.
func TestPolicyTestBadFormat(t *testing.T) {
	dir := covPolicyFiles(t, false)
	unknownFlag := ztgate(t, nil, "", "policy", "test", "--nope", dir)
	for _, f := range []string{"xml", "JSON", ""} {
		args := []string{"policy", "test", "--format", f, dir}
		r := ztgate(t, nil, "", args...)
		if r.code == 0 || r.code != unknownFlag.code {
			t.Errorf("--format %q: exit %d, want %d as for an unknown flag", f, r.code, unknownFlag.code)
		}
		if strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, fmt.Sprintf("%q", f)) || !strings.Contains(r.stderr, "pretty or json") {
			t.Errorf("--format %q: stderr %q", f, r.stderr)
		}
		if r.stdout != "" {
			t.Errorf("--format %q: stdout %q", f, r.stdout)
		}
	}
	// Control: both formats are accepted, in either flag position.
	ok(t, "policy", "test", "--format", "pretty", dir)
	ok(t, "policy", "test", dir, "--format=json")
}

// `ztgate policy capabilities` prints the committed policy/capabilities.json.
func TestPolicyCapabilities(t *testing.T) {
	want, err := os.ReadFile("../../policy/capabilities.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := ok(t, "policy", "capabilities"); got != string(want) {
		t.Fatal("ztgate policy capabilities differs from policy/capabilities.json")
	}
	withSend := ok(t, "policy", "capabilities", "--allow-builtin", "http.send")
	if !strings.Contains(withSend, `"name": "http.send"`) || strings.Contains(string(want), `"name": "http.send"`) {
		t.Error("--allow-builtin http.send does not add http.send, or the default has it")
	}
	failsWith(t, "not a builtin", "policy", "capabilities", "--allow-builtin", "http.sned")
	// An argument is a usage error, as an unknown flag is.
	extra := ztgate(t, nil, "", "policy", "capabilities", "extra")
	if unknownFlag := ztgate(t, nil, "", "policy", "capabilities", "--nope"); extra.code == 0 || extra.code != unknownFlag.code ||
		!strings.Contains(extra.stderr, `unknown command "extra"`) || strings.Count(extra.stderr, "\n") != 1 || extra.stdout != "" {
		t.Errorf("policy capabilities extra: exit %d (an unknown flag: %d), stderr %q, stdout %d bytes", extra.code, unknownFlag.code, extra.stderr, len(extra.stdout))
	}
}
