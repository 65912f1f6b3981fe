package brokerstore

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func handedSession() *Session {
	return &Session{
		ClientID: "spiffe://example.org/device/pump pump", ProtocolVersion: 5, SessionExpiry: 300,
		SessionExpiryFlag: true, DisconnectedAt: 1_700_000_000,
		Subscriptions: []packets.Subscription{{Filter: "a/#", Qos: 1, Identifier: 7, NoLocal: true}},
		Inflight: []packets.Packet{
			{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 3, TopicName: "a/1",
				Payload: []byte("one"), Created: 10, Expiry: 99,
				Properties: packets.Properties{ContentType: "text/plain", TopicAlias: 4, CorrelationData: []byte{1}}},
			{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 1, TopicName: "a/2",
				Payload: []byte("two"), Created: 11},
		},
	}
}

// A session handed over comes back as the store would load it: its
// fields, subscriptions and queued messages in order, without the topic
// alias (which means nothing to another connection).
func TestMarshalSession_RoundTrip(t *testing.T) {
	raw, err := MarshalSession(handedSession())
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalSession(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := handedSession()
	switch {
	case got.ClientID != want.ClientID || got.SessionExpiry != 300 || got.DisconnectedAt != want.DisconnectedAt:
		t.Fatalf("session %+v", got)
	case len(got.Subscriptions) != 1 || got.Subscriptions[0].Filter != "a/#" || got.Subscriptions[0].Identifier != 7 ||
		!got.Subscriptions[0].NoLocal:
		t.Fatalf("subscriptions %+v", got.Subscriptions)
	case len(got.Inflight) != 2 || got.Inflight[0].TopicName != "a/1" || got.Inflight[1].TopicName != "a/2":
		t.Fatalf("queued %+v", got.Inflight)
	}
	m := got.Inflight[0]
	if string(m.Payload) != "one" || m.PacketID != 3 || m.Expiry != 99 || m.Properties.ContentType != "text/plain" ||
		m.Properties.TopicAlias != 0 || m.FixedHeader.Qos != 1 {
		t.Fatalf("first message %+v", m)
	}
}

// Input that is not a handed-over session is refused with an error.
func TestUnmarshalSession_Refuses(t *testing.T) {
	for name, raw := range map[string]string{
		"not JSON":     "{",
		"no session":   `{}`,
		"no client ID": `{"session":{"v":5}}`,
		"CONNECT":      `{"session":{"id":"x"},"inflight":[{"t":1}]}`,
		"null message": `{"session":{"id":"x"},"inflight":[null]}`,
	} {
		if _, err := UnmarshalSession([]byte(raw)); err == nil || !strings.HasPrefix(err.Error(), "brokerstore: ") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if _, err := UnmarshalSession([]byte(`{"session":{"id":"x"},"inflight":[{"t":3}]}`)); err != nil {
		t.Errorf("control: a PUBLISH is accepted: %v", err)
	}
}

// PutSession replaces what was stored under the client ID with the whole
// session, which Load returns.
func TestStore_PutSession(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), false)
	id := handedSession().ClientID
	put(t, s, bucketSubs, subKey(id, "stale/#"), &packets.Subscription{Filter: "stale/#"})
	put(t, s, bucketSessions, []byte(id), &Session{ClientID: id})
	if err := s.PutSession(handedSession()); err != nil {
		t.Fatal(err)
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Sessions) != 1 {
		t.Fatalf("sessions %+v", st.Sessions)
	}
	got := st.Sessions[0]
	if got.SessionExpiry != 300 || len(got.Subscriptions) != 1 || got.Subscriptions[0].Filter != "a/#" || len(got.Inflight) != 2 {
		t.Fatalf("stored %+v", got)
	}
	if err := s.PutSession(&Session{}); err == nil {
		t.Error("a session without client ID was stored")
	}
}
