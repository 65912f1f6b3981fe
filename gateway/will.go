package gateway

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// willClientID is the client ID of the inline client delayed wills are
// published with. It cannot collide with a device's (scoped) client ID,
// which always starts with "spiffe://".
const willClientID = "ztgate:will"

// delayedWills sends the Last Wills that have a Will Delay Interval (MQTT 5).
//
// mochi queues such a will when the connection ends and publishes it when
// the delay is over without calling any hook, so the policy and the registry
// of that moment would never be asked. Instead, OnWill hands mochi an empty
// will and schedules the real one here; when its time comes it is decided
// again (registry record re-read, then the policy) and, if allowed,
// published through an inline client, whose deliveries are decided like any
// other. A session that resumes before then cancels it.
type delayedWills struct {
	g      *Gateway
	client *mqtt.Client // inline: the broker skips its ACL check, OnPublish lets it through

	mu      sync.Mutex
	pending map[string]*pendingWill // by scoped client ID
	stopped bool
	running sync.WaitGroup
}

type pendingWill struct {
	s     *session
	will  mqtt.Will
	timer *time.Timer
}

func (w *delayedWills) init(g *Gateway) {
	w.g = g
	w.pending = make(map[string]*pendingWill)
	w.client = g.server.NewClient(nil, mqtt.LocalListener, willClientID, true)
	w.client.Properties.ProtocolVersion = 5 // keeps the will's user properties
}

// schedule sends will for session s after delay seconds, replacing any will
// pending under key.
func (w *delayedWills) schedule(key string, s *session, will mqtt.Will, delay uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	if old := w.pending[key]; old != nil {
		old.timer.Stop()
	}
	pw := &pendingWill{s: s, will: will}
	// The lock is held until pw is in the map, so fire always finds it.
	pw.timer = time.AfterFunc(time.Duration(delay)*time.Second, func() { w.fire(key, pw) })
	w.pending[key] = pw
	w.g.store.PutWill(storedWill(key, will, delay))
}

// cancel drops the will pending under key, if any.
func (w *delayedWills) cancel(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if pw := w.pending[key]; pw != nil {
		pw.timer.Stop()
		delete(w.pending, key)
		w.g.store.DeleteWill(key)
	}
}

// fireNow makes the will pending under key, if any, due now.
func (w *delayedWills) fireNow(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if pw := w.pending[key]; pw != nil {
		pw.timer.Reset(0)
	}
}

// stopAll drops every pending will and waits for wills being sent. The
// stored ones stay, for the next start (restore.go).
func (w *delayedWills) stopAll() {
	w.mu.Lock()
	w.stopped = true
	for key, pw := range w.pending {
		pw.timer.Stop()
		delete(w.pending, key)
	}
	w.mu.Unlock()
	w.running.Wait()
}

func (w *delayedWills) fire(key string, pw *pendingWill) {
	w.mu.Lock()
	if w.stopped || w.pending[key] != pw {
		w.mu.Unlock()
		return
	}
	delete(w.pending, key)
	w.g.store.DeleteWill(key)
	w.running.Add(1)
	w.mu.Unlock()
	defer w.running.Done()

	g, s, will := w.g, pw.s, pw.will
	if s.life.load().denied() {
		return
	}
	if why, _ := g.refresh(s); why != "" || !g.allowWill(s, will) {
		return
	}
	g.forwardWill(s.spiffeID, will)
	g.offer(s, will.TopicName, will.Payload, will.Qos, will.Retain)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: will.Qos, Retain: will.Retain},
		TopicName:   will.TopicName,
		Payload:     will.Payload,
		Properties:  packets.Properties{User: will.User},
		// mochi sets Origin to the will client's ID; the device's scoped
		// client ID goes here, which mochi keeps with a retained copy, so
		// that a retained will is known as the device's (publisherID).
		Connect: packets.ConnectParams{ClientIdentifier: key},
	}
	if will.Qos > 0 {
		pk.PacketID = 1 // required by mochi's validation; an inline publish is not acknowledged
	}
	if err := g.server.InjectPacket(w.client, pk); err != nil {
		g.log.Warn("gateway: sending delayed will failed", "spiffe_id", s.spiffeID, "client_id", s.clientID, "err", err)
	}
}
