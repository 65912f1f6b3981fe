package bridge

import (
	"testing"

	"github.com/ztgate/ztgate/policy"
)

// The precompiled matcher agrees with the policy's TopicMatches, the
// reference the rest of the gateway uses.
func TestFilterMatchesLikePolicy(t *testing.T) {
	filters := []string{"#", "+", "a", "a/#", "a/+", "+/b", "a/+/c", "+/+", "a/b/#", "/#", "/+", "+/#", "a//b", "$SYS/#", "devices/+/telemetry/#", "devices/+/state"}
	topics := []string{"a", "a/b", "a/b/c", "b", "/", "/a", "a/", "a//b", "$SYS/x", "$SYS", "devices/a/telemetry", "devices/a/telemetry/t", "devices/a/state", "devices/a/state/x", "devices//state", "x/b"}
	for _, fs := range filters {
		f := compileFilter(fs)
		for _, topic := range topics {
			if got, want := f.matches(topic), policy.TopicMatches(fs, topic); got != want {
				t.Errorf("filter %q topic %q: %v; policy.TopicMatches says %v", fs, topic, got, want)
			}
		}
	}
}
