package policy_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// counting decides with next and counts the calls: the engine's work
// behind a cache.
type counting struct {
	next  policy.Decider
	calls atomic.Int64
}

func (c *counting) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	c.calls.Add(1)
	return c.next.Decide(ctx, in)
}

func defaultPolicyEngine(t testing.TB) *policy.Engine {
	t.Helper()
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{
		Logger: quietLogger(),
		Data:   map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": "example.org"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func roleSubject(name, role, status string) *policy.Subject {
	s := subject(name)
	s.Device.Labels = map[string]string{"role": role}
	s.Device.Status = status
	return s
}

func sameDecision(a, b policy.Decision) bool {
	return a.Allow == b.Allow && slices.Equal(a.Reasons, b.Reasons) && a.Revision == b.Revision &&
		(a.Err == nil) == (b.Err == nil) && a.ID == b.ID
}

// The cache returns exactly what the engine returns (allow, reasons,
// revision), on the miss and on every hit, for every action, allowed and
// denied; connect and admin are passed through.
func TestCacheMatchesEngine(t *testing.T) {
	e := defaultPolicyEngine(t)
	sensor := roleSubject("s1", "sensor", "active")
	ctl := roleSubject("ctl", "controller", "active")
	admin := roleSubject("adm", "admin", "active")
	suspended := roleSubject("s2", "sensor", "suspended")
	unenrolled := subject("s3")
	unenrolled.Device = nil
	foreign := roleSubject("s4", "sensor", "active")
	foreign.Identity.TrustDomain = "other.org"
	brg := bridgeSubject("cloud")

	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	var inputs []*policy.Input
	for _, s := range []*policy.Subject{sensor, ctl, admin, suspended, unenrolled, foreign, brg} {
		inputs = append(inputs,
			&policy.Input{Action: policy.ActionConnect, Subject: s},
			&policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/s1/telemetry/temp", QoS: 1, PayloadSize: 4},
			&policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/s1/telemetry/temp", Retain: true},
			&policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/s1/state", Retain: true, Will: true},
			&policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "devices/s1/commands/reboot"},
			&policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "#"},
			&policy.Input{Action: policy.ActionReceive, Subject: s, Topic: "devices/s1/commands/reboot"},
			&policy.Input{Action: policy.ActionReceive, Subject: s, Topic: "devices/s9/telemetry/x"},
			&policy.Input{Action: policy.ActionReceive, Subject: s, Topic: "$SYS/broker/load"},
			&policy.Input{Action: policy.ActionSubscribe, Subject: s, Filter: "devices/s1/commands/#", QoS: 1},
			&policy.Input{Action: policy.ActionSubscribe, Subject: s, Filter: "devices/+/telemetry/#"},
			&policy.Input{Action: policy.ActionSubscribe, Subject: s, Filter: "#"},
			&policy.Input{Action: policy.ActionAdmin, Subject: s, Request: &policy.Request{Method: "GET", Path: "/v1/devices"}},
			&policy.Input{Action: "bogus", Subject: s},
			&policy.Input{Action: policy.ActionBridgeOut, Subject: s, Topic: "devices/s1/telemetry/temp", QoS: 1, PayloadSize: 4, Bridge: cloudBridge("devices/s1/telemetry/temp")},
			&policy.Input{Action: policy.ActionBridgeOut, Subject: s, Topic: "devices/s1/commands/reboot", Bridge: cloudBridge("devices/s1/commands/reboot")},
			&policy.Input{Action: policy.ActionBridgeIn, Subject: s, Topic: "devices/s1/commands/reboot", QoS: 1, Bridge: cloudBridge("devices/s1/commands/reboot")},
			&policy.Input{Action: policy.ActionBridgeIn, Subject: s, Topic: "devices/s1/commands/reboot", Retain: true, Bridge: cloudBridge("devices/s1/commands/reboot")},
			&policy.Input{Action: policy.ActionBridgeIn, Subject: s, Topic: "devices/s1/state", Bridge: cloudBridge("devices/s1/state")},
		)
	}
	c := policy.NewCache(e, nil, policy.CacheOptions{})
	allowed, denied := 0, 0
	for _, in := range inputs {
		in.Time = now
		want := e.Decide(context.Background(), in)
		if want.Err != nil {
			t.Fatalf("%s %s: %v", in.Action, in.Topic+in.Filter, want.Err)
		}
		if want.Allow {
			allowed++
		} else {
			denied++
		}
		before := c.Stats()
		for i := range 3 {
			if got := c.Decide(context.Background(), in); !sameDecision(got, want) {
				t.Errorf("%s %s %q, call %d: cache %+v, engine %+v", in.Subject.Identity.SPIFFEID, in.Action, in.Topic+in.Filter, i, got, want)
			}
		}
		after := c.Stats()
		switch in.Action {
		case policy.ActionPublish, policy.ActionReceive, policy.ActionSubscribe, policy.ActionBridgeOut, policy.ActionBridgeIn:
			// The first identical input may already be cached.
			if after.Hits-before.Hits < 2 || after.Bypassed != before.Bypassed {
				t.Errorf("%s %q: %+v -> %+v, want hits", in.Action, in.Topic+in.Filter, before, after)
			}
		default:
			if after.Bypassed-before.Bypassed != 3 || after.Hits != before.Hits {
				t.Errorf("%s: %+v -> %+v, want passed through", in.Action, before, after)
			}
		}
	}
	if allowed < 10 || denied < 20 {
		t.Errorf("table too one-sided: %d allowed, %d denied", allowed, denied)
	}
}

