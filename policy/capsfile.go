package policy

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"
)

// CapabilitiesJSON returns the OPA capabilities document (the JSON that
// `opa check --capabilities`, `opa test --capabilities` and Regal's
// capabilities.from.file take) describing what a policy may call in a
// gateway whose policy_allow_builtins is allow: OPA's capabilities for the
// OPA version ztgate is built with, without the restricted builtins not in
// allow, with the MQTT builtins. Tools given it then refuse what the
// gateway refuses (an unknown mqtt.* name, a wrong argument type, http.send)
// instead of only accepting what it accepts.
//
// OPA's builtins are written as `opa capabilities` writes a release's file
// (no descriptions, which would triple its size); the MQTT builtins keep
// theirs, which editors show. The builtins are sorted by name, so the
// output only changes when a declaration does.
func CapabilitiesJSON(allow []string) ([]byte, error) {
	b := defaultBuiltins()
	if len(allow) > 0 {
		var err error
		if b, err = newBuiltinSet(allow); err != nil {
			return nil, err
		}
	}
	caps := *b.caps
	caps.Builtins = make([]*ast.Builtin, 0, len(b.caps.Builtins))
	for _, bi := range b.caps.Builtins {
		if !isMQTTBuiltin(bi.Name) {
			bi = bi.Minimal()
		}
		caps.Builtins = append(caps.Builtins, bi)
	}
	slices.SortFunc(caps.Builtins, func(x, y *ast.Builtin) int { return cmp.Compare(x.Name, y.Name) })
	out, err := json.MarshalIndent(&caps, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("policy: capabilities: %w", err)
	}
	return append(out, '\n'), nil
}

func isMQTTBuiltin(name string) bool {
	return name == topicMatchesBuiltin.Name || name == filterWithinBuiltin.Name
}
