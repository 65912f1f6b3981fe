// Package gateway is ztgate's MQTT broker: an embedded mochi-mqtt server
// with a single mutual-TLS listener and a single hook that turns every MQTT
// event into a policy input and enforces the decision.
//
// The hook is the only authentication and authorization hook on the server.
// mochi ORs the answers of its auth hooks, so any second one (mochi's
// auth.AllowHook above all) would open everything this one closes.
//
// What is decided, and where:
//
//	CONNECT    OnConnect: verified SPIFFE ID, registry record, policy
//	           "connect", and the Last Will as a "publish" with will=true.
//	           A refusal is answered with CONNACK 0x87 (MQTT 5) or 0x05
//	           (3.1.1). The client ID is bound to the identity here.
//	PUBLISH    OnPublish, on the topic after alias resolution, with QoS,
//	           retain flag and payload size.
//	SUBSCRIBE  OnSubscribe decides every filter ($share/GROUP/F on F) and
//	           OnACLCheck hands each decision to mochi, which answers with a
//	           reason code per filter.
//	receive    OnACLCheck(read) for every delivery: live, retained, and the
//	           queued messages of a resumed session (OnSessionEstablish).
//	Last Will  OnWill, again at the moment it would be sent.
//
// Verification does not stop at CONNECT:
//
//   - A connection lasts as long as the certificate chain it was verified
//     with: when the SVID expires, MQTT 5 clients get DISCONNECT 0xA0 with
//     reason string "SVID expired" (MQTT 3.1.1 connections are closed). A
//     persistent session stays, for the device to resume with a renewed
//     SVID.
//   - A change in the device registry is applied to live sessions at once:
//     a device that is revoked, suspended or deleted loses its connections
//     (DISCONNECT 0x87), and one whose record changed otherwise keeps only
//     the subscriptions and queued messages its new record allows. Each
//     session holds a registry channel closed when its own record changes,
//     so a change costs a lookup for the sessions it concerns only.
//   - Reevaluate, called when a new policy revision is activated, re-checks
//     every session, connected or kept offline: the CONNECT (and will) again,
//     every subscription, every queued or in-flight message.
//
// Every denial is logged with the decision's ID (decision_id) when a
// decision logger set one, so it can be found in the decision log.
package gateway
