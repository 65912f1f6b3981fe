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
// A change in the device registry is applied to live sessions at once: a
// device that is revoked, suspended or deleted loses its connections.
package gateway
