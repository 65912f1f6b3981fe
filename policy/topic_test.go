package policy_test

import (
	"errors"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/policy"
)

func TestTopicMatches(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true}, // + matches an empty level
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"+/+", "a/b", true},
		{"+/+", "/b", true},
		{"+", "a", true},
		{"+", "a/b", false},
		{"a/#", "a", true}, // # matches the parent level
		{"a/#", "a/", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"a/#", "b/a", false},
		{"#", "a", true},
		{"#", "a/b/c", true},
		{"#", "/", true},
		{"a/+/#", "a/b", true},
		{"a/+/#", "a", false},
		{"devices/sensor-1/telemetry/#", "devices/sensor-1/telemetry/temp", true},
		{"devices/sensor-1/telemetry/#", "devices/sensor-1/telemetry", true},
		{"devices/sensor-1/telemetry/#", "devices/sensor-2/telemetry/temp", false},
		{"devices/sensor-1/telemetry/#", "devices/sensor-1/telemetryx", false},
		{"devices/+/state", "devices/s1/state", true},
		{"devices/+/state", "devices/s1/state/x", false},
		// MQTT 4.7.2: a leading wildcard never matches a $ topic.
		{"#", "$SYS/broker", false},
		{"+/broker", "$SYS/broker", false},
		{"+/#", "$SYS", false},
		{"$SYS/#", "$SYS/broker", true},
		{"$SYS/#", "$SYS", true},
		{"$SYS/+", "$SYS/broker", true},
		{"a/#", "a/$x", true}, // $ only matters at the first level
		// Case matters.
		{"A/b", "a/b", false},
		// Invalid filters and topics match nothing.
		{"", "a", false},
		{"a", "", false},
		{"a/#/b", "a/x/b", false},
		{"a#", "a#", false},
		{"a/b+", "a/b+", false},
		{"a/+", "a/+", false},
		{"a/#", "a/#", false},
		{"#", "+", false},
		{"a\x00", "a\x00", false},
		{"#", "a\x00b", false},
	}
	for _, tt := range tests {
		if got := policy.TopicMatches(tt.filter, tt.topic); got != tt.want {
			t.Errorf("TopicMatches(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestFilterWithin(t *testing.T) {
	tests := []struct {
		allowed, requested string
		want               bool
	}{
		{"devices/a/#", "devices/a/#", true},
		{"devices/a/#", "devices/a/b", true},
		{"devices/a/#", "devices/a", true}, // # covers the parent
		{"devices/a/#", "devices/a/+", true},
		{"devices/a/#", "devices/a/+/#", true},
		{"devices/a/#", "devices/+/telemetry", false},
		{"devices/a/#", "devices/#", false},
		{"devices/a/#", "#", false},
		{"devices/a/#", "+/#", false},
		{"devices/a/#", "devices/b/x", false},
		{"#", "#", true},
		{"#", "a/b/+/#", true},
		{"#", "+", true},
		{"+/#", "#", true}, // same set: every topic has a first level
		{"+/+/#", "#", false},
		{"/+/#", "/#", true},    // "/#" has no parent topic: "" is no topic name
		{"+/+/#", "/#", true},   // likewise
		{"+/+/#", "+/#", false}, // "+/#" matches "a"
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false}, // a/# matches a and a/b/c
		{"a/#", "a/+", true},
		{"a/+/#", "a/#", false}, // a/# matches a
		{"a/+/#", "a/+", true},
		{"a/b", "a/b", true},
		{"a/b", "a/+", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"devices/+/telemetry/#", "devices/s1/telemetry/temp", true},
		{"devices/+/telemetry/#", "devices/+/telemetry", true},
		{"devices/+/telemetry/#", "devices/+/+", false},
		{"devices/+/telemetry/#", "devices/#", false},
		{"devices/+/state", "devices/+/state", true},
		{"devices/+/state", "devices/+/state/#", false},
		// $ topics: a leading wildcard does not cover them.
		{"#", "$SYS/#", false},
		{"+/#", "$SYS/x", false},
		{"+", "$x", false},
		{"$SYS/#", "$SYS/broker", true},
		{"$SYS/#", "#", false},
		// Invalid filters are never within anything.
		{"#", "", false},
		{"#", "a/#/b", false},
		{"#", "a+", false},
		{"", "a", false},
		{"a/#/b", "a/x/b", false},
	}
	for _, tt := range tests {
		if got := policy.FilterWithin(tt.allowed, tt.requested); got != tt.want {
			t.Errorf("FilterWithin(%q, %q) = %v, want %v", tt.allowed, tt.requested, got, tt.want)
		}
	}
}

// bruteMatcher is an independent matcher for the property tests: the filter
// is turned into a regular expression.
func bruteMatcher(filter string) func(topic string) bool {
	levels := strings.Split(filter, "/")
	noDollar := levels[0] == "+" || levels[0] == "#"
	hash := levels[len(levels)-1] == "#"
	if hash {
		levels = levels[:len(levels)-1]
	}
	parts := make([]string, len(levels))
	for i, l := range levels {
		if l == "+" {
			parts[i] = "[^/]*"
		} else {
			parts[i] = regexp.QuoteMeta(l)
		}
	}
	expr := "^" + strings.Join(parts, "/")
	switch {
	case hash && len(levels) == 0:
		expr += ".*"
	case hash:
		expr += "(/.*)?"
	}
	re := regexp.MustCompile(expr + "$")
	return func(topic string) bool {
		if noDollar && strings.HasPrefix(topic, "$") {
			return false
		}
		return re.MatchString(topic)
	}
}

// universe enumerates every string of 1..depth levels over alphabet.
func universe(alphabet []string, depth int) []string {
	var out []string
	cur := []string{""}
	for d := 1; d <= depth; d++ {
		var next []string
		for _, p := range cur {
			for _, l := range alphabet {
				if d == 1 {
					next = append(next, l)
				} else {
					next = append(next, p+"/"+l)
				}
			}
		}
		out = append(out, next...)
		cur = next
	}
	return out
}

// model is a bounded world in which matching and containment are decided by
// enumeration: filters of up to depth levels over filterLevels (wildcard
// '+' included), each also with a trailing '#', and every topic of up to
// depth+1 levels over the same literals plus "c", a literal no filter
// mentions. Two filters that differ on some topic differ on one of these:
// one level deeper than any filter, with "c" standing for every other string.
type model struct {
	filters []string
	topics  []string
	matches map[string]bitset // filter -> the topics it matches (brute force)
}

func newModel(literals []string, depth int) *model {
	m := &model{matches: map[string]bitset{}}
	for _, f := range universe(append(literals, "+"), depth) {
		if f != "" { // the empty string is not a filter; "/#" is
			m.filters = append(m.filters, f)
		}
		m.filters = append(m.filters, f+"/#")
	}
	m.filters = append(m.filters, "#")
	for _, tp := range universe(append(literals, "c"), depth+1) {
		if tp != "" { // the empty string is not a topic name
			m.topics = append(m.topics, tp)
		}
	}
	words := (len(m.topics) + 63) / 64
	for _, f := range m.filters {
		match := bruteMatcher(f)
		b := make(bitset, words)
		for i, tp := range m.topics {
			if match(tp) {
				b.set(i)
			}
		}
		m.matches[f] = b
	}
	return m
}

type bitset []uint64

func (b bitset) set(i int)      { b[i/64] |= 1 << (i % 64) }
func (b bitset) has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitset) subsetOf(o bitset) bool {
	for i := range b {
		if b[i]&^o[i] != 0 {
			return false
		}
	}
	return true
}

