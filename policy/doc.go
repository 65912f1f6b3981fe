// Package policy is ztgate's decision engine: it loads and compiles the Rego
// policy of package ztgate.authz with OPA, prepares the query once, evaluates
// it per decision with a deadline, and fails closed. It also provides the
// MQTT builtins (mqtt.topic_matches, mqtt.filter_within) and the runner
// behind `ztgate policy test`.
//
// # Decisions
//
// Every enforcement point calls a Decider. The Engine evaluates
// data.ztgate.authz.allow per decision (only the boolean true allows) and,
// for a deny only, data.ztgate.authz.reasons (a set or array of strings,
// kept in the Decision for logs); the second evaluation shares the first
// one's cache, so what allow already evaluated is not evaluated again. An
// undefined or non-boolean allow, an evaluation error, a builtin error
// (builtin errors are strict, so `not` cannot turn one into an allow), a
// timeout and a canceled context all deny; the last four set Decision.Err
// and are logged at warn level. Every decision is logged at debug level when
// the logger has debug enabled.
//
// # Revisions
//
// A revision is named by the sha256 of its policy modules' names and
// contents (Decision.Revision, Engine.Revision), so a decision can be traced
// to the exact policy that made it and a cache in front of the engine can
// key on it; tests are not part of it. NewEngine, Load, LoadDir and
// PutModule compile a new set of modules and run its Rego tests (the
// *_test.rego files, as `ztgate policy test` runs them); only a set that
// compiles, declares package ztgate.authz and passes its tests is swapped in,
// atomically. Anything else leaves the revision in force deciding, and is
// reported: the returned error, Status().LastError, OnReject. Watch reloads a
// policy directory when it changes. Hidden files and directories (names
// starting with a dot) are never read as policy.
//
// # Input
//
// Input is converted to the policy's input document directly (no JSON, no
// reflection); the parts of a Subject are converted once per session and
// shared by its decisions. The document is DESIGN's policy contract:
//
//	every action   action, identity, device (null when not enrolled), client, time
//	publish        topic, qos, retain, will, payload_size
//	receive        topic, qos, retain, will, payload_size
//	subscribe      filter, qos (the requested maximum QoS)
//	admin          request (only when Input.Request is set)
//
// time is RFC 3339 in UTC, to the second; a zero Input.Time means now. The
// Last Will is decided as a publish with will true. Input.MarshalJSON
// encodes the same document, for logs and `ztgate policy eval`.
//
// Callers decide a shared subscription ($share/GROUP/FILTER, "$share" in any
// case) on its FILTER: reduce it with SplitShared first and deny it when
// SplitShared reports an error. The engine does not reduce filters itself,
// so that what is decided is exactly what the caller subscribes.
//
// # Topic matching
//
// TopicMatches and FilterWithin are the Go functions behind the builtins, so
// the gateway, the engine and `ztgate policy test` share one implementation.
// Invalid topics and filters match nothing, and a filter starting with a
// wildcard never matches a topic starting with '$' (MQTT 4.7.2).
package policy
