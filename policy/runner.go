package policy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/tester"
)

// TestTimeout bounds each Rego test run by RunTests.
const TestTimeout = 5 * time.Second

// RunTests runs the Rego tests (rules named test_*) of every *.rego file in
// fsys (Rego v1), with the MQTT builtins, the way `opa test` does, and
// writes OPA's report to w: a line per failing test (per test when verbose),
// the failing expression of each failure with its variables (and the full
// trace when verbose), then the PASS/FAIL/ERROR summary. Results are
// reported in file and line order. A test that errors counts as failed;
// builtin errors are errors, as in the engine. err is set when the modules
// do not parse or compile, or when there is no test at all. As in the
// engine, the restricted builtins (RestrictedBuiltins) do not compile.
func RunTests(ctx context.Context, fsys fs.FS, w io.Writer, verbose bool) (passed, failed int, err error) {
	return RunTestsWith(ctx, fsys, w, TestOptions{Verbose: verbose})
}

// TestOptions configure RunTestsWith.
type TestOptions struct {
	// Verbose reports every test, not only failures, and the full trace
	// of each failure.
	Verbose bool
	// AllowBuiltins names the restricted builtins the modules may call,
	// as Options.AllowBuiltins does for an engine.
	AllowBuiltins []string
	// Format is the report's form: FormatPretty (the default when empty)
	// or FormatJSON (see writeJSONReport).
	Format string
	// Coverage adds the lines the tests evaluated and those they did not,
	// per file, as `opa test --coverage` reports them.
	Coverage bool
}

// RunTestsWith is RunTests with opts.
func RunTestsWith(ctx context.Context, fsys fs.FS, w io.Writer, opts TestOptions) (passed, failed int, err error) {
	if err := checkFormat(opts.Format); err != nil {
		return 0, 0, err
	}
	b := defaultBuiltins()
	if len(opts.AllowBuiltins) > 0 {
		if b, err = newBuiltinSet(opts.AllowBuiltins); err != nil {
			return 0, 0, err
		}
	}
	srcs, err := readSources(fsys, true)
	if err != nil {
		return 0, 0, err
	}
	if len(srcs) == 0 {
		return 0, 0, errors.New("policy: no .rego files to test")
	}
	results, cov, err := runForReport(ctx, srcs, b, opts.Coverage)
	if err != nil {
		return 0, 0, err
	}
	passed, failed = countResults(results)
	if err := writeReport(w, results, cov, opts); err != nil {
		return passed, failed, err
	}
	if len(results) == 0 {
		return 0, 0, errNoTests
	}
	return passed, failed, nil
}

var errNoTests = errors.New("policy: no tests found (rules named test_*)")

// runTests parses srcs and runs their tests, at most parallel at a time,
// with the builtins of b and builtin errors raised as in the engine. Tracing
// records the failing expression of each failure for the report; it makes a
// run several times slower. The results are in file and line order.
func runTests(ctx context.Context, srcs []source, b *builtinSet, tracing bool, parallel int) ([]*tester.Result, error) {
	mods, err := parseSources(srcs)
	if err != nil {
		return nil, err
	}
	return runModules(ctx, mods, b, tracing, nil, parallel)
}

// runModules runs the tests of mods as runTests does; a non-nil cov
// records the expressions and rules they evaluate. OPA's runner drops cov
// when tracing, so a caller wants one or the other.
func runModules(ctx context.Context, mods map[string]*ast.Module, b *builtinSet, tracing bool, cov *cover.Cover, parallel int) ([]*tester.Result, error) {
	// The runner's own compiler would have every OPA builtin: tests run at
	// each load and upload, so they get no more than the policy.
	compiler := ast.NewCompiler().
		WithCapabilities(b.caps).
		WithDefaultRegoVersion(ast.RegoV1).
		WithEnablePrintStatements(true)
	runner := tester.NewRunner().
		SetCompiler(compiler).
		SetModules(mods).
		AddCustomBuiltins(testerBuiltins()).
		RaiseBuiltinErrors(true).
		CapturePrintOutput(true).
		EnableTracing(tracing).
		SetParallel(parallel).
		SetTimeout(TestTimeout)
	if cov != nil {
		runner.SetCoverageQueryTracer(cov).SetCoverageRuns([]cover.Kind{cover.KindIndexExcluded, cover.KindEarlyExit})
	}
	ch, err := runner.RunTests(ctx, nil)
	if err != nil {
		if na := b.notAllowed(mods); na != nil {
			return nil, na
		}
		return nil, fmt.Errorf("policy: compile tests: %w", err)
	}

	// Tests run in parallel and finish in any order; report them in source order.
	var results []*tester.Result
	for r := range ch {
		results = append(results, r)
	}
	// The runner skips the tests it has not started when ctx ends, so a run
	// cut short looks like a shorter passing run: say so instead.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("policy: tests did not finish: %w", err)
	}
	slices.SortFunc(results, func(a, b *tester.Result) int {
		if a.Location == nil || b.Location == nil {
			return cmp.Compare(a.Name, b.Name)
		}
		return cmp.Or(cmp.Compare(a.Location.File, b.Location.File), cmp.Compare(a.Location.Row, b.Location.Row))
	})
	return results, nil
}

// countResults counts passed and failed tests; a test that errors fails,
// a skipped one counts as neither.
func countResults(results []*tester.Result) (passed, failed int) {
	for _, r := range results {
		switch {
		case r.Skip:
		case r.Pass():
			passed++
		default:
			failed++
		}
	}
	return passed, failed
}

// report writes OPA's report of results to w.
func report(w io.Writer, results []*tester.Result, verbose bool) error {
	sorted := make(chan *tester.Result, len(results))
	for _, r := range results {
		sorted <- r
	}
	close(sorted)
	rep := tester.PrettyReporter{Output: w, Verbose: verbose, FailureLine: true, LocalVars: true}
	if err := rep.Report(sorted); err != nil {
		return fmt.Errorf("policy: report: %w", err)
	}
	return nil
}
