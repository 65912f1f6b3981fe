package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ClusterMessage is an MQTT message on its way between the gateways of a
// cluster: accepted by one node, delivered by each of the others to its
// own subscribers, every delivery decided there.
type ClusterMessage struct {
	Topic     string
	Payload   []byte
	QoS       byte
	Retain    bool
	Publisher string // SPIFFE ID of the publishing device
	Origin    string // the node that accepted it (set by the link)

	// The MQTT 5 properties that travel with a message.
	PayloadFormat   byte
	MessageExpiry   uint32 // seconds left; 0: none
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	UserProperties  []ClusterUserProperty
}

// ClusterUserProperty is an MQTT 5 User Property of a ClusterMessage.
type ClusterUserProperty struct{ Key, Value string }

// ClusterLink connects the gateway to the other nodes of its cluster. The
// gateway calls it; the messages of the other nodes come back through
// DeliverRemote. Every method must honour ctx's deadline.
type ClusterLink interface {
	// Forward hands m to the other nodes. For QoS 1 and 2, nil means the
	// cluster stored it (a majority of nodes has it); for QoS 0, nil may
	// mean only that it was sent.
	Forward(ctx context.Context, m ClusterMessage) error
	// SetRetained makes m the cluster's retained message of its topic;
	// an empty payload clears it.
	SetRetained(ctx context.Context, m ClusterMessage) error
	// ClearRetained clears the retained message of topic if publisher
	// published it (whoever did when publisher is empty).
	ClearRetained(ctx context.Context, topic, publisher string) error
	// LoadRetained returns the cluster's retained messages.
	LoadRetained(ctx context.Context) ([]ClusterMessage, error)
}

const (
	// clusterClientID is the client ID of the inline client messages of
	// the other nodes are published with; like willClientID it cannot be a
	// device's, which starts with "spiffe://".
	clusterClientID = "ztgate:cluster"
	// clusterTimeout bounds a PUBLISH's wait for the cluster: the device
	// gets its acknowledgement, positive or not, within it.
	clusterTimeout = 5 * time.Second
	// clusterLoadTimeout bounds the load of the retained messages at Start.
	clusterLoadTimeout = 30 * time.Second
	// reasonClusterUnavailable: an MQTT 3.1.1 QoS>0 PUBLISH the cluster
	// did not store, which 3.1.1 can only answer by disconnecting.
	reasonClusterUnavailable = "cluster_unavailable"
)

// codeClusterUnavailable answers an MQTT 5 QoS>0 PUBLISH the cluster did not
// store: 0x80 "Unspecified error" (a PUBACK has no "server unavailable"),
// with a reason string saying it is not a denial, so the client sends it
// again rather than giving up.
var codeClusterUnavailable = packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "cluster unavailable"}

// clusterState is the gateway's side of a cluster; link is nil on a
// single node, and then nothing here is used.
type clusterState struct {
	link   ClusterLink
	client *mqtt.Client // inline: publishes the other nodes' messages
}

func (c *clusterState) init(g *Gateway, link ClusterLink) {
	if link == nil {
		return
	}
	c.link = link
	c.client = g.server.NewClient(nil, mqtt.LocalListener, clusterClientID, true)
	c.client.Properties.ProtocolVersion = 5 // keeps the MQTT 5 properties
}

