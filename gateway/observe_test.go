package gateway

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/metrics"
	"github.com/ztgate/ztgate/registry"
)

// metricValue returns the value of the counter or gauge name whose label
// has value (any series when label is ""); 0 when there is none.
func metricValue(t testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func TestMetricsCountSessionsConnectionsAndCuts(t *testing.T) {
	promReg := prometheus.NewRegistry()
	e := newEnvWith(t, engine(t), func(c *Config) { c.Metrics = metrics.New(promReg) })
	value := func(name, label, v string) float64 { return metricValue(t, promReg, name, label, v) }

	cfg := e.enroll("sensor-1", nil)
	c := e.mustConnect(cfg, "sensor-1")
	other := e.mustConnect(e.enroll("sensor-2", nil), "sensor-2")
	poll(t, "sessions gauge", func() bool { return value("ztgate_sessions", "", "") == 2 })
	if n := value("ztgate_connections_total", "result", "accepted"); n != 2 {
		t.Errorf("connections accepted = %v, want 2", n)
	}

	// Refused: by the registry (not enrolled), and in the TLS handshake
	// (no client certificate).
	if _, _, err := e.connect(e.svid(spiffeid.RequireFromSegments(testTD, "device", "stranger")), &paho.Connect{ClientID: "x", CleanStart: true}); err == nil {
		t.Fatal("unenrolled identity connected")
	}
	noCert := cfg.Clone()
	noCert.Certificates = nil
	if conn, err := tlsDial(e.addr, noCert); err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(waitFor))
		_, _ = conn.Read(make([]byte, 1))
		_ = conn.Close()
	}
	poll(t, "refused connections", func() bool { return value("ztgate_connections_total", "result", "refused") == 2 })

	if _, err := e.reg.SetStatus("sensor-1", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	expectDisconnect(t, c, 0x87)
	poll(t, "sessions gauge after the cut", func() bool { return value("ztgate_sessions", "", "") == 1 })
	poll(t, "the cut counted", func() bool {
		return value("ztgate_disconnects_total", "reason", "revoked") == 1 && value("ztgate_revocations_total", "", "") == 1
	})

	// A client's own DISCONNECT is no cut, and closes its session.
	_ = other.Disconnect(&paho.Disconnect{})
	poll(t, "sessions gauge after a clean disconnect", func() bool { return value("ztgate_sessions", "", "") == 0 })
	if n := value("ztgate_disconnects_total", "reason", "policy"); n != 0 {
		t.Errorf("disconnects{policy} = %v, want 0", n)
	}
}

func TestDenyTracedToDecisionLog(t *testing.T) {
	out := &testpki.LogBuffer{}
	dl, err := decisionlog.New(decisionlog.Config{Writer: out, SampleAllow: 0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dl.Close() })
	e := newEnv(t, dl.Wrap(engine(t)))
	c := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	const forged = "devices/sensor-2/telemetry/t"
	if code := c.publish(t, &paho.Publish{Topic: forged, QoS: 1, Payload: []byte("forged")}); code != 0x87 {
		t.Fatalf("forged publish: PUBACK %#x, want 0x87", code)
	}

	// The gateway's line for the denial names its decision...
	var id string
	idRE := regexp.MustCompile(`decision_id=(\S+)`)
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(line, `msg="gateway: denied"`) && strings.Contains(line, "topic="+forged) {
			if m := idRE.FindStringSubmatch(line); m != nil {
				id = m[1]
			}
		}
	}
	if id == "" {
		t.Fatalf("no decision_id in the gateway's denial line:\n%s", e.logs.String())
	}
	// ...and the decision log holds that decision: a deny of that publish.
	var entry struct {
		DecisionID string `json:"decision_id"`
		Result     struct {
			Allow bool `json:"allow"`
		} `json:"result"`
		Input struct {
			Action string `json:"action"`
			Topic  string `json:"topic"`
		} `json:"input"`
	}
	poll(t, "decision-log entry", func() bool {
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.DecisionID == id {
				return true
			}
		}
		return false
	})
	if entry.Result.Allow || entry.Input.Action != "publish" || entry.Input.Topic != forged {
		t.Fatalf("decision-log entry %s: %+v", id, entry)
	}
	// Positive control: an allowed publish (allows are not sampled here)
	// has no line of its own in either log.
	if code := c.publish(t, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1}); code != 0 {
		t.Fatalf("allowed publish: %#x", code)
	}
	if strings.Contains(e.logs.String(), "topic=devices/sensor-1/telemetry/t") {
		t.Fatal("an allowed publish was logged as denied")
	}
}

func tlsDial(addr string, cfg *tls.Config) (*tls.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: waitFor}, "tcp", addr, cfg)
}
