package decisionlog

import (
	"strings"
	"sync"
	"time"

	"github.com/ztgate/ztgate/policy"
)

// Deny floods. A device that publishes where it may not gets a deny per
// message, and each deny used to be a full entry of some 600 bytes: at
// wire speed one device rotated the whole history away, evidence included.
// So denies are aggregated per session (identity and client ID), action,
// revision and reasons (an evaluation failure being a reason of its own):
// the first deny of a kind in an interval is written in full; the next
// ones are counted, and one aggregate entry per kind sums them up when the
// interval ends (or at Close). The topic is not part of the kind, or a
// device could defeat the aggregation by publishing to a new topic each
// time; the aggregate keeps a sample of the topics instead.
//
// Memory is bounded: per interval, by the kinds tracked in all, per
// identity (new client IDs cost a device nothing but a handshake) and by
// the bytes of their strings. A deny that does not fit is counted in an
// overflow aggregate, of its identity or of all: never dropped silently.

// DefaultAggregateInterval is Config.AggregateInterval when it is zero.
const DefaultAggregateInterval = 10 * time.Second

// Default bounds of one interval's aggregation.
const (
	defaultMaxKinds       = 16384
	defaultMaxPerIdentity = 64
	defaultMaxBytes       = 16 << 20
	// topicSample is how many distinct topics (or filters) an aggregate
	// names at most.
	topicSample = 8
	// kindOverhead is what a tracked kind costs beyond its strings.
	kindOverhead = 256
)

// Overflow values of an Aggregate.
const (
	// OverflowIdentity: the denies of an identity that has more kinds of
	// deny in the interval than it may have tracked.
	OverflowIdentity = "identity"
	// OverflowKinds: the denies of kinds that found the aggregation full.
	OverflowKinds = "kinds"
)

// Aggregate is the part of an aggregate entry that sums up the denies of
// one kind folded during an interval. The entry's input identifies the
// session (action, identity.spiffe_id, client.id) and its result, revision
// and error are those of the kind.
type Aggregate struct {
	// Count is the number of denies folded: the kind's first deny, written
	// in full, is not counted.
	Count uint64 `json:"count"`
	// Interval is the aggregation interval, in Go's duration form ("10s").
	Interval string `json:"interval"`
	// First is the time of the kind's first deny in the interval, Last the
	// time of its last one.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// FirstDecisionID is the decision_id of the full entry of the first
	// deny; empty for an overflow.
	FirstDecisionID string `json:"first_decision_id,omitempty"`
	// Topics are distinct topics (or filters) of the folded denies, at
	// most eight; TopicsTruncated is set when there were more.
	Topics          []string `json:"topics,omitempty"`
	TopicsTruncated bool     `json:"topics_truncated,omitempty"`
	// Overflow is set on the denies that could not be told apart:
	// OverflowIdentity or OverflowKinds.
	Overflow string `json:"overflow,omitempty"`
}

// kind identifies a kind of deny: what a session's repeated denies share.
type kind struct {
	spiffeID, clientID string
	action             policy.Action
	revision           string
	reasons            string // joined with NUL, which no reason of the default policy holds
	failed             bool
}

// tally is one kind's state during an interval.
type tally struct {
	agg     Aggregate
	action  policy.Action
	spiffe  string
	client  string
	reasons []string
	rev     string
	err     string
}

type aggregator struct {
	interval string

	maxKinds, maxPerIdentity, maxBytes int

	mu         sync.Mutex
	kinds      map[kind]*tally
	identities map[string]int    // kinds tracked per identity
	idOverflow map[string]*tally // by identity
	overflow   *tally            // everything else
	bytes      int
}

func newAggregator(interval time.Duration) *aggregator {
	a := &aggregator{
		interval:       interval.String(),
		maxKinds:       defaultMaxKinds,
		maxPerIdentity: defaultMaxPerIdentity,
		maxBytes:       defaultMaxBytes,
	}
	a.reset()
	return a
}

func (a *aggregator) reset() {
	a.kinds = map[kind]*tally{}
	a.identities = map[string]int{}
	a.idOverflow = map[string]*tally{}
	a.overflow = nil
	a.bytes = 0
}

func reasonsKey(rs []string) string {
	switch len(rs) {
	case 0:
		return ""
	case 1:
		return rs[0]
	}
	return strings.Join(rs, "\x00")
}

