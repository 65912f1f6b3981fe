package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/policy"
)

// holdDecider is a policy that, once armed, holds the first receive
// decision on topic until released: it stops a resuming connection inside
// the gateway's pruning of the session it takes over, the window in which
// that session is marked replaced but still holds the client ID in the
// broker.
type holdDecider struct {
	next    policy.Decider
	topic   string
	armed   atomic.Bool
	held    chan struct{} // closed when the decision is being held
	release chan struct{}
}

func (d *holdDecider) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	if in.Action == policy.ActionReceive && in.Topic == d.topic && d.armed.CompareAndSwap(true, false) {
		close(d.held)
		select {
		case <-d.release:
		case <-time.After(waitFor):
		}
	}
	return d.next.Decide(ctx, in)
}

// A QoS 1 message published to a persistent session while a reconnect with
// the same client ID (clean start false) is taking it over is delivered to
// the new connection, not dropped: the delivery to the session being
// replaced is decided as a receive of the same identity and queued, and
// the queue moves to the new connection.
func TestQoS1RacingSessionTakeoverDelivered(t *testing.T) {
	pol, err := defaultEngine()
	if err != nil {
		t.Fatalf("default policy: %v", err)
	}
	const cmds = "devices/sensor-1/commands/"
	d := &holdDecider{next: pol, topic: cmds + "queued", held: make(chan struct{}), release: make(chan struct{})}
	e, ctl, dev, persistent := takeoverEnv(t, d)
	const scopedID = "spiffe://example.org/device/sensor-1 dev"
	_ = dev.Disconnect(&paho.Disconnect{})
	poll(t, "device offline", func() bool {
		cl, ok := e.gw.server.Clients.Get(scopedID)
		return ok && cl.Closed()
	})
	// A message queued while the device is offline gives the resuming
	// connection something to prune, where the policy holds it.
	if code := ctl.publish(t, &paho.Publish{Topic: cmds + "queued", QoS: 1, Payload: []byte("queued")}); code != 0 {
		t.Fatalf("queued publish: reason %#x", code)
	}
	poll(t, "message queued", func() bool {
		cl, ok := e.gw.server.Clients.Get(scopedID)
		return ok && cl.State.Inflight.Len() == 1
	})

	d.armed.Store(true)
	type result struct {
		c   *client
		ack *paho.Connack
		err error
	}
	resumed := make(chan result, 1)
	go func() {
		c, ack, err := persistent(false)
		resumed <- result{c, ack, err}
	}()
	select {
	case <-d.held:
	case <-time.After(waitFor):
		close(d.release)
		t.Fatal("the resuming connection never decided its queued message")
	}

	// The takeover is under way: publish to the device now. The controller
	// then publishes elsewhere and waits for that PUBACK, so the broker
	// has handed the first message to the device's session (it does that
	// on the controller's connection, one PUBLISH after the other).
	code := ctl.publish(t, &paho.Publish{Topic: cmds + "racing", QoS: 1, Payload: []byte("racing")})
	ctl.publish(t, &paho.Publish{Topic: "devices/sensor-2/commands/barrier", QoS: 1})
	close(d.release)
	if code != 0 {
		t.Fatalf("racing publish: reason %#x", code)
	}

	var r result
	select {
	case r = <-resumed:
	case <-time.After(waitFor):
		t.Fatal("the resuming connection did not complete")
	}
	if r.err != nil || !r.ack.SessionPresent {
		t.Fatalf("resume: %+v, %v; want the session present", r.ack, r.err)
	}
	// Positive control: a message published after the takeover arrives.
	// It is queued behind the resent ones, so by the time it arrives the
	// racing message has either arrived too or been lost.
	if code := ctl.publish(t, &paho.Publish{Topic: cmds + "live", QoS: 1, Payload: []byte("live")}); code != 0 {
		t.Fatalf("live publish: reason %#x", code)
	}
	got := map[string]int{}
	for i := 0; i < 10 && got[cmds+"live"] == 0; i++ {
		got[r.c.next(t).Topic]++
	}
	if got[cmds+"queued"] == 0 {
		t.Errorf("the message queued while offline was not delivered: %v", got)
	}
	if got[cmds+"racing"] == 0 {
		t.Fatalf("the QoS 1 message published during the takeover was lost: received %v", got)
	}
}

// takeoverStress is the stress: QoS 1 messages published while the
// persistent subscriber keeps reconnecting with Clean Start 0, each new
// connection taking the session over from the live previous one.
const (
	stressMessages   = 400
	stressReconnects = 8
)

