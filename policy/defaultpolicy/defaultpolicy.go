// Package defaultpolicy embeds ztgate's default policy (package
// ztgate.authz) and its Rego tests, so the binary runs with the default
// policy when no policy directory is given. The engine ignores the
// *_test.rego files; `ztgate policy test` runs them.
package defaultpolicy

import "embed"

// FS holds authz.rego and authz_test.rego at its root.
//
//go:embed *.rego
var FS embed.FS
