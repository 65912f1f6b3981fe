package gateway

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// OnSelectSubscribers picks the member of each shared subscription group
// ($share/GROUP/FILTER) that gets a message.
//
// mochi, left to itself, picks the first member of each group in map order
// and only then asks OnACLCheck about the delivery; a member that may not
// receive the topic (its device suspended or revoked, or the policy refusing
// it) would take the message and drop it, although another member could
// have had it. Here a member is picked only if the same receive decision as
// the delivery's allows it, and a connected member before a persistent
// session that is offline (which would only queue the message). A group in
// which nobody may receive the message gets nobody.
//
// Every group is removed from subs.Shared: mochi runs its own random pick
// when SharedSelected is empty, which must find nothing to pick from.
func (h *hook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	g := h.g
	// A delivery of anything else is refused by OnACLCheck anyway.
	deliverable := isTopicName(pk.TopicName)
	for group, members := range subs.Shared {
		if deliverable {
			if id, sub, ok := g.pickShared(members, pk.TopicName); ok {
				if subs.SharedSelected == nil {
					subs.SharedSelected = make(map[string]packets.Subscription, len(subs.Shared))
				}
				// One client may be picked in several groups; it gets the
				// message once, as mochi's SelectShared merges it.
				if prev, seen := subs.SharedSelected[id]; seen {
					sub = prev.Merge(sub)
				}
				subs.SharedSelected[id] = sub
			}
		}
		delete(subs.Shared, group)
	}
	return subs
}

// pickShared returns the member of one share group that gets a message on
// topic: the first, in map order (which spreads the load), that is
// connected and may receive it; failing that, the first persistent session
// that is offline and may. ok is false when nobody may.
func (g *Gateway) pickShared(members map[string]packets.Subscription, topic string) (id string, sub packets.Subscription, ok bool) {
	offline := false
	for id, sub := range members {
		cl, s := g.member(id)
		if s == nil {
			continue
		}
		if !s.connected(cl) {
			offline = true
			continue
		}
		if g.hook.OnACLCheck(cl, topic, false) {
			return id, sub, true
		}
	}
	if !offline {
		return "", packets.Subscription{}, false
	}
	for id, sub := range members {
		cl, s := g.member(id)
		if s == nil || s.connected(cl) {
			continue
		}
		if g.hook.OnACLCheck(cl, topic, false) {
			return id, sub, true
		}
	}
	return "", packets.Subscription{}, false
}

// member returns mochi's client under the (scoped) client ID id, the one
// mochi would deliver to, and its session; s is nil when there is none or
// it may receive nothing at all.
func (g *Gateway) member(id string) (*mqtt.Client, *session) {
	cl, ok := g.server.Clients.Get(id)
	if !ok {
		return nil, nil
	}
	s := g.session(cl)
	if s == nil || s.life.load().denied() {
		return nil, nil
	}
	return cl, s
}

// connected reports whether cl, the client of s, has a live connection
// that the gateway is not ending and no new connection is taking over.
func (s *session) connected(cl *mqtt.Client) bool {
	return s.life.load().active() && !cl.Closed()
}
