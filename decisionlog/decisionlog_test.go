package decisionlog_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// lockedBuffer is a Writer the writer goroutine and the test can share.
type lockedBuffer struct{ testpki.LogBuffer }

func (b *lockedBuffer) entries(t *testing.T) []decisionlog.Entry {
	t.Helper()
	return parseEntries(t, b.Bytes())
}

func parseEntries(t *testing.T, data []byte) []decisionlog.Entry {
	t.Helper()
	var out []decisionlog.Entry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var e decisionlog.Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q is not an entry: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func subject(name string) *policy.Subject {
	return &policy.Subject{
		Identity: policy.Identity{
			SPIFFEID:    "spiffe://example.org/device/" + name,
			TrustDomain: "example.org",
			Path:        "/device/" + name,
			Segments:    []string{"device", name},
		},
		Device: &policy.Device{Name: name, Labels: map[string]string{"role": "sensor"}, Status: "active"},
		Client: policy.Client{ID: name, RemoteAddr: "127.0.0.1:50412", ProtocolVersion: 5},
	}
}

func publish(name, topic string) *policy.Input {
	return &policy.Input{
		Action: policy.ActionPublish, Subject: subject(name), Topic: topic,
		QoS: 1, PayloadSize: 12, Time: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC),
	}
}

// fixed decides by the topic: "allow/..." allows, "error/..." fails, anything
// else denies.
var fixed = policy.DeciderFunc(func(_ context.Context, in *policy.Input) policy.Decision {
	switch {
	case in != nil && strings.HasPrefix(in.Topic, "allow/"):
		return policy.Decision{Allow: true, Revision: "rev-1"}
	case in != nil && strings.HasPrefix(in.Topic, "error/"):
		return policy.Decision{Revision: "rev-1", Err: errors.New("policy: evaluation timed out")}
	}
	return policy.Decision{Reasons: []string{"topic not granted"}, Revision: "rev-1"}
})

func newLogger(t *testing.T, cfg decisionlog.Config) *decisionlog.Logger {
	t.Helper()
	if cfg.ErrorLog == nil {
		cfg.ErrorLog = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	l, err := decisionlog.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func mustClose(t *testing.T, l *decisionlog.Logger) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// ids returns the decision ids of entries, checking that they are unique.
func ids(t *testing.T, es []decisionlog.Entry) map[string]decisionlog.Entry {
	t.Helper()
	m := make(map[string]decisionlog.Entry, len(es))
	for _, e := range es {
		if _, dup := m[e.DecisionID]; dup {
			t.Fatalf("decision_id %q logged twice", e.DecisionID)
		}
		m[e.DecisionID] = e
	}
	return m
}

func TestDeniesAlwaysLoggedAllowsSampled(t *testing.T) {
	for _, rate := range []float64{0, 1} {
		t.Run(fmt.Sprint("rate=", rate), func(t *testing.T) {
			var out lockedBuffer
			// Every deny in an entry of its own: aggregation off (see
			// aggregate_test.go).
			l := newLogger(t, decisionlog.Config{Writer: &out, SampleAllow: rate, AggregateInterval: -1})
			d := l.Wrap(fixed)
			ctx := context.Background()
			const n = 200
			want := map[string]string{} // decision id -> topic
			for i := range n {
				for _, kind := range []string{"allow", "deny", "error"} {
					topic := fmt.Sprintf("%s/%d", kind, i)
					got := d.Decide(ctx, publish("a", topic))
					if got.Allow != (kind == "allow") {
						t.Fatalf("%s: Allow = %v: the wrapper changed the decision", topic, got.Allow)
					}
					logged := kind != "allow" || rate == 1
					if logged != (got.ID != "") {
						t.Fatalf("%s: ID = %q, want logged=%v", topic, got.ID, logged)
					}
					if logged {
						want[got.ID] = topic
					}
				}
			}
			mustClose(t, l)
			es := ids(t, out.entries(t))
			if len(es) != len(want) {
				t.Fatalf("%d entries, want %d", len(es), len(want))
			}
			for id, topic := range want {
				e, ok := es[id]
				if !ok {
					t.Fatalf("decision %s (%s) not in the log", id, topic)
				}
				var in struct{ Topic string }
				if err := json.Unmarshal(e.Input, &in); err != nil || in.Topic != topic {
					t.Fatalf("entry %s has topic %q (%v), want %q", id, in.Topic, err, topic)
				}
				if e.Result.Allow != strings.HasPrefix(topic, "allow/") {
					t.Fatalf("entry %s: allow = %v for %s", id, e.Result.Allow, topic)
				}
				if isErr := strings.HasPrefix(topic, "error/"); isErr != (e.Error != "") {
					t.Fatalf("entry %s: error = %q for %s", id, e.Error, topic)
				}
			}
			if s := l.Stats(); s.Written != uint64(len(want)) || s.Dropped != 0 || s.Failed != 0 {
				t.Fatalf("Stats = %+v, want %d written", s, len(want))
			}
		})
	}
}

// A rate of one half logs about half of the allows. The generator is seeded,
// so the count is reproducible; the bound (6 standard deviations) would hold
// for any seed.
func TestSampleHalf(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, SampleAllow: 0.5, BufferSize: 1 << 15})
	r := rand.New(rand.NewPCG(1, 2))
	decisionlog.SetRand(l, r.Uint64)
	d := l.Wrap(fixed)
	const n = 20000
	logged := 0
	for range n {
		if d.Decide(context.Background(), publish("a", "allow/x")).ID != "" {
			logged++
		}
	}
	mustClose(t, l)
	if got := len(out.entries(t)); got != logged {
		t.Fatalf("%d entries, but %d decisions carry an id", got, logged)
	}
	sd := math.Sqrt(n * 0.25)
	if lo, hi := n/2-6*sd, n/2+6*sd; float64(logged) < lo || float64(logged) > hi {
		t.Fatalf("logged %d of %d allows at rate 0.5, want within [%.0f, %.0f]", logged, n, lo, hi)
	}
}

