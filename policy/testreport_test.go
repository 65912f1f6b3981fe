package policy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/ztgate/ztgate/policy"
)

// covPolicy has three rules on lines 3, 5 and 7; its tests evaluate the
// first two, so two of its three lines are covered.
const covPolicy = `package ztgate.cov

a if input.x == 1

b if mqtt.topic_matches("s/+", input.topic)

c if input.z == 3
`

const covTests = `package ztgate.cov_test

import data.ztgate.cov

test_a if cov.a with input as {"x": 1}

test_b if cov.b with input as {"topic": "s/1"}
`

// failTests has one passing and one failing test, the failure on line 7,
// and one that errors (a non-string topic is an error, not false).
const failTests = `package ztgate.cov_test

import data.ztgate.cov

test_a if cov.a with input as {"x": 1}

test_b_fails if {
	cov.b with input as {"topic": "other/1"}
}

test_errors if mqtt.topic_matches("s/+", input.t) with input as {"t": 42}
`

// jsonResult is the part of a result of --format json the tests read.
type jsonResult struct {
	Location struct {
		File string `json:"file"`
		Row  int    `json:"row"`
	} `json:"location"`
	Package  string `json:"package"`
	Name     string `json:"name"`
	Result   string `json:"result"`
	Fail     bool   `json:"fail"`
	Duration *int64 `json:"duration"`
	Error    *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Failure *struct {
		Location struct {
			File string `json:"file"`
			Row  int    `json:"row"`
		} `json:"location"`
		Expr string `json:"expr"`
	} `json:"failure"`
}

func runReport(t *testing.T, files map[string]string, opts policy.TestOptions) (out string, passed, failed int, err error) {
	t.Helper()
	var buf bytes.Buffer
	passed, failed, err = policy.RunTestsWith(context.Background(), mapFS(files), &buf, opts)
	return buf.String(), passed, failed, err
}

func TestRunTestsJSON(t *testing.T) {
	out, passed, failed, err := runReport(t, map[string]string{"p.rego": covPolicy, "p_test.rego": failTests},
		policy.TestOptions{Format: policy.FormatJSON})
	if err != nil || passed != 1 || failed != 2 {
		t.Fatalf("RunTestsWith = %d passed, %d failed, %v", passed, failed, err)
	}
	var results []jsonResult
	if err := json.Unmarshal([]byte(out), &results); err != nil {
		t.Fatalf("output is not a JSON array of results: %v\n%s", err, out)
	}
	if len(results) != 3 {
		t.Fatalf("%d results, want 3:\n%s", len(results), out)
	}
	pass, fail, errd := results[0], results[1], results[2]
	if pass.Name != "test_a" || pass.Result != "pass" || pass.Fail || pass.Error != nil || pass.Failure != nil {
		t.Errorf("passing test: %+v", pass)
	}
	if pass.Package != "data.ztgate.cov_test" || pass.Location.File != "p_test.rego" || pass.Location.Row != 5 || pass.Duration == nil {
		t.Errorf("passing test: package %q, location %+v, duration %v", pass.Package, pass.Location, pass.Duration)
	}
	if fail.Name != "test_b_fails" || fail.Result != "fail" || !fail.Fail || fail.Error != nil {
		t.Errorf("failing test: %+v", fail)
	}
	if fail.Failure == nil || fail.Failure.Location.File != "p_test.rego" || fail.Failure.Location.Row != 8 || !strings.Contains(fail.Failure.Expr, "cov.b") {
		t.Errorf("failing test: failure %+v, want p_test.rego:8 with the failing expression", fail.Failure)
	}
	if errd.Name != "test_errors" || errd.Result != "error" || errd.Error == nil || !strings.Contains(errd.Error.Message, "operand 2 must be string") {
		t.Errorf("erroring test: %+v", errd)
	}

	// The shape is opa test --format json's: OPA's own type reads it back.
	var opa []*tester.Result
	if err := json.Unmarshal([]byte(out), &opa); err != nil {
		t.Fatalf("tester.Result does not read the output: %v", err)
	}
	if opa[0].Package != "data.ztgate.cov_test" || opa[0].Name != "test_a" || !opa[0].Pass() || opa[0].Location.Row != 5 {
		t.Errorf("read back as tester.Result: %+v", opa[0])
	}
	if !opa[1].Fail || opa[2].Error == nil || opa[2].Pass() {
		t.Errorf("read back as tester.Result: fail %v, error %v", opa[1].Fail, opa[2].Error)
	}
}

// jsonCoverage is the output of --format json --coverage.
type jsonCoverage struct {
	Tests    []jsonResult `json:"tests"`
	Coverage cover.Report `json:"coverage"`
}

