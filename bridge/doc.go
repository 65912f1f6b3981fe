// Package bridge connects the gateway to approved upstream MQTT brokers,
// so data can leave the site through the gateway and nowhere else.
//
// A bridge is one configured upstream: an mqtts:// URL (TLS 1.2 or later,
// the upstream's CA or the system roots, a client certificate), out rules
// (local topic filters forwarded upstream under a remote prefix) and in
// rules (upstream filters subscribed, received messages published locally
// with a prefix stripped). The bridge dials that host and port and no
// other: it follows no MQTT 5 server reference and no redirect.
//
// Every message that crosses a bridge is decided by the policy: outbound
// with action bridge_out and the original publisher as the subject, inbound
// with action bridge_in and the bridge's own identity
// spiffe://TD/bridge/NAME as the subject. Inbound messages are handed to
// Deps.PublishLocal, which publishes them as that identity, so every local
// delivery is decided with receive as usual.
//
// Outbound messages wait in a FIFO queue on disk (one bbolt file per
// bridge, DATA_DIR/bridges/NAME.db) until the upstream acknowledged them
// (QoS 1) or they were written (QoS 0); the queue survives a restart and is
// drained in order. When it holds queue_max_messages, new messages are
// dropped and counted, and the queued ones are kept.
//
// The MQTT client is the package's own small one (mqtt.go): it speaks MQTT
// 5 and 3.1.1, because paho.golang speaks only MQTT 5, and it gives the
// sender what paho's Publish does not: an ordered window of in-flight QoS 1
// messages, each removed from the queue only when its PUBACK arrives.
package bridge