// forwardPublish hands a PUBLISH of s, decided and allowed, to the other
// nodes before mochi acknowledges or delivers it, and reports whether it
// may go on. A QoS 1 or 2 message that the cluster did not store is
// refused, so that the device, without an acknowledgement, sends it again:
// that is what makes QoS 1 at-least-once across nodes. A QoS 0 message goes
// on anyway: it may be lost.
func (g *Gateway) forwardPublish(s *session, pk *packets.Packet) bool {
	link := g.cluster.link
	if link == nil {
		return true
	}
	m := clusterMessageOf(pk, s.spiffeID)
	if err := g.forward(m); err != nil {
		g.log.Warn("gateway: cluster did not take a PUBLISH", "spiffe_id", s.spiffeID, "client_id", s.clientID,
			"topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "err", err)
		return pk.FixedHeader.Qos == 0
	}
	return true
}

// forwardWill hands an allowed will of spiffeID to the other nodes; mochi
// sends wills without OnPublish, so OnWill and the delayed wills call it.
// Nobody is there to be told of a failure: it is logged.
func (g *Gateway) forwardWill(spiffeID string, will mqtt.Will) {
	if g.cluster.link == nil {
		return
	}
	m := ClusterMessage{
		Topic: will.TopicName, Payload: will.Payload, QoS: will.Qos, Retain: will.Retain,
		Publisher: spiffeID, UserProperties: userProperties(will.User),
	}
	if err := g.forward(m); err != nil {
		g.log.Warn("gateway: cluster did not take a will", "spiffe_id", spiffeID, "topic", will.TopicName, "err", err)
	}
}

// forward stores a retained message's new state, then hands m to the other
// nodes, within clusterTimeout.
func (g *Gateway) forward(m ClusterMessage) error {
	link := g.cluster.link
	ctx, cancel := context.WithTimeout(g.ctx, clusterTimeout)
	defer cancel()
	if m.Retain {
		if err := link.SetRetained(ctx, m); err != nil {
			return fmt.Errorf("gateway: cluster retained message: %w", err)
		}
	}
	if err := link.Forward(ctx, m); err != nil {
		return fmt.Errorf("gateway: cluster forward: %w", err)
	}
	return nil
}

func clusterMessageOf(pk *packets.Packet, publisher string) ClusterMessage {
	p := &pk.Properties
	return ClusterMessage{
		Topic:           pk.TopicName,
		Payload:         pk.Payload,
		QoS:             pk.FixedHeader.Qos,
		Retain:          pk.FixedHeader.Retain,
		Publisher:       publisher,
		PayloadFormat:   p.PayloadFormat,
		MessageExpiry:   p.MessageExpiryInterval,
		ContentType:     p.ContentType,
		ResponseTopic:   p.ResponseTopic,
		CorrelationData: p.CorrelationData,
		UserProperties:  userProperties(p.User),
	}
}

func userProperties(us []packets.UserProperty) []ClusterUserProperty {
	if len(us) == 0 {
		return nil
	}
	out := make([]ClusterUserProperty, len(us))
	for i, u := range us {
		out[i] = ClusterUserProperty{Key: u.Key, Value: u.Val}
	}
	return out
}

// packet is m as mochi's PUBLISH from the cluster client. The publisher
// goes where publisherID finds it, so that a retained copy is known as
// the device's and cleared when it is revoked.
func (m *ClusterMessage) packet() packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		Properties: packets.Properties{
			PayloadFormat:         m.PayloadFormat,
			PayloadFormatFlag:     m.PayloadFormat != 0,
			MessageExpiryInterval: m.MessageExpiry,
			ContentType:           m.ContentType,
			ResponseTopic:         m.ResponseTopic,
			CorrelationData:       m.CorrelationData,
		},
		Connect:         packets.ConnectParams{ClientIdentifier: m.Publisher},
		ProtocolVersion: 5,
	}
	for _, u := range m.UserProperties {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Value})
	}
	if m.QoS > 0 {
		pk.PacketID = 1 // required by mochi's validation; an inline publish is not acknowledged
	}
	return pk
}

// remotePublisher is the SPIFFE ID a message of the cluster client carries,
// "" when it is not one.
func remotePublisher(id string) string {
	if !strings.HasPrefix(id, "spiffe://") || strings.ContainsAny(id, " \x00") {
		return ""
	}
	return id
}

