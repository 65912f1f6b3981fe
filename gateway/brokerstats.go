package gateway

import (
	"strings"
	"sync/atomic"

	"github.com/ztgate/ztgate/metrics"
)

// brokerStats reads the broker's figures for a scrape of /metrics. The
// counters are mochi's own; sessions and queued messages are counted by
// walking the sessions (and retained messages by walking those), so they
// are exact at any moment rather than kept up per message (mochi's own
// inflight counter drifts when sessions are taken over or dropped), at a
// cost per scrape that grows with what the broker holds, never per
// message.
func (g *Gateway) brokerStats() metrics.BrokerStats {
	info := g.server.Info
	st := metrics.BrokerStats{
		MessagesReceived:    atomic.LoadInt64(&info.MessagesReceived),
		MessagesSent:        atomic.LoadInt64(&info.MessagesSent),
		BytesReceived:       atomic.LoadInt64(&info.BytesReceived),
		BytesSent:           atomic.LoadInt64(&info.BytesSent),
		Retained:            g.retainedCount(),
		Subscriptions:       atomic.LoadInt64(&info.Subscriptions),
		DroppedQueueFull:    atomic.LoadInt64(&info.MessagesDropped),
		DroppedInflightFull: atomic.LoadInt64(&info.InflightDropped),
	}
	if g.store != nil {
		st.StoreWriteFailures = g.store.Failures()
	}
	for _, cl := range g.server.Clients.GetAll() {
		if cl.Net.Inline {
			continue
		}
		queued := int64(cl.State.Inflight.Len())
		if cl.Closed() {
			st.SessionsOffline++
			st.QueuedOffline += queued
		} else {
			st.SessionsConnected++
			st.QueuedConnected += queued
		}
	}
	return st
}

// retainedCount is the number of retained messages devices can be handed:
// mochi also retains its own "$SYS" figures, which no device receives.
func (g *Gateway) retainedCount() int64 {
	var n int64
	for topic := range g.server.Topics.Retained.GetAll() {
		if !strings.HasPrefix(topic, "$") {
			n++
		}
	}
	return n
}
