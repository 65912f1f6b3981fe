package bridge

import "strings"

// filter is a rule's topic filter split into levels once, at start, so
// matching a topic walks it without splitting or allocating. The filter
// was validated (Config.Validate).
type filter struct {
	levels []string
	// wildFirst: a filter that starts with a wildcard matches no topic
	// that starts with '$' (MQTT 4.7.2).
	wildFirst bool
}

func compileFilter(f string) filter {
	levels := strings.Split(f, "/")
	return filter{levels: levels, wildFirst: levels[0] == "+" || levels[0] == "#"}
}

// matches reports whether topic matches the filter with MQTT semantics:
// '+' is one level, '#' any number including the parent ("a/#" matches
// "a").
func (f *filter) matches(topic string) bool {
	if topic == "" || (f.wildFirst && topic[0] == '$') {
		return false
	}
	rest, more := topic, true
	for _, l := range f.levels {
		if l == "#" {
			return true
		}
		if !more {
			return false
		}
		var level string
		level, rest, more = strings.Cut(rest, "/")
		if l != "+" && l != level {
			return false
		}
	}
	return !more
}