func TestRunTestsCoverage(t *testing.T) {
	files := map[string]string{"p.rego": covPolicy, "p_test.rego": covTests}
	out, passed, failed, err := runReport(t, files, policy.TestOptions{Format: policy.FormatJSON, Coverage: true})
	if err != nil || passed != 2 || failed != 0 {
		t.Fatalf("RunTestsWith = %d passed, %d failed, %v", passed, failed, err)
	}
	var rep jsonCoverage
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not {tests, coverage}: %v\n%s", err, out)
	}
	if len(rep.Tests) != 2 || rep.Tests[0].Result != "pass" {
		t.Errorf("tests: %+v", rep.Tests)
	}
	p := rep.Coverage.Files["p.rego"]
	if p == nil {
		t.Fatalf("no coverage of p.rego:\n%s", out)
	}
	if p.CoveredLines != 2 || p.NotCoveredLines != 1 || math.Abs(p.Coverage-200.0/3) > 1e-9 {
		t.Errorf("p.rego: %d covered, %d not covered, %.4f%%; want 2, 1, 66.67%%", p.CoveredLines, p.NotCoveredLines, p.Coverage)
	}
	for _, r := range p.NotCovered {
		if r.Start.Row != 7 || r.End.Row != 7 {
			t.Errorf("p.rego not covered %+v, want line 7 only", p.NotCovered)
		}
	}
	if !rep.Coverage.IsCovered("p.rego", 3) || !rep.Coverage.IsCovered("p.rego", 5) {
		t.Error("lines 3 and 5 of p.rego not covered")
	}
	// As opa test --coverage, the test files are reported too, and the
	// total is over every file.
	if tf := rep.Coverage.Files["p_test.rego"]; tf == nil || tf.NotCoveredLines != 0 || tf.CoveredLines == 0 {
		t.Errorf("p_test.rego: %+v", tf)
	}
	total := rep.Coverage.CoveredLines + rep.Coverage.NotCoveredLines
	if rep.Coverage.NotCoveredLines != 1 || total == 0 || math.Abs(rep.Coverage.Coverage-100*float64(rep.Coverage.CoveredLines)/float64(total)) > 1e-9 {
		t.Errorf("total: %+v", rep.Coverage)
	}

	// Pretty: OPA's test report, then a table per file.
	out, _, _, err = runReport(t, files, policy.TestOptions{Coverage: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PASS: 2/2", "p.rego", "66.67%", "7", "p_test.rego", "100.00%", "total"} {
		if !strings.Contains(out, want) {
			t.Errorf("pretty coverage report lacks %q:\n%s", want, out)
		}
	}
	if !tableRow(out, "p.rego", "2", "1", "66.67%", "7") {
		t.Errorf("no row `p.rego 2 1 66.67%% 7`:\n%s", out)
	}
}

// tableRow reports whether out has a line whose fields are fields.
func tableRow(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

// Coverage with failing tests: the failures are still reported with their
// failing expression (coverage runs untraced), and the coverage follows.
func TestRunTestsCoverageWithFailures(t *testing.T) {
	files := map[string]string{"p.rego": covPolicy, "p_test.rego": failTests}
	out, passed, failed, err := runReport(t, files, policy.TestOptions{Format: policy.FormatJSON, Coverage: true})
	if err != nil || passed != 1 || failed != 2 {
		t.Fatalf("RunTestsWith = %d passed, %d failed, %v", passed, failed, err)
	}
	var rep jsonCoverage
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rep.Tests) != 3 || rep.Tests[1].Failure == nil || rep.Tests[1].Failure.Location.Row != 8 {
		t.Errorf("tests: %+v", rep.Tests)
	}
	if rep.Coverage.Files["p.rego"] == nil {
		t.Errorf("no coverage of p.rego:\n%s", out)
	}

	out, _, _, err = runReport(t, files, policy.TestOptions{Coverage: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FAIL: 1/3", "ERROR: 1/3", "p_test.rego:8", "p.rego", "total"} {
		if !strings.Contains(out, want) {
			t.Errorf("pretty report lacks %q:\n%s", want, out)
		}
	}
}

func TestRunTestsBadFormat(t *testing.T) {
	for _, f := range []string{"xml", "JSON", " json"} {
		_, _, _, err := runReport(t, map[string]string{"p.rego": covPolicy, "p_test.rego": covTests}, policy.TestOptions{Format: f})
		if err == nil || !strings.HasPrefix(err.Error(), "policy: ") || !strings.Contains(err.Error(), "pretty") {
			t.Errorf("format %q: %v, want an error listing the formats", f, err)
		}
	}
	// Control: the two formats, and the zero value (pretty).
	for _, f := range []string{"", policy.FormatPretty, policy.FormatJSON} {
		if _, _, _, err := runReport(t, map[string]string{"p.rego": covPolicy, "p_test.rego": covTests}, policy.TestOptions{Format: f}); err != nil {
			t.Errorf("format %q: %v", f, err)
		}
	}
}
