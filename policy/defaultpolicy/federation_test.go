package defaultpolicy_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// gatewayData is the base document the gateway gives the policy
// (app.PolicyData): its own trust domain.
var gatewayData = map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": "example.org"}}}

// The default policy admits only the gateway's own trust domain. A device
// of a federated trust domain that is registered and active on the gateway
// (its SVID verified against the partner's bundle) is allowed nothing,
// whatever its labels, until a recipe such as
// examples/policy-recipes/federation grants it something; the own device
// beside it is allowed.
func TestDefaultPolicyOnlyOwnTrustDomain(t *testing.T) {
	e, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: slog.New(slog.DiscardHandler), Data: gatewayData})
	if err != nil {
		t.Fatal(err)
	}
	subject := func(td string, labels map[string]string) *policy.Subject {
		return &policy.Subject{
			Identity: policy.Identity{SPIFFEID: "spiffe://" + td + "/device/s1", TrustDomain: td, Path: "/device/s1", Segments: []string{"device", "s1"}},
			Device:   &policy.Device{Name: "s1", Labels: labels, Status: "active"},
			Client:   policy.Client{ID: "c1", RemoteAddr: "127.0.0.1:1", ProtocolVersion: 5},
		}
	}
	inputs := func(s *policy.Subject) map[string]*policy.Input {
		return map[string]*policy.Input{
			"connect":         {Action: policy.ActionConnect, Subject: s},
			"telemetry":       {Action: policy.ActionPublish, Subject: s, Topic: "devices/s1/telemetry/temp", QoS: 1},
			"state":           {Action: policy.ActionPublish, Subject: s, Topic: "devices/s1/state", QoS: 1, Retain: true},
			"commands":        {Action: policy.ActionSubscribe, Subject: s, Filter: "devices/s1/commands/#", QoS: 1},
			"receive command": {Action: policy.ActionReceive, Subject: s, Topic: "devices/s1/commands/x", QoS: 1},
		}
	}
	ctx := context.Background()
	for name, in := range inputs(subject("example.org", map[string]string{})) {
		if d := e.Decide(ctx, in); !d.Allow {
			t.Errorf("own device, %s: %+v", name, d)
		}
	}
	for _, labels := range []map[string]string{{}, {"role": "controller"}, {"role": "admin"}} {
		partner := subject("partner.example", labels)
		all := inputs(partner)
		all["controller filter"] = &policy.Input{Action: policy.ActionSubscribe, Subject: partner, Filter: "devices/+/telemetry/#", QoS: 1}
		all["admin"] = &policy.Input{Action: policy.ActionAdmin, Subject: partner, Request: &policy.Request{Method: "GET", Path: "/v1/devices", Route: "device.list"}}
		for name, in := range all {
			d := e.Decide(ctx, in)
			if d.Allow || d.Err != nil || !slices.Contains(d.Reasons, "trust domain not served") {
				t.Errorf("partner device labelled %v, %s: %+v", labels, name, d)
			}
		}
	}
}