// bridgeSubject is a bridge's own identity, as it asks bridge_in.
func bridgeSubject(name string) *policy.Subject {
	return &policy.Subject{
		Identity: policy.Identity{
			SPIFFEID:    "spiffe://example.org/bridge/" + name,
			TrustDomain: "example.org",
			Path:        "/bridge/" + name,
			Segments:    []string{"bridge", name},
		},
		Client: policy.Client{ID: "ztgate-" + name, RemoteAddr: "127.0.0.1:8883", ProtocolVersion: 5},
	}
}

func cloudBridge(topic string) *policy.Bridge {
	return &policy.Bridge{Name: "cloud", URL: "mqtts://up.example:8883", RemoteTopic: "plant-a/" + topic}
}

// bridgeStep is one decision of TestCacheKeyBridgeFields and whether the
// engine had to make it.
type bridgeStep struct {
	in           policy.Input
	allow, asked bool
}

// Bridge decisions are cached, keyed on the bridge fields the revision
// reads: a policy reading none of them answers for another bridge from the
// cache, one reading bridge.name, bridge.url or bridge.remote_topic asks
// the engine again when that field differs, and a document without a
// bridge is never taken for one whose bridge has empty fields.
func TestCacheKeyBridgeFields(t *testing.T) {
	ctx := context.Background()
	const topic = "devices/s1/telemetry/temp"
	out := func(name, url, remote string) policy.Input {
		return policy.Input{Action: policy.ActionBridgeOut, Topic: topic, Bridge: &policy.Bridge{Name: name, URL: url, RemoteTopic: remote}}
	}
	in := func(name, remote string) policy.Input {
		return policy.Input{Action: policy.ActionBridgeIn, Topic: topic, Bridge: &policy.Bridge{Name: name, RemoteTopic: remote}}
	}
	base := out("cloud", "mqtts://up.example:8883", "plant-a/"+topic)
	for _, tt := range []struct {
		name, module string
		steps        []bridgeStep
	}{
		{"reads no bridge field", `allow if { input.action == "bridge_out"; startswith(input.topic, "devices/") }`, []bridgeStep{
			{base, true, true},
			{base, true, false},
			{out("other", "mqtts://else:1", "x/y"), true, false},
			{in("cloud", "plant-a/"+topic), false, true},
			{policy.Input{Action: policy.ActionPublish, Topic: topic}, false, true},
		}},
		{"reads bridge.name", `allow if { input.action == "bridge_out"; input.bridge.name == "cloud" }`, []bridgeStep{
			{base, true, true},
			{out("cloud", "mqtts://else:1", "x/y"), true, false},
			{out("other", "mqtts://up.example:8883", "plant-a/"+topic), false, true},
			{out("other", "mqtts://up.example:8883", "plant-a/"+topic), false, false},
			{base, true, false},
		}},
		{"reads bridge.url", `allow if { input.action == "bridge_out"; input.bridge.url == "mqtts://up.example:8883" }`, []bridgeStep{
			{base, true, true},
			{out("other", "mqtts://up.example:8883", "x/y"), true, false},
			{out("cloud", "mqtts://else:1", "plant-a/"+topic), false, true},
		}},
		{"reads bridge.remote_topic", `allow if { input.action == "bridge_in"; startswith(input.bridge.remote_topic, "plant-a/") }`, []bridgeStep{
			{in("cloud", "plant-a/"+topic), true, true},
			{in("x", "plant-a/"+topic), true, false},
			{in("cloud", "plant-a/z"), true, true},
			{in("cloud", "plant-b/"+topic), false, true},
		}},
		{"reads the bridge object", `allow if { input.action == "bridge_out"; not input.bridge }`, []bridgeStep{
			{policy.Input{Action: policy.ActionBridgeOut, Topic: topic}, true, true},
			{policy.Input{Action: policy.ActionBridgeOut, Topic: topic, Bridge: &policy.Bridge{}}, false, true},
			{policy.Input{Action: policy.ActionBridgeOut, Topic: topic}, true, false},
			{policy.Input{Action: policy.ActionBridgeOut, Topic: topic, Bridge: &policy.Bridge{}}, false, false},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\n" + tt.module + "\n"}, policy.Options{})
			if !e.InputRefs().Cacheable() {
				t.Fatalf("not cacheable: %+v", e.InputRefs())
			}
			next := &counting{next: e}
			c := policy.NewCache(e, next, policy.CacheOptions{})
			s := subject("s1")
			for i, step := range tt.steps {
				in := step.in
				in.Subject = s
				n := next.calls.Load()
				d := c.Decide(ctx, &in)
				if d.Allow != step.allow || d.Err != nil {
					t.Errorf("step %d: %+v, want allow %v", i, d, step.allow)
				}
				if asked := next.calls.Load() > n; asked != step.asked {
					t.Errorf("step %d: engine asked %v, want %v", i, asked, step.asked)
				}
			}
		})
	}
}

