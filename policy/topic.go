package policy

import (
	"errors"
	"fmt"
	"strings"
)

// sharePrefix is the first level of a shared subscription filter. Brokers
// (mochi included) compare it case-insensitively, so $SHARE and $Share are
// shared subscriptions too and must be reduced the same way.
const sharePrefix = "$share"

// validTopic reports whether name is a valid MQTT topic name: non-empty, no
// wildcard characters, no NUL (MQTT 4.7.3, 1.5.4).
func validTopic(name string) bool {
	return name != "" && !strings.ContainsAny(name, "+#\x00")
}

// validFilter reports whether filter is a valid MQTT topic filter: non-empty,
// no NUL, '+' and '#' only as a whole level, '#' only as the last level
// (MQTT 4.7.1).
func validFilter(filter string) bool {
	if filter == "" || strings.IndexByte(filter, 0) >= 0 {
		return false
	}
	rest := filter
	for {
		level, tail, more := strings.Cut(rest, "/")
		if level != "+" && level != "#" && strings.ContainsAny(level, "+#") {
			return false
		}
		if level == "#" && more {
			return false
		}
		if !more {
			return true
		}
		rest = tail
	}
}

// isWildcard reports whether a filter level is a wildcard.
func isWildcard(level string) bool { return level == "+" || level == "#" }

// firstLevel returns the part of s before the first '/'.
func firstLevel(s string) string {
	level, _, _ := strings.Cut(s, "/")
	return level
}

// TopicMatches reports whether the topic name matches the topic filter with
// MQTT semantics: '+' matches exactly one level (an empty one too), '#'
// matches any number of levels including the parent ("a/#" matches "a"), and
// a filter that starts with a wildcard does not match a topic that starts
// with '$' (MQTT 4.7.2). An invalid filter or topic matches nothing.
func TopicMatches(filter, topic string) bool {
	if !validFilter(filter) || !validTopic(topic) {
		return false
	}
	if strings.HasPrefix(topic, "$") && isWildcard(firstLevel(filter)) {
		return false
	}
	f, t := filter, topic
	for {
		fl, frest, fmore := strings.Cut(f, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(t, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// The topic ends here; only a trailing "#" (parent level) remains a match.
			return frest == "#"
		case !fmore:
			return false
		}
		f, t = frest, trest
	}
}

// FilterWithin reports whether every topic name that the requested filter can
// match is also matched by the allowed filter, so that granting a
// subscription to requested never grants more than allowed. For example
// "devices/a/+" is within "devices/a/#", "devices/+/telemetry" is not within
// "devices/a/#", and "a/#" is not within "a/+" (it matches "a" and "a/b/c").
// Invalid filters are never within anything.
func FilterWithin(allowed, requested string) bool {
	if !validFilter(allowed) || !validFilter(requested) {
		return false
	}
	// MQTT 4.7.2: a leading wildcard in allowed matches no "$" topic, so a
	// requested literal first level starting with '$' escapes it.
	if isWildcard(firstLevel(allowed)) && !isWildcard(firstLevel(requested)) &&
		strings.HasPrefix(requested, "$") {
		return false
	}
	a, r := allowed, requested
	for depth := 0; ; depth++ {
		al, arest, amore := strings.Cut(a, "/")
		if al == "#" {
			// Matches this level, everything below it and the parent.
			return true
		}
		rl, rrest, rmore := strings.Cut(r, "/")
		switch {
		case rl == "#":
			// requested matches every depth from its parent level down;
			// only "#" in allowed (handled above) covers the parent. Unless
			// the parent would be the empty string, which is no topic name:
			// for "#" and "/#" the parent matches nothing, and "+/#" in
			// allowed covers the rest.
			noParent := depth == 0 || (depth == 1 && firstLevel(requested) == "")
			return noParent && al == "+" && arest == "#"
		case rl == "+":
			if al != "+" {
				return false
			}
		default:
			if al != "+" && al != rl {
				return false
			}
		}
		switch {
		case !amore && !rmore:
			return true
		case !rmore:
			// requested stops here; allowed still covers it only through a
			// trailing "#" that matches the parent level.
			return arest == "#"
		case !amore:
			return false
		}
		a, r = arest, rrest
	}
}

// ErrMalformedShare is returned by SplitShared for a "$share" filter that is
// not of the form $share/GROUP/FILTER.
var ErrMalformedShare = errors.New("policy: malformed shared subscription filter")

// SplitShared reduces a shared subscription filter "$share/GROUP/FILTER" to
// its FILTER, which is what a policy decides on. The "$share" prefix is
// matched case-insensitively, as brokers do. ok reports whether filter was a
// shared subscription. A malformed one (no group, an empty group or filter, a
// group with a wildcard, or a nested share) returns an error wrapping
// ErrMalformedShare; the caller must deny it.
func SplitShared(filter string) (inner, group string, ok bool, err error) {
	first, rest, more := strings.Cut(filter, "/")
	if !strings.EqualFold(first, sharePrefix) {
		return filter, "", false, nil
	}
	if !more {
		return "", "", true, fmt.Errorf("%w %q: no share name", ErrMalformedShare, filter)
	}
	group, inner, more = strings.Cut(rest, "/")
	switch {
	case group == "":
		return "", "", true, fmt.Errorf("%w %q: empty share name", ErrMalformedShare, filter)
	case strings.ContainsAny(group, "+#\x00"):
		return "", "", true, fmt.Errorf("%w %q: wildcard in share name", ErrMalformedShare, filter)
	case !more || inner == "":
		return "", "", true, fmt.Errorf("%w %q: empty filter", ErrMalformedShare, filter)
	case strings.EqualFold(firstLevel(inner), sharePrefix):
		return "", "", true, fmt.Errorf("%w %q: nested share", ErrMalformedShare, filter)
	}
	return inner, group, true, nil
}

// ValidTopicName reports whether name is a valid MQTT topic name: non-empty,
// no wildcard characters, no NUL. It is the check TopicMatches applies, for
// callers that take a topic name from outside MQTT (the admin API).
func ValidTopicName(name string) bool { return validTopic(name) }

// ValidTopicFilter reports whether filter is a valid MQTT topic filter:
// non-empty, no NUL, '+' and '#' only as a whole level, '#' only last. It is
// the check TopicMatches and FilterWithin apply.
func ValidTopicFilter(filter string) bool { return validFilter(filter) }
