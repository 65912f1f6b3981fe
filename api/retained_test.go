package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/policy"
)

// fakeRetained stands in for the gateway's retained messages: what the API
// needs of them is a list by filter and a delete by topic.
type fakeRetained struct {
	mu   sync.Mutex
	msgs map[string]brokerview.RetainedMessage
	err  error // answered by both functions when set
}

func newFakeRetained() *fakeRetained {
	return &fakeRetained{msgs: map[string]brokerview.RetainedMessage{}}
}

func (f *fakeRetained) put(topic string, size int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs[topic] = brokerview.RetainedMessage{Topic: topic, QoS: 1, PayloadSize: size,
		SPIFFEID: "spiffe://example.org/device/sensor-0", Created: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
}

// list answers in no particular order, as a store may.
func (f *fakeRetained) list(filter string, limit int) ([]brokerview.RetainedMessage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []brokerview.RetainedMessage
	for topic, m := range f.msgs {
		if len(out) < limit && policy.TopicMatches(filter, topic) {
			out = append(out, m)
		}
	}
	return out, nil
}

func (f *fakeRetained) delete(topic string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, f.err
	}
	_, ok := f.msgs[topic]
	delete(f.msgs, topic)
	return ok, nil
}

func retainedTopics(t *testing.T, r response) ([]string, bool) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("list: %d %s", r.Status, r.Body)
	}
	var l RetainedList
	r.DecodeJSON(t, &l)
	var topics []string
	for _, m := range l.Messages {
		topics = append(topics, m.Topic)
	}
	return topics, l.Truncated
}

