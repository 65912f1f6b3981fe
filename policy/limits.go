package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// LimitsQuery is the optional rule that gives an identity its own limits
// (see Engine.Limits). It sits in the policy's own package so that one
// revision decides both what an identity may do and how much of it.
const LimitsQuery = Query + ".limits"

// Limits are the per-identity limits a policy's limits rule returns: the
// names of its object and their values. Which names exist and what they
// mean is the caller's (the gateway's) business; the engine only checks the
// shape.
type Limits map[string]float64

// prepareLimits prepares the limits query on the revision's compiler. A
// policy without a limits rule prepares too: the query is then undefined.
func prepareLimits(ctx context.Context, common []func(*rego.Rego), compiler *ast.Compiler) (rego.PreparedEvalQuery, error) {
	q, err := rego.New(slices.Concat(common, []func(*rego.Rego){
		rego.Query(LimitsQuery),
		rego.Compiler(compiler),
	})...).PrepareForEval(ctx)
	if err != nil {
		return rego.PreparedEvalQuery{}, fmt.Errorf("policy: compile: %w", err)
	}
	return q, nil
}

// Limits evaluates the limits rule for in, normally the input of a
// "connect" decision. It returns nil and no error when the policy has no
// limits rule or the rule is undefined for in: the caller's defaults apply.
// Anything but an object of names to non-negative finite numbers is an
// error, and so are the failures that make Decide deny (no policy, timeout,
// evaluation error); the caller fails closed on an error.
func (e *Engine) Limits(ctx context.Context, in *Input) (Limits, error) {
	rev := e.cur.Load()
	switch {
	case in == nil || in.Subject == nil:
		return nil, errNoSubject
	case rev == nil:
		return nil, errNoPolicy
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("policy: limits not evaluated: %w", err)
	}
	evalCtx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	c := topdown.NewCancel()
	defer context.AfterFunc(evalCtx, c.Cancel)()
	rs, err := rev.limits.Eval(evalCtx,
		rego.EvalParsedInput(in.value()),
		rego.EvalExternalCancel(c),
		noMetrics,
	)
	if err != nil {
		return nil, fmt.Errorf("policy: limits: %w", e.evalError(ctx, evalCtx, err))
	}
	v := result(rs)
	if v == nil {
		return nil, nil
	}
	return readLimits(v)
}

// readLimits reads the value of the limits rule.
func readLimits(v ast.Value) (Limits, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, fmt.Errorf("policy: limits: want an object of names to numbers, got %s", ast.ValueName(v))
	}
	out := make(Limits, obj.Len())
	err := obj.Iter(func(k, x *ast.Term) error {
		name, ok := k.Value.(ast.String)
		if !ok {
			return fmt.Errorf("policy: limits: key %s is not a string", k)
		}
		n, ok := x.Value.(ast.Number)
		if !ok {
			return fmt.Errorf("policy: limits: %s is %s, want a number", name, ast.ValueName(x.Value))
		}
		f, err := json.Number(n).Float64()
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) || f < 0 {
			return fmt.Errorf("policy: limits: %s is %s, want a non-negative number", name, n)
		}
		out[string(name)] = f
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
