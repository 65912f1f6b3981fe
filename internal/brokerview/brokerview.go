// Package brokerview holds the gateway's MQTT state as the admin API
// reports it: live sessions and retained messages. The gateway fills these
// types and the API serves them as they are, so neither package imports the
// other and no copy sits between them. The JSON tags are the wire format of
// GET /v1/sessions and GET /v1/retained (api/openapi.yaml).
//
// It imports nothing of the project, so every package may use it.
package brokerview

import "time"

// Session is one live MQTT connection.
type Session struct {
	// ClientID is the client ID as the client sent it (or as it was
	// assigned), never the gateway's scoped one.
	ClientID string `json:"client_id"`
	SPIFFEID string `json:"spiffe_id"`
	// Device is the registry name; empty when the identity is not enrolled.
	Device          string    `json:"device"`
	RemoteAddr      string    `json:"remote_addr"`
	ProtocolVersion byte      `json:"protocol_version"`
	ConnectedAt     time.Time `json:"connected_at"`
	// Subscriptions are the filters the session holds, sorted by filter;
	// a shared subscription as the client sent it ($share/GROUP/FILTER).
	Subscriptions []Subscription `json:"subscriptions"`
	// QueueDepth is the number of QoS 1 and 2 messages the broker holds
	// for the client: sent and not yet acknowledged, or waiting for the
	// client's receive maximum (the count ztgate_broker_queued_messages
	// sums).
	QueueDepth int `json:"queue_depth"`
	// Node is the cluster node the connection is on; empty, and left out
	// of the JSON, on a single gateway.
	Node string `json:"node,omitempty"`
}

// Subscription is one subscription of a session.
type Subscription struct {
	Filter string `json:"filter"`
	QoS    byte   `json:"qos"`
}

// RetainedMessage is one retained message: no payload, which is the
// devices' data.
type RetainedMessage struct {
	Topic       string `json:"topic"`
	QoS         byte   `json:"qos"`
	PayloadSize int    `json:"payload_size"`
	// SPIFFEID is the identity that published it; empty, and left out of
	// the JSON, when unknown.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Created is when the broker received it, to the second.
	Created time.Time `json:"created"`
}
