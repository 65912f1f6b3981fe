package gateway

import (
	"cmp"
	"errors"
	"slices"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ztgate/ztgate/internal/brokerview"
)

// codeKicked is the DISCONNECT reason of a kick: 0x98 "administrative
// action" tells the client an operator ended the connection, not that its
// identity lost its rights (0x87), so it may reconnect.
var codeKicked = packets.ErrAdministrativeAction

// errClosed is KickSessions' answer once the gateway is closing.
var errClosed = errors.New("gateway: closed")

// KickSessions ends every live connection of the identity spiffeID on this
// node and returns how many it ended. MQTT 5 clients get DISCONNECT 0x98;
// MQTT 3.1.1 connections are closed. Nothing else changes: the device's
// registry status stays as it is, so it may connect again at once, and a
// persistent session stays for it to resume (the Last Will goes out, as
// the policy allows, since the client did not disconnect itself).
//
// A connection already being ended (a cut, an expiry) is not counted; nor
// is a session that is no longer connected or has been taken over by a
// new connection, which is counted once, as that connection.
func (g *Gateway) KickSessions(spiffeID string) (int, error) {
	if g.ctx.Err() != nil {
		return 0, errClosed
	}
	kicked := 0
	g.sessions.Range(func(_, v any) bool {
		s := v.(*session)
		if s.spiffeID != spiffeID {
			return true
		}
		if st := s.life.load(); !st.connected() || st.takenOver() {
			return true
		}
		if g.kick(s, codeKicked, reasonKicked) {
			kicked++
		}
		return true
	})
	return kicked, nil
}

// subscriptionsView is the subscriptions cl holds, sorted by filter, for
// the session list; never nil, so that none is listed as [].
func subscriptionsView(cl *mqtt.Client) []brokerview.Subscription {
	all := cl.State.Subscriptions.GetAll()
	out := make([]brokerview.Subscription, 0, len(all))
	for filter, sub := range all {
		out = append(out, brokerview.Subscription{Filter: filter, QoS: sub.Qos})
	}
	slices.SortFunc(out, func(a, b brokerview.Subscription) int { return cmp.Compare(a.Filter, b.Filter) })
	return out
}
