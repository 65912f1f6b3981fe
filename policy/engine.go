package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/open-policy-agent/opa/v1/util"
)

// Query is the policy package the engine decides with: its allow rule is the
// decision and its reasons rule explains a deny.
const Query = "data.ztgate.authz"

// The two queries prepared per revision. allow is evaluated for every
// decision, reasons only for a deny.
const (
	allowQuery   = Query + ".allow"
	reasonsQuery = Query + ".reasons"
)

// DefaultTimeout bounds one evaluation when Options.Timeout is zero. A
// decision normally takes tens of microseconds; the bound is there to stop a
// runaway policy, and is wide enough that a loaded machine does not turn
// allowed requests into timeouts.
const DefaultTimeout = 500 * time.Millisecond

// Options configure an Engine.
type Options struct {
	// Timeout bounds one evaluation (in addition to the caller's context
	// deadline). Zero means DefaultTimeout. A decision that runs out of time
	// is a deny.
	Timeout time.Duration

	// Logger receives evaluation failures (warn), revision changes (info,
	// warn when refused) and, when debug is enabled, every decision. Nil
	// means slog.Default().
	Logger *slog.Logger

	// Data is the base document the policy reads under data, for example
	// {"ztgate": {"config": {"trust_domain": "example.org"}}}. It must not
	// overlap the policy's own package. Rego tests do not see it: they run
	// as `ztgate policy test` runs them.
	Data map[string]any

	// AllowBuiltins names the restricted builtins (RestrictedBuiltins:
	// network, environment, clock, randomness) the policy and its tests
	// may call. Empty: none. A name that is not a restricted builtin is an
	// error.
	AllowBuiltins []string
}

// Engine evaluates the policy of package ztgate.authz. It implements Decider.
// The compiled policy (a revision) is swapped atomically by Load, LoadDir and
// PutModule, so Decide never blocks on a reload and always sees one whole
// revision.
type Engine struct {
	timeout time.Duration
	log     *slog.Logger
	data    ast.Object  // Options.Data as an OPA value; never modified
	builtin *builtinSet // what the policy and its tests may call

	cur    atomic.Pointer[revision]
	status atomic.Pointer[Status] // a stored Status is never modified

	loadMu sync.Mutex // serializes loads, so revisions land in call order
	dir    string     // backing directory of the accepted sources; guarded by loadMu
	commit CommitFunc // offered each new set before it is activated; guarded by loadMu

	cbMu       sync.Mutex
	onActivate []func(Status)
	onReject   []func(error)
}

// revision is one compiled and tested policy.
type revision struct {
	id      string   // sha256 (hex) over the policy modules' names and contents
	sum     string   // the same over every file, tests included
	srcs    []source // every file, tests included, in name order
	allow   rego.PreparedEvalQuery
	reasons rego.PreparedEvalQuery
	plan    *cachePlan // what a decision cache may reuse; shared by revisions of one id

	limits rego.PreparedEvalQuery // the optional limits rule (limits.go)
}

var _ Decider = (*Engine)(nil)