// smallModel: three levels over {a, b, $x, ""}; every pair is checked.
// deepModel: four levels over {a, $x, ""}; random pairs are checked.
func smallModel() *model { return newModel([]string{"a", "b", "$x", ""}, 3) }
func deepModel() *model  { return newModel([]string{"a", "$x", ""}, 4) }

func TestTopicMatchesProperty(t *testing.T) {
	for name, m := range map[string]*model{"small": smallModel(), "deep": deepModel()} {
		for _, f := range m.filters {
			for i, tp := range m.topics {
				if got, want := policy.TopicMatches(f, tp), m.matches[f].has(i); got != want {
					t.Fatalf("%s: TopicMatches(%q, %q) = %v, brute force says %v", name, f, tp, got, want)
				}
			}
		}
		t.Logf("%s model: %d filters x %d topics agree", name, len(m.filters), len(m.topics))
	}
}

func TestFilterWithinProperty(t *testing.T) {
	check := func(m *model, allowed, requested string) bool {
		t.Helper()
		want := m.matches[requested].subsetOf(m.matches[allowed])
		got := policy.FilterWithin(allowed, requested)
		if got != want {
			t.Fatalf("FilterWithin(%q, %q) = %v, brute force says %v", allowed, requested, got, want)
		}
		return got
	}

	small := smallModel()
	within := 0
	for _, a := range small.filters {
		for _, r := range small.filters {
			if check(small, a, r) {
				within++
			}
		}
	}
	t.Logf("small model: all %d x %d filter pairs agree (%d within)", len(small.filters), len(small.filters), within)

	// Random pairs of the deep model, half of them near neighbours (one level
	// changed), which is where containment mistakes hide. Deterministic seed.
	deep := deepModel()
	rng := rand.New(rand.NewPCG(1, 2))
	const pairs = 20000
	within = 0
	for i := range pairs {
		a := deep.filters[rng.IntN(len(deep.filters))]
		r := deep.filters[rng.IntN(len(deep.filters))]
		if i%2 == 0 {
			r = neighbour(rng, a, deep)
		}
		if check(deep, a, r) {
			within++
		}
		check(deep, r, a)
	}
	t.Logf("deep model: %d random pairs agree both ways (%d within)", pairs, within)
}