// The key holds exactly the fields the revision reads: the default policy
// reads topic, filter, retain and will, not qos or payload_size.
func TestCacheKeyFields(t *testing.T) {
	e := defaultPolicyEngine(t)
	next := &counting{next: e}
	c := policy.NewCache(e, next, policy.CacheOptions{})
	s := roleSubject("s1", "sensor", "active")
	ctx := context.Background()
	decide := func(in policy.Input) policy.Decision {
		in.Subject = s
		return c.Decide(ctx, &in)
	}
	pub := policy.Input{Action: policy.ActionPublish, Topic: "devices/s1/telemetry/temp", QoS: 0, PayloadSize: 4}
	if d := decide(pub); !d.Allow {
		t.Fatalf("publish: %+v", d)
	}
	for _, tt := range []struct {
		name  string
		in    policy.Input
		allow bool
		asked bool // the engine was asked (a miss)
	}{
		{"same", pub, true, false},
		{"other qos and size", policy.Input{Action: policy.ActionPublish, Topic: pub.Topic, QoS: 2, PayloadSize: 9999}, true, false},
		{"filter, not carried by publish", policy.Input{Action: policy.ActionPublish, Topic: pub.Topic, Filter: "x"}, true, false},
		{"other time", policy.Input{Action: policy.ActionPublish, Topic: pub.Topic, Time: time.Unix(1, 0)}, true, false},
		{"retain", policy.Input{Action: policy.ActionPublish, Topic: pub.Topic, Retain: true}, false, true},
		{"will", policy.Input{Action: policy.ActionPublish, Topic: pub.Topic, Will: true}, false, true},
		{"other topic", policy.Input{Action: policy.ActionPublish, Topic: "devices/s2/telemetry/temp"}, false, true},
		{"receive, same topic", policy.Input{Action: policy.ActionReceive, Topic: pub.Topic}, false, true},
		{"subscribe", policy.Input{Action: policy.ActionSubscribe, Filter: "devices/s1/commands/#"}, true, true},
		{"subscribe, topic not carried", policy.Input{Action: policy.ActionSubscribe, Filter: "devices/s1/commands/#", Topic: "x", QoS: 2}, true, false},
		{"subscribe, other filter", policy.Input{Action: policy.ActionSubscribe, Filter: "devices/s1/#"}, false, true},
	} {
		n := next.calls.Load()
		d := decide(tt.in)
		if d.Allow != tt.allow || d.Err != nil {
			t.Errorf("%s: %+v, want allow %v", tt.name, d, tt.allow)
		}
		if asked := next.calls.Load() > n; asked != tt.asked {
			t.Errorf("%s: engine asked %v, want %v", tt.name, asked, tt.asked)
		}
	}

	// A policy that reads payload_size keys on it.
	e2 := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.payload_size < 10\n"}, policy.Options{})
	c2 := policy.NewCache(e2, nil, policy.CacheOptions{})
	s2 := subject("a")
	for _, tt := range []struct {
		size  int
		allow bool
	}{{4, true}, {4, true}, {40, false}, {4, true}, {40, false}} {
		in := &policy.Input{Action: policy.ActionPublish, Subject: s2, Topic: "t", PayloadSize: tt.size}
		if d := c2.Decide(ctx, in); d.Allow != tt.allow {
			t.Errorf("payload_size %d: %+v, want allow %v", tt.size, d, tt.allow)
		}
	}
	if st := c2.Stats(); st.Hits != 3 || st.Misses != 2 {
		t.Errorf("payload_size policy: %+v, want 3 hits, 2 misses", st)
	}
}