// NewEngine compiles the policy in fsys (every *.rego file, recursively,
// except *_test.rego files and hidden ones), runs its Rego tests (the
// *_test.rego files) and prepares its queries. The policy must declare
// package ztgate.authz and be written in Rego v1 syntax. A policy that does
// not compile, or whose tests fail, does not start: the error says why.
func NewEngine(fsys fs.FS, opts Options) (*Engine, error) {
	e := &Engine{
		timeout: opts.Timeout,
		log:     opts.Logger,
		data:    ast.NewObject(),
	}
	if e.timeout <= 0 {
		e.timeout = DefaultTimeout
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.builtin = defaultBuiltins()
	if len(opts.AllowBuiltins) > 0 {
		var err error
		if e.builtin, err = newBuiltinSet(opts.AllowBuiltins); err != nil {
			return nil, err
		}
	}
	if opts.Data != nil {
		v, err := ast.InterfaceToValue(opts.Data)
		if err != nil {
			return nil, fmt.Errorf("policy: data: %w", err)
		}
		obj, ok := v.(ast.Object)
		if !ok {
			return nil, errors.New("policy: data is not an object")
		}
		e.data = obj
	}
	e.status.Store(&Status{})
	if err := e.Load(fsys); err != nil {
		return nil, err
	}
	return e, nil
}

// InputRefs returns what the policy revision in force can read of its
// input, and whether its decisions may be cached (see Cache).
func (e *Engine) InputRefs() InputRefs {
	rev := e.cur.Load()
	if rev == nil || rev.plan == nil {
		return InputRefs{Uncacheable: []string{"no policy loaded"}}
	}
	return rev.plan.refs.clone()
}

// Revision returns the content hash of the policy revision in force.
func (e *Engine) Revision() string {
	if rev := e.cur.Load(); rev != nil {
		return rev.id
	}
	return ""
}

// Active is the policy revision in force at one instant, as a decision
// cache sees it: its id and what of its decisions may be reused. A
// revision is never modified, so an Active stays valid and consistent
// after the engine moves on; comparing two tells whether decisions kept
// under one may be answered under the other. The zero Active is no policy.
type Active struct {
	// ID is the revision's content hash, as in Decision.Revision.
	ID   string
	plan *cachePlan // shared by the revisions of one ID; nil: no policy
}

// Active returns the revision in force. It is one atomic load and does not
// allocate: a decision cache calls it on every decision.
func (e *Engine) Active() Active {
	if rev := e.cur.Load(); rev != nil {
		return Active{ID: rev.id, plan: rev.plan}
	}
	return Active{}
}

// Cacheable reports whether the decisions of a may be cached (see Cache).
func (a Active) Cacheable() bool { return a.plan != nil && a.plan.cacheable }

// compile parses the policy modules of srcs (tests left out) and prepares
// the allow and reasons queries on one compiler.
func (e *Engine) compile(ctx context.Context, srcs []source) (*revision, error) {
	policy := policySources(srcs)
	if len(policy) == 0 {
		return nil, errors.New("policy: no policy modules (*.rego, not *_test.rego) found")
	}
	mods, err := parseSources(policy)
	if err != nil {
		return nil, err
	}
	want := ast.MustParseRef(Query)
	found := false
	for _, m := range mods {
		if m.Package.Path.Equal(want) {
			found = true
			break
		}
	}
	if !found {
		return nil, errors.New("policy: no module declares package ztgate.authz")
	}

	// A store per revision, over a copy of the base document in OPA's value
	// form, so a policy that reads data pays no conversion per decision.
	store := inmem.NewFromASTObject(e.data.Copy())
	common := []func(*rego.Rego){
		rego.SetRegoVersion(ast.RegoV1),
		rego.Store(store),
		// Without the restricted builtins, a policy cannot reach the
		// network or depend on the clock: it does not compile.
		rego.Capabilities(e.builtin.caps),
		// A builtin error halts evaluation (and so denies) instead of
		// making an expression undefined, which `not` could turn into an allow.
		rego.StrictBuiltinErrors(true),
		// Results stay OPA values: Decide reads them directly, no JSON.
		rego.GenerateJSON(func(t *ast.Term, _ *rego.EvalContext) (any, error) { return t, nil }),
	}
	common = append(common, regoBuiltins()...)

	var compiler *ast.Compiler
	opts := slices.Concat(common, []func(*rego.Rego){
		rego.Query(allowQuery),
		rego.CompilerHook(func(c *ast.Compiler) { compiler = c }),
	})
	for _, m := range mods {
		opts = append(opts, rego.ParsedModule(m))
	}
	allow, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		if na := e.builtin.notAllowed(mods); na != nil {
			return nil, na
		}
		return nil, fmt.Errorf("policy: compile: %w", err)
	}
	// The second query reuses the compiled modules rather than compiling
	// them again.
	reasons, err := rego.New(slices.Concat(common, []func(*rego.Rego){
		rego.Query(reasonsQuery),
		rego.Compiler(compiler),
	})...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: compile: %w", err)
	}
	limits, err := prepareLimits(ctx, common, compiler)
	if err != nil {
		return nil, err
	}
	id := revisionID(policy)
	return &revision{
		id:      id,
		sum:     revisionID(srcs),
		srcs:    srcs,
		allow:   allow,
		reasons: reasons,
		limits:  limits,
		plan:    newCachePlan(id, analyzeInputRefs(compiler, customBuiltinNames())),
	}, nil
}

var (
	errNoSubject = errors.New("policy: input without subject")
	errNoPolicy  = errors.New("policy: no policy loaded")
)

// Decide evaluates the policy for in. It is safe for concurrent use. Allow
// is true only when the policy's allow is the boolean true. An undefined or
// non-boolean allow denies; so do an input without a Subject, an evaluation
// error, a timeout and a canceled context, which also set Err and are
// logged. Reasons are evaluated for a deny only.
func (e *Engine) Decide(ctx context.Context, in *Input) Decision {
	rev := e.cur.Load()
	if in == nil || in.Subject == nil {
		return e.failed(ctx, rev, logInput{in: in}, errNoSubject)
	}
	return e.eval(ctx, rev, in, in.value())
}

// DecideJSON evaluates the policy with raw, a JSON input document, as is (no
// field is added or checked). The error is non-nil when raw is not JSON or
// evaluation failed; the Decision then denies.
func (e *Engine) DecideJSON(ctx context.Context, raw []byte) (Decision, error) {
	rev := e.cur.Load()
	var doc any
	if err := util.UnmarshalJSON(raw, &doc); err != nil {
		err = fmt.Errorf("policy: input is not valid JSON: %w", err)
		return Decision{Revision: revID(rev), Err: err}, err
	}
	v, err := ast.InterfaceToValue(doc)
	if err != nil {
		err = fmt.Errorf("policy: input: %w", err)
		return Decision{Revision: revID(rev), Err: err}, err
	}
	d := e.eval(ctx, rev, nil, v)
	return d, d.Err
}

// noMetrics spares each evaluation the metrics OPA would otherwise collect
// and nobody reads.
var noMetrics = rego.EvalMetrics(metrics.NoOp())

