package policy

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
)

// A policy is data pushed to the gateway, possibly by an API client: it must
// not be able to act on the world. Policies are compiled against OPA's
// builtins without the restricted ones: those that reach the network or the
// gateway's environment, and those whose result is not a function of their
// arguments (the clock, randomness), which would make a decision impossible
// to replay from the decision log and wrong to cache. Options.AllowBuiltins
// (policy_allow_builtins) re-admits some of them.

// whyRestricted says, for the builtins refused by name, why. Every other
// builtin OPA marks nondeterministic is refused too (see restricted), so a
// newer OPA's network or clock builtin is refused until it is reviewed.
var whyRestricted = map[string]string{
	"http.send":              "it sends HTTP requests",
	"net.lookup_ip_addr":     "it resolves names through DNS",
	"json.match_schema":      "it fetches the remote schemas a $ref names",
	"json.verify_schema":     "it fetches the remote schemas a $ref names",
	"opa.runtime":            "it reads the gateway's environment",
	"time.now_ns":            "it reads the clock (input.time is the decision's time, and is logged)",
	"io.jwt.decode_verify":   "it reads the clock",
	"rand.intn":              "its result is random",
	"uuid.rfc4122":           "its result is random",
	"io.jwt.encode_sign":     "its result is random",
	"io.jwt.encode_sign_raw": "its result is random",
}

// ErrBuiltinNotAllowed is wrapped by the error of a policy or test that
// calls a restricted builtin not in Options.AllowBuiltins.
var ErrBuiltinNotAllowed = errors.New("policy: builtin not allowed")

// restricted is the set of builtins refused by default.
var restricted = sync.OnceValue(func() map[string]string {
	out := make(map[string]string, len(whyRestricted))
	for _, b := range ast.CapabilitiesForThisVersion().Builtins {
		if why, ok := whyRestricted[b.Name]; ok {
			out[b.Name] = why
		} else if b.Nondeterministic {
			out[b.Name] = "OPA marks it nondeterministic"
		}
	}
	return out
})

// RestrictedBuiltins returns the names of the OPA builtins a policy may not
// call unless Options.AllowBuiltins names them, sorted.
func RestrictedBuiltins() []string {
	names := make([]string, 0, len(restricted()))
	for name := range restricted() {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// CheckAllowBuiltins reports the first name in names that is not a
// restricted builtin: unknown to OPA, or allowed anyway (listing it would
// suggest it was not).
func CheckAllowBuiltins(names []string) error {
	for _, name := range names {
		if _, ok := restricted()[name]; ok {
			continue
		}
		if _, known := ast.BuiltinMap[name]; known {
			return fmt.Errorf("policy: builtin %q is always allowed; only restricted builtins can be allowed (%s)", name, strings.Join(RestrictedBuiltins(), ", "))
		}
		return fmt.Errorf("policy: %q is not a builtin of this OPA; restricted builtins are %s", name, strings.Join(RestrictedBuiltins(), ", "))
	}
	return nil
}

// builtinSet is what an engine or a test run may call: OPA's builtins but
// the restricted ones not allowed, with the MQTT builtins.
type builtinSet struct {
	caps    *ast.Capabilities
	allowed []string // the restricted builtins re-admitted, sorted
	key     string   // identifies the set, for the test-pass memo
}

// newBuiltinSet checks allow and builds the capabilities it leaves.
func newBuiltinSet(allow []string) (*builtinSet, error) {
	if err := CheckAllowBuiltins(allow); err != nil {
		return nil, err
	}
	allowed := slices.Clone(allow)
	slices.Sort(allowed)
	allowed = slices.Compact(allowed)
	caps := ast.CapabilitiesForThisVersion()
	caps.Builtins = slices.DeleteFunc(caps.Builtins, func(b *ast.Builtin) bool {
		_, r := restricted()[b.Name]
		return r && !slices.Contains(allowed, b.Name)
	})
	for _, f := range []*ast.Builtin{
		{Name: topicMatchesBuiltin.Name, Description: topicMatchesBuiltin.Description, Decl: topicMatchesBuiltin.Decl},
		{Name: filterWithinBuiltin.Name, Description: filterWithinBuiltin.Description, Decl: filterWithinBuiltin.Decl},
	} {
		caps.Builtins = append(caps.Builtins, f)
	}
	return &builtinSet{caps: caps, allowed: allowed, key: strings.Join(allowed, ",")}, nil
}

// defaultBuiltins is the set with nothing re-admitted.
var defaultBuiltins = sync.OnceValue(func() *builtinSet {
	b, err := newBuiltinSet(nil)
	if err != nil {
		panic(err) // an empty list is always valid
	}
	return b
})

// notAllowed explains a compile error of mods: it returns an error naming
// the restricted builtins they call, nil when they call none. The compiler
// only says "undefined function" (or "var http is unsafe" when the builtin
// is a `with` value), which does not tell the author why.
func (b *builtinSet) notAllowed(mods map[string]*ast.Module) error {
	seen := map[string]bool{}
	var calls []string
	names := make([]string, 0, len(mods))
	for name := range mods {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ast.WalkRefs(mods[name], func(r ast.Ref) bool {
			if _, isVar := r[0].Value.(ast.Var); !isVar {
				return false
			}
			s := r.String()
			why, ok := restricted()[s]
			if !ok || slices.Contains(b.allowed, s) {
				return false
			}
			loc := name
			if r[0].Location != nil {
				loc = fmt.Sprintf("%s:%d", name, r[0].Location.Row)
			}
			if msg := fmt.Sprintf("%s: builtin %s is not allowed in a policy: %s", loc, s, why); !seen[msg] {
				seen[msg] = true
				calls = append(calls, msg)
			}
			return false
		})
	}
	if len(calls) == 0 {
		return nil
	}
	return &notAllowedError{calls: calls}
}

type notAllowedError struct{ calls []string }

func (e *notAllowedError) Error() string {
	return "policy: " + strings.Join(e.calls, "; ") + " (the gateway's policy_allow_builtins, or --allow-builtin of ztgate policy test and eval, re-admits it)"
}

func (e *notAllowedError) Is(target error) bool { return target == ErrBuiltinNotAllowed }