// DeliverRemote publishes a message another node accepted to this node's
// subscribers. It goes through mochi as a PUBLISH of the cluster client, so
// every delivery is decided here, on the subscriber's node (OnACLCheck), QoS
// 1 messages are queued for offline persistent sessions as local ones are,
// and a retained message replaces this node's copy, known as its
// publisher's (a revocation clears it). It is not decided again as a
// publish (it was, on its node) and never forwarded again.
//
// A message that no device could have published (a wildcard or '$' topic,
// no publisher, QoS above 2) is dropped, and nil returned: sending it again
// would not make it valid. An error means the gateway cannot take messages
// now (not in a cluster, closed, mochi refused it); the caller sends it
// again later.
func (g *Gateway) DeliverRemote(m ClusterMessage) error {
	cl := g.cluster.client
	switch {
	case cl == nil:
		return errors.New("gateway: deliver remote message: not in a cluster")
	case g.ctx.Err() != nil:
		return errors.New("gateway: deliver remote message: gateway closed")
	case !isTopicName(m.Topic) || m.QoS > 2 || remotePublisher(m.Publisher) == "":
		g.log.Warn("gateway: invalid message from the cluster dropped", "origin", m.Origin, "topic", m.Topic,
			"qos", m.QoS, "spiffe_id", m.Publisher)
		return nil
	}
	if err := g.server.InjectPacket(cl, m.packet()); err != nil {
		return fmt.Errorf("gateway: deliver remote message: %w", err)
	}
	return nil
}

// loadClusterRetained loads the cluster's retained messages at Start, in
// place of the local store's copy (which restoreRetained skips and drops in
// a cluster): the cluster's set is the one every node shares, the local
// copy may be older than the last message any node accepted, or than a
// revocation. A node that cannot read it does not start.
func (g *Gateway) loadClusterRetained() error {
	link := g.cluster.link
	if link == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(g.ctx, clusterLoadTimeout)
	defer cancel()
	msgs, err := link.LoadRetained(ctx)
	if err != nil {
		return fmt.Errorf("gateway: cluster retained messages: %w", err)
	}
	now := time.Now()
	pks := make([]packets.Packet, 0, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if !isTopicName(m.Topic) || len(m.Payload) == 0 || remotePublisher(m.Publisher) == "" {
			continue
		}
		pk := m.packet()
		pk.FixedHeader.Retain = true
		pk.Origin = clusterClientID
		pk.Created = now.Unix()
		if m.MessageExpiry > 0 {
			pk.Expiry = pk.Created + int64(m.MessageExpiry)
		}
		pks = append(pks, pk)
	}
	for _, pk := range pks {
		g.server.Topics.RetainMessage(pk)
	}
	atomic.StoreInt64(&g.server.Info.Retained, int64(g.server.Topics.Retained.Len()))
	g.indexRemoteRetained(pks)
	g.log.Info("gateway: cluster retained messages loaded", "retained", len(pks))
	return nil
}

// indexRemoteRetained notes the publishers of retained messages loaded from
// the cluster, as OnRetainMessage does: a publisher revoked by now has them
// cleared (here and in the cluster). One this node's registry does not
// know (yet: it may lag behind the node that accepted the message) is not
// taken for deleted, unlike at a restore from the local store, where the
// registry is this node's own: that would clear the cluster's copy.
func (g *Gateway) indexRemoteRetained(pks []packets.Packet) {
	x := &g.retained
	if x.keep {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for i := range pks {
		id := publisherID(&pks[i])
		if id == "" {
			continue
		}
		if _, known := x.publishers[id]; known {
			continue
		}
		g.trackRetainer(x, id, &retainer{})
	}
}

// clearClusterRetained clears topic's retained message of spiffeID (of
// anyone when empty) in the cluster too, so that no node loads it again.
// It runs on its own goroutine: callers hold the retained index's lock.
// The link clears only that publisher's message, so a newer one of
// someone else, or a clear that comes late, is harmless.
func (g *Gateway) clearClusterRetained(topic, spiffeID string) {
	link := g.cluster.link
	if link == nil || g.ctx.Err() != nil {
		return // closing: Close waits only for the clears started before
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		ctx, cancel := context.WithTimeout(g.ctx, clusterTimeout)
		defer cancel()
		if err := link.ClearRetained(ctx, topic, spiffeID); err != nil {
			g.log.Warn("gateway: cluster retained message not cleared", "topic", topic, "spiffe_id", spiffeID, "err", err)
		}
	}()
}