func TestRetainedList(t *testing.T) {
	e := newEnv(t)
	for _, topic := range []string{"devices/b/state", "devices/a/state", "devices/a/telemetry/t", "$SYS/x"} {
		e.retained.put(topic, 12)
	}
	get := func(query string) response {
		t.Helper()
		return e.do(e.admin, http.MethodGet, "/v1/retained"+query, "", nil)
	}

	// The default filter is "#" (which, as in MQTT, leaves out $ topics);
	// the answer is sorted by topic.
	topics, truncated := retainedTopics(t, get(""))
	if want := []string{"devices/a/state", "devices/a/telemetry/t", "devices/b/state"}; !reflect.DeepEqual(topics, want) || truncated {
		t.Fatalf("default list %q truncated=%v, want %q", topics, truncated, want)
	}
	topics, _ = retainedTopics(t, get("?filter="+url.QueryEscape("devices/+/state")))
	if want := []string{"devices/a/state", "devices/b/state"}; !reflect.DeepEqual(topics, want) {
		t.Fatalf("devices/+/state: %q, want %q", topics, want)
	}
	topics, _ = retainedTopics(t, get("?filter="+url.QueryEscape("$SYS/#")))
	if want := []string{"$SYS/x"}; !reflect.DeepEqual(topics, want) {
		t.Fatalf("$SYS/#: %q, want %q", topics, want)
	}
	topics, truncated = retainedTopics(t, get("?limit=2"))
	if len(topics) != 2 || !truncated || !sort.StringsAreSorted(topics) {
		t.Fatalf("limit 2: %q truncated=%v, want 2 and truncated", topics, truncated)
	}
	topics, truncated = retainedTopics(t, get("?limit=3"))
	if len(topics) != 3 || truncated {
		t.Fatalf("limit 3: %q truncated=%v, want 3, not truncated", topics, truncated)
	}

	// The wire form of one message.
	var raw map[string]any
	get("?filter=devices/b/state").DecodeJSON(t, &raw)
	want := map[string]any{"messages": []any{map[string]any{"topic": "devices/b/state", "qos": float64(1), "payload_size": float64(12),
		"spiffe_id": "spiffe://example.org/device/sensor-0", "created": "2026-11-28T12:00:00Z"}}, "truncated": false}
	if !reflect.DeepEqual(raw, want) {
		t.Fatalf("wire form %v, want %v", raw, want)
	}
	// A message whose publisher is unknown has no spiffe_id at all, not
	// an empty one (the spec's field is optional).
	e.retained.mu.Lock()
	e.retained.msgs["devices/c/state"] = brokerview.RetainedMessage{Topic: "devices/c/state", QoS: 0, PayloadSize: 3,
		Created: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	e.retained.mu.Unlock()
	raw = nil
	get("?filter=devices/c/state").DecodeJSON(t, &raw)
	want = map[string]any{"messages": []any{map[string]any{"topic": "devices/c/state", "qos": float64(0), "payload_size": float64(3),
		"created": "2026-11-28T12:00:00Z"}}, "truncated": false}
	if !reflect.DeepEqual(raw, want) {
		t.Fatalf("wire form without a publisher %v, want %v", raw, want)
	}

	for _, q := range []string{
		"?filter=", "?filter=a/%23/b", "?filter=a%2B", "?filter=a/b%23", "?filter=a%00b", "?filter=%FF",
		"?filter=" + url.QueryEscape("$share/g/#"), "?filter=" + url.QueryEscape("$SHARE/g/devices/#"),
		"?limit=0", "?limit=x", "?limit=1001", "?topic=a", "?filter=a&filter=b",
	} {
		r := get(q)
		if r.Status != http.StatusBadRequest {
			t.Errorf("GET /v1/retained%s: %d %s, want 400", q, r.Status, r.Body)
			continue
		}
		r.StrictError(t)
	}
	if r := e.do(e.device, http.MethodGet, "/v1/retained", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device: %d, want 403", r.Status)
	}
}

func TestRetainedDelete(t *testing.T) {
	e := newEnv(t)
	e.retained.put("devices/a/state", 3)
	e.retained.put("devices/b/state", 3)
	del := func(c *http.Client, query string) response {
		t.Helper()
		return e.do(c, http.MethodDelete, "/v1/retained"+query, "", nil)
	}

	if r := del(e.device, "?topic=devices/a/state"); r.Status != http.StatusForbidden {
		t.Fatalf("device: %d %s, want 403", r.Status, r.Body)
	}
	for _, q := range []string{"", "?topic=", "?topic=devices/%2B/state", "?topic=devices/%23", "?topic=%23",
		"?topic=a%00b", "?topic=%FF", "?filter=%23", "?topic=a&topic=b"} {
		r := del(e.admin, q)
		if r.Status != http.StatusBadRequest {
			t.Errorf("DELETE /v1/retained%s: %d %s, want 400", q, r.Status, r.Body)
			continue
		}
		r.StrictError(t)
	}
	if topics, _ := retainedTopics(t, e.do(e.admin, http.MethodGet, "/v1/retained", "", nil)); len(topics) != 2 {
		t.Fatalf("a refused delete removed something: %q", topics)
	}

	r := del(e.admin, "?topic=devices/a/state")
	if r.Status != http.StatusNoContent || len(r.Body) != 0 {
		t.Fatalf("delete: %d %q, want 204 and no body", r.Status, r.Body)
	}
	if r := del(e.admin, "?topic=devices/a/state"); r.Status != http.StatusNotFound {
		t.Fatalf("delete again: %d %s, want 404", r.Status, r.Body)
	} else {
		r.StrictError(t)
	}
	if topics, _ := retainedTopics(t, e.do(e.admin, http.MethodGet, "/v1/retained", "", nil)); !reflect.DeepEqual(topics, []string{"devices/b/state"}) {
		t.Fatalf("after the delete: %q", topics)
	}

	// Deletes are audited, successful or not; the refused ones too.
	var got []string
	for _, a := range e.auditEntries() {
		if a.Action == "retained.delete" {
			got = append(got, a.Result+" "+a.Target)
		}
	}
	want := map[string]bool{
		"ok retained devices/a/state":    true,
		"error retained devices/a/state": true,
		"denied DELETE /v1/retained":     true,
	}
	for _, g := range got {
		delete(want, g)
	}
	if len(want) != 0 {
		t.Fatalf("audit entries %q lack %v", got, want)
	}
}

// Without the gateway's functions the routes still answer: nothing is
// retained, so nothing is listed or deleted. A failing function is a 500
// that tells nothing.
func TestRetainedWithoutGateway(t *testing.T) {
	none := newEnv(t, func(c *Config) { c.ListRetained, c.DeleteRetained = nil, nil })
	if topics, truncated := retainedTopics(t, none.do(none.admin, http.MethodGet, "/v1/retained", "", nil)); len(topics) != 0 || truncated {
		t.Fatalf("list without a gateway: %q", topics)
	}
	var raw map[string]any
	none.do(none.admin, http.MethodGet, "/v1/retained", "", nil).DecodeJSON(t, &raw)
	if l, ok := raw["messages"].([]any); !ok || len(l) != 0 {
		t.Fatalf("messages %v, want []", raw["messages"])
	}
	if r := none.do(none.admin, http.MethodDelete, "/v1/retained?topic=a/b", "", nil); r.Status != http.StatusNotFound {
		t.Fatalf("delete without a gateway: %d %s, want 404", r.Status, r.Body)
	}

	broken := newEnv(t)
	broken.retained.err = errors.New("store on fire")
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		r := broken.do(broken.admin, method, "/v1/retained?topic=a/b", "", nil)
		if method == http.MethodGet {
			r = broken.do(broken.admin, method, "/v1/retained", "", nil)
		}
		if r.Status != http.StatusInternalServerError || r.StrictError(t) != "internal error" {
			t.Errorf("%s with a failing store: %d %s, want 500 internal error", method, r.Status, r.Body)
		}
	}
}

// The policy sees the retained routes by name, so a policy can give them
// to an operator without giving it the rest.
func TestRetainedRoutesDecidedByPolicy(t *testing.T) {
	var mu sync.Mutex
	var seen []policy.Request
	e := newEnv(t, func(c *Config) {
		next := c.Decider
		c.Decider = policy.DeciderFunc(func(ctx context.Context, in *policy.Input) policy.Decision {
			mu.Lock()
			seen = append(seen, *in.Request)
			mu.Unlock()
			return next.Decide(ctx, in)
		})
	})
	e.retained.put("devices/a/state", 1)
	e.do(e.admin, http.MethodGet, "/v1/retained?filter=devices/%23", "", nil)
	e.do(e.admin, http.MethodDelete, "/v1/retained?topic=devices/a/state", "", nil)
	mu.Lock()
	defer mu.Unlock()
	want := []policy.Request{
		{Method: "GET", Path: "/v1/retained", Route: "retained.list"},
		{Method: "DELETE", Path: "/v1/retained", Route: "retained.delete"},
	}
	if !reflect.DeepEqual(seen, want) {
		t.Fatalf("decided %+v, want %+v", seen, want)
	}
}
