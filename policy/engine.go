package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/open-policy-agent/opa/v1/util"
)

// Query is the document the engine evaluates once per decision.
const Query = "data.ztgate.authz"

// DefaultTimeout bounds one evaluation when Options.Timeout is zero.
const DefaultTimeout = 100 * time.Millisecond

// Options configure an Engine.
type Options struct {
	// Timeout bounds one evaluation (in addition to the caller's context
	// deadline). Zero means DefaultTimeout. A decision that runs out of time
	// is a deny.
	Timeout time.Duration

	// Logger receives evaluation failures (warn) and, when debug is enabled,
	// every decision. Nil means slog.Default().
	Logger *slog.Logger

	// Data is the base document the policy reads under data, for example
	// {"ztgate": {"config": {"trust_domain": "example.org"}}}. It must not
	// overlap the policy's own package.
	Data map[string]any
}

// Engine evaluates the policy of package ztgate.authz. It implements Decider.
// The compiled policy (a revision) is swapped atomically by Load, so Decide
// never blocks on a reload and always sees one whole revision.
type Engine struct {
	timeout time.Duration
	log     *slog.Logger
	data    map[string]any

	loadMu sync.Mutex // serializes Load so revisions land in call order
	cur    atomic.Pointer[revision]
}

// revision is one compiled policy.
type revision struct {
	id    string // sha256 (hex) over the module names and contents
	query rego.PreparedEvalQuery
}

var _ Decider = (*Engine)(nil)

// NewEngine compiles the policy in fsys (every *.rego file, recursively, except
// *_test.rego) and prepares its query. The policy must declare package
// ztgate.authz and be written in Rego v1 syntax.
func NewEngine(fsys fs.FS, opts Options) (*Engine, error) {
	e := &Engine{
		timeout: opts.Timeout,
		log:     opts.Logger,
		data:    opts.Data,
	}
	if e.timeout <= 0 {
		e.timeout = DefaultTimeout
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	if err := e.Load(fsys); err != nil {
		return nil, err
	}
	return e, nil
}

// Load compiles the policy in fsys and, if it compiles, makes it the revision
// every later decision uses. On any error the current revision stays in force
// and the error is returned: a bad policy never replaces a good one.
func (e *Engine) Load(fsys fs.FS) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	rev, err := e.compile(context.Background(), fsys)
	if err != nil {
		if old := e.cur.Load(); old != nil {
			e.log.Warn("policy: load failed; keeping the current revision",
				"revision", short(old.id), "err", err)
		}
		return err
	}
	old := e.cur.Swap(rev)
	if old == nil || old.id != rev.id {
		e.log.Info("policy: revision loaded", "revision", short(rev.id))
	}
	return nil
}

// Revision returns the content hash of the policy revision in force.
func (e *Engine) Revision() string {
	if rev := e.cur.Load(); rev != nil {
		return rev.id
	}
	return ""
}

func (e *Engine) compile(ctx context.Context, fsys fs.FS) (*revision, error) {
	srcs, err := readSources(fsys, false)
	if err != nil {
		return nil, err
	}
	if len(srcs) == 0 {
		return nil, errors.New("policy: no policy modules (*.rego, not *_test.rego) found")
	}
	mods, err := parseSources(srcs)
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

	opts := []func(*rego.Rego){
		rego.Query(Query),
		rego.SetRegoVersion(ast.RegoV1),
		// A builtin error halts evaluation (and so denies) instead of
		// making an expression undefined, which `not` could turn into an allow.
		rego.StrictBuiltinErrors(true),
		// Results stay OPA values: Decide reads two keys, no JSON conversion.
		rego.GenerateJSON(func(t *ast.Term, _ *rego.EvalContext) (any, error) { return t, nil }),
	}
	if e.data != nil {
		opts = append(opts, rego.Data(e.data))
	}
	for _, m := range mods {
		opts = append(opts, rego.ParsedModule(m))
	}
	opts = append(opts, regoBuiltins()...)
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: compile: %w", err)
	}
	return &revision{id: revisionID(srcs), query: pq}, nil
}

var (
	errNoSubject = errors.New("policy: input without subject")
	errNoPolicy  = errors.New("policy: no policy loaded")
)

// Decide evaluates data.ztgate.authz for in. It is safe for concurrent use.
// Allow is true only when the policy's allow is the boolean true. An
// undefined or non-boolean allow denies; so do an input without a Subject,
// an evaluation error, a timeout and a canceled context, which also set Err
// and are logged.
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

func (e *Engine) eval(ctx context.Context, rev *revision, in *Input, input ast.Value) Decision {
	if rev == nil {
		return e.failed(ctx, rev, logInput{in, input}, errNoPolicy)
	}
	if err := ctx.Err(); err != nil {
		return e.failed(ctx, rev, logInput{in, input}, fmt.Errorf("policy: not evaluated: %w", err))
	}
	evalCtx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	rs, err := rev.query.Eval(evalCtx, rego.EvalParsedInput(input))
	if err != nil {
		if topdown.IsCancel(err) {
			if cerr := evalCtx.Err(); errors.Is(cerr, context.DeadlineExceeded) && ctx.Err() == nil {
				err = fmt.Errorf("policy: evaluation timed out after %s: %w", e.timeout, cerr)
			} else {
				err = fmt.Errorf("policy: evaluation canceled: %w", cmpErr(ctx.Err(), err))
			}
		} else {
			err = fmt.Errorf("policy: evaluation failed: %w", err)
		}
		return e.failed(ctx, rev, logInput{in, input}, err)
	}

	d := Decision{Revision: rev.id}
	if len(rs) == 1 && len(rs[0].Expressions) == 1 {
		if t, ok := rs[0].Expressions[0].Value.(*ast.Term); ok {
			if obj, ok := t.Value.(ast.Object); ok {
				d.Allow, d.Reasons = readDecision(obj)
			}
		}
	}
	if e.log.Enabled(ctx, slog.LevelDebug) {
		e.log.LogAttrs(ctx, slog.LevelDebug, "policy: decision",
			slog.Bool("allow", d.Allow), slog.Any("reasons", d.Reasons),
			slog.String("revision", short(rev.id)), slog.Any("input", logInput{in, input}))
	}
	return d
}

var (
	allowKey   = ast.StringTerm("allow")
	reasonsKey = ast.StringTerm("reasons")
)

// readDecision reads allow (only the boolean true allows) and reasons (a set
// or array; strings as they are, anything else in its Rego form).
func readDecision(obj ast.Object) (allow bool, reasons []string) {
	if t := obj.Get(allowKey); t != nil {
		b, ok := t.Value.(ast.Boolean)
		allow = ok && bool(b)
	}
	if t := obj.Get(reasonsKey); t != nil {
		add := func(x *ast.Term) {
			if s, ok := x.Value.(ast.String); ok {
				reasons = append(reasons, string(s))
			} else {
				reasons = append(reasons, x.String())
			}
		}
		switch v := t.Value.(type) {
		case ast.Set:
			reasons = make([]string, 0, v.Len())
			v.Foreach(add)
		case *ast.Array:
			reasons = make([]string, 0, v.Len())
			v.Foreach(add)
		}
	}
	return allow, reasons
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
