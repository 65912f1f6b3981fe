package api

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/console"
	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

func TestOverview(t *testing.T) {
	var allowed, denied atomic.Uint64
	sampler, err := console.NewSampler(func() (uint64, uint64) { return allowed.Load(), denied.Load() }, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	sampler.Sample() // the baseline
	allowed.Store(3)
	denied.Store(2)
	sampler.Sample()
	e := newEnv(t, func(c *Config) {
		c.Sampler = sampler
		c.Sessions = fakeSessions(2)
	})
	for _, n := range []string{"a-1", "a-2", "s-1", "r-1"} {
		e.createDevice(n, nil)
	}
	if _, err := e.reg.SetStatus("s-1", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	get := func() Overview {
		t.Helper()
		r := e.do(e.admin, http.MethodGet, "/v1/overview", "", nil)
		if r.Status != http.StatusOK {
			t.Fatalf("overview: %d %s", r.Status, r.Body)
		}
		var ov Overview
		r.DecodeJSON(t, &ov)
		return ov
	}
	ov := get()
	// admin-dev, sensor-0, a-1, a-2, r-1 are active.
	if ov.Sessions != 2 || ov.Devices != (DeviceCounts{Active: 5, Suspended: 1}) {
		t.Fatalf("overview %+v", ov)
	}
	var a, d uint64
	for _, p := range ov.Decisions {
		a, d = a+p.Allowed, d+p.Denied
	}
	if a != 3 || d != 2 || len(ov.Decisions) == 0 || ov.Decisions[0].T.IsZero() {
		t.Fatalf("decisions %+v", ov.Decisions)
	}
	if ov.Policy == nil || ov.Policy.Revision != e.engine.Revision() {
		t.Fatalf("policy %+v", ov.Policy)
	}
	// A registry change shows at once.
	if r := e.do(e.admin, http.MethodPost, "/v1/devices/r-1/revoke", "", nil); r.Status != http.StatusOK {
		t.Fatalf("revoke: %d", r.Status)
	}
	if ov := get(); ov.Devices != (DeviceCounts{Active: 4, Suspended: 1, Revoked: 1}) {
		t.Fatalf("after revoke: %+v", ov.Devices)
	}
	if r := e.do(e.device, http.MethodGet, "/v1/overview", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device reads the overview: %d", r.Status)
	}
}

// streamEnv is an env whose denial stream takes the denies of a real
// decision log in front of the env's policy engine.
func streamEnv(t *testing.T, timeout time.Duration) (*env, *decisionlog.Logger, policy.Decider) {
	t.Helper()
	var logBuf lockedBuffer
	dl, err := decisionlog.New(decisionlog.Config{Writer: &logBuf, AggregateInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dl.Close() })
	e := newEnv(t, func(c *Config) {
		c.Denials = dl
		c.ioTimeout = timeout
	})
	return e, dl, dl.Wrap(e.engine)
}

// openStream opens the denial stream with c and returns its reader.
func openStream(t *testing.T, e *env, c *http.Client) (*bufio.Reader, func()) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.base+"/v1/denials/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("stream: %d %v %s", resp.StatusCode, resp.Header, b)
	}
	return bufio.NewReader(resp.Body), func() { cancel(); resp.Body.Close() }
}

// nextDenial reads events until a denial and returns its data.
func nextDenial(t *testing.T, rd *bufio.Reader) decisionlog.Denial {
	t.Helper()
	event := ""
	for range 1000 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == "denial":
			var dn decisionlog.Denial
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &dn); err != nil {
				t.Fatalf("data %q: %v", line, err)
			}
			return dn
		}
	}
	t.Fatal("no denial in 1000 lines")
	return decisionlog.Denial{}
}

func publishInput(t *testing.T, e *env, device, topic string) *policy.Input {
	t.Helper()
	dev, err := e.reg.Get(device)
	if err != nil {
		t.Fatal(err)
	}
	return &policy.Input{Action: policy.ActionPublish, Topic: topic,
		Subject: policy.NewSubject(spiffeid.RequireFromString(dev.SPIFFEID), dev, policy.Client{ID: "c-" + device, ProtocolVersion: 5})}
}