// A revision whose decisions depend on more than the key is never cached:
// every decision goes to the engine. A positive control beside them.
func TestCacheUncacheablePolicies(t *testing.T) {
	for _, tt := range []struct {
		name, src string
		cached    bool
	}{
		{"cacheable", `allow if input.topic == "t"`, true},
		{"input.time", `allow if input.time < "2026-11-28T12:00:01Z"`, false},
		{"computed key", `allow if { some k; input[k] == "t" }`, false},
		{"input as a whole", `allow if json.marshal(input) != ""`, false},
		{"clock", `allow if time.now_ns() > 0`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// time.now_ns is restricted; an operator who allows it still
			// gets a policy that is not cached.
			e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\n" + tt.src + "\n"}, policy.Options{AllowBuiltins: []string{"time.now_ns"}})
			next := &counting{next: e}
			c := policy.NewCache(e, next, policy.CacheOptions{})
			s := subject("a")
			const n = 5
			for range n {
				in := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "t", Time: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
				if d := c.Decide(context.Background(), in); !d.Allow || d.Err != nil {
					t.Fatalf("%+v", d)
				}
			}
			want := int64(n)
			if tt.cached {
				want = 1
			}
			if got := next.calls.Load(); got != want {
				t.Errorf("engine asked %d times for %d decisions, want %d (%+v)", got, n, want, c.Stats())
			}
		})
	}
}

// A policy that reads input.time decides by the time of each input, never
// by the one of a decision before.
func TestCacheTimePolicyFollowsTime(t *testing.T) {
	e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.time < \"2026-11-28T12:00:01Z\"\n"}, policy.Options{})
	c := policy.NewCache(e, nil, policy.CacheOptions{})
	s := subject("a")
	for _, tt := range []struct {
		at    time.Time
		allow bool
	}{
		{time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC), true},
		{time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC), true},
		{time.Date(2026, 11, 28, 12, 0, 5, 0, time.UTC), false},
		{time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC), true},
	} {
		in := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "t", Time: tt.at}
		if d := c.Decide(context.Background(), in); d.Allow != tt.allow {
			t.Errorf("at %s: %+v, want allow %v", tt.at, d, tt.allow)
		}
	}
}

// A new revision applies to the very next decision of an existing subject,
// and going back to an earlier policy applies at once too.
func TestCacheRevisionChange(t *testing.T) {
	allowT := map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.topic == \"t\"\n"}
	denyT := map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.topic == \"u\"\n\nreasons contains \"only u\" if not allow\n"}
	e := newEngine(t, allowT, policy.Options{})
	c := policy.NewCache(e, nil, policy.CacheOptions{})
	s := subject("a")
	in := &policy.Input{Action: policy.ActionReceive, Subject: s, Topic: "t"}
	ctx := context.Background()
	for i, step := range []struct {
		files map[string]string
		allow bool
	}{{allowT, true}, {denyT, false}, {allowT, true}, {denyT, false}} {
		if err := e.Load(mapFS(step.files)); err != nil {
			t.Fatal(err)
		}
		rev := e.Revision()
		for range 3 {
			d := c.Decide(ctx, in)
			if d.Allow != step.allow || d.Revision != rev {
				t.Fatalf("step %d: %+v, want allow %v under %s", i, d, step.allow, rev)
			}
			if !d.Allow && !slices.Equal(d.Reasons, []string{"only u"}) {
				t.Errorf("step %d: reasons %q", i, d.Reasons)
			}
		}
	}
	if st := c.Stats(); st.Hits != 8 || st.Misses != 4 {
		t.Errorf("%+v, want 8 hits and 4 misses", st)
	}
}