// The entry has exactly OPA's decision-log fields, and its input is the
// policy input document the engine evaluated. Decided by the real engine on
// the default policy.
func TestEntryShape(t *testing.T) {
	eng, err := policy.NewEngine(defaultpolicy.FS, policy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, SampleAllow: 1, Labels: map[string]string{"id": "gw-1", "app": "other"}})
	d := l.Wrap(eng)

	allowIn := publish("a", "devices/a/telemetry/temp")
	denyIn := &policy.Input{Action: policy.ActionSubscribe, Subject: subject("a"), Filter: "#", QoS: 1,
		Time: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	adminIn := &policy.Input{Action: policy.ActionAdmin, Subject: subject("a"),
		Request: &policy.Request{Method: "POST", Path: "/v1/devices"}, Time: allowIn.Time}
	unenrolled := publish("b", "devices/b/state")
	unenrolled.Subject.Device = nil

	before := time.Now()
	cases := []struct {
		in      *policy.Input
		allow   bool
		reasons bool
	}{
		{allowIn, true, false},
		{denyIn, false, true},
		{adminIn, false, true},
		{unenrolled, false, true},
	}
	decided := make([]policy.Decision, len(cases))
	for i, c := range cases {
		decided[i] = d.Decide(context.Background(), c.in)
		if decided[i].Allow != c.allow || decided[i].Err != nil {
			t.Fatalf("case %d: decision %+v, want allow=%v", i, decided[i], c.allow)
		}
	}
	mustClose(t, l)
	after := time.Now()

	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != len(cases) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(cases), strings.Join(lines, "\n"))
	}
	uuidRE := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	wantKeys := []string{"decision_id", "input", "labels", "path", "result", "revision", "timestamp"}
	for i, line := range lines {
		c := cases[i]
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			t.Fatal(err)
		}
		var keys []string
		for k := range raw {
			keys = append(keys, k)
		}
		if !sameSet(keys, wantKeys) {
			t.Fatalf("line %d has fields %v, want %v", i, keys, wantKeys)
		}
		var e decisionlog.Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		if e.DecisionID != decided[i].ID || !uuidRE.MatchString(e.DecisionID) {
			t.Fatalf("line %d: decision_id %q, the caller got %q", i, e.DecisionID, decided[i].ID)
		}
		if e.Path != "ztgate/authz" {
			t.Fatalf("path = %q", e.Path)
		}
		if e.Revision == "" || e.Revision != eng.Revision() {
			t.Fatalf("revision = %q, want the engine's %q", e.Revision, eng.Revision())
		}
		if !reflect.DeepEqual(e.Labels, map[string]string{"app": "ztgate", "id": "gw-1"}) {
			t.Fatalf("labels = %v", e.Labels)
		}
		var ts string
		json.Unmarshal(raw["timestamp"], &ts)
		if p, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.HasSuffix(ts, "Z") || p.Before(before.Truncate(time.Microsecond)) || p.After(after) {
			t.Fatalf("timestamp %q is not RFC 3339 UTC within the test (%v)", ts, err)
		}
		if e.Result.Allow != c.allow || (len(e.Result.Reasons) > 0) != c.reasons {
			t.Fatalf("line %d: result %+v", i, e.Result)
		}
		if !reflect.DeepEqual(e.Result.Reasons, nonNil(decided[i].Reasons)) {
			t.Fatalf("line %d: reasons %v, the caller got %v", i, e.Result.Reasons, decided[i].Reasons)
		}
		wantIn, err := c.in.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !jsonEqual(t, e.Input, wantIn) {
			t.Fatalf("line %d: input\n%s\nwant\n%s", i, e.Input, wantIn)
		}
	}
	// The document as DESIGN shows it, field for field.
	var doc map[string]any
	json.Unmarshal([]byte(lines[3]), &doc)
	in := doc["input"].(map[string]any)
	if dev, ok := in["device"]; !ok || dev != nil {
		t.Fatalf("device of an identity that is not enrolled = %v (present %v), want null", dev, ok)
	}
	for _, k := range []string{"action", "identity", "client", "topic", "qos", "retain", "will", "payload_size", "time"} {
		if _, ok := in[k]; !ok {
			t.Fatalf("publish input lacks %q: %v", k, in)
		}
	}
	for _, k := range []string{"filter", "request"} {
		if _, ok := in[k]; ok {
			t.Fatalf("publish input carries %q: %v", k, in)
		}
	}
}

