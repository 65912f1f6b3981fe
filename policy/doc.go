// Package policy is ztgate's decision engine: it loads and compiles the Rego
// policy of package ztgate.authz with OPA, prepares the query once, evaluates
// it per decision with a deadline, and fails closed. It also provides the
// MQTT builtins (mqtt.topic_matches, mqtt.filter_within) and the runner
// behind `ztgate policy test`.
package policy
