package bridge

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// collector reads the bridges' counters at scrape time, so the metrics
// and Status can never disagree and the hot path updates one atomic.
type collector struct {
	m   *Manager
	reg prometheus.Registerer

	forwarded, denied, queued, dropped, connected, received *prometheus.Desc
}

func registerMetrics(reg prometheus.Registerer, m *Manager, log *slog.Logger) *collector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("ztgate_bridge_"+name, help, append([]string{"bridge"}, labels...), nil)
	}
	c := &collector{
		m: m, reg: reg,
		forwarded: desc("forwarded_total", "Messages a bridge delivered upstream (acknowledged at QoS 1, written at QoS 0)."),
		denied:    desc("denied_total", "Messages the policy did not let cross a bridge (bridge_out: direction out; bridge_in: in).", "direction"),
		queued:    desc("queued", "Messages waiting in a bridge's queue on disk."),
		dropped:   desc("dropped_total", "Messages a bridge dropped: queue full, refused or too large upstream, inbound outside the strip prefix or an echo, a failed local publish."),
		connected: desc("connected", "1 while a bridge is connected to its upstream."),
		received:  desc("received_total", "Messages a bridge received from its upstream."),
	}
	if reg != nil {
		if err := reg.Register(c); err != nil {
			log.Warn("bridge: metrics not registered", "err", err)
			c.reg = nil
		}
	}
	return c
}

func (c *collector) unregister() {
	if c != nil && c.reg != nil {
		c.reg.Unregister(c)
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.forwarded, c.denied, c.queued, c.dropped, c.connected, c.received} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, b := range c.m.bridges {
		s := b.status()
		name := s.Name
		up := 0.0
		if s.Connected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.forwarded, prometheus.CounterValue, float64(s.Forwarded), name)
		ch <- prometheus.MustNewConstMetric(c.denied, prometheus.CounterValue, float64(b.deniedOut.Load()), name, dirOut)
		ch <- prometheus.MustNewConstMetric(c.denied, prometheus.CounterValue, float64(b.deniedIn.Load()), name, dirIn)
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(s.Queued), name)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.Dropped), name)
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(s.Received), name)
	}
}
