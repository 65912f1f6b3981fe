package gateway

import (
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/policy"
)

// allowPublish decides a PUBLISH of s: its topic, then the policy's
// "publish", then its MQTT 5 Response Topic, if any.
func (g *Gateway) allowPublish(s *session, pk packets.Packet) bool {
	if !isTopicName(pk.TopicName) {
		g.deny(s, policy.ActionPublish, "topic", pk.TopicName, "not a topic devices may use")
		return false
	}
	if !g.decidePublish(s, pk.TopicName, pk.FixedHeader.Qos, pk.FixedHeader.Retain, false, len(pk.Payload)) {
		return false
	}
	return g.allowResponseTopic(s, pk.Properties.ResponseTopic)
}

// allowResponseTopic decides the Response Topic of a PUBLISH ("" when it has
// none). A Response Topic asks whoever receives the message to publish the
// answer there, with the receiver's rights: a controller that may publish
// to every device's commands would write to the topic a device names. So a
// device may only name a topic it may itself receive on: one it could read
// the answer from. The decision is the policy's "receive" for the
// publisher, on that topic; topics no device may use (wildcards, '$', NUL,
// which MQTT 3.3.2.3.5 forbids anyway) are refused before it.
func (g *Gateway) allowResponseTopic(s *session, rt string) bool {
	if rt == "" {
		return true
	}
	if !isTopicName(rt) {
		g.deny(s, policy.ActionPublish, "response_topic", rt, "response topic is not a topic devices may use")
		return false
	}
	if !g.decideReceive(s, rt) {
		g.deny(s, policy.ActionPublish, "response_topic", rt, "response topic not readable")
		return false
	}
	return true
}