// A registry change gives the session a new Subject: it is decided afresh,
// while the old Subject's decisions stay its own.
func TestCacheNewSubject(t *testing.T) {
	e := defaultPolicyEngine(t)
	c := policy.NewCache(e, nil, policy.CacheOptions{})
	ctx := context.Background()
	old := roleSubject("ctl", "controller", "active")
	in := &policy.Input{Action: policy.ActionReceive, Subject: old, Topic: "devices/s1/telemetry/temp"}
	for range 2 {
		if d := c.Decide(ctx, in); !d.Allow {
			t.Fatalf("controller: %+v", d)
		}
	}
	// The controller label is taken away: a new Subject, as the gateway
	// builds after the registry change.
	in.Subject = roleSubject("ctl", "sensor", "active")
	for range 2 {
		if d := c.Decide(ctx, in); d.Allow || !slices.Contains(d.Reasons, "topic not granted") {
			t.Errorf("former controller: %+v, want denied", d)
		}
	}
	in.Subject = roleSubject("ctl", "controller", "suspended")
	if d := c.Decide(ctx, in); d.Allow || !slices.Contains(d.Reasons, "device suspended") {
		t.Errorf("suspended: %+v, want denied", d)
	}
	in.Subject = old
	if d := c.Decide(ctx, in); !d.Allow {
		t.Errorf("the old subject: %+v", d)
	}
	if st := c.Stats(); st.Misses != 3 || st.Hits != 3 {
		t.Errorf("%+v, want 3 misses, 3 hits", st)
	}
}

// A failed evaluation is never kept: the next decision asks the engine
// again. Nor is a decision a logger gave an id, nor one of another
// revision; and a done context gets the engine's answer, not a kept allow.
func TestCacheDoesNotKeepFailures(t *testing.T) {
	e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.topic == \"t\"\n"}, policy.Options{})
	failures := map[int]policy.Decision{
		0: {Revision: e.Revision(), Err: errors.New("policy: evaluation timed out")},
		1: {Allow: true, Revision: e.Revision(), ID: "decision-1"},
		2: {Allow: true, Revision: "another"},
	}
	var calls atomic.Int64
	next := policy.DeciderFunc(func(ctx context.Context, in *policy.Input) policy.Decision {
		n := int(calls.Add(1)) - 1
		if d, ok := failures[n]; ok {
			return d
		}
		return e.Decide(ctx, in)
	})
	c := policy.NewCache(e, next, policy.CacheOptions{})
	in := &policy.Input{Action: policy.ActionPublish, Subject: subject("a"), Topic: "t"}
	ctx := context.Background()
	for i := range len(failures) {
		if d := c.Decide(ctx, in); !sameDecision(d, failures[i]) {
			t.Errorf("call %d: %+v, want %+v", i, d, failures[i])
		}
	}
	for i := range 3 {
		if d := c.Decide(ctx, in); !d.Allow || d.Err != nil || d.ID != "" || d.Revision != e.Revision() {
			t.Errorf("call %d after the failures: %+v", i, d)
		}
	}
	if got := calls.Load(); got != int64(len(failures))+1 {
		t.Errorf("engine asked %d times, want %d", got, len(failures)+1)
	}

	done, cancel := context.WithCancel(ctx)
	cancel()
	if d := c.Decide(done, in); d.Allow || d.Err == nil {
		t.Errorf("done context: %+v, want the engine's failure", d)
	}
	if d := c.Decide(ctx, in); !d.Allow {
		t.Errorf("after the done context: %+v", d)
	}
}

