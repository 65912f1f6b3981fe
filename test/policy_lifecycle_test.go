package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testutil"
)

// The policy the lifecycle tests change under live clients. base.rego and
// its tests never change; roles.rego says who reads telemetry and is the
// module each test rewrites, through the watched policy directory or the
// API.

const lifecycleBase = `package ztgate.authz

default allow := false

active if {
	is_object(input.device)
	input.device.status == "active"
}

role := input.device.labels.role if active

# device_name is the name of an active device spiffe://TD/device/NAME
# enrolled under that name.
device_name := name if {
	active
	["device", name] = input.identity.segments
	input.device.name == name
}

own(suffix) := concat("/", ["devices", device_name, suffix])

allow if {
	input.action == "connect"
	device_name
}

allow if {
	input.action == "connect"
	role == "controller"
}

allow if {
	input.action == "publish"
	not input.retain
	not input.will
	mqtt.topic_matches(own("telemetry/#"), input.topic)
}

allow if {
	input.action == "subscribe"
	mqtt.filter_within(own("commands/#"), input.filter)
}

allow if {
	input.action == "receive"
	mqtt.topic_matches(own("commands/#"), input.topic)
}

allow if {
	input.action == "publish"
	role == "controller"
	not input.retain
	not input.will
	mqtt.topic_matches("devices/+/commands/#", input.topic)
}

allow if {
	input.action == "admin"
	role == "admin"
}
`

const lifecycleBaseTest = `package ztgate.authz_test

import data.ztgate.authz

sensor := {
	"identity": {
		"spiffe_id": "spiffe://example.org/device/sensor-1",
		"trust_domain": "example.org",
		"path": "/device/sensor-1",
		"segments": ["device", "sensor-1"],
	},
	"device": {"name": "sensor-1", "labels": {"role": "sensor"}, "status": "active"},
	"client": {"id": "sensor-1", "remote_addr": "127.0.0.1:1", "protocol_version": 5},
	"time": "2026-01-01T00:00:00Z",
}

publish(topic) := object.union(sensor, {"action": "publish", "topic": topic, "qos": 1, "retain": false, "will": false, "payload_size": 1})

test_device_publishes_own_telemetry if {
	inp := publish("devices/sensor-1/telemetry/t")
	authz.allow with input as inp
}

test_device_cannot_publish_for_another_device if {
	inp := publish("devices/sensor-2/telemetry/t")
	not authz.allow with input as inp
}

test_device_cannot_publish_commands if {
	inp := publish("devices/sensor-1/commands/reboot")
	not authz.allow with input as inp
}
`

// rolesV1: controllers, dashboards and the historian read telemetry.
const rolesV1 = `package ztgate.authz

telemetry_readers := {"controller", "dashboard", "historian"}

allow if {
	input.action == "connect"
	role in {"dashboard", "historian"}
}

allow if {
	input.action == "subscribe"
	role in telemetry_readers
	mqtt.filter_within("devices/+/telemetry/#", input.filter)
}

allow if {
	input.action == "receive"
	role in telemetry_readers
	mqtt.topic_matches("devices/+/telemetry/#", input.topic)
}
`

// rolesV2: telemetry is for the historian alone; dashboards are retired
// (they may not even connect) and controllers keep only their commands.
const rolesV2 = `package ztgate.authz

telemetry_readers := {"historian"}

allow if {
	input.action == "connect"
	role == "historian"
}

allow if {
	input.action == "subscribe"
	role in telemetry_readers
	mqtt.filter_within("devices/+/telemetry/#", input.filter)
}

allow if {
	input.action == "receive"
	role in telemetry_readers
	mqtt.topic_matches("devices/+/telemetry/#", input.topic)
}
`

// lifecycle is a gateway enforcing the policy above from a watched
// directory, with its cast: a device, a controller, a dashboard and the
// historian.
type lifecycle struct {
	*testutil.Observed
	dir                     string
	sensor, ctl, dash, hist *testutil.Device
}