func TestErrorField(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out})
	got := l.Wrap(fixed).Decide(context.Background(), publish("a", "error/x"))
	mustClose(t, l)
	var raw map[string]any
	if err := json.Unmarshal(out.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["error"] != "policy: evaluation timed out" || raw["decision_id"] != got.ID {
		t.Fatalf("entry %v for a failed evaluation %+v", raw, got)
	}
	if res := raw["result"].(map[string]any); res["allow"] != false {
		t.Fatalf("failed evaluation logged as %v", res)
	}
}

// A wrapper never turns a failed evaluation into an allow, even from a
// Decider that breaks the fail-closed contract; it logs it as a deny.
func TestErrorIsLoggedAsDeny(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out})
	broken := policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
		return policy.Decision{Allow: true, Err: errors.New("boom")}
	})
	got := l.Wrap(broken).Decide(context.Background(), publish("a", "x"))
	mustClose(t, l)
	es := out.entries(t)
	if got.ID == "" || len(es) != 1 || es[0].Result.Allow || es[0].Error != "boom" {
		t.Fatalf("decision %+v logged as %+v", got, es)
	}
}

func TestNilInputAndNilDecider(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out})
	got := l.Wrap(nil).Decide(context.Background(), nil)
	if got.Allow || got.Err == nil || got.ID == "" {
		t.Fatalf("nil decider decided %+v, want a logged deny with an error", got)
	}
	mustClose(t, l)
	es := out.entries(t)
	if len(es) != 1 || string(es[0].Input) != "null" || es[0].DecisionID != got.ID {
		t.Fatalf("entries %+v", es)
	}

	var nl *decisionlog.Logger
	if d := nl.Wrap(fixed); d.Decide(context.Background(), publish("a", "allow/x")).Allow != true {
		t.Fatal("a nil Logger must pass decisions through")
	}
}