func (e *Engine) eval(ctx context.Context, rev *revision, in *Input, input ast.Value) Decision {
	if rev == nil {
		return e.failed(ctx, rev, logInput{in, input}, errNoPolicy)
	}
	if err := ctx.Err(); err != nil {
		return e.failed(ctx, rev, logInput{in, input}, fmt.Errorf("policy: not evaluated: %w", err))
	}
	// The evaluator is canceled by a callback on the context instead of
	// the goroutine per evaluation OPA starts when it watches it itself.
	evalCtx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	c := topdown.NewCancel()
	defer context.AfterFunc(evalCtx, c.Cancel)()

	// Both queries share one cache: for a deny, reasons finds allow, and
	// everything allow depended on, already evaluated for this input.
	opts := []rego.EvalOption{
		rego.EvalParsedInput(input),
		rego.EvalVirtualCache(topdown.NewVirtualCache()),
		rego.EvalExternalCancel(c),
		noMetrics,
	}
	rs, err := rev.allow.Eval(evalCtx, opts...)
	if err != nil {
		return e.failed(ctx, rev, logInput{in, input}, e.evalError(ctx, evalCtx, err))
	}
	d := Decision{Allow: readAllow(rs), Revision: rev.id}
	if !d.Allow {
		rs, err := rev.reasons.Eval(evalCtx, opts...)
		if err != nil {
			return e.failed(ctx, rev, logInput{in, input}, e.evalError(ctx, evalCtx, err))
		}
		d.Reasons = readReasons(rs)
	}
	if e.log.Enabled(ctx, slog.LevelDebug) {
		e.log.LogAttrs(ctx, slog.LevelDebug, "policy: decision",
			slog.Bool("allow", d.Allow), slog.Any("reasons", d.Reasons),
			slog.String("revision", short(rev.id)), slog.Any("input", logInput{in, input}))
	}
	return d
}

// evalError describes an evaluation failure, telling the engine's timeout
// from the caller's cancellation.
func (e *Engine) evalError(ctx, evalCtx context.Context, err error) error {
	if !topdown.IsCancel(err) {
		return fmt.Errorf("policy: evaluation failed: %w", err)
	}
	if cerr := evalCtx.Err(); errors.Is(cerr, context.DeadlineExceeded) && ctx.Err() == nil {
		return fmt.Errorf("policy: evaluation timed out after %s: %w", e.timeout, cerr)
	}
	return fmt.Errorf("policy: evaluation canceled: %w", cmpErr(ctx.Err(), err))
}

// result is the value of a one-expression result set; nil when undefined.
func result(rs rego.ResultSet) ast.Value {
	if len(rs) == 1 && len(rs[0].Expressions) == 1 {
		if t, ok := rs[0].Expressions[0].Value.(*ast.Term); ok {
			return t.Value
		}
	}
	return nil
}

// readAllow: only the boolean true allows.
func readAllow(rs rego.ResultSet) bool {
	b, ok := result(rs).(ast.Boolean)
	return ok && bool(b)
}

// readReasons reads reasons, a set or an array: strings as they are,
// anything else in its Rego form.
func readReasons(rs rego.ResultSet) (reasons []string) {
	add := func(x *ast.Term) {
		if s, ok := x.Value.(ast.String); ok {
			reasons = append(reasons, string(s))
		} else {
			reasons = append(reasons, x.String())
		}
	}
	switch v := result(rs).(type) {
	case ast.Set:
		reasons = make([]string, 0, v.Len())
		v.Foreach(add)
	case *ast.Array:
		reasons = make([]string, 0, v.Len())
		v.Foreach(add)
	}
	return reasons
}

func (e *Engine) failed(ctx context.Context, rev *revision, in logInput, err error) Decision {
	e.log.LogAttrs(ctx, slog.LevelWarn, "policy: decision failed; denied",
		slog.String("revision", short(revID(rev))), slog.Any("input", in),
		slog.String("err", err.Error()))
	return Decision{Revision: revID(rev), Err: err}
}

// logInput renders the input for a log line only when the line is written.
type logInput struct {
	in  *Input
	raw ast.Value
}

func (l logInput) LogValue() slog.Value {
	switch {
	case l.in != nil && l.in.Subject != nil:
		attrs := []slog.Attr{
			slog.String("action", string(l.in.Action)),
			slog.String("spiffe_id", l.in.Subject.Identity.SPIFFEID),
		}
		if l.in.Topic != "" {
			attrs = append(attrs, slog.String("topic", l.in.Topic))
		}
		if l.in.Filter != "" {
			attrs = append(attrs, slog.String("filter", l.in.Filter))
		}
		return slog.GroupValue(attrs...)
	case l.in != nil:
		return slog.StringValue("input without subject")
	case l.raw != nil:
		return slog.StringValue(l.raw.String())
	}
	return slog.StringValue("none")
}

func revID(rev *revision) string {
	if rev == nil {
		return ""
	}
	return rev.id
}

// short is the display form of a revision.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
