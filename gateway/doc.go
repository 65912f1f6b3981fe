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
//
// # Session lifecycle
//
// A session is the gateway's state for one mochi client: its connection
// and, after that ends, the persistent session mochi keeps under its client
// ID. Its state is a pair, its connection's and its own, and one mark,
// denied, set when the registry or the policy refuses the session and never
// cleared: a denied session gets no decision from the policy. Every change
// is made under the session's lifecycle lock, together with what goes with
// it (leaving mochi's routing, being forgotten); what every message reads
// (may it publish, is it denied) is one atomic word. state.go holds the
// tables; TestStateTableDocumented keeps these in step with them.
//
// The connection:
//
//	connection  event        next     when
//	connecting  established  open     mochi answered the CONNECT
//	closing     established  closing  kicked before that
//	connecting  kick         closing  the gateway ends the connection
//	open        kick         closing  (at most once)
//	connecting  disconnect   closed   the connection ended
//	open        disconnect   closed
//	closing     disconnect   closed
//
// The session:
//
//	session      event     next         when
//	live         takeover  replaced     a new connection of the client ID, clean start
//	live         resume    replaced     a new connection of the client ID continues it
//	live         detach    detached     device suspended, or no longer admitted
//	live         drop      dropped      device revoked or deleted
//	live         expire    gone         mochi forgets it (clean session, expiry)
//	live         refuse    gone         the CONNECT was refused after all
//	detached     takeover  replaced     the device reconnects
//	detached     resume    replaced
//	detached     detach    detached     its connection ended: detached again
//	detached     drop      dropped      revoked or deleted while detached
//	detached     expire    gone
//	replaced     handover  handed_over  the new connection's session is established
//	replaced     expire    gone
//	dropped      takeover  gone         mochi must not find it: a fresh session
//	dropped      resume    gone
//
// After every step, a handed_over or dropped session whose connection is
// closed is gone. Any other event changes nothing: a session taken over is
// the new connection's to cut, a gone one is gone.
//
// The lifecycle's causes, as events:
//
//   - connect: OnConnect creates the session connecting and live;
//     OnSessionEstablished is established, and the hand-over of the
//     session it took over, if any.
//   - resume and takeover: OnSessionEstablish of the new connection.
//     A replaced session publishes nothing but its Last Will; deliveries
//     to it are still decided until mochi has moved them, so a QoS 1
//     message racing the takeover is queued, not dropped.
//   - disconnect: OnDisconnect; with a clean session also expire.
//   - expiry cut (SVID expired): kick. The session stays live for the
//     device to resume with a renewed SVID.
//   - revoke cut (revoked or deleted): denied, kick, drop.
//   - suspension, and re-evaluation that no longer admits the session:
//     denied, kick, detach.
//   - a denied MQTT 3.1.1 PUBLISH with QoS > 0: kick.
package gateway
