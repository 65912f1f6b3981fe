package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// InputRefs is what one policy revision can read of its input document,
// found by walking its compiled modules (tests are not part of a revision).
// It tells the decision cache which fields a decision depends on.
type InputRefs struct {
	// Paths are the input paths the policy reads, each as far as it is
	// static ("input.action", "input.device.labels.role", "input.topic"),
	// sorted. A path also stands for everything under it.
	Paths []string `json:"paths"`
	// Uncacheable says why a decision of this revision cannot be reused
	// for a later input with the same fields: the input used as a whole or
	// with a computed key, input.time read, a builtin whose result changes
	// over time. Empty when decisions can be reused.
	Uncacheable []string `json:"uncacheable,omitempty"`
}

func (r InputRefs) clone() InputRefs {
	return InputRefs{Paths: slices.Clone(r.Paths), Uncacheable: slices.Clone(r.Uncacheable)}
}

// Cacheable reports whether a decision of the revision depends on nothing
// but the fields in Paths (and the policy's fixed data).
func (r InputRefs) Cacheable() bool { return len(r.Uncacheable) == 0 }

// Top-level input fields, by what a decision cache may assume of them.
const (
	// fieldSubject: constant for one Subject (identity, device, client).
	fieldSubject = iota + 1
	// fieldKey: a per-decision field the cache key can carry.
	fieldKey
	// fieldAdmin: only admin decisions carry it; they are never cached.
	fieldAdmin
	// fieldTime: different for nearly every decision.
	fieldTime
)

// inputFields classifies every top-level key of the input document value
// builds (a test keeps the two in step). A key not listed here is not part
// of the document: a policy reading one is not cached, so that a field
// added to the document later cannot be cached by mistake.
var inputFields = map[string]int{
	"action":       fieldKey,
	"identity":     fieldSubject,
	"device":       fieldSubject,
	"client":       fieldSubject,
	"topic":        fieldKey,
	"filter":       fieldKey,
	"qos":          fieldKey,
	"retain":       fieldKey,
	"will":         fieldKey,
	"payload_size": fieldKey,
	"request":      fieldAdmin,
	"bridge":       fieldKey,
	"time":         fieldTime,
}