// The caller may reuse its Input after Decide: the entry keeps what was
// decided.
func TestInputCopied(t *testing.T) {
	gate := newGatedWriter()
	l := newLogger(t, decisionlog.Config{Writer: gate})
	in := &policy.Input{Action: policy.ActionAdmin, Subject: subject("a"),
		Request: &policy.Request{Method: "DELETE", Path: "/v1/devices/a"}}
	d := l.Wrap(fixed)
	first := d.Decide(context.Background(), in)
	in.Action, in.Request.Method, in.Request.Path = policy.ActionPublish, "GET", "/"
	in.Topic = "changed"
	gate.open()
	mustClose(t, l)
	es := gate.entries(t)
	if len(es) != 1 || es[0].DecisionID != first.ID {
		t.Fatalf("entries %+v", es)
	}
	var doc struct {
		Action  string
		Topic   *string
		Request struct{ Method, Path string }
		Time    string
	}
	if err := json.Unmarshal(es[0].Input, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Action != "admin" || doc.Topic != nil || doc.Request.Method != "DELETE" || doc.Request.Path != "/v1/devices/a" {
		t.Fatalf("logged input %s, want the input as decided", es[0].Input)
	}
	if _, err := time.Parse(time.RFC3339, doc.Time); err != nil {
		t.Fatalf("input time %q: %v", doc.Time, err)
	}
}

// gatedWriter blocks every Write until open is called, and tells when the
// first Write has started.
type gatedWriter struct {
	lockedBuffer
	gate    chan struct{}
	entered chan struct{}
	once    sync.Once
}

func newGatedWriter() *gatedWriter {
	return &gatedWriter{gate: make(chan struct{}), entered: make(chan struct{})}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.once.Do(func() { close(g.entered) })
	<-g.gate
	return g.lockedBuffer.Write(p)
}

func (g *gatedWriter) open() { close(g.gate) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// With the buffer full, a sampled allow is dropped and counted, and a deny is
// written synchronously: it is never lost.
func TestFullBuffer(t *testing.T) {
	w := newGatedWriter()
	l := newLogger(t, decisionlog.Config{Writer: w, SampleAllow: 1, BufferSize: 1})
	d := l.Wrap(fixed)
	ctx := context.Background()

	a1 := d.Decide(ctx, publish("a", "allow/1")) // taken by the writer, which blocks
	<-w.entered
	a2 := d.Decide(ctx, publish("a", "allow/2")) // fills the buffer
	a3 := d.Decide(ctx, publish("a", "allow/3")) // dropped
	if a1.ID == "" || a2.ID == "" || a3.ID != "" {
		t.Fatalf("ids %q %q %q: want the first two logged, the third dropped", a1.ID, a2.ID, a3.ID)
	}
	if s := l.Stats(); s.Dropped != 1 {
		t.Fatalf("Stats = %+v, want one drop", s)
	}

	denied := make(chan policy.Decision)
	go func() { denied <- d.Decide(ctx, publish("a", "deny/1")) }()
	waitFor(t, "the deny to take the synchronous path", func() bool { return l.Stats().Synchronous == 1 })
	w.open()
	deny := <-denied
	if deny.ID == "" || deny.Allow {
		t.Fatalf("deny decided %+v", deny)
	}
	mustClose(t, l)

	got := ids(t, w.entries(t))
	for _, id := range []string{a1.ID, a2.ID, deny.ID} {
		if _, ok := got[id]; !ok {
			t.Fatalf("decision %s not logged; log has %v", id, got)
		}
	}
	if len(got) != 3 {
		t.Fatalf("%d entries, want 3", len(got))
	}
	if s := l.Stats(); s.Written != 3 || s.Dropped != 1 || s.Synchronous != 1 || s.Failed != 0 {
		t.Fatalf("Stats = %+v", s)
	}
}

// Close waits for every buffered entry to be written.
func TestCloseFlushes(t *testing.T) {
	w := newGatedWriter()
	l := newLogger(t, decisionlog.Config{Writer: w, SampleAllow: 1, BufferSize: 1000})
	d := l.Wrap(fixed)
	const n = 500
	for i := range n {
		d.Decide(context.Background(), publish("a", fmt.Sprintf("allow/%d", i)))
	}
	<-w.entered
	closed := make(chan error)
	go func() { closed <- l.Close() }()
	w.open()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if got := len(w.entries(t)); got != n {
		t.Fatalf("%d entries after Close, want %d", got, n)
	}

	// After Close decisions still flow, unlogged and counted.
	got := d.Decide(context.Background(), publish("a", "deny/late"))
	if got.Allow || got.ID != "" {
		t.Fatalf("decision after Close: %+v", got)
	}
	if s := l.Stats(); s.Failed != 1 || s.Written != n {
		t.Fatalf("Stats = %+v", s)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConcurrent(t *testing.T) {
	var out lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: &out, SampleAllow: 1, BufferSize: 64, AggregateInterval: -1})
	d := l.Wrap(fixed)
	const workers, per = 8, 300
	var wg sync.WaitGroup
	results := make([][]string, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				kind := []string{"allow", "deny", "error"}[i%3]
				got := d.Decide(context.Background(), publish(fmt.Sprint("d", w), fmt.Sprintf("%s/%d", kind, i)))
				if kind != "allow" && got.ID == "" {
					t.Errorf("deny %d/%d not logged", w, i)
				}
				if got.ID != "" {
					results[w] = append(results[w], got.ID)
				}
			}
		})
	}
	wg.Wait()
	mustClose(t, l)
	es := ids(t, out.entries(t))
	s := l.Stats()
	want := 0
	for _, r := range results {
		want += len(r)
		for _, id := range r {
			if _, ok := es[id]; !ok {
				t.Fatalf("decision %s not logged", id)
			}
		}
	}
	if len(es) != want || s.Written != uint64(want) || s.Written+s.Dropped != workers*per {
		t.Fatalf("%d entries, %d ids returned, Stats %+v", len(es), want, s)
	}
}