// Every QoS 1 message published to a persistent session while new
// connections keep taking it over arrives, on one connection or another
// (at QoS 1, more than once is allowed; never not at all). A delivery
// racing a takeover reaches the old client until the broker routes the
// client ID to the new one: it must move with the session, not stay
// behind on the connection being replaced.
func TestQoS1StressTakeoversLoseNothing(t *testing.T) {
	pol, err := defaultEngine()
	if err != nil {
		t.Fatalf("default policy: %v", err)
	}
	const cmds = "devices/sensor-1/commands/"
	_, ctl, dev, persistent := takeoverEnv(t, pol)
	conns := []*client{dev}

	// The publisher acknowledges each message before the next, so every
	// one of them is a message the broker took responsibility for.
	var published atomic.Int32
	pubErr := make(chan error, 1)
	go func() {
		defer close(pubErr)
		for i := range stressMessages {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			pr, err := ctl.Client.Client.Publish(ctx, &paho.Publish{Topic: cmds + "stress", QoS: 1,
				Payload: []byte(stressPayload(i))})
			cancel()
			switch {
			case err != nil:
				pubErr <- fmt.Errorf("publish %d: %w", i, err)
				return
			case pr.ReasonCode != 0:
				pubErr <- fmt.Errorf("publish %d: PUBACK reason %#x", i, pr.ReasonCode)
				return
			}
			published.Add(1)
		}
	}()

	// Each takeover starts once a further share of the messages has been
	// acknowledged, so all of them happen while messages are flowing.
	for r := 1; r <= stressReconnects; r++ {
		threshold := int32(r * stressMessages / (stressReconnects + 1))
		deadline := time.Now().Add(waitFor)
		for published.Load() < threshold && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		next, ack, err := persistent(false)
		if err != nil {
			t.Fatalf("takeover %d: %v", r, err)
		}
		if !ack.SessionPresent {
			t.Fatalf("takeover %d: session not present", r)
		}
		conns = append(conns, next)
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	// Every takeover really replaced a live connection: the broker ended
	// it, saying why when its DISCONNECT got out before the close (mochi
	// may close with the DISCONNECT still in its write buffer).
	for i, c := range conns[:len(conns)-1] {
		if d := c.WaitClosed(t, waitFor); d != nil && d.ReasonCode != 0x8e {
			t.Fatalf("connection %d: DISCONNECT %#x, want 0x8e (session taken over)", i, d.ReasonCode)
		}
	}

	// Positive control, and the end of the stream: a message published
	// after the last takeover reaches the last connection.
	if code := ctl.publish(t, &paho.Publish{Topic: cmds + "live", QoS: 1, Payload: []byte("live")}); code != 0 {
		t.Fatalf("live publish: reason %#x", code)
	}
	conns[len(conns)-1].Msgs.Expect(t, cmds+"live", waitFor)

	// A message still in flight when the live one arrived is resent to
	// the last connection as soon as it is known there; give it until
	// every message has come or waitFor has passed.
	var missing []int
	deadline := time.Now().Add(waitFor)
	for {
		missing = missingStress(conns)
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d QoS 1 messages lost across %d takeovers: %v",
			len(missing), stressMessages, stressReconnects, missing)
	}
}

func stressPayload(i int) string { return fmt.Sprintf("m%03d", i) }

// missingStress lists the stress messages none of conns has received.
func missingStress(conns []*client) []int {
	got := map[string]bool{}
	for _, c := range conns {
		for _, m := range c.Msgs.All() {
			got[string(m.Payload)] = true
		}
	}
	var missing []int
	for i := range stressMessages {
		if !got[stressPayload(i)] {
			missing = append(missing, i)
		}
	}
	return missing
}

// takeoverEnv starts a gateway deciding with d, connects a controller, and
// connects sensor-1 with a persistent session (client ID "dev") subscribed
// to its commands at QoS 1. persistent connects sensor-1 again with that
// client ID, taking the session over.
func takeoverEnv(t *testing.T, d policy.Decider) (e *env, ctl, dev *client, persistent func(clean bool) (*client, *paho.Connack, error)) {
	t.Helper()
	e = newEnv(t, d)
	deviceCfg := e.enroll("sensor-1", nil)
	ctl = e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	persistent = func(clean bool) (*client, *paho.Connack, error) {
		return e.connect(deviceCfg, &paho.Connect{ClientID: "dev", CleanStart: clean,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	}
	dev, _, err := persistent(true)
	if err != nil {
		t.Fatalf("device connect: %v", err)
	}
	if got := dev.subscribe(t, sub("devices/sensor-1/commands/#", 1)); got[0] != 1 {
		t.Fatalf("device SUBACK = %#x, want 1", got[0])
	}
	return e, ctl, dev, persistent
}
