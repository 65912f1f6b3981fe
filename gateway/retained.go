package gateway

import (
	"errors"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// RetainedMessages lists the retained messages whose topics match filter
// (an MQTT topic filter, with MQTT's semantics: "#" is every one outside
// the server's "$" topics),
// sorted by topic, at most limit of them (all when limit <= 0). A filter
// that is not a valid MQTT filter, or a server ("$") filter, matches
// nothing. The result is never nil. It is safe for concurrent use.
func (g *Gateway) RetainedMessages(filter string, limit int) []brokerview.RetainedMessage {
	out := []brokerview.RetainedMessage{}
	if !isFilter(filter) || filter[0] == '$' {
		return out
	}
	pks := g.retainedMatching(filter)
	sort.Slice(pks, func(i, j int) bool { return pks[i].TopicName < pks[j].TopicName })
	if limit > 0 && len(pks) > limit {
		pks = pks[:limit]
	}
	for i := range pks {
		pk := &pks[i]
		out = append(out, brokerview.RetainedMessage{
			Topic:       pk.TopicName,
			QoS:         pk.FixedHeader.Qos,
			PayloadSize: len(pk.Payload),
			SPIFFEID:    publisherID(pk),
			Created:     time.Unix(pk.Created, 0).UTC(),
		})
	}
	return out
}

// retainedMatching returns the retained messages on topics that filter
// matches. It reads mochi's locked store of retained messages, not its
// topic tree: mochi's own wildcard scan (TopicsIndex.Messages) reads the
// tree without the locks a concurrent retain takes.
func (g *Gateway) retainedMatching(filter string) []packets.Packet {
	retained := g.server.Topics.Retained
	if isTopicName(filter) {
		if pk, ok := retained.Get(filter); ok {
			return []packets.Packet{pk}
		}
		return nil
	}
	var out []packets.Packet
	for topic, pk := range retained.GetAll() {
		if policy.TopicMatches(filter, topic) {
			out = append(out, pk)
		}
	}
	return out
}

// DeleteRetained clears the retained message of topic, as a retained
// PUBLISH with an empty payload would, and reports whether there was one.
// A topic that is not one devices may use (a wildcard, a server topic)
// holds none. It is safe for concurrent use.
func (g *Gateway) DeleteRetained(topic string) bool {
	if !isTopicName(topic) {
		return false
	}
	return g.clearRetained(topic, "")
}

// clearRetained clears the retained message of topic, if it was published
// by spiffeID (by anyone when spiffeID is empty), and reports whether it
// did.
func (g *Gateway) clearRetained(topic, spiffeID string) bool {
	t := g.server.Topics
	pk, ok := t.Retained.Get(topic)
	if !ok || spiffeID != "" && publisherID(&pk) != spiffeID {
		return false
	}
	r := t.RetainMessage(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:   topic,
	})
	// What mochi's own retain path keeps up to date ($SYS, metrics).
	atomic.StoreInt64(&g.server.Info.Retained, int64(t.Retained.Len()))
	if err := g.store.DeleteRetained(topic); err != nil {
		g.log.Error("gateway: stored retained message not deleted", "topic", topic, "err", err)
	}
	g.clearClusterRetained(topic, spiffeID)
	return r < 0
}

// publisherID is the SPIFFE ID of the client that published pk, "" when
// it is not known. mochi records the publisher's client ID in Origin,
// which the gateway scoped to "<SPIFFE ID> <client ID>"; a delayed will is
// published by the gateway's will client and carries the device's scoped
// client ID in Connect.ClientIdentifier (see delayedWills.fire).
func publisherID(pk *packets.Packet) string {
	origin := pk.Origin
	switch origin {
	case willClientID:
		origin = pk.Connect.ClientIdentifier
	case clusterClientID, bridgeClientID:
		// Another node's message carries its publisher's SPIFFE ID
		// (ClusterMessage.packet), as a bridge's does (PublishAs).
		return remotePublisher(pk.Connect.ClientIdentifier)
	}
	if !strings.HasPrefix(origin, "spiffe://") {
		return ""
	}
	id, _, ok := strings.Cut(origin, " ")
	if !ok {
		return ""
	}
	return id
}

