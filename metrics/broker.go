package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// BrokerStats are the MQTT broker's own figures, read when /metrics is
// scraped: the counters the broker keeps anyway and a walk over its
// sessions, so that nothing is counted per message for them. metrics owns
// the type so as not to depend on the broker.
type BrokerStats struct {
	// MessagesReceived and MessagesSent count PUBLISH packets (QoS 0, 1
	// and 2, resends included) read from and written to clients;
	// BytesReceived and BytesSent count the bytes of every MQTT packet.
	MessagesReceived, MessagesSent int64
	BytesReceived, BytesSent       int64
	// Retained is the number of retained messages held.
	Retained int64
	// SessionsConnected and SessionsOffline are the sessions the broker
	// holds, with a connection and without (persistent sessions waiting
	// for their device).
	SessionsConnected, SessionsOffline int64
	// Subscriptions is the number of subscriptions messages are routed by.
	Subscriptions int64
	// QueuedConnected and QueuedOffline are the outgoing QoS 1 and 2
	// messages held until acknowledged: in flight to (or waiting for the
	// receive quota of) connected sessions, and queued for offline ones.
	QueuedConnected, QueuedOffline int64
	// DroppedQueueFull counts deliveries dropped because a client's
	// outbound queue was full (a client not reading fast enough);
	// DroppedInflightFull QoS 1 and 2 deliveries dropped because the
	// session already held the most messages it may (or had no packet
	// identifier left).
	DroppedQueueFull, DroppedInflightFull int64
	// StoreWriteFailures counts writes to the durable broker state that
	// failed (a PUBLISH whose journal write failed was refused).
	StoreWriteFailures int64
}

// The drop reasons of ztgate_broker_messages_dropped_total.
const (
	DropQueueFull    = "queue_full"
	DropInflightFull = "inflight_full"
)

// brokerCollector exports a BrokerStats function as the ztgate_broker_*
// families.
type brokerCollector struct {
	stats atomic.Pointer[func() BrokerStats]

	received, sent           *prometheus.Desc
	bytesReceived, bytesSent *prometheus.Desc
	retained                 *prometheus.Desc
	sessions                 *prometheus.Desc
	subscriptions            *prometheus.Desc
	queued                   *prometheus.Desc
	dropped                  *prometheus.Desc
	storeFailures            *prometheus.Desc
}

func newBrokerCollector() *brokerCollector {
	name := func(n string) string { return prometheus.BuildFQName(namespace, "broker", n) }
	return &brokerCollector{
		received: prometheus.NewDesc(name("messages_received_total"),
			"PUBLISH packets received from clients (those the policy then denies included).", nil, nil),
		sent: prometheus.NewDesc(name("messages_sent_total"),
			"PUBLISH packets sent to clients (resends included).", nil, nil),
		bytesReceived: prometheus.NewDesc(name("received_bytes_total"),
			"Bytes of MQTT packets received from clients.", nil, nil),
		bytesSent: prometheus.NewDesc(name("sent_bytes_total"),
			"Bytes of MQTT packets sent to clients.", nil, nil),
		retained: prometheus.NewDesc(name("retained_messages"),
			"Retained messages held.", nil, nil),
		sessions: prometheus.NewDesc(name("stored_sessions"),
			"Sessions the broker holds, by state: connected, or offline (a persistent session waiting for its device).",
			[]string{"state"}, nil),
		subscriptions: prometheus.NewDesc(name("subscriptions"),
			"Subscriptions messages are routed by.", nil, nil),
		queued: prometheus.NewDesc(name("queued_messages"),
			"Outgoing QoS 1 and 2 messages (and QoS 2 exchanges in progress) held until acknowledged, by session state: in flight to connected sessions, queued for offline ones.",
			[]string{"state"}, nil),
		dropped: prometheus.NewDesc(name("messages_dropped_total"),
			"Deliveries the broker dropped, by reason: queue_full (the client's outbound queue was full), inflight_full (the session held the most unacknowledged messages it may). Policy denials are in ztgate_decisions_total.",
			[]string{"reason"}, nil),
		storeFailures: prometheus.NewDesc(name("store_write_failures_total"),
			"Writes to the durable broker state (broker.db) that failed; a PUBLISH whose journal write failed was refused.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (b *brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{b.received, b.sent, b.bytesReceived, b.bytesSent,
		b.retained, b.sessions, b.subscriptions, b.queued, b.dropped, b.storeFailures} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Without a stats function it
// collects nothing: there is no broker to report on.
func (b *brokerCollector) Collect(ch chan<- prometheus.Metric) {
	f := b.stats.Load()
	if f == nil {
		return
	}
	s := (*f)()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter(b.received, s.MessagesReceived)
	counter(b.sent, s.MessagesSent)
	counter(b.bytesReceived, s.BytesReceived)
	counter(b.bytesSent, s.BytesSent)
	gauge(b.retained, s.Retained)
	gauge(b.sessions, s.SessionsConnected, "connected")
	gauge(b.sessions, s.SessionsOffline, "offline")
	gauge(b.subscriptions, s.Subscriptions)
	gauge(b.queued, s.QueuedConnected, "connected")
	gauge(b.queued, s.QueuedOffline, "offline")
	counter(b.dropped, s.DroppedQueueFull, DropQueueFull)
	counter(b.dropped, s.DroppedInflightFull, DropInflightFull)
	counter(b.storeFailures, s.StoreWriteFailures)
}

// SetBrokerStats exports the broker's figures as the ztgate_broker_*
// families; stats is called at each scrape. nil stops exporting them.
func (m *Metrics) SetBrokerStats(stats func() BrokerStats) {
	if m == nil {
		return
	}
	if stats == nil {
		m.broker.stats.Store(nil)
		return
	}
	m.broker.stats.Store(&stats)
}
