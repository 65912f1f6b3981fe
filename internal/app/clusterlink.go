package app

import (
	"context"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/gateway"
)

// fabricLink is the gateway's ClusterLink over the cluster's message
// fabric. The two packages keep their own message types (gateway imports
// no NATS, cluster no gateway); this is the one place they meet.
type fabricLink struct{ f *cluster.Fabric }

var _ gateway.ClusterLink = fabricLink{}

// newClusterLink returns f as the gateway's Config.Cluster.
func newClusterLink(f *cluster.Fabric) gateway.ClusterLink { return fabricLink{f: f} }

// runClusterDelivery hands every message of the other nodes to gw until ctx
// ends. Start it after gw.Start (which loads the retained messages) and
// cancel it before gw.Close: a message DeliverRemote refuses (gateway
// closed) comes back later from the stream.
func runClusterDelivery(ctx context.Context, f *cluster.Fabric, gw *gateway.Gateway) error {
	return f.Run(ctx, func(m cluster.Message) error { return gw.DeliverRemote(gatewayMessage(m)) })
}

func (l fabricLink) Forward(ctx context.Context, m gateway.ClusterMessage) error {
	return l.f.Publish(ctx, fabricMessage(m))
}

func (l fabricLink) SetRetained(ctx context.Context, m gateway.ClusterMessage) error {
	return l.f.SetRetained(ctx, fabricMessage(m))
}

func (l fabricLink) ClearRetained(ctx context.Context, topic, publisher string) error {
	return l.f.ClearRetained(ctx, topic, publisher)
}

func (l fabricLink) LoadRetained(ctx context.Context) ([]gateway.ClusterMessage, error) {
	ms, err := l.f.LoadRetained(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]gateway.ClusterMessage, len(ms))
	for i, m := range ms {
		out[i] = gatewayMessage(m)
	}
	return out, nil
}

func fabricMessage(m gateway.ClusterMessage) cluster.Message {
	out := cluster.Message{
		Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain, Publisher: m.Publisher, Origin: m.Origin,
		PayloadFormat: m.PayloadFormat, MessageExpiry: m.MessageExpiry, ContentType: m.ContentType,
		ResponseTopic: m.ResponseTopic, CorrelationData: m.CorrelationData,
	}
	if len(m.UserProperties) > 0 {
		out.UserProperties = make([]cluster.UserProperty, len(m.UserProperties))
		for i, u := range m.UserProperties {
			out.UserProperties[i] = cluster.UserProperty{Key: u.Key, Value: u.Value}
		}
	}
	return out
}

func gatewayMessage(m cluster.Message) gateway.ClusterMessage {
	out := gateway.ClusterMessage{
		Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain, Publisher: m.Publisher, Origin: m.Origin,
		PayloadFormat: m.PayloadFormat, MessageExpiry: m.MessageExpiry, ContentType: m.ContentType,
		ResponseTopic: m.ResponseTopic, CorrelationData: m.CorrelationData,
	}
	if len(m.UserProperties) > 0 {
		out.UserProperties = make([]gateway.ClusterUserProperty, len(m.UserProperties))
		for i, u := range m.UserProperties {
			out.UserProperties[i] = gateway.ClusterUserProperty{Key: u.Key, Value: u.Value}
		}
	}
	return out
}
