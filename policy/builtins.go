package policy

import (
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown/builtins"
	"github.com/open-policy-agent/opa/v1/types"
)

// The MQTT builtins. One declaration and one implementation each, used by
// both the engine and the test runner, so `ztgate policy test` evaluates
// exactly what the gateway evaluates.
var (
	topicMatchesBuiltin = &rego.Function{
		Name:        "mqtt.topic_matches",
		Description: "Reports whether an MQTT topic name matches an MQTT topic filter (+ and # semantics, $ topics not matched by a leading wildcard).",
		Decl: types.NewFunction(
			types.Args(
				types.Named("filter", types.S).Description("MQTT topic filter"),
				types.Named("topic", types.S).Description("MQTT topic name"),
			),
			types.Named("result", types.B).Description("true when topic matches filter"),
		),
	}
	filterWithinBuiltin = &rego.Function{
		Name:        "mqtt.filter_within",
		Description: "Reports whether every topic the requested MQTT filter can match is also matched by the allowed filter.",
		Decl: types.NewFunction(
			types.Args(
				types.Named("allowed", types.S).Description("MQTT topic filter granted by the policy"),
				types.Named("requested", types.S).Description("MQTT topic filter asked for"),
			),
			types.Named("result", types.B).Description("true when requested is within allowed"),
		),
	}
)

// stringPair wraps a two-string predicate as a Rego builtin. A non-string
// operand is an error (not false), so that `not mqtt.topic_matches(...)`
// can never turn a type confusion into an allow.
func stringPair(f func(a, b string) bool) rego.Builtin2 {
	return func(_ rego.BuiltinContext, a, b *ast.Term) (*ast.Term, error) {
		x, err := builtins.StringOperand(a.Value, 1)
		if err != nil {
			return nil, err
		}
		y, err := builtins.StringOperand(b.Value, 2)
		if err != nil {
			return nil, err
		}
		return ast.InternedTerm(f(string(x), string(y))), nil
	}
}

// regoBuiltins returns the options that register the MQTT builtins on a
// rego.Rego.
func regoBuiltins() []func(*rego.Rego) {
	return []func(*rego.Rego){
		rego.Function2(topicMatchesBuiltin, stringPair(TopicMatches)),
		rego.Function2(filterWithinBuiltin, stringPair(FilterWithin)),
	}
}

// testerBuiltins returns the MQTT builtins in the form OPA's test runner takes.
func testerBuiltins() []*tester.Builtin {
	decls := []*rego.Function{topicMatchesBuiltin, filterWithinBuiltin}
	opts := regoBuiltins()
	out := make([]*tester.Builtin, len(decls))
	for i, d := range decls {
		out[i] = &tester.Builtin{
			Decl: &ast.Builtin{Name: d.Name, Description: d.Description, Decl: d.Decl},
			Func: opts[i],
		}
	}
	return out
}
