package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// The report formats of RunTestsWith.
const (
	// FormatPretty is `opa test`'s text report.
	FormatPretty = "pretty"
	// FormatJSON is a JSON array of results shaped as `opa test --format
	// json` writes them, or with coverage {"tests": [...], "coverage": ...}.
	FormatJSON = "json"
)

func checkFormat(f string) error {
	switch f {
	case "", FormatPretty, FormatJSON:
		return nil
	}
	return fmt.Errorf("policy: unknown test report format %q (want %s or %s)", f, FormatPretty, FormatJSON)
}

// runForReport runs the tests of srcs for RunTestsWith. Traced, so that the
// report shows each failing expression; with coverage, untraced under OPA's
// coverage tracer (its runner keeps one or the other), then again traced
// only when a test fails, as the lifecycle gate does.
func runForReport(ctx context.Context, srcs []source, b *builtinSet, coverage bool) ([]*tester.Result, *cover.Report, error) {
	if !coverage {
		results, err := runTests(ctx, srcs, b, true, runtime.NumCPU())
		return results, nil, err
	}
	mods, err := parseSources(srcs)
	if err != nil {
		return nil, nil, err
	}
	cov := cover.New()
	results, err := runModules(ctx, mods, b, false, cov, runtime.NumCPU())
	if err != nil {
		return nil, nil, err
	}
	rep := cov.Report(mods)
	if _, failed := countResults(results); failed > 0 {
		if results, err = runTests(ctx, srcs, b, true, runtime.NumCPU()); err != nil {
			return nil, nil, err
		}
	}
	return results, &rep, nil
}

// writeReport writes the report of results (and cov when not nil) to w in
// opts.Format.
func writeReport(w io.Writer, results []*tester.Result, cov *cover.Report, opts TestOptions) error {
	if opts.Format == FormatJSON {
		return writeJSONReport(w, results, cov)
	}
	if err := report(w, results, opts.Verbose); err != nil {
		return err
	}
	if cov != nil {
		return writeCoverageTable(w, cov)
	}
	return nil
}

// jsonResult is a test result as `opa test --format json` writes it (the
// JSON of tester.Result, which reads it back), without the trace, plus
// result, which says pass, fail, error or skip without inferring it from
// absent keys, and failure, the expression that failed.
type jsonResult struct {
	Location   *ast.Location       `json:"location"`
	Package    string              `json:"package"`
	Name       string              `json:"name"`
	Result     string              `json:"result"`
	Fail       bool                `json:"fail,omitempty"`
	Error      *jsonError          `json:"error,omitempty"`
	Skip       bool                `json:"skip,omitempty"`
	Duration   time.Duration       `json:"duration"`
	Output     []byte              `json:"output,omitempty"`
	SubResults tester.SubResultMap `json:"sub_results,omitempty"`
	Failure    *jsonFailure        `json:"failure,omitempty"`
}

// jsonError is a test's error as OPA writes a *topdown.Error. OPA writes
// other errors as {}; the message at least is kept here.
type jsonError struct {
	Code     string        `json:"code,omitempty"`
	Message  string        `json:"message"`
	Location *ast.Location `json:"location,omitempty"`
}

// jsonFailure is the expression a failing test stopped at: what the pretty
// report prints under the test's name.
type jsonFailure struct {
	Location *ast.Location `json:"location"`
	Expr     string        `json:"expr"`
}

func writeJSONReport(w io.Writer, results []*tester.Result, cov *cover.Report) error {
	out := make([]jsonResult, len(results))
	for i, r := range results {
		out[i] = toJSONResult(r)
	}
	var doc any = out
	if cov != nil {
		doc = struct {
			Tests    []jsonResult  `json:"tests"`
			Coverage *cover.Report `json:"coverage"`
		}{out, cov}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("policy: report: %w", err)
	}
	return nil
}

func toJSONResult(r *tester.Result) jsonResult {
	j := jsonResult{
		Location: r.Location, Package: r.Package, Name: r.Name,
		Fail: r.Fail, Skip: r.Skip, Duration: r.Duration,
		Output: r.Output, SubResults: r.SubResults,
	}
	switch {
	case r.Skip:
		j.Result = "skip"
	case r.Error != nil:
		j.Result = "error"
		j.Error = &jsonError{Message: r.Error.Error()}
		var te *topdown.Error
		if errors.As(r.Error, &te) {
			j.Error = &jsonError{Code: te.Code, Message: te.Message, Location: te.Location}
		}
	case r.Fail:
		j.Result = "fail"
		j.Failure = failedExpr(r.Trace)
	default:
		j.Result = "pass"
	}
	return j
}

// failedExpr finds in trace the expression the test failed at, as OPA's
// pretty reporter does: the last failure of a query that is not the test's
// own, skipping `every` (whose failing body expression comes later).
func failedExpr(trace []*topdown.Event) *jsonFailure {
	for _, e := range slices.Backward(trace) {
		if e.Op != topdown.FailOp || e.Location == nil || e.QueryID == 0 {
			continue
		}
		if expr, ok := e.Node.(*ast.Expr); ok {
			if _, isEvery := expr.Terms.(*ast.Every); isEvery {
				continue
			}
		}
		text := string(e.Location.Text)
		if text == "" && e.Node != nil {
			text = e.Node.String()
		}
		return &jsonFailure{Location: &ast.Location{File: e.Location.File, Row: e.Location.Row, Col: e.Location.Col}, Expr: text}
	}
	return nil
}

// writeCoverageTable writes cov as a table, a row per file in name order
// then the total, each with the lines not covered, e.g. "7, 12-14".
func writeCoverageTable(w io.Writer, cov *cover.Report) error {
	files := make([]string, 0, len(cov.Files))
	for name := range cov.Files {
		files = append(files, name)
	}
	slices.Sort(files)
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "COVERAGE\tCOVERED\tNOT COVERED\tPERCENT\tLINES NOT COVERED")
	for _, name := range files {
		fr := cov.Files[name]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", name, fr.CoveredLines, fr.NotCoveredLines,
			percent(fr.CoveredLines, fr.NotCoveredLines, fr.Coverage), lineRanges(fr.NotCovered))
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%s\n", cov.CoveredLines, cov.NotCoveredLines,
		percent(cov.CoveredLines, cov.NotCoveredLines, cov.Coverage))
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("policy: report: %w", err)
	}
	// tabwriter pads a cell before an empty last one.
	var out bytes.Buffer
	for line := range strings.Lines(buf.String()) {
		out.WriteString(strings.TrimRight(line, " \n"))
		out.WriteByte('\n')
	}
	if _, err := w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("policy: report: %w", err)
	}
	return nil
}

// percent formats a coverage; a file with no line to cover (only a package
// and imports) has none, not 0%.
func percent(covered, notCovered int, pct float64) string {
	if covered+notCovered == 0 {
		return "-"
	}
	return strconv.FormatFloat(pct, 'f', 2, 64) + "%"
}

// lineRanges lists the rows of ranges, merging those that touch.
func lineRanges(ranges []cover.Range) string {
	var spans [][2]int
	for _, r := range ranges {
		if n := len(spans); n > 0 && r.Start.Row <= spans[n-1][1]+1 {
			spans[n-1][1] = max(spans[n-1][1], r.End.Row)
			continue
		}
		spans = append(spans, [2]int{r.Start.Row, r.End.Row})
	}
	parts := make([]string, len(spans))
	for i, s := range spans {
		parts[i] = strconv.Itoa(s[0])
		if s[1] > s[0] {
			parts[i] += "-" + strconv.Itoa(s[1])
		}
	}
	return strings.Join(parts, ", ")
}
