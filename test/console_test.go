package test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testutil"
)

// The console's live denials: a deny of a real publish, through the real
// gateway and decision log, reaches a browser signed in with a console
// session, with the decision_id the decision log wrote.
func TestConsoleDenialStreamFromGateway(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "decisions.log")
	e := testutil.Start(t, testutil.WithConfig(func(c *app.Config) {
		c.DecisionLog.Path = logPath
		c.DecisionLog.AggregateInterval = 0 // every deny in full
	}))

	// Sign in as a browser would: a login minted with the admin's
	// certificate, redeemed without one.
	res := e.API(t, e.Admin, http.MethodPost, "/v1/console/logins", nil)
	if res.Status != http.StatusCreated {
		t.Fatalf("mint: %d %s", res.Status, res.Body)
	}
	var login struct{ Token string }
	res.Decode(t, &login)
	cfg := e.Admin.TLSConfig().Clone()
	cfg.Certificates = nil
	browser := testclient.HTTPClient(t, cfg)
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	signed, err := testclient.Do(browser, http.MethodPost, e.APIURL+"/ui/login", "application/x-www-form-urlencoded",
		[]byte(url.Values{"token": {login.Token}}.Encode()), nil)
	if err != nil || signed.Status != http.StatusSeeOther {
		t.Fatalf("sign in: %v %d %s", err, signed.Status, signed.Body)
	}
	cookie := strings.SplitN(signed.Header.Get("Set-Cookie"), ";", 2)[0]

	req, _ := http.NewRequest(http.MethodGet, e.APIURL+"/v1/denials/stream", nil)
	req.Header.Set("Cookie", cookie)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := browser.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if stream.StatusCode != http.StatusOK || stream.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %v", stream.StatusCode, stream.Header)
	}

	dev := e.Enroll(t, "sensor-1", map[string]string{"role": "sensor"})
	c := e.MustConnect(t, dev, "sensor-1", nil)
	// Positive control: its own topic is allowed (and not streamed).
	c.Pub(t, testclient.Msg{Topic: "devices/sensor-1/telemetry", QoS: 1})
	c.PubDenied(t, testclient.Msg{Topic: "devices/sensor-2/telemetry"})

	rd := bufio.NewReader(stream.Body)
	var got decisionlog.Denial
	event := ""
	for range 1000 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if strings.HasPrefix(line, "event: ") {
			event = strings.TrimPrefix(line, "event: ")
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok && event == "denial" {
			if err := json.Unmarshal([]byte(data), &got); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if got.Action != "publish" || got.Device != "sensor-1" || got.ClientID != "sensor-1" ||
		got.Topic != "devices/sensor-2/telemetry" || len(got.Reasons) == 0 || got.DecisionID == "" {
		t.Fatalf("denial %+v", got)
	}
	// The same decision_id is in the decision log, for the same deny.
	cancel()
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(raw), "\n") {
		var entry decisionlog.Entry
		if json.Unmarshal([]byte(line), &entry) == nil && entry.DecisionID == got.DecisionID {
			found = !entry.Result.Allow && strings.Contains(string(entry.Input), "devices/sensor-2/telemetry")
		}
	}
	if !found {
		t.Fatalf("decision_id %s not in the decision log as the deny:\n%s", got.DecisionID, raw)
	}
}

// console: false serves no console: /ui/ and the sign-in are 404, and no
// login can be minted. The default (on) is the positive control.
func TestConsoleOff(t *testing.T) {
	for _, on := range []bool{true, false} {
		e := testutil.Start(t, testutil.WithConfig(func(c *app.Config) { c.Console = on }))
		cfg := e.Admin.TLSConfig().Clone()
		cfg.Certificates = nil
		browser := testclient.HTTPClient(t, cfg)
		page, err := testclient.Do(browser, http.MethodGet, e.APIURL+"/ui/", "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		mint := e.API(t, e.Admin, http.MethodPost, "/v1/console/logins", nil)
		switch {
		case on && (page.Status != http.StatusOK || mint.Status != http.StatusCreated):
			t.Fatalf("console on: /ui/ %d, mint %d %s", page.Status, mint.Status, mint.Body)
		case !on && (page.Status != http.StatusNotFound || mint.Status < 400):
			t.Fatalf("console off: /ui/ %d, mint %d %s; want 404 and a refusal", page.Status, mint.Status, mint.Body)
		}
	}
}