// timeDependent are builtins whose result depends on the clock although
// OPA does not mark them nondeterministic: certificate verification without
// an explicit CurrentTime checks validity against now.
var timeDependent = map[string]bool{
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

// customBuiltinNames are the names of the MQTT builtins: deterministic
// functions of their arguments.
func customBuiltinNames() map[string]bool {
	return map[string]bool{topicMatchesBuiltin.Name: true, filterWithinBuiltin.Name: true}
}

// analyzeInputRefs walks the compiled modules of c for everything rooted at
// input, following the input (or a part of it) into user functions, through
// the local variables the compiler introduces (`__local1__ = input;
// f(__local1__)`), and into comprehensions and `every`. Whatever it cannot
// follow makes the revision uncacheable: the input as a whole value (passed
// to a builtin, compared, returned, iterated), a key computed at the input's
// root (input[x]), `with input`, `with` replacing a function, input.time,
// a key outside the document, a nondeterministic or unknown builtin. It
// errs only towards uncacheable.
func analyzeInputRefs(c *ast.Compiler, custom map[string]bool) InputRefs {
	a := &analysis{
		c:         c,
		custom:    custom,
		paths:     map[string]struct{}{},
		why:       map[string]struct{}{},
		summaries: map[string]*summary{},
	}
	names := make([]string, 0, len(c.Modules))
	for name := range c.Modules {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, r := range c.Modules[name].Rules {
			a.rule(r, -1, a.recordInput)
		}
	}
	refs := InputRefs{Paths: sortedKeys(a.paths)}
	if len(a.why) > 0 {
		refs.Uncacheable = sortedKeys(a.why)
	}
	return refs
}

type analysis struct {
	c         *ast.Compiler
	custom    map[string]bool
	paths     map[string]struct{} // "input.x.y" read
	why       map[string]struct{} // reasons the revision is not cacheable
	summaries map[string]*summary // by function ref and argument index
}

// summary is what a user function reads of one of its arguments: paths
// relative to the argument (empty: nothing), or nil paths when it uses the
// argument as a whole value or with a computed key at its root.
type summary struct {
	paths   [][]string
	pending bool // being computed: a cycle, which Rego forbids; treated as whole
}

// use records that path (relative to a tracked value) is read at loc.
type useFunc func(path []string, loc *ast.Location, how string)

// recordInput is the use of the global walk: path is relative to input.
func (a *analysis) recordInput(path []string, loc *ast.Location, how string) {
	if len(path) == 0 {
		a.uncacheable(loc, "uses input "+how)
		return
	}
	a.paths["input."+strings.Join(path, ".")] = struct{}{}
	switch inputFields[path[0]] {
	case fieldTime:
		a.uncacheable(loc, "reads input.time, which changes with every decision")
	case 0:
		a.uncacheable(loc, fmt.Sprintf("reads input.%s, which is not part of the input document", path[0]))
	}
}

func (a *analysis) uncacheable(loc *ast.Location, why string) {
	if loc != nil && loc.File != "" {
		why = fmt.Sprintf("%s:%d: %s", loc.File, loc.Row, why)
	}
	a.why[why] = struct{}{}
}

// tracker follows the values derived from one root within one rule: vars
// bound to the root or to a static path under it.
type tracker struct {
	a       *analysis
	use     useFunc
	aliases map[ast.Var][][]string // var -> the paths it stands for
	defs    map[*ast.Expr]bool     // `v = tracked` expressions that only bind v
}

var inputVar = ast.InputRootDocument.Value.(ast.Var)

// rule walks r, its else branches included. With param >= 0 the root is
// the function argument at that index (the input is not tracked: the
// global walk covers it); otherwise the root is input.
func (a *analysis) rule(r *ast.Rule, param int, use useFunc) {
	for ; r != nil; r = r.Else {
		t := &tracker{a: a, use: use, aliases: map[ast.Var][][]string{}, defs: map[*ast.Expr]bool{}}
		if param < 0 {
			t.aliases[inputVar] = [][]string{nil}
		} else {
			if param >= len(r.Head.Args) {
				use(nil, r.Location, "as a function argument the analysis cannot follow")
				continue
			}
			v, ok := r.Head.Args[param].Value.(ast.Var)
			if !ok {
				// A pattern (`f([a, b])`, `f("x")`) matches the whole argument.
				use(nil, r.Head.Args[param].Location, "matched against a function argument pattern")
				continue
			}
			t.aliases[v] = [][]string{nil}
		}
		t.findAliases(r)
		t.head(r.Head)
		t.body(r.Body)
	}
}

// findAliases finds the expressions `v = x` (or `v := x`) where x is a
// tracked var or a static path under one, and v a var bound nowhere else in
// the rule: v then stands for x. A var bound twice is compared, not
// aliased, and is walked as a use. Chains are followed to a fixpoint.
func (t *tracker) findAliases(r *ast.Rule) {
	sides := map[ast.Var]int{}
	var cands []*ast.Expr
	ast.WalkExprs(r, func(e *ast.Expr) bool {
		if l, rt, ok := binding(e); ok {
			for _, x := range []*ast.Term{l, rt} {
				if v, ok := x.Value.(ast.Var); ok {
					sides[v]++
				}
			}
			cands = append(cands, e)
		}
		return false
	})
	for changed := true; changed; {
		changed = false
		for _, e := range cands {
			if t.defs[e] {
				continue
			}
			l, rt, _ := binding(e)
			for _, p := range [][2]*ast.Term{{l, rt}, {rt, l}} {
				v, ok := p[0].Value.(ast.Var)
				if !ok || sides[v] != 1 || t.aliases[v] != nil {
					continue
				}
				if paths, ok := t.static(p[1]); ok {
					t.aliases[v] = paths
					t.defs[e] = true
					changed = true
					break
				}
			}
		}
	}
}

// binding returns the two sides of a unification or assignment expression.
func binding(e *ast.Expr) (l, r *ast.Term, ok bool) {
	if e.Negated || len(e.With) > 0 {
		return nil, nil, false
	}
	terms, isCall := e.Terms.([]*ast.Term)
	if !isCall || len(terms) != 3 {
		return nil, nil, false
	}
	if op := e.Operator(); op.Equal(ast.Equality.Ref()) || op.Equal(ast.Assign.Ref()) {
		return terms[1], terms[2], true
	}
	return nil, nil, false
}

// static returns the paths x stands for when x is a tracked var or a ref
// from one with string keys only.
func (t *tracker) static(x *ast.Term) ([][]string, bool) {
	switch v := x.Value.(type) {
	case ast.Var:
		p, ok := t.aliases[v]
		return p, ok
	case ast.Ref:
		head, ok := v[0].Value.(ast.Var)
		if !ok {
			return nil, false
		}
		base, ok := t.aliases[head]
		if !ok {
			return nil, false
		}
		suffix := make([]string, 0, len(v)-1)
		for _, k := range v[1:] {
			s, ok := k.Value.(ast.String)
			if !ok {
				return nil, false
			}
			suffix = append(suffix, string(s))
		}
		out := make([][]string, len(base))
		for i, b := range base {
			out[i] = slices.Concat(b, suffix)
		}
		return out, true
	}
	return nil, false
}

func (t *tracker) head(h *ast.Head) {
	if len(h.Reference) > 1 {
		for _, x := range h.Reference[1:] {
			t.term(x)
		}
	}
	if h.Key != nil {
		t.term(h.Key)
	}
	if h.Value != nil {
		t.term(h.Value)
	}
}

func (t *tracker) body(b ast.Body) {
	for _, e := range b {
		t.expr(e)
	}
}

func (t *tracker) expr(e *ast.Expr) {
	for _, w := range e.With {
		t.with(w)
	}
	if t.defs[e] {
		// v = input.x binds v to what it reads: the read is recorded
		// here, v's own uses below. v = input (the whole document) reads
		// nothing yet.
		l, r, _ := binding(e)
		for _, x := range []*ast.Term{l, r} {
			if _, isVar := x.Value.(ast.Var); isVar {
				continue
			}
			if paths, ok := t.static(x); ok {
				for _, p := range paths {
					if len(p) > 0 {
						t.use(p, e.Location, "")
					}
				}
			}
		}
		return
	}
	switch x := e.Terms.(type) {
	case *ast.Term:
		t.term(x)
	case []*ast.Term:
		if len(x) > 0 {
			t.call(x[0], x[1:], e.Location)
		}
	case *ast.SomeDecl:
		for _, s := range x.Symbols {
			t.term(s)
		}
	case *ast.Every:
		t.every(x)
	}
}

func (t *tracker) with(w *ast.With) {
	if ref, ok := w.Target.Value.(ast.Ref); ok {
		switch {
		case ref.HasPrefix(ast.InputRootRef):
			t.a.uncacheable(w.Location, "replaces input with `with`")
		case ref.HasPrefix(ast.DefaultRootRef):
			if rules := t.a.c.GetRulesExact(ref); len(rules) > 0 && len(rules[0].Head.Args) > 0 {
				t.a.uncacheable(w.Location, "replaces function "+ref.String()+" with `with`")
			}
		default:
			t.a.uncacheable(w.Location, "replaces builtin "+ref.String()+" with `with`")
		}
	}
	t.term(w.Value)
}

func (t *tracker) every(x *ast.Every) {
	t.term(x.Key)
	t.term(x.Value)
	t.term(x.Domain)
	t.body(x.Body)
}

func (t *tracker) term(x *ast.Term) {
	if x == nil {
		return
	}
	switch v := x.Value.(type) {
	case ast.Var:
		for _, p := range t.aliases[v] {
			t.use(p, x.Location, "as a whole value")
		}
	case ast.Ref:
		t.ref(v, x.Location)
	case ast.Call:
		if len(v) > 0 {
			t.call(v[0], v[1:], x.Location)
		}
	case *ast.Array:
		v.Foreach(t.term)
	case ast.Set:
		v.Foreach(t.term)
	case ast.Object:
		v.Foreach(func(k, val *ast.Term) {
			t.term(k)
			t.term(val)
		})
	case *ast.ArrayComprehension:
		t.term(v.Term)
		t.body(v.Body)
	case *ast.SetComprehension:
		t.term(v.Term)
		t.body(v.Body)
	case *ast.ObjectComprehension:
		t.term(v.Key)
		t.term(v.Value)
		t.body(v.Body)
	case *ast.TemplateString:
		for _, p := range v.Parts {
			if pt, ok := p.(*ast.Term); ok {
				t.term(pt)
			} else if pe, ok := p.(*ast.Expr); ok {
				t.expr(pe)
			}
		}
	}
}

// ref records a ref from a tracked var as the path of its leading string
// keys; a computed key ends the path there, so the whole subtree counts as
// read (and at the root, the input as a whole). Keys that are themselves
// terms are walked.
func (t *tracker) ref(r ast.Ref, loc *ast.Location) {
	head, isVar := r[0].Value.(ast.Var)
	base, tracked := t.aliases[head]
	if !isVar || !tracked {
		if !isVar {
			t.term(r[0])
		}
		for _, k := range r[1:] {
			t.term(k)
		}
		return
	}
	n := 1
	for n < len(r) {
		if _, ok := r[n].Value.(ast.String); !ok {
			break
		}
		n++
	}
	suffix := make([]string, 0, n-1)
	for _, k := range r[1:n] {
		suffix = append(suffix, string(k.Value.(ast.String)))
	}
	how := "as a whole value"
	if n < len(r) {
		how = "with a computed key (" + r.String() + ")"
	}
	for _, b := range base {
		t.use(slices.Concat(b, suffix), loc, how)
	}
	for _, k := range r[n:] {
		t.term(k)
	}
}

// call walks a call of op with args (an output term included, if any).
func (t *tracker) call(op *ast.Term, args []*ast.Term, loc *ast.Location) {
	ref, ok := op.Value.(ast.Ref)
	if !ok {
		t.term(op)
		for _, x := range args {
			t.term(x)
		}
		return
	}
	if ref.HasPrefix(ast.DefaultRootRef) {
		if rules := t.a.c.GetRulesExact(ref); len(rules) > 0 {
			arity := len(rules[0].Head.Args)
			for i, x := range args {
				paths, ok := t.static(x)
				if i >= arity || !ok {
					t.term(x)
					continue
				}
				// A tracked value passed to a user function: what the
				// function reads of its argument, under the value's paths.
				s := t.a.summary(ref, i)
				for _, base := range paths {
					if s.paths == nil {
						t.use(base, loc, "as a whole value, inside function "+ref.String())
						continue
					}
					for _, p := range s.paths {
						how := "inside function " + ref.String()
						t.use(slices.Concat(base, p), loc, how)
					}
				}
			}
			return
		}
		t.a.uncacheable(loc, "calls "+ref.String()+", which is not a function of the policy")
	} else {
		name := ref.String()
		b, builtin := ast.BuiltinMap[name]
		switch {
		case t.a.custom[name]:
		case !builtin:
			t.a.uncacheable(loc, "calls "+name+", which is not a known builtin")
		case b.IsNondeterministic() || timeDependent[name]:
			t.a.uncacheable(loc, "calls "+name+", whose result is not fixed by its arguments")
		}
	}
	for _, x := range args {
		t.term(x)
	}
}

// summary returns what function fn reads of its argument i.
func (a *analysis) summary(fn ast.Ref, i int) *summary {
	key := fmt.Sprintf("%s/%d", fn, i)
	if s, ok := a.summaries[key]; ok {
		if s.pending {
			return &summary{}
		}
		return s
	}
	s := &summary{pending: true}
	a.summaries[key] = s
	var paths [][]string
	whole := false
	for _, r := range a.c.GetRulesExact(fn) {
		a.rule(r, i, func(p []string, _ *ast.Location, _ string) {
			if len(p) == 0 {
				whole = true
				return
			}
			paths = append(paths, p)
		})
	}
	s.pending = false
	if !whole {
		s.paths = dedupPaths(paths)
		if s.paths == nil {
			s.paths = [][]string{} // reads nothing of it
		}
	}
	return s
}

func dedupPaths(paths [][]string) [][]string {
	seen := map[string]bool{}
	var out [][]string
	for _, p := range paths {
		k := strings.Join(p, "\x00")
		if !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	return out
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