// retainedIndex knows which identities have published retained messages,
// each with the registry record it had and a channel closed when that
// changes, so that a registry change costs a look at these channels and a
// lookup only for the identities it concerns; a device that is revoked or
// deleted while offline, without any session, is found too.
type retainedIndex struct {
	keep bool // KeepRetainedOnRevoke: nothing is tracked or cleared

	// mu orders adding a publisher (OnRetainMessage) against the pass
	// that clears a revoked one (recheckRetained): a message retained
	// while its publisher is being revoked is either seen by the pass or
	// found afterwards by OnRetainMessage, and cleared either way.
	mu         sync.Mutex
	publishers map[string]*retainer
}

// retainer is one identity that has published retained messages.
type retainer struct {
	enrolled bool            // a registry record existed at the last look
	record   <-chan struct{} // closed when that may have changed
}

// OnRetainMessage notes the publisher of a message mochi has just retained,
// so that its revocation clears it; a publisher revoked or deleted by now
// (a PUBLISH decided just before) has it cleared at once.
func (h *hook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	g := h.g
	if r != 1 || g.retained.keep {
		return
	}
	id := publisherID(&pk)
	if id == "" {
		return
	}
	x := &g.retained
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, known := x.publishers[id]; known {
		return
	}
	p := &retainer{}
	if gone := g.lookRetainer(id, p); gone != "" {
		g.clearRetainedOf(id, gone)
		return
	}
	if x.publishers == nil {
		x.publishers = make(map[string]*retainer)
	}
	x.publishers[id] = p
}

// recheckRetained clears the retained messages of every publisher whose
// device has been revoked or deleted. The registry watcher calls it after
// each change.
func (g *Gateway) recheckRetained() {
	x := &g.retained
	if x.keep {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for id, p := range x.publishers {
		select {
		case <-p.record:
		default:
			continue // unchanged
		}
		if gone := g.lookRetainer(id, p); gone != "" {
			g.clearRetainedOf(id, gone)
			delete(x.publishers, id)
		}
	}
}

// trackRetainer puts publisher id, with p as its state, in the index of
// retained publishers, unless its registry record says its retained
// messages are to go, which it then clears. x.mu is held.
func (g *Gateway) trackRetainer(x *retainedIndex, id string, p *retainer) {
	if gone := g.lookRetainer(id, p); gone != "" {
		g.clearRetainedOf(id, gone)
		return
	}
	if x.publishers == nil {
		x.publishers = make(map[string]*retainer)
	}
	x.publishers[id] = p
}

// lookRetainer reads the registry record of id into p and returns why its
// retained messages are to go (reasonRevoked or reasonDeleted), "" while
// they may stay. A registry that cannot answer clears nothing: it is looked
// at again on the next change.
func (g *Gateway) lookRetainer(id string, p *retainer) (gone string) {
	dev, ch, err := g.reg.WatchDevice(id)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		p.record = ch
		if p.enrolled {
			return reasonDeleted
		}
		return ""
	case err != nil:
		if ch == nil {
			// Nothing to wait on: look again on the next pass.
			closed := make(chan struct{})
			close(closed)
			ch = closed
		}
		p.record = ch
		return ""
	}
	p.enrolled, p.record = true, ch
	if dev.Status == registry.StatusRevoked {
		return reasonRevoked
	}
	return ""
}

// clearRetainedOf clears every retained message published by id.
func (g *Gateway) clearRetainedOf(id, why string) {
	n := 0
	for topic, pk := range g.server.Topics.Retained.GetAll() {
		if publisherID(&pk) == id && g.clearRetained(topic, id) {
			n++
		}
	}
	g.log.Info("gateway: retained messages cleared", "reason", why, "spiffe_id", id, "messages", n)
}
