package gateway

import "github.com/ztgate/ztgate/policy"

// isTopicName reports whether t is a topic a device may publish to or
// receive from, before any policy: not empty, no wildcard, no NUL, and not a
// server topic. Topics that start with '$' are the server's (MQTT 4.7.2:
// "The Server SHOULD prevent Clients from using such Topic Names to exchange
// messages with other Clients"); ztgate gives devices none, $SYS included.
//
// Besides, no delivery can carry a string that fails this test, which is
// what lets OnACLCheck tell a subscribe check from a delivery.
func isTopicName(t string) bool {
	if t == "" || t[0] == '$' {
		return false
	}
	for i := 0; i < len(t); i++ {
		switch t[i] {
		case '+', '#', 0:
			return false
		}
	}
	return true
}

// subscribeFilter returns the filter the policy decides a subscription on:
// the filter itself, or F of a shared subscription $share/GROUP/F (the
// prefix in any case, as mochi matches it). ok is false for a filter that is
// refused before any policy: a malformed share, an invalid filter, or a
// filter on server ('$') topics.
func subscribeFilter(filter string) (inner string, ok bool) {
	inner, _, _, err := policy.SplitShared(filter)
	if err != nil || !isFilter(inner) || inner[0] == '$' {
		return "", false
	}
	return inner, true
}

// isFilter reports whether f is a valid MQTT topic filter (MQTT 4.7.1): not
// empty, no NUL, '+' and '#' only as whole levels, '#' only last. mochi's
// own check lets "a+/b" through.
func isFilter(f string) bool {
	if f == "" {
		return false
	}
	start := 0
	for i := 0; i <= len(f); i++ {
		if i < len(f) && f[i] != '/' {
			if f[i] == 0 {
				return false
			}
			continue
		}
		level := f[start:i]
		if len(level) > 1 {
			for j := 0; j < len(level); j++ {
				if level[j] == '+' || level[j] == '#' {
					return false
				}
			}
		}
		if level == "#" && i != len(f) {
			return false
		}
		start = i + 1
	}
	return true
}