func newLifecycle(t *testing.T) *lifecycle {
	t.Helper()
	dir := t.TempDir()
	for name, src := range map[string]string{
		"base.rego":      lifecycleBase,
		"base_test.rego": lifecycleBaseTest,
		"roles.rego":     rolesV1,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ob := testutil.StartObserved(t, nil, testutil.WithPolicyDir(dir))
	if got := ob.App.PolicyDir(); got != dir {
		t.Fatalf("the gateway enforces %s; want the policy directory %s", got, dir)
	}
	return &lifecycle{
		Observed: ob,
		dir:      dir,
		sensor:   ob.Enroll(t, "sensor-1", map[string]string{"role": "sensor"}),
		ctl:      ob.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"}),
		dash:     ob.EnrollID(t, "dash", "spiffe://example.org/observer/dash", map[string]string{"role": "dashboard"}),
		hist:     ob.EnrollID(t, "hist", "spiffe://example.org/observer/hist", map[string]string{"role": "historian"}),
	}
}

// policyState is GET /v1/policy.
type policyState struct {
	Revision    string    `json:"revision"`
	ActivatedAt time.Time `json:"activated_at"`
	Modules     []string  `json:"modules"`
	Dir         string    `json:"dir"`
	LastError   string    `json:"last_error"`
	LastErrorAt time.Time `json:"last_error_at"`
}

func policyOf(t *testing.T, env *testutil.Env) policyState {
	t.Helper()
	res := env.API(t, env.Admin, "GET", "/v1/policy", nil)
	if res.Status != 200 {
		t.Fatalf("GET /v1/policy: %d %s", res.Status, res.Body)
	}
	var st policyState
	res.Decode(t, &st)
	if st.Revision == "" {
		t.Fatalf("GET /v1/policy: no active revision: %s", res.Body)
	}
	return st
}

// waitPolicy polls GET /v1/policy until done holds.
func waitPolicy(t *testing.T, env *testutil.Env, what string, done func(policyState) bool) policyState {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		st := policyOf(t, env)
		if done(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; policy status: %+v", what, wait, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func putModule(t *testing.T, env *testutil.Env, name, src string) *testutil.Response {
	t.Helper()
	res, err := env.APIRaw(env.Admin, "PUT", "/v1/policy/modules/"+name, "text/plain", []byte(src))
	if err != nil {
		t.Fatalf("PUT module %s: %v", name, err)
	}
	return res
}

// activateByFile writes a module into the watched policy directory, as an
// operator editing the policy does, and waits until a new revision is
// active.
func (l *lifecycle) activateByFile(t *testing.T, name, src string) policyState {
	t.Helper()
	before := policyOf(t, l.Env)
	start := time.Now()
	if err := os.WriteFile(filepath.Join(l.dir, name), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	st := waitPolicy(t, l.Env, "revision from the edited "+name, func(st policyState) bool { return st.Revision != before.Revision })
	t.Logf("%s written: revision %.12s active after %s", name, st.Revision, time.Since(start).Round(time.Millisecond))
	return st
}

// activateByAPI uploads a module through PUT /v1/policy/modules/{name};
// the answer comes once the new revision is active.
func (l *lifecycle) activateByAPI(t *testing.T, name, src string) policyState {
	t.Helper()
	before := policyOf(t, l.Env)
	res := putModule(t, l.Env, name, src)
	if res.Status != 200 {
		t.Fatalf("PUT module %s: %d %s", name, res.Status, res.Body)
	}
	var st policyState
	res.Decode(t, &st)
	if st.Revision == before.Revision {
		t.Fatalf("PUT module %s answered 200 with the revision in force %.12s", name, st.Revision)
	}
	if now := policyOf(t, l.Env); now.Revision != st.Revision {
		t.Fatalf("PUT module %s answered revision %.12s, GET /v1/policy says %.12s", name, st.Revision, now.Revision)
	}
	// Nothing acknowledged is lost: the module is in the policy directory.
	if raw, err := os.ReadFile(filepath.Join(l.dir, name)); err != nil || string(raw) != src {
		t.Fatalf("uploaded module %s not kept in the policy directory (err %v)", name, err)
	}
	return st
}

// reevaluated waits until the gateway has re-checked every session against
// revision rev.
func (l *lifecycle) reevaluated(t *testing.T, rev string) {
	t.Helper()
	line := l.Logs.WaitFor(t, wait, "sessions re-evaluated", "policy revision "+rev[:12])
	t.Logf("re-evaluation: %s", line)
}

// Rule: a new policy revision applies to live sessions at once, whether it
// comes from an edit of the watched policy directory or from the API. The
// controller's telemetry subscription is removed (not merely filtered: the
// old revision back in force does not revive it), the dashboard, whose
// CONNECT is now refused, is disconnected with 0x87. Positive controls: the
// controller's command path to the device, the historian that kept its
// grant, and the dashboard connecting again under the old revision.
func TestPolicyLifecycle_LiveChangeUnderConnectedClients(t *testing.T) {
	t.Parallel()
	for _, how := range []struct {
		name     string
		activate func(*lifecycle, *testing.T, string, string) policyState
	}{
		{"watched directory", (*lifecycle).activateByFile},
		{"API upload", (*lifecycle).activateByAPI},
	} {
		t.Run(how.name, func(t *testing.T) {
			t.Parallel()
			l := newLifecycle(t)
			env := l.Env
			sensor := env.MustConnect(t, l.sensor, "sensor-1", nil)
			sensor.Sub(t, "devices/sensor-1/commands/#")
			ctl := env.MustConnect(t, l.ctl, "ctl", nil)
			ctl.Sub(t, "devices/+/telemetry/#")
			dash := env.MustConnect(t, l.dash, "dash", nil)
			dash.Sub(t, "devices/+/telemetry/#")
			hist := env.MustConnect(t, l.hist, "hist", nil)
			hist.Sub(t, "devices/+/telemetry/#")

			// Before: every telemetry reader gets the device's telemetry.
			sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/before", Payload: "1", QoS: 1})
			for _, c := range []*testutil.Client{ctl, dash, hist} {
				c.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/before", "1", wait)
			}

			v2 := how.activate(l, t, "roles.rego", rolesV2)

			// The dashboard may no longer connect: its live session ends
			// with DISCONNECT 0x87, and it cannot come back.
			if d := dash.WaitDisconnect(t, wait); d.ReasonCode != testutil.ReasonNotAuthorized {
				t.Fatalf("dashboard DISCONNECT reason %#x; want 0x87", d.ReasonCode)
			}
			env.RequireRefused(t, l.dash, "dash", nil, testutil.ReasonNotAuthorized)
			l.reevaluated(t, v2.Revision)

			// The controller stays connected and its commands still reach
			// the device (positive control on the controller's session).
			ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/after", Payload: "2", QoS: 1})
			sensor.Msgs.ExpectPayload(t, "devices/sensor-1/commands/after", "2", wait)
			// Telemetry reaches the historian, which kept its grant, and no
			// longer the controller.
			sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/after", Payload: "3", QoS: 1})
			hist.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/after", "3", wait)
			ctl.Msgs.ExpectNone(t, quiet)
			if codes := ctl.SubscribeCodes(t, "devices/+/telemetry/#", "devices/sensor-1/telemetry/#"); codes[0] != 0x87 || codes[1] != 0x87 {
				t.Errorf("controller SUBSCRIBE to telemetry under the new revision: %#x; want [0x87 0x87]", codes)
			}
			if ctl.Closed() {
				t.Fatal("the controller, whose CONNECT is still allowed, was disconnected")
			}

			// The subscription was removed, not filtered: with the old
			// revision back in force, telemetry does not reach the
			// controller until it subscribes again.
			v1 := how.activate(l, t, "roles.rego", rolesV1)
			l.reevaluated(t, v1.Revision)
			sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/restored", Payload: "4", QoS: 1})
			hist.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/restored", "4", wait)
			ctl.Msgs.ExpectNone(t, quiet)
			ctl.Sub(t, "devices/+/telemetry/#")
			sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/resubscribed", Payload: "5", QoS: 1})
			ctl.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/resubscribed", "5", wait)
			ctl.Msgs.Never(t, "devices/sensor-1/telemetry/restored")

			// And the dashboard is admitted again: its refusal was the
			// revision's doing.
			env.MustConnect(t, l.dash, "dash", nil).Close()
		})
	}
}

// openModule compiles but would let any identity publish anywhere; the
// policy's own test test_device_cannot_publish_for_another_device catches
// it.
const openModule = `package ztgate.authz

allow if input.action == "publish"
`

// stateModule is a good change: devices publish their state, controllers
// read it.
const stateModule = `package ztgate.authz

allow if {
	input.action == "publish"
	not input.will
	input.topic == own("state")
}

allow if {
	input.action == "subscribe"
	role == "controller"
	mqtt.filter_within("devices/+/state", input.filter)
}

allow if {
	input.action == "receive"
	role == "controller"
	mqtt.topic_matches("devices/+/state", input.topic)
}
`

// Rule: a revision that does not compile, or whose own tests fail, is
// refused (422 through the API; reported as last_error from the watched
// directory) and never written to the policy directory; the last good
// revision stays in force, and enforcement goes on exactly as before:
// allowed telemetry flows, a publish the refused module would have allowed
// is still denied. A good module through the same route is the control.
func TestPolicyLifecycle_BrokenRevisionRefusedEnforcementContinues(t *testing.T) {
	t.Parallel()
	l := newLifecycle(t)
	env := l.Env
	good := policyOf(t, env)
	sensor := env.MustConnect(t, l.sensor, "sensor-1", nil)
	ctl := env.MustConnect(t, l.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/telemetry/#")

	n := 0
	enforcing := func(stage string) {
		t.Helper()
		n++
		sensor.PubDenied(t, msg{Topic: "devices/sensor-2/telemetry/forged", Payload: stage})
		sensor.PubDenied(t, msg{Topic: "devices/sensor-1/state", Payload: stage})
		topic := fmt.Sprintf("devices/sensor-1/telemetry/check-%d", n)
		sensor.Pub(t, msg{Topic: topic, Payload: stage, QoS: 1})
		ctl.Msgs.ExpectPayload(t, topic, stage, wait)
		ctl.Msgs.ExpectNone(t, quiet)
		if st := policyOf(t, env); st.Revision != good.Revision {
			t.Fatalf("%s: revision %.12s in force; want the last good one %.12s", stage, st.Revision, good.Revision)
		}
	}
	enforcing("before")

	for _, c := range []struct {
		name, module, src string
		mention           string // what the error must name
	}{
		{"syntax error", "zz_syntax.rego", "package ztgate.authz\n\nallow if {\n", "zz_syntax.rego"},
		{"unknown function", "zz_unknown.rego", "package ztgate.authz\n\nallow if mqtt.no_such_builtin(input.topic)\n", "mqtt.no_such_builtin"},
		{"own test fails", "zz_open.rego", openModule, "test_device_cannot_publish_for_another_device"},
	} {
		res := putModule(t, env, c.module, c.src)
		if res.Status != 422 {
			t.Fatalf("%s: PUT %s: %d %s; want 422", c.name, c.module, res.Status, res.Body)
		}
		emsg := res.ErrorMessage(t)
		t.Logf("%s: 422 %s", c.name, emsg)
		if !strings.Contains(emsg, c.mention) {
			t.Errorf("%s: the 422 error does not name %q: %s", c.name, c.mention, emsg)
		}
		st := policyOf(t, env)
		if st.LastError == "" || !strings.Contains(st.LastError, c.mention) {
			t.Errorf("%s: GET /v1/policy last_error %q; want the refusal naming %q", c.name, st.LastError, c.mention)
		}
		if slices.Contains(st.Modules, c.module) {
			t.Errorf("%s: refused module %s listed as active: %v", c.name, c.module, st.Modules)
		}
		if _, err := os.Stat(filepath.Join(l.dir, c.module)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: refused module %s was written to the policy directory (stat: %v)", c.name, c.module, err)
		}
		enforcing(c.name)
	}

	// The same refusal for a broken file written into the watched
	// directory: it is reported, the last good revision stays.
	prev := policyOf(t, env)
	broken := filepath.Join(l.dir, "zz_broken.rego")
	if err := os.WriteFile(broken, []byte("package ztgate.authz\n\nallow if {\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := waitPolicy(t, env, "refusal of zz_broken.rego reported", func(st policyState) bool {
		return st.LastErrorAt.After(prev.LastErrorAt) && strings.Contains(st.LastError, "zz_broken.rego")
	})
	t.Logf("broken file refused: %s", st.LastError)
	enforcing("broken file in the policy directory")
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}

	// Control: a good module through the same route is activated and
	// enforced at once.
	res := putModule(t, env, "zz_state.rego", stateModule)
	if res.Status != 200 {
		t.Fatalf("PUT a good module: %d %s", res.Status, res.Body)
	}
	ctl.Sub(t, "devices/+/state")
	sensor.Pub(t, msg{Topic: "devices/sensor-1/state", Payload: "online", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/state", "online", wait)
	sensor.PubDenied(t, msg{Topic: "devices/sensor-2/telemetry/forged", Payload: "after"})
	ctl.Msgs.ExpectNone(t, quiet)

	fams := scrapeMetrics(t, env)
	if v := metricValue(t, fams, "ztgate_policy_activation_failures_total", nil); v < 4 {
		t.Errorf("ztgate_policy_activation_failures_total = %v after 4 refused revisions", v)
	}
}

// Rule (CVE-2018-12546 class, for a policy change): a QoS 1 message queued
// for an offline persistent session is not delivered when the session
// returns if a revision activated meanwhile took the permission away; the
// historian, which kept its permission, gets the same queued messages
// (positive control).
func TestPolicyLifecycle_QueuedMessagesRecheckedAfterChange(t *testing.T) {
	t.Parallel()
	l := newLifecycle(t)
	env := l.Env
	p := &testutil.ConnOpts{Persistent: true, SessionExpiry: 300}
	for _, who := range []struct {
		dev *testutil.Device
		id  string
	}{{l.ctl, "ctl"}, {l.hist, "hist"}} {
		c := env.MustConnect(t, who.dev, who.id, p)
		c.Sub(t, "devices/+/telemetry/#")
		c.Close()
	}

	sensor := env.MustConnect(t, l.sensor, "sensor-1", nil)
	sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/queued", Payload: "q", QoS: 1})
	// mochi acknowledges a PUBLISH before it fans it out, but handles one
	// client's packets in order: once the next PUBACK is back, the first
	// message is queued for both offline sessions.
	sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/barrier", Payload: "b", QoS: 1})

	v2 := l.activateByAPI(t, "roles.rego", rolesV2)
	l.reevaluated(t, v2.Revision)

	hist := env.MustConnect(t, l.hist, "hist", p)
	if !hist.Connack.SessionPresent {
		t.Fatal("the historian's persistent session was lost")
	}
	hist.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/queued", "q", wait)
	hist.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/barrier", "b", wait)

	ctl := env.MustConnect(t, l.ctl, "ctl", p)
	t.Logf("controller: session present %v", ctl.Connack.SessionPresent)
	sensor.Pub(t, msg{Topic: "devices/sensor-1/telemetry/live", Payload: "l", QoS: 1})
	hist.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/live", "l", wait)
	// The controller itself is served: its commands reach the device.
	dev := env.MustConnect(t, l.sensor, "sensor-1-cmd", nil)
	dev.Sub(t, "devices/sensor-1/commands/#")
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/ping", Payload: "p", QoS: 1})
	dev.Msgs.ExpectPayload(t, "devices/sensor-1/commands/ping", "p", wait)
	ctl.Msgs.ExpectNone(t, quiet)
	hist.Msgs.ExpectNone(t, quiet)
}

// Rule: a denial is traceable from the gateway's log line about the client
// to its decision-log entry: the line's decision_id names exactly one
// entry, which has result.allow=false, the same topic (or filter), the
// client's identity and the revision in force. The allowed publish beside
// it (positive control) is delivered and logged with allow=true.
func TestPolicyLifecycle_DenyTracedToDecisionLog(t *testing.T) {
	t.Parallel()
	ob := testutil.StartObserved(t, func(c *app.Config) { c.DecisionLog.SampleAllow = 1 })
	s1 := ob.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
	ctlDev := ob.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"})
	rev := policyOf(t, ob.Env).Revision

	ctl := ob.MustConnect(t, ctlDev, "ctl", nil)
	ctl.Sub(t, "devices/+/telemetry/#")
	dev := ob.MustConnect(t, s1, "sensor-1", nil)
	dev.PubDenied(t, msg{Topic: "devices/sensor-2/telemetry/forged", Payload: "x"})
	if codes := dev.SubscribeCodes(t, "devices/#", "devices/sensor-1/commands/#"); codes[0] != 0x87 || codes[1] != 0x01 {
		t.Fatalf("SUBSCRIBE [devices/#, own commands]: %#x; want [0x87 0x01]", codes)
	}
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/ok", Payload: "y", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/ok", "y", wait)
	ctl.Msgs.ExpectNone(t, quiet)

	for _, c := range []struct {
		action, key, value string
	}{
		{"publish", "topic", "devices/sensor-2/telemetry/forged"},
		{"subscribe", "filter", "devices/#"},
	} {
		line := ob.Logs.WaitFor(t, wait, "gateway: denied", "action="+c.action, c.key+"="+c.value)
		t.Logf("gateway log: %s", line)
		id := testutil.LogAttr(line, "decision_id")
		if id == "" {
			t.Fatalf("the %s denial's log line has no decision_id: %s", c.action, line)
		}
		for key, want := range map[string]string{"spiffe_id": s1.ID, "client_id": "sensor-1", "revision": rev} {
			if got := testutil.LogAttr(line, key); got != want {
				t.Errorf("%s denial log line: %s=%q; want %q", c.action, key, got, want)
			}
		}
		e := ob.WaitDecision(t, id, wait)
		raw, _ := json.Marshal(e)
		t.Logf("decision log: %s", raw)
		if e.Result.Allow {
			t.Errorf("decision %s: result.allow=true for a denial", id)
		}
		if e.Revision != rev {
			t.Errorf("decision %s: revision %q; want %q", id, e.Revision, rev)
		}
		if e.Path == "" || e.Timestamp.IsZero() {
			t.Errorf("decision %s: path %q, timestamp %v; want both set", id, e.Path, e.Timestamp)
		}
		in := decisionInput(t, e.Input)
		if in.Action != c.action || in.Identity.SPIFFEID != s1.ID || in.Client.ID != "sensor-1" {
			t.Errorf("decision %s: input %s; want action %s by %s as sensor-1", id, e.Input, c.action, s1.ID)
		}
		if got := map[string]string{"topic": in.Topic, "filter": in.Filter}[c.key]; got != c.value {
			t.Errorf("decision %s: input %s %q; want %q", id, c.key, got, c.value)
		}
		count := 0
		for _, other := range ob.Decisions(t) {
			if other.DecisionID == id {
				count++
			}
		}
		if count != 1 {
			t.Errorf("decision_id %s names %d entries; want exactly one", id, count)
		}
	}

	// Positive control: the allowed publish is in the log as an allow.
	deadline := time.Now().Add(wait)
	for {
		found := false
		for _, e := range ob.Decisions(t) {
			in := decisionInput(t, e.Input)
			if in.Action == "publish" && in.Topic == "devices/sensor-1/telemetry/ok" {
				if !e.Result.Allow {
					t.Fatalf("the delivered publish is logged as a deny: %s", e.DecisionID)
				}
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the allowed publish is not in the decision log (sample_allow 1)")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type loggedInput struct {
	Action   string `json:"action"`
	Topic    string `json:"topic"`
	Filter   string `json:"filter"`
	Identity struct {
		SPIFFEID string `json:"spiffe_id"`
	} `json:"identity"`
	Client struct {
		ID string `json:"id"`
	} `json:"client"`
}

func decisionInput(t *testing.T, raw json.RawMessage) loggedInput {
	t.Helper()
	var in loggedInput
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatalf("decision input is not the input document: %v: %s", err, raw)
	}
	return in
}

// scrapeMetrics reads /metrics as the admin and parses the Prometheus
// text format.
func scrapeMetrics(t *testing.T, env *testutil.Env) map[string]*dto.MetricFamily {
	t.Helper()
	res := env.API(t, env.Admin, "GET", "/metrics", nil)
	if res.Status != 200 {
		t.Fatalf("GET /metrics as admin: %d %s", res.Status, truncate(res.Body))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(res.Body)))
	if err != nil {
		t.Fatalf("/metrics is not the Prometheus text format: %v", err)
	}
	return fams
}

// metricValue is the value of the series of name whose labels include
// labels (summed over the matching series), failing the test if there is
// none.
func metricValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("/metrics has no %s", name)
	}
	var sum float64
	n := 0
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range labels {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		n++
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	if n == 0 {
		t.Fatalf("/metrics has no %s series with labels %v", name, labels)
	}
	return sum
}

// Rule: /metrics, read as the admin after a short run, reports decisions
// by action and result (denies included), the sessions connected now,
// policy activations and decision latency, all under the ztgate_ prefix.
func TestPolicyLifecycle_MetricsAfterShortRun(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	env := f.env
	ctl := env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Sub(t, "devices/+/telemetry/#")
	dev := env.MustConnect(t, f.s1, "sensor-1", nil)
	dev.Pub(t, msg{Topic: "devices/sensor-1/telemetry/t", Payload: "1", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/t", "1", wait)
	dev.PubDenied(t, msg{Topic: "devices/sensor-2/telemetry/t", Payload: "forged"})
	if codes := dev.SubscribeCodes(t, "#"); codes[0] != 0x87 {
		t.Fatalf("SUBSCRIBE #: %#x; want 0x87", codes[0])
	}
	env.RequireRefused(t, env.Issue(t, env.DeviceID("stranger")), "stranger", nil, testutil.ReasonNotAuthorized)

	fams := scrapeMetrics(t, env)
	for name := range fams {
		// go_ and process_ are the standard runtime collectors.
		if !strings.HasPrefix(name, "ztgate_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s is not under the ztgate_ prefix", name)
		}
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"ztgate_decisions_total", map[string]string{"action": "publish", "result": "deny"}, 1},
		{"ztgate_decisions_total", map[string]string{"action": "publish", "result": "allow"}, 1},
		{"ztgate_decisions_total", map[string]string{"action": "subscribe", "result": "deny"}, 1},
		{"ztgate_decisions_total", map[string]string{"action": "connect", "result": "deny"}, 1},
		{"ztgate_decisions_total", map[string]string{"action": "receive", "result": "allow"}, 1},
		{"ztgate_sessions", nil, 2},
		{"ztgate_policy_activations_total", nil, 1},
		{"ztgate_decision_duration_seconds", map[string]string{"action": "publish"}, 2},
		{"ztgate_connections_total", map[string]string{"result": "accepted"}, 2},
		{"ztgate_connections_total", map[string]string{"result": "refused"}, 1},
	} {
		v := metricValue(t, fams, c.name, c.labels)
		t.Logf("%s%v = %v", c.name, c.labels, v)
		if v < c.min {
			t.Errorf("%s%v = %v; want at least %v", c.name, c.labels, v, c.min)
		}
	}
	if v := metricValue(t, fams, "ztgate_sessions", nil); v != 2 {
		t.Errorf("ztgate_sessions = %v with two clients connected", v)
	}

	// The gauge is current: it falls when a session ends.
	dev.Close()
	deadline := time.Now().Add(wait)
	for {
		v := metricValue(t, scrapeMetrics(t, env), "ztgate_sessions", nil)
		if v == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ztgate_sessions = %v after one of two clients left; want 1", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