func TestDenialStreamOutlivesTimeouts(t *testing.T) {
	const timeout = time.Second
	for _, proto := range []string{"h2", "http/1.1"} {
		t.Run(proto, func(t *testing.T) {
			e, _, dec := streamEnv(t, timeout)
			c := e.admin
			if proto == "http/1.1" {
				cfg := e.admin.Transport.(*http.Transport).TLSClientConfig.Clone()
				cfg.NextProtos = []string{"http/1.1"}
				c = testclient.HTTPClient(t, cfg)
				c.Transport.(*http.Transport).ForceAttemptHTTP2 = false
			}
			rd, stop := openStream(t, e, c)
			defer stop()
			// Past the server's read and write timeouts.
			time.Sleep(3 * timeout)
			// An allow is not streamed; the deny after it is.
			if d := dec.Decide(context.Background(), publishInput(t, e, "sensor-0", "devices/sensor-0/telemetry")); !d.Allow {
				t.Fatalf("own topic denied: %+v", d)
			}
			d := dec.Decide(context.Background(), publishInput(t, e, "sensor-0", "devices/other/telemetry"))
			if d.Allow || d.ID == "" {
				t.Fatalf("other's topic: %+v", d)
			}
			got := nextDenial(t, rd)
			if got.DecisionID != d.ID || got.Action != "publish" || got.Device != "sensor-0" ||
				got.SPIFFEID != "spiffe://example.org/device/sensor-0" || got.ClientID != "c-sensor-0" ||
				got.Topic != "devices/other/telemetry" || len(got.Reasons) == 0 || got.Revision != d.Revision || got.Time.IsZero() {
				t.Fatalf("denial %+v, decision %+v", got, d)
			}
		})
	}
}

func TestDenialStreamEndsOnClose(t *testing.T) {
	e, _, _ := streamEnv(t, 0)
	rd, stop := openStream(t, e, e.admin)
	defer stop()
	// Close must not wait out its shutdown timeout for the open stream
	// (it then answers an error), and the stream ends.
	if err := e.srv.Close(); err != nil {
		t.Fatalf("Close with a stream open: %v", err)
	}
	for range 1000 {
		if _, err := rd.ReadString('\n'); err != nil {
			return
		}
	}
	t.Fatal("the stream goes on after Close")
}

func TestDenialStreamAccess(t *testing.T) {
	e, dl, _ := streamEnv(t, 0)
	if r := e.do(e.device, http.MethodGet, "/v1/denials/stream", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("device: %d", r.Status)
	}
	if r := e.do(e.anon, http.MethodGet, "/v1/denials/stream", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous: %d", r.Status)
	}
	// Past the subscriber bound: 429.
	var cancels []func()
	for range decisionlog.MaxSubscribers {
		_, cancel, err := dl.Subscribe()
		if err != nil {
			t.Fatal(err)
		}
		cancels = append(cancels, cancel)
	}
	if r := e.do(e.admin, http.MethodGet, "/v1/denials/stream", "", nil); r.Status != http.StatusTooManyRequests {
		t.Fatalf("over the bound: %d %s", r.Status, r.Body)
	}
	for _, c := range cancels {
		c()
	}
	rd, stop := openStream(t, e, e.admin)
	defer stop()
	_ = rd
	// Without a decision log: 501.
	plain := newEnv(t)
	if r := plain.do(plain.admin, http.MethodGet, "/v1/denials/stream", "", nil); r.Status != http.StatusNotImplemented {
		t.Fatalf("no decision log: %d", r.Status)
	}
}

// fakeSessions lists n sessions.
func fakeSessions(n int) func(context.Context, string) ([]brokerview.Session, error) {
	return func(context.Context, string) ([]brokerview.Session, error) { return make([]brokerview.Session, n), nil }
}
