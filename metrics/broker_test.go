package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// brokerSeries gathers reg and returns the value of every counter and
// gauge series, keyed by name and label value ("name" alone for a series
// without labels).
func brokerSeries(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				key += "{" + lp.GetValue() + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// Every figure of BrokerStats is exported under its own series, read
// from the stats function at each scrape; without one, no ztgate_broker_*
// series is exported at all.
func TestBrokerStatsExported(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	for key := range brokerSeries(t, reg) {
		if strings.HasPrefix(key, "ztgate_broker_") {
			t.Fatalf("%s exported without broker stats", key)
		}
	}

	stats := BrokerStats{
		MessagesReceived: 1, MessagesSent: 2, BytesReceived: 3, BytesSent: 4, Retained: 5,
		SessionsConnected: 6, SessionsOffline: 7, Subscriptions: 8,
		QueuedConnected: 9, QueuedOffline: 10, DroppedQueueFull: 11, DroppedInflightFull: 12,
		StoreWriteFailures: 13,
	}
	m.SetBrokerStats(func() BrokerStats { return stats })
	want := map[string]float64{
		"ztgate_broker_messages_received_total":               1,
		"ztgate_broker_messages_sent_total":                   2,
		"ztgate_broker_received_bytes_total":                  3,
		"ztgate_broker_sent_bytes_total":                      4,
		"ztgate_broker_retained_messages":                     5,
		"ztgate_broker_stored_sessions{connected}":            6,
		"ztgate_broker_stored_sessions{offline}":              7,
		"ztgate_broker_subscriptions":                         8,
		"ztgate_broker_queued_messages{connected}":            9,
		"ztgate_broker_queued_messages{offline}":              10,
		"ztgate_broker_messages_dropped_total{queue_full}":    11,
		"ztgate_broker_messages_dropped_total{inflight_full}": 12,
		"ztgate_broker_store_write_failures_total":            13,
	}
	check := func(got map[string]float64) {
		t.Helper()
		for key, v := range want {
			if g, ok := got[key]; !ok || g != v {
				t.Errorf("%s = %v (present %v), want %v", key, g, ok, v)
			}
		}
	}
	check(brokerSeries(t, reg))
	names := make([]string, 0, len(want))
	for key := range want {
		if i := strings.IndexByte(key, '{'); i >= 0 {
			key = key[:i]
		}
		names = append(names, key)
	}
	problems, err := testutil.CollectAndLint(m, names...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// Read at each scrape, not once.
	stats.MessagesReceived, stats.QueuedOffline = 100, 0
	want["ztgate_broker_messages_received_total"], want["ztgate_broker_queued_messages{offline}"] = 100, 0
	check(brokerSeries(t, reg))

	m.SetBrokerStats(nil)
	if _, ok := brokerSeries(t, reg)["ztgate_broker_messages_received_total"]; ok {
		t.Fatal("broker series still exported after SetBrokerStats(nil)")
	}
	var nilMetrics *Metrics
	nilMetrics.SetBrokerStats(func() BrokerStats { return stats }) // must not panic
}
