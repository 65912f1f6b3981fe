package policy

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
)

var when = time.Date(2026, 11, 28, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))

func testSubject() *Subject {
	return &Subject{
		Identity: Identity{
			SPIFFEID:    "spiffe://example.org/device/a",
			TrustDomain: "example.org",
			Path:        "/device/a",
			Segments:    []string{"device", "a"},
		},
		Device: &Device{Name: "a", Labels: map[string]string{"role": "sensor", "site": "b"}, Status: "active"},
		Client: Client{ID: "a", RemoteAddr: "127.0.0.1:50412", ProtocolVersion: 5},
	}
}

// valueInputs covers every action and every optional part of the document.
func valueInputs() map[string]*Input {
	s := testSubject()
	unenrolled := testSubject()
	unenrolled.Device = nil
	bare := &Subject{Device: &Device{Name: "x"}} // nil segments and labels, zero values
	return map[string]*Input{
		"connect":         {Action: ActionConnect, Subject: s, Time: when, Topic: "ignored", Filter: "ignored", QoS: 2, Request: &Request{Method: "GET"}},
		"connect-unenrol": {Action: ActionConnect, Subject: unenrolled, Time: when},
		"publish":         {Action: ActionPublish, Subject: s, Time: when, Topic: "devices/a/telemetry/temp", QoS: 1, PayloadSize: 12, Filter: "ignored"},
		"publish-retain":  {Action: ActionPublish, Subject: s, Time: when, Topic: "devices/a/state", QoS: 0, Retain: true, PayloadSize: 100000},
		"will":            {Action: ActionPublish, Subject: s, Time: when, Topic: "devices/a/state", QoS: 2, Retain: true, Will: true},
		"publish-empty":   {Action: ActionPublish, Subject: s, Time: when},
		"receive":         {Action: ActionReceive, Subject: s, Time: when, Topic: "devices/a/commands/x", QoS: 1, PayloadSize: 3},
		"subscribe":       {Action: ActionSubscribe, Subject: s, Time: when, Filter: "devices/a/commands/#", QoS: 1, Topic: "ignored", Retain: true},
		"subscribe-unenr": {Action: ActionSubscribe, Subject: unenrolled, Time: when, Filter: "#"},
		"admin":           {Action: ActionAdmin, Subject: s, Time: when, Request: &Request{Method: "POST", Path: "/v1/devices", Route: "device.create"}, Topic: "ignored"},
		"admin-norequest": {Action: ActionAdmin, Subject: s, Time: when},
		"bridge-out": {Action: ActionBridgeOut, Subject: s, Time: when, Topic: "devices/a/telemetry/t", QoS: 1, PayloadSize: 4,
			Bridge: &Bridge{Name: "cloud", URL: "mqtts://up.example:8883", RemoteTopic: "plant-a/devices/a/telemetry/t"}, Request: &Request{Method: "GET"}},
		"bridge-in": {Action: ActionBridgeIn, Subject: unenrolled, Time: when, Topic: "devices/a/commands/x", Retain: true,
			Bridge: &Bridge{Name: "cloud", URL: "mqtts://up.example:8883", RemoteTopic: "plant-a/devices/a/commands/x"}},
		"publish-bridge": {Action: ActionPublish, Subject: s, Time: when, Topic: "t", Bridge: &Bridge{Name: "ignored"}},
		"unknown-action": {Action: "unsubscribe", Subject: s, Time: when, Topic: "x", Filter: "y"},
		"empty-action":   {Subject: s, Time: when},
		"bare-subject":   {Action: ActionPublish, Subject: bare, Time: when, Topic: "t"},
		"odd-strings":    {Action: ActionPublish, Subject: s, Time: when, Topic: "a/\"b\"/\\/ü/\u2028/\x01"},
	}
}

// The hot path builds the document without JSON; this guards it against the
// JSON encoding (the documented contract) for every action.
func TestValueMatchesJSON(t *testing.T) {
	for name, in := range valueInputs() {
		t.Run(name, func(t *testing.T) {
			raw, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			var doc any
			if err := util.UnmarshalJSON(raw, &doc); err != nil {
				t.Fatal(err)
			}
			want, err := ast.InterfaceToValue(doc)
			if err != nil {
				t.Fatal(err)
			}
			got := in.value()
			if got.Compare(want) != 0 {
				t.Errorf("fast path differs from the JSON document\n fast: %v\n json: %v", got, want)
			}
		})
	}
}