// Rotation at the smallest size lumberjack allows (1 MB): backups appear,
// every line stays whole, and nothing is lost across the rotations.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "logs", "decisions.log")
	l := newLogger(t, decisionlog.Config{Path: path, MaxSizeMB: 1, MaxBackups: 5, SampleAllow: 1, BufferSize: 256, AggregateInterval: -1})
	bulky := strings.Repeat("r", 1000)
	d := l.Wrap(policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
		return policy.Decision{Reasons: []string{bulky}, Revision: "rev-1"}
	}))
	const n = 2600 // about 2.7 MB
	for i := range n {
		d.Decide(context.Background(), publish("a", fmt.Sprint("t/", i)))
	}
	mustClose(t, l)

	files, err := filepath.Glob(filepath.Join(dir, "logs", "decisions*.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("files %v: want the log and at least two backups", files)
	}
	seen := map[string]bool{}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1<<20 {
			t.Fatalf("%s is %d bytes, over MaxSize", f, st.Size())
		}
		if perm := st.Mode().Perm(); perm != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", f, perm)
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range parseEntries(t, data) {
			var in struct{ Topic string }
			json.Unmarshal(e.Input, &in)
			seen[in.Topic] = true
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct entries across %d files, want %d", len(seen), len(files), n)
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []decisionlog.Config{
		{SampleAllow: -0.1, Writer: io.Discard},
		{SampleAllow: 1.5, Writer: io.Discard},
		{SampleAllow: math.NaN(), Writer: io.Discard},
		{MaxSizeMB: -1, Writer: io.Discard},
		{MaxBackups: -1, Writer: io.Discard},
		{BufferSize: -1, Writer: io.Discard},
		{Path: dir}, // a directory
	} {
		if l, err := decisionlog.New(c); err == nil || !strings.HasPrefix(err.Error(), "decisionlog: ") {
			if l != nil {
				l.Close()
			}
			t.Errorf("New(%+v) = %v, want a decisionlog error", c, err)
		}
	}
	// Positive control: the same shapes, valid.
	for _, c := range []decisionlog.Config{
		{SampleAllow: 0, Writer: io.Discard},
		{SampleAllow: 1, MaxSizeMB: 1, MaxBackups: 1, BufferSize: 1, Path: filepath.Join(dir, "d.log")},
		{Path: "-"},
	} {
		l, err := decisionlog.New(c)
		if err != nil {
			t.Fatalf("New(%+v): %v", c, err)
		}
		mustClose(t, l)
	}
}

// Write failures are counted, not fatal, and logging resumes afterwards.
func TestWriteFailure(t *testing.T) {
	w := &failingWriter{}
	w.fail.Store(true)
	var errs lockedBuffer
	l := newLogger(t, decisionlog.Config{Writer: w, ErrorLog: slog.New(slog.NewTextHandler(&errs, nil))})
	d := l.Wrap(fixed)
	if got := d.Decide(context.Background(), publish("a", "deny/1")); got.Allow {
		t.Fatal("allowed")
	}
	waitFor(t, "the failure to be counted", func() bool { return l.Stats().Failed == 1 })
	w.fail.Store(false)
	d.Decide(context.Background(), publish("a", "deny/2"))
	mustClose(t, l)
	if s := l.Stats(); s.Written != 1 || s.Failed != 1 {
		t.Fatalf("Stats = %+v", s)
	}
	if !strings.Contains(errs.String(), "write failed") {
		t.Fatalf("failure not reported: %q", errs.String())
	}
}

type failingWriter struct {
	fail atomic.Bool
	lockedBuffer
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.fail.Load() {
		return 0, errors.New("disk full")
	}
	return f.lockedBuffer.Write(p)
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]bool{}
	for _, x := range a {
		m[x] = true
	}
	for _, x := range b {
		if !m[x] {
			return false
		}
	}
	return true
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