// A subject's decisions are kept by the first Cache deciding for it; another
// Cache passes them through, and still decides right.
func TestCacheSubjectOwnedByOneCache(t *testing.T) {
	e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.topic == \"t\"\n"}, policy.Options{})
	a, b := policy.NewCache(e, nil, policy.CacheOptions{}), policy.NewCache(e, nil, policy.CacheOptions{})
	s := subject("a")
	for _, tt := range []struct {
		c     *policy.Cache
		topic string
		allow bool
	}{{a, "t", true}, {b, "t", true}, {b, "u", false}, {a, "t", true}} {
		if d := tt.c.Decide(context.Background(), &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: tt.topic}); d.Allow != tt.allow {
			t.Errorf("%q: %+v", tt.topic, d)
		}
	}
	if st := b.Stats(); st.Bypassed != 2 || st.Entries != 0 {
		t.Errorf("second cache: %+v", st)
	}
	if st := a.Stats(); st.Hits != 1 || st.Entries != 1 {
		t.Errorf("first cache: %+v", st)
	}
	runtime.KeepAlive(s) // its entries leave with it
}

// Memory is bounded: per subject and in all, and a subject's decisions
// leave with it.
func TestCacheBounded(t *testing.T) {
	e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow if startswith(input.topic, \"ok/\")\n"}, policy.Options{})
	const maxEntries, perSubject = 100, 10
	c := policy.NewCache(e, nil, policy.CacheOptions{MaxEntries: maxEntries, MaxPerSubject: perSubject})
	ctx := context.Background()
	subjects := make([]*policy.Subject, 40)
	for i := range subjects {
		subjects[i] = subject(fmt.Sprintf("d%d", i))
	}
	for round := range 2 {
		for i, s := range subjects {
			for j := range 3 * perSubject {
				topic := fmt.Sprintf("ok/%d", j)
				if j%2 == 1 {
					topic = fmt.Sprintf("no/%d", j)
				}
				d := c.Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: topic})
				if d.Allow != (j%2 == 0) || d.Err != nil {
					t.Fatalf("round %d, subject %d, %s: %+v", round, i, topic, d)
				}
				if n := c.Stats().Entries; n > maxEntries || n < 0 {
					t.Fatalf("%d entries, bound %d", n, maxEntries)
				}
			}
		}
	}
	st := c.Stats()
	if st.Entries < maxEntries/2 || st.Hits == 0 {
		t.Errorf("%+v: the cache should be near full and used", st)
	}

	// One subject alone holds at most perSubject.
	solo := policy.NewCache(e, nil, policy.CacheOptions{MaxPerSubject: perSubject})
	s := subject("solo")
	for j := range 5 * perSubject {
		solo.Decide(ctx, &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: fmt.Sprintf("ok/%d", j)})
	}
	if n := solo.Stats().Entries; n != perSubject {
		t.Errorf("one subject holds %d entries, want %d", n, perSubject)
	}
	runtime.KeepAlive(s)

	// The subjects go; so do their entries.
	clear(subjects)
	deadline := time.Now().Add(30 * time.Second)
	for c.Stats().Entries != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d entries left after the subjects were collected", c.Stats().Entries)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// Decisions from many goroutines on shared subjects while the revision