func TestMarshalJSONDocument(t *testing.T) {
	in := valueInputs()
	tests := map[string]string{
		"publish": `{"action":"publish",` +
			`"identity":{"spiffe_id":"spiffe://example.org/device/a","trust_domain":"example.org","path":"/device/a","segments":["device","a"]},` +
			`"device":{"name":"a","labels":{"role":"sensor","site":"b"},"status":"active"},` +
			`"client":{"id":"a","remote_addr":"127.0.0.1:50412","protocol_version":5},` +
			`"topic":"devices/a/telemetry/temp","qos":1,"retain":false,"will":false,"payload_size":12,` +
			`"time":"2026-11-28T11:00:00Z"}`,
		"connect-unenrol": `{"action":"connect",` +
			`"identity":{"spiffe_id":"spiffe://example.org/device/a","trust_domain":"example.org","path":"/device/a","segments":["device","a"]},` +
			`"device":null,` +
			`"client":{"id":"a","remote_addr":"127.0.0.1:50412","protocol_version":5},` +
			`"time":"2026-11-28T11:00:00Z"}`,
		"subscribe-unenr": `{"action":"subscribe",` +
			`"identity":{"spiffe_id":"spiffe://example.org/device/a","trust_domain":"example.org","path":"/device/a","segments":["device","a"]},` +
			`"device":null,` +
			`"client":{"id":"a","remote_addr":"127.0.0.1:50412","protocol_version":5},` +
			`"filter":"#","qos":0,"time":"2026-11-28T11:00:00Z"}`,
		"admin": `{"action":"admin",` +
			`"identity":{"spiffe_id":"spiffe://example.org/device/a","trust_domain":"example.org","path":"/device/a","segments":["device","a"]},` +
			`"device":{"name":"a","labels":{"role":"sensor","site":"b"},"status":"active"},` +
			`"client":{"id":"a","remote_addr":"127.0.0.1:50412","protocol_version":5},` +
			`"request":{"method":"POST","path":"/v1/devices","route":"device.create"},"time":"2026-11-28T11:00:00Z"}`,
		"bare-subject": `{"action":"publish",` +
			`"identity":{"spiffe_id":"","trust_domain":"","path":"","segments":[]},` +
			`"device":{"name":"x","labels":{},"status":""},` +
			`"client":{"id":"","remote_addr":"","protocol_version":0},` +
			`"topic":"t","qos":0,"retain":false,"will":false,"payload_size":0,"time":"2026-11-28T11:00:00Z"}`,
	}
	for name, want := range tests {
		raw, err := json.Marshal(in[name])
		if err != nil {
			t.Fatal(err)
		}
		if string(raw) != want {
			t.Errorf("%s:\n got  %s\n want %s", name, raw, want)
		}
	}
}

func TestValueZeroTimeIsNow(t *testing.T) {
	before := time.Now().UTC().Truncate(time.Second)
	v := (&Input{Action: ActionConnect, Subject: testSubject()}).value().(ast.Object)
	after := time.Now().UTC()
	s, ok := v.Get(keyTime).Value.(ast.String)
	if !ok {
		t.Fatalf("time = %v", v.Get(keyTime))
	}
	got, err := time.Parse(time.RFC3339, string(s))
	if err != nil || got.Before(before) || got.After(after) || !strings.HasSuffix(string(s), "Z") {
		t.Errorf("time = %s (%v), want now in UTC", s, err)
	}
}

func TestSubjectConvertedOnce(t *testing.T) {
	s := testSubject()
	a := (&Input{Action: ActionPublish, Subject: s, Topic: "x"}).value().(ast.Object)
	b := (&Input{Action: ActionReceive, Subject: s, Topic: "y"}).value().(ast.Object)
	for _, k := range []*ast.Term{keyIdentity, keyDevice, keyClient} {
		if a.Get(k) != b.Get(k) {
			t.Errorf("%v converted twice", k)
		}
	}
	// A subject whose cache holds something else still converts correctly.
	other := testSubject()
	other.Cached(func(*Subject) any { return "not ours" })
	in := &Input{Action: ActionConnect, Subject: other, Time: when}
	ref := &Input{Action: ActionConnect, Subject: testSubject(), Time: when}
	if in.value().Compare(ref.value()) != 0 {
		t.Error("foreign cache value broke the conversion")
	}
}

// The conversion itself stays cheap once the subject is cached.
func TestValueAllocations(t *testing.T) {
	in := &Input{Action: ActionPublish, Subject: testSubject(), Topic: "devices/a/telemetry/temp", QoS: 1, PayloadSize: 12, Time: when}
	in.value()
	allocs := testing.AllocsPerRun(100, func() { in.value() })
	t.Logf("Input.value: %.0f allocs", allocs)
	if allocs > 12 {
		t.Errorf("Input.value allocates %.0f times, want at most 12", allocs)
	}
}

func BenchmarkInputValue(b *testing.B) {
	in := &Input{Action: ActionPublish, Subject: testSubject(), Topic: "devices/a/telemetry/temp", QoS: 1, PayloadSize: 12, Time: when}
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			in.value()
		}
	})
	b.Run("json-roundtrip", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			raw, _ := json.Marshal(in)
			var doc any
			_ = util.UnmarshalJSON(raw, &doc)
			_, _ = ast.InterfaceToValue(doc)
		}
	})
}

// bridge_out and bridge_in carry the message fields and the bridge; other
// actions never carry a bridge.
func TestBridgeInputDocument(t *testing.T) {
	ins := valueInputs()
	raw, err := json.Marshal(ins["bridge-out"])
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"name": "cloud", "url": "mqtts://up.example:8883", "remote_topic": "plant-a/devices/a/telemetry/t"}
	if !reflect.DeepEqual(doc["bridge"], want) || doc["action"] != "bridge_out" || doc["topic"] != "devices/a/telemetry/t" ||
		doc["qos"] != float64(1) || doc["payload_size"] != float64(4) || doc["request"] != nil {
		t.Fatalf("bridge_out document: %s", raw)
	}
	raw, err = json.Marshal(ins["publish-bridge"])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "bridge") {
		t.Fatalf("publish document carries a bridge: %s", raw)
	}
}
