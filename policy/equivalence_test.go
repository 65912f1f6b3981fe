package policy

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// The engine evaluates allow, and reasons only for a deny, sharing one cache.
// This checks that it decides exactly as one evaluation of the whole package
// data.ztgate.authz does (the straightforward way): the same allow for every
// input, the same reasons for every deny, and, for the default policy, no
// reasons on an allow, so the Decision is the same in full.
func TestDecisionsMatchWholePackageEvaluation(t *testing.T) {
	srcs, err := readSources(defaultpolicy.FS, false)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := parseSources(srcs)
	if err != nil {
		t.Fatal(err)
	}
	for _, td := range []string{"", "example.org", "other.org"} {
		var data map[string]any
		if td != "" {
			data = map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": td}}}
		}
		e, err := NewEngine(defaultpolicy.FS, Options{Data: data, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		opts := []func(*rego.Rego){rego.Query(Query), rego.SetRegoVersion(ast.RegoV1), rego.StrictBuiltinErrors(true)}
		if data != nil {
			opts = append(opts, rego.Data(data))
		}
		for _, m := range mods {
			opts = append(opts, rego.ParsedModule(m))
		}
		ref, err := rego.New(append(opts, regoBuiltins()...)...).PrepareForEval(context.Background())
		if err != nil {
			t.Fatal(err)
		}

		inputs := decisionGrid()
		allows, denies := 0, 0
		for _, in := range inputs {
			got := e.Decide(context.Background(), in)
			rs, err := ref.Eval(context.Background(), rego.EvalParsedInput(in.value()))
			if err != nil || got.Err != nil {
				t.Fatalf("%s: reference err %v, engine err %v", describe(in), err, got.Err)
			}
			var wantAllow bool
			var wantReasons []string
			if len(rs) == 1 {
				doc, _ := rs[0].Expressions[0].Value.(map[string]any)
				wantAllow, _ = doc["allow"].(bool)
				if r, ok := doc["reasons"].([]any); ok {
					for _, x := range r {
						wantReasons = append(wantReasons, x.(string))
					}
				}
			}
			slices.Sort(wantReasons)
			gotReasons := slices.Sorted(slices.Values(got.Reasons))
			if got.Allow != wantAllow || !slices.Equal(gotReasons, wantReasons) {
				t.Errorf("trust domain %q, %s: engine allow=%v reasons=%q; whole package allow=%v reasons=%q",
					td, describe(in), got.Allow, gotReasons, wantAllow, wantReasons)
			}
			if got.Allow {
				allows++
			} else {
				denies++
			}
		}
		// The grid exercises both outcomes; a trust domain not served
		// allows nothing.
		if (td == "other.org") != (allows == 0) || denies < 10 || (td != "other.org" && allows < 10) {
			t.Errorf("trust domain %q: %d allows, %d denies in %d inputs", td, allows, denies, len(inputs))
		}
	}
}

func describe(in *Input) string {
	s := string(in.Action) + " by " + in.Subject.Identity.SPIFFEID
	if d := in.Subject.Device; d != nil {
		s += " (" + d.Status + " " + d.Labels["role"] + ")"
	}
	return s + " " + in.Topic + in.Filter
}

// decisionGrid is every combination of a set of subjects with the actions,
// topics and filters the default policy's rules and reasons tell apart.
func decisionGrid() []*Input {
	subj := func(segs []string, name, role, status string) *Subject {
		s := &Subject{
			Identity: Identity{
				SPIFFEID:    "spiffe://example.org/" + strings.Join(segs, "/"),
				TrustDomain: "example.org",
				Path:        "/" + strings.Join(segs, "/"),
				Segments:    segs,
			},
			Client: Client{ID: name, RemoteAddr: "127.0.0.1:1", ProtocolVersion: 5},
		}
		if status != "" {
			s.Device = &Device{Name: name, Labels: map[string]string{"role": role}, Status: status}
		}
		return s
	}
	subjects := []*Subject{
		subj([]string{"device", "s1"}, "s1", "sensor", "active"),
		subj([]string{"device", "s1"}, "s1", "sensor", "suspended"),
		subj([]string{"device", "s1"}, "s1", "sensor", "revoked"),
		subj([]string{"device", "s1"}, "s1", "sensor", "pending"),
		subj([]string{"device", "s1"}, "s1", "sensor", "odd"),
		subj([]string{"device", "s1"}, "s1", "", ""), // not enrolled
		subj([]string{"device", "s1"}, "s2", "sensor", "active"),
		subj([]string{"device", "+"}, "+", "sensor", "active"),
		subj([]string{"workload", "ctl"}, "ctl", "controller", "active"),
		subj([]string{"workload", "ctl"}, "ctl", "controller", "suspended"),
		subj([]string{"admin", "dev"}, "admin-dev", "admin", "active"),
		subj([]string{"bridge", "cloud"}, "ztgate-cloud", "", ""), // a bridge, never enrolled
		subj([]string{"bridge", "+"}, "ztgate-x", "", ""),
		subj([]string{"bridge", "cloud", "x"}, "ztgate-x", "", ""),
	}
	topics := []string{
		"devices/s1/telemetry/temp", "devices/s1/telemetry", "devices/s1/state", "devices/s1/commands/reboot",
		"devices/s2/telemetry/temp", "devices/s2/state", "devices/s2/commands/reboot", "devices/+/state",
		"$SYS/broker/uptime", "other",
	}
	filters := []string{
		"devices/s1/commands/#", "devices/s1/commands/+", "devices/+/telemetry/#", "devices/+/state",
		"devices/s2/commands/#", "devices/#", "#", "$SYS/#", "devices/+/commands/#",
	}
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	var out []*Input
	for _, s := range subjects {
		out = append(out,
			&Input{Action: ActionConnect, Subject: s, Time: now},
			&Input{Action: ActionAdmin, Subject: s, Request: &Request{Method: "GET", Path: "/v1/devices"}, Time: now},
			&Input{Action: "unsubscribe", Subject: s, Time: now},
		)
		for _, topic := range topics {
			for _, flags := range [][2]bool{{false, false}, {true, false}, {false, true}} {
				out = append(out, &Input{Action: ActionPublish, Subject: s, Topic: topic, QoS: 1, Retain: flags[0], Will: flags[1], Time: now})
			}
			out = append(out, &Input{Action: ActionReceive, Subject: s, Topic: topic, QoS: 1, Time: now})
			br := &Bridge{Name: "cloud", URL: "mqtts://up.example:8883", RemoteTopic: "plant-a/" + topic}
			for _, retain := range []bool{false, true} {
				out = append(out,
					&Input{Action: ActionBridgeOut, Subject: s, Topic: topic, QoS: 1, Retain: retain, Bridge: br, Time: now},
					&Input{Action: ActionBridgeIn, Subject: s, Topic: topic, QoS: 1, Retain: retain, Bridge: br, Time: now})
			}
		}
		for _, f := range filters {
			out = append(out, &Input{Action: ActionSubscribe, Subject: s, Filter: f, QoS: 1, Time: now})
		}
	}
	return out
}
