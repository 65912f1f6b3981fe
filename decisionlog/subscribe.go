package decisionlog

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/ztgate/ztgate/policy"
)

// MaxSubscribers bounds the live subscribers of one Logger (the console's
// denial streams): each costs a buffer and a send per deny.
const MaxSubscribers = 32

// subscriberBuffer is how many denies may wait for one subscriber; a
// subscriber further behind loses the newest ones (counted), so a slow
// reader never slows a decision.
const subscriberBuffer = 256

// ErrTooManySubscribers is Subscribe's answer past MaxSubscribers.
var ErrTooManySubscribers = errors.New("decisionlog: too many deny subscribers")

// Denial is one deny as it is streamed to subscribers: who was refused
// what, why, by which revision, and the decision_id of the decision-log
// entry that records it (of the full entry of its kind when it was counted
// in an aggregate; empty when no entry could be written).
type Denial struct {
	Time       time.Time `json:"time"`
	DecisionID string    `json:"decision_id"`
	Action     string    `json:"action"`
	SPIFFEID   string    `json:"spiffe_id"`
	Device     string    `json:"device"`    // registry name, "" when not enrolled
	ClientID   string    `json:"client_id"` // MQTT client ID, "" for admin requests
	// Topic is the topic of a publish, delivery or will, the filter of a
	// subscribe, the path of an admin request; "" for a connect.
	Topic    string   `json:"topic"`
	Reasons  []string `json:"reasons"`
	Revision string   `json:"revision"`
	Error    string   `json:"error,omitempty"` // set when evaluation failed
}

// subscribers are the Logger's live subscribers. publish holds mu shared
// while it sends (without blocking); cancel and Close take it exclusively
// before they close a channel, so nothing is sent on a closed one.
type subscribers struct {
	mu     sync.RWMutex
	subs   []*subscriber
	closed bool
}

type subscriber struct {
	ch chan Denial
}

// Subscribe returns a channel that receives every deny decided through a
// wrapped Decider from now on, and a function that ends the subscription
// (and closes the channel). The channel is also closed when the Logger is
// closed. A subscriber that does not keep up misses denies (see
// SubscriberDropped) instead of holding up the decision.
func (l *Logger) Subscribe() (<-chan Denial, func(), error) {
	s := &l.subs
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, errors.New("decisionlog: closed")
	}
	if len(s.subs) >= MaxSubscribers {
		return nil, nil, ErrTooManySubscribers
	}
	sub := &subscriber{ch: make(chan Denial, subscriberBuffer)}
	s.subs = append(s.subs, sub)
	l.nsubs.Add(1)
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if i := slices.Index(s.subs, sub); i >= 0 {
				s.subs = slices.Delete(s.subs, i, i+1)
				l.nsubs.Add(-1)
				close(sub.ch)
			}
		})
	}
	return sub.ch, cancel, nil
}

// SubscriberDropped is the number of denies not delivered to a subscriber
// because its buffer was full.
func (l *Logger) SubscriberDropped() uint64 { return l.subDropped.Load() }

// publish hands a deny to every subscriber that has room. It is called on
// the decision path only when there are subscribers.
func (l *Logger) publish(in *policy.Input, d *policy.Decision) {
	dn := denialOf(in, d)
	s := &l.subs
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, sub := range s.subs {
		select {
		case sub.ch <- dn:
		default:
			l.subDropped.Add(1)
		}
	}
}

// closeSubscribers closes every subscriber's channel (Logger.Close).
func (l *Logger) closeSubscribers() {
	s := &l.subs
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, sub := range s.subs {
		close(sub.ch)
	}
	l.nsubs.Add(-int32(len(s.subs)))
	s.subs = nil
}

func denialOf(in *policy.Input, d *policy.Decision) Denial {
	dn := Denial{
		Time:       time.Now().UTC(),
		DecisionID: d.ID,
		Reasons:    slices.Clone(d.Reasons),
		Revision:   d.Revision,
	}
	if dn.Reasons == nil {
		dn.Reasons = []string{}
	}
	if d.Err != nil {
		dn.Error = d.Err.Error()
	}
	if in == nil {
		return dn
	}
	dn.Action = string(in.Action)
	switch {
	case in.Topic != "":
		dn.Topic = in.Topic
	case in.Filter != "":
		dn.Topic = in.Filter
	case in.Request != nil:
		dn.Topic = in.Request.Path
	}
	if sub := in.Subject; sub != nil {
		dn.SPIFFEID = sub.Identity.SPIFFEID
		dn.ClientID = sub.Client.ID
		if sub.Device != nil {
			dn.Device = sub.Device.Name
		}
	}
	return dn
}