// neighbour returns a filter of the model that differs from f in one level
// (or f itself when the change leaves the model).
func neighbour(rng *rand.Rand, f string, m *model) string {
	levels := strings.Split(f, "/")
	alphabet := []string{"a", "$x", "", "+", "#"}
	levels[rng.IntN(len(levels))] = alphabet[rng.IntN(len(alphabet))]
	if g := strings.Join(levels, "/"); m.matches[g] != nil {
		return g
	}
	return f
}

func TestSplitShared(t *testing.T) {
	tests := []struct {
		filter, inner, group string
		ok, err              bool
	}{
		{filter: "devices/a/commands/#", inner: "devices/a/commands/#"},
		{filter: "$SYS/#", inner: "$SYS/#"},
		{filter: "$shared/g/x", inner: "$shared/g/x"},
		{filter: "share/g/x", inner: "share/g/x"},
		{filter: "$share/g/devices/a/commands/#", inner: "devices/a/commands/#", group: "g", ok: true},
		{filter: "$SHARE/g/x", inner: "x", group: "g", ok: true},
		{filter: "$Share/grp/x/y", inner: "x/y", group: "grp", ok: true},
		{filter: "$sHaRe/g/#", inner: "#", group: "g", ok: true},
		{filter: "$share/g/$SYS/#", inner: "$SYS/#", group: "g", ok: true},
		{filter: "$share", ok: true, err: true},
		{filter: "$share/", ok: true, err: true},
		{filter: "$share/g", ok: true, err: true},
		{filter: "$share/g/", ok: true, err: true},
		{filter: "$share//x", ok: true, err: true},
		{filter: "$share/+/x", ok: true, err: true},
		{filter: "$share/#/x", ok: true, err: true},
		{filter: "$share/g+/x", ok: true, err: true},
		{filter: "$SHARE/g#/x", ok: true, err: true},
		{filter: "$share/g/$share/h/x", ok: true, err: true},
		{filter: "$share/g/$SHARE/h/x", ok: true, err: true},
	}
	for _, tt := range tests {
		inner, group, ok, err := policy.SplitShared(tt.filter)
		if (err != nil) != tt.err {
			t.Errorf("SplitShared(%q) err = %v, want error %v", tt.filter, err, tt.err)
			continue
		}
		if err != nil {
			if !errors.Is(err, policy.ErrMalformedShare) {
				t.Errorf("SplitShared(%q) err = %v, want ErrMalformedShare", tt.filter, err)
			}
			if inner != "" || !ok {
				t.Errorf("SplitShared(%q) = %q, %v with error; want \"\", true", tt.filter, inner, ok)
			}
			continue
		}
		if inner != tt.inner || group != tt.group || ok != tt.ok {
			t.Errorf("SplitShared(%q) = %q, %q, %v; want %q, %q, %v",
				tt.filter, inner, group, ok, tt.inner, tt.group, tt.ok)
		}
	}
}
