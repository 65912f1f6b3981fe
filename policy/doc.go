// Package policy is ztgate's decision engine: it loads and compiles the Rego
// policy of package ztgate.authz with OPA, prepares the query once, evaluates
// it per decision with a deadline, and fails closed. It also provides the
// MQTT builtins (mqtt.topic_matches, mqtt.filter_within) and the runner
// behind `ztgate policy test`.
//
// # Decisions
//
// Every enforcement point calls a Decider. The Engine evaluates
// data.ztgate.authz once per decision and reads two keys of the result:
// allow (only the boolean true allows) and reasons (a set or array of
// strings, kept in the Decision for logs). An undefined or non-boolean
// allow, an evaluation error, a builtin error (builtin errors are strict, so
// `not` cannot turn one into an allow), a timeout and a canceled context all
// deny; the last four set Decision.Err and are logged at warn level. Every
// decision is logged at debug level when the logger has debug enabled.
//
// Load compiles a new revision and swaps it in atomically; a policy that
// does not parse or compile never replaces the one in force. A revision is
// named by the sha256 of its module names and contents (Decision.Revision),
// so a decision can be traced to the exact policy that made it and a cache
// in front of the engine can key on it.
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
