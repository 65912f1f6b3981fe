package gateway

import (
	"errors"
	"fmt"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/policy"
)

// Egress takes the messages that may leave the gateway: the bridges to
// upstream brokers. Offer is called once per PUBLISH (and Last Will) the
// policy allowed, on the publisher's goroutine, after the publish decision;
// never for a message that came in through PublishAs or from another
// cluster node, so nothing loops. It must return fast, and must not
// allocate for a topic it does not take: it runs on every publish. payload
// may be reused after it returns.
type Egress interface {
	Offer(sub *policy.Subject, topic string, payload []byte, qos byte, retain bool)
}

// bridgeClientID is the inline client that publishes the bridges' inbound
// messages.
const bridgeClientID = "ztgate:bridge"

// maxTopicLen is the longest topic an MQTT packet can carry (a two-byte
// length).
const maxTopicLen = 65535

// offer hands an allowed message of s to the egress, if any.
func (g *Gateway) offer(s *session, topic string, payload []byte, qos byte, retain bool) {
	if g.egress == nil {
		return
	}
	g.egress.Offer(s.subject.Load(), topic, payload, qos, retain)
}

// PublishAs publishes a message into the local broker as id, the identity
// of a bridge whose bridge_in decision allowed it. Every delivery is decided
// by the receiver's "receive" as usual; the message is not decided again as
// a publish, and never offered to the egress (it came from there). A topic
// no device could publish to is refused.
func (g *Gateway) PublishAs(id spiffeid.ID, clientID, topic string, payload []byte, qos byte, retain bool) error {
	switch {
	case g.ctx.Err() != nil:
		return errors.New("gateway: publish as bridge: gateway closed")
	case id.IsZero():
		return errors.New("gateway: publish as bridge: no identity")
	case !isTopicName(topic) || !utf8.ValidString(topic) || len(topic) > maxTopicLen || qos > 2:
		// mochi checks nothing for an inline client; a topic a device's
		// client cannot decode would cost it its connection.
		return fmt.Errorf("gateway: publish as bridge: %.200q (QoS %d) is not a message a device could publish", topic, qos)
	}
	if n := publishSize(topic, len(payload), qos); n > int(g.maxPacket) {
		// What a device may not send, an upstream may not either: the
		// bound protects the devices that receive it.
		return fmt.Errorf("gateway: publish as bridge: a %d-byte packet is larger than the maximum packet size, %d bytes", n, g.maxPacket)
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		TopicName:   topic,
		Payload:     payload,
		// Where publisherID finds the publisher of a retained copy.
		Connect:         packets.ConnectParams{ClientIdentifier: id.String()},
		ProtocolVersion: 5,
	}
	if qos > 0 {
		pk.PacketID = 1 // required by mochi's validation; an inline publish is not acknowledged
	}
	if g.cluster.link != nil {
		// To every node, as a device's publish: the upstream handed it to
		// this node alone (a shared subscription). Stored by the cluster
		// before it is published here, as a device's QoS 1 message is.
		m := ClusterMessage{Topic: topic, Payload: payload, QoS: qos, Retain: retain, Publisher: id.String()}
		if err := g.forward(m); err != nil && qos > 0 {
			return fmt.Errorf("gateway: publish as bridge %s: %w", id, err)
		}
	}
	if err := g.server.InjectPacket(g.bridgeClient, pk); err != nil {
		return fmt.Errorf("gateway: publish as bridge %s (client %s): %w", id, clientID, err)
	}
	return nil
}

// newBridgeClient is the inline client of PublishAs.
func (g *Gateway) newBridgeClient() *mqtt.Client {
	cl := g.server.NewClient(nil, mqtt.LocalListener, bridgeClientID, true)
	cl.Properties.ProtocolVersion = 5
	return cl
}

// publishSize is the size of an MQTT 5 PUBLISH packet of topic and a
// payload of n bytes, without properties.
func publishSize(topic string, n int, qos byte) int {
	rem := 2 + len(topic) + 1 + n // topic, properties length (0), payload
	if qos > 0 {
		rem += 2 // packet identifier
	}
	head := 2 // type and flags, one byte of remaining length
	for v := rem >> 7; v > 0; v >>= 7 {
		head++
	}
	return head + rem
}
