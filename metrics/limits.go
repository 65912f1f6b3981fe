package metrics

import "github.com/prometheus/client_golang/prometheus"

// Limits are the values of the limit label of ztgate_limit_hits_total: the
// gateway's guardrails, a fixed set so that the label cannot grow. A name
// outside it is counted as "other".
var Limits = [...]string{
	"packet_size",       // a packet over the maximum packet size
	"sessions",          // a CONNECT beyond the sessions of one identity
	"publish_rate",      // PUBLISHes held back by the identity's message rate
	"publish_bytes",     // PUBLISHes held back by the identity's byte rate
	"subscriptions",     // a filter beyond the subscriptions of one session
	"handshake_timeout", // a connection without TLS handshake and CONNECT in time
	"conn_rate",         // a new connection over its source address's rate
	"limits_rule",       // the policy's limits rule failed; the CONNECT was refused
	"other",
}

// limitHits is the counter of limit hits with its children resolved once,
// so that counting a hit allocates nothing.
type limitHits struct {
	vec      *prometheus.CounterVec
	children [len(Limits)]prometheus.Counter
}

func newLimitHits() limitHits {
	l := limitHits{vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "limit_hits_total",
		Help: "Guardrail hits by limit (see the limits section of the configuration): each refused or held-back packet, CONNECT, filter or connection.",
	}, []string{"limit"})}
	for i, name := range Limits {
		l.children[i] = l.vec.WithLabelValues(name)
	}
	return l
}

// LimitHit counts one hit of limit, a name of Limits.
func (m *Metrics) LimitHit(limit string) {
	if m == nil {
		return
	}
	for i, name := range Limits {
		if name == limit {
			m.limits.children[i].Inc()
			return
		}
	}
	m.limits.children[len(Limits)-1].Inc()
}