// observe folds the deny d of in, decided at now, into its kind. It returns
// full when the deny is the first of its kind (the caller writes it in
// full, with id); otherwise the deny is counted, and id is the decision_id
// of its kind's full entry ("" for an overflow).
func (a *aggregator) observe(in *policy.Input, d *policy.Decision, now time.Time, newID func() string) (id string, full bool) {
	k := kind{
		spiffeID: in.Subject.Identity.SPIFFEID,
		clientID: in.Subject.Client.ID,
		action:   in.Action,
		revision: d.Revision,
		reasons:  reasonsKey(d.Reasons),
		failed:   d.Err != nil,
	}
	topic := in.Topic
	if in.Action == policy.ActionSubscribe {
		topic = in.Filter
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if t, ok := a.kinds[k]; ok {
		a.count(t, topic, now)
		return t.agg.FirstDecisionID, false
	}
	// The reasons twice: the key's copy, and the Decision's own kept for
	// the aggregate entry.
	size := kindOverhead + len(k.spiffeID) + len(k.clientID) + len(k.revision) + 2*len(k.reasons)
	if d.Err != nil {
		size += len(d.Err.Error())
	}
	if a.identities[k.spiffeID] >= a.maxPerIdentity {
		if t := a.identityOverflow(k.spiffeID, now); t != nil {
			a.count(t, topic, now)
			return "", false
		}
		a.count(a.allOverflow(now), topic, now)
		return "", false
	}
	if len(a.kinds) >= a.maxKinds || a.bytes+size > a.maxBytes {
		a.count(a.allOverflow(now), topic, now)
		return "", false
	}
	t := &tally{
		agg:     Aggregate{Interval: a.interval, First: now, Last: now, FirstDecisionID: newID()},
		action:  k.action,
		spiffe:  strings.Clone(k.spiffeID),
		client:  strings.Clone(k.clientID),
		reasons: d.Reasons,
		rev:     d.Revision,
	}
	if d.Err != nil {
		t.err = d.Err.Error()
	}
	k.spiffeID, k.clientID, k.reasons = t.spiffe, t.client, strings.Clone(k.reasons)
	a.kinds[k] = t
	if _, seen := a.identities[t.spiffe]; !seen {
		size += len(t.spiffe)
	}
	a.identities[t.spiffe]++
	a.bytes += size
	return t.agg.FirstDecisionID, true
}

// count adds a deny to t. a.mu is held.
func (a *aggregator) count(t *tally, topic string, now time.Time) {
	t.agg.Count++
	t.agg.Last = now
	if topic == "" || t.agg.TopicsTruncated {
		return
	}
	for _, s := range t.agg.Topics {
		if s == topic {
			return
		}
	}
	if len(t.agg.Topics) >= topicSample || a.bytes+len(topic) > a.maxBytes {
		t.agg.TopicsTruncated = true
		return
	}
	t.agg.Topics = append(t.agg.Topics, strings.Clone(topic))
	a.bytes += len(topic)
}

// identityOverflow returns the overflow tally of an identity, nil when
// there is no room for one. a.mu is held.
func (a *aggregator) identityOverflow(spiffe string, now time.Time) *tally {
	if t, ok := a.idOverflow[spiffe]; ok {
		return t
	}
	size := kindOverhead + len(spiffe)
	if len(a.kinds)+len(a.idOverflow) >= a.maxKinds || a.bytes+size > a.maxBytes {
		return nil
	}
	t := &tally{spiffe: strings.Clone(spiffe), agg: Aggregate{Interval: a.interval, First: now, Overflow: OverflowIdentity}}
	a.idOverflow[t.spiffe] = t
	a.bytes += size
	return t
}

// allOverflow returns the tally of the denies nothing else could hold.
// a.mu is held.
func (a *aggregator) allOverflow(now time.Time) *tally {
	if a.overflow == nil {
		a.overflow = &tally{agg: Aggregate{Interval: a.interval, First: now, Overflow: OverflowKinds}}
	}
	return a.overflow
}

// flush ends the interval: it returns the entries of every kind that
// folded denies, and forgets every kind, so that the next deny of each is
// written in full again.
func (a *aggregator) flush() []entry {
	a.mu.Lock()
	kinds, idOverflow, overflow := a.kinds, a.idOverflow, a.overflow
	a.reset()
	a.mu.Unlock()

	var out []entry
	add := func(t *tally) {
		if t != nil && t.agg.Count > 0 {
			out = append(out, entry{id: newID(), ts: t.agg.Last, agg: t})
		}
	}
	for _, t := range kinds {
		add(t)
	}
	for _, t := range idOverflow {
		add(t)
	}
	add(overflow)
	return out
}

// aggInput is the input of an aggregate entry: the session, not one
// message. Absent parts are left out.
type aggInput struct {
	Action   policy.Action `json:"action,omitempty"`
	Identity *aggIdentity  `json:"identity,omitempty"`
	Client   *aggClient    `json:"client,omitempty"`
}

type aggIdentity struct {
	SPIFFEID string `json:"spiffe_id"`
}

type aggClient struct {
	ID string `json:"id"`
}

// input returns the aggregate's input document; nil for the overflow of
// all identities.
func (t *tally) input() *aggInput {
	if t.spiffe == "" && t.agg.Overflow == OverflowKinds {
		return nil
	}
	in := &aggInput{Action: t.action, Identity: &aggIdentity{SPIFFEID: t.spiffe}}
	if t.agg.Overflow == "" {
		in.Client = &aggClient{ID: t.client}
	}
	return in
}