// flips: every decision is the one of the revision it names. Run with -race.
func TestCacheConcurrent(t *testing.T) {
	allowT := map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.topic == \"t\"\n"}
	denyT := map[string]string{"p.rego": "package ztgate.authz\n\nallow if input.topic == \"never\"\n"}
	e := newEngine(t, denyT, policy.Options{})
	denyRev := e.Revision()
	if err := e.Load(mapFS(allowT)); err != nil {
		t.Fatal(err)
	}
	allowRev := e.Revision()
	c := policy.NewCache(e, nil, policy.CacheOptions{MaxEntries: 8, MaxPerSubject: 4})
	subjects := []*policy.Subject{subject("a"), subject("b")}

	var wg sync.WaitGroup
	errs := make(chan string, 10)
	for g := range 4 {
		wg.Go(func() {
			for i := range 400 {
				topic := "t"
				if i%3 == 0 {
					topic = fmt.Sprintf("x%d", i%7)
				}
				in := &policy.Input{Action: policy.ActionReceive, Subject: subjects[(g+i)%2], Topic: topic}
				d := c.Decide(context.Background(), in)
				want := d.Revision == allowRev && topic == "t"
				if d.Err != nil || d.Allow != want || (d.Revision != allowRev && d.Revision != denyRev) {
					select {
					case errs <- fmt.Sprintf("goroutine %d: %q: %+v", g, topic, d):
					default:
					}
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 20 {
			files := denyT
			if i%2 == 1 {
				files = allowT
			}
			if err := e.Load(mapFS(files)); err != nil {
				errs <- err.Error()
			}
		}
	})
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	if st := c.Stats(); st.Hits == 0 || st.Entries > 8 {
		t.Errorf("%+v", st)
	}
}

// The nil-safe corners: no engine, no subject.
func TestCacheEdges(t *testing.T) {
	if d := policy.NewCache(nil, nil, policy.CacheOptions{}).Decide(context.Background(), &policy.Input{}); d.Allow || d.Err == nil {
		t.Errorf("no engine: %+v", d)
	}
	e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow := true\n"}, policy.Options{})
	c := policy.NewCache(e, nil, policy.CacheOptions{})
	for _, in := range []*policy.Input{nil, {Action: policy.ActionPublish}} {
		if d := c.Decide(context.Background(), in); d.Allow || d.Err == nil {
			t.Errorf("%+v: %+v, want the engine's failure", in, d)
		}
	}
	var nilCache *policy.Cache
	if st := nilCache.Stats(); st != (policy.CacheStats{}) {
		t.Errorf("nil cache stats %+v", st)
	}
	if d := nilCache.Decide(context.Background(), &policy.Input{}); d.Allow || d.Err == nil {
		t.Errorf("nil cache: %+v", d)
	}
}

// The decision path with and without the cache, in one run: the engine
// alone, a hit (the steady state of a session), and a miss (the engine,
// plus building and keeping the entry; a cache that holds one decision
// per subject, asked about two alternating topics, misses every time).
func BenchmarkCache(b *testing.B) {
	e := benchEngine(b)
	now := time.Now()
	for _, tt := range []struct {
		name, subject, role string
		action              policy.Action
		topics              [2]string
	}{
		{"publish", "sensor-1", "sensor", policy.ActionPublish,
			[2]string{"devices/sensor-1/telemetry/temp", "devices/sensor-1/telemetry/humidity"}},
		{"receive", "controller-1", "controller", policy.ActionReceive,
			[2]string{"devices/sensor-1/telemetry/temp", "devices/sensor-2/telemetry/temp"}},
	} {
		run := func(b *testing.B, d policy.Decider, alternate bool) {
			// A subject per run: its decisions belong to this run's cache.
			s := benchSubject(tt.subject, tt.role)
			var ins [2]*policy.Input
			for i, topic := range tt.topics {
				ins[i] = &policy.Input{Action: tt.action, Subject: s, Topic: topic, QoS: 1, PayloadSize: 12, Time: now}
			}
			ctx := context.Background()
			for _, in := range ins {
				if got := d.Decide(ctx, in); !got.Allow || got.Err != nil {
					b.Fatalf("%+v", got)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				in := ins[0]
				if alternate {
					in = ins[i&1]
					i++
				}
				d.Decide(ctx, in)
			}
		}
		b.Run(tt.name+"/engine", func(b *testing.B) { run(b, e, true) })
		b.Run(tt.name+"/cache-hit", func(b *testing.B) {
			run(b, policy.NewCache(e, nil, policy.CacheOptions{}), false)
		})
		b.Run(tt.name+"/cache-miss", func(b *testing.B) {
			run(b, policy.NewCache(e, nil, policy.CacheOptions{MaxPerSubject: 1}), true)
		})
		// Every goroutine deciding for one subject at once, as the
		// deliveries of many publishers to one subscriber do: the worst
		// case for the subject's lock and the shared counters.
		b.Run(tt.name+"/cache-hit-parallel", func(b *testing.B) {
			c := policy.NewCache(e, nil, policy.CacheOptions{})
			in := &policy.Input{Action: tt.action, Subject: benchSubject(tt.subject, tt.role), Topic: tt.topics[0], QoS: 1, PayloadSize: 12, Time: now}
			if d := c.Decide(context.Background(), in); !d.Allow {
				b.Fatalf("%+v", d)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				local := *in
				for pb.Next() {
					c.Decide(ctx, &local)
				}
			})
		})
	}
}
