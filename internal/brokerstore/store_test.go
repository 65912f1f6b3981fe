package brokerstore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

func open(t *testing.T, path string, fsync bool) *Store {
	t.Helper()
	s, err := Open(Options{Path: path, Fsync: fsync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func put(t *testing.T, s *Store, b, k []byte, v any) {
	t.Helper()
	if err := s.do(func(tx *bbolt.Tx) error { return putJSON(tx, b, k, v) }); err != nil {
		t.Fatal(err)
	}
}

// The two modes: fsync mode commits with bbolt's fsync, the default does
// not. Both keep what was committed across a close and a reopen.
func TestStore_Modes(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), FileName)
		s := open(t, path, fsync)
		if s.db.NoSync == fsync {
			t.Errorf("fsync %v: bbolt NoSync is %v", fsync, s.db.NoSync)
		}
		put(t, s, bucketSessions, []byte("a"), &Session{ClientID: "a", ProtocolVersion: 5, SessionExpiry: 60})
		put(t, s, bucketSubs, subKey("a", "x/#"), &packets.Subscription{Filter: "x/#", Qos: 1})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		st, err := open(t, path, fsync).Load()
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Sessions) != 1 || len(st.Sessions[0].Subscriptions) != 1 {
			t.Errorf("fsync %v: reopened store holds %+v", fsync, st.Sessions)
		}
	}
}

// Load deletes what it cannot use instead of failing the start: a record
// that does not decode, a subscription or message of a session that is not
// stored. Control: the good session and its parts stay.
func TestStore_LoadDropsBadRecords(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), false)
	put(t, s, bucketSessions, []byte("good"), &Session{ClientID: "good", ProtocolVersion: 5})
	put(t, s, bucketSubs, subKey("good", "a/b"), &packets.Subscription{Filter: "a/b"})
	put(t, s, bucketInflight, inflightKey("good", 7), messageOf(&packets.Packet{TopicName: "a/b", PacketID: 7}))
	put(t, s, bucketSubs, subKey("gone", "a/b"), &packets.Subscription{Filter: "a/b"})
	put(t, s, bucketInflight, inflightKey("gone", 1), messageOf(&packets.Packet{TopicName: "a/b"}))
	put(t, s, bucketSessions, []byte("other"), &Session{ClientID: "mismatch"})
	if err := s.do(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRetained).Put([]byte("t"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if st.Dropped != 4 || len(st.Sessions) != 1 || len(st.Retained) != 0 {
		t.Fatalf("dropped %d, sessions %d, retained %d; want 4, 1, 0", st.Dropped, len(st.Sessions), len(st.Retained))
	}
	g := st.Sessions[0]
	if g.ClientID != "good" || len(g.Subscriptions) != 1 || len(g.Inflight) != 1 || g.Inflight[0].PacketID != 7 {
		t.Errorf("good session: %+v", g)
	}
	if st, _ = s.Load(); st.Dropped != 0 {
		t.Errorf("second load dropped %d more", st.Dropped)
	}
}

// A client ID that is a prefix of another's, or holds any bytes, never
// reaches the other's keys.
func TestStore_ClientKeysDoNotOverlap(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), FileName), false)
	ids := []string{"a", "ab", "a\x00b", "a b"}
	for _, id := range ids {
		put(t, s, bucketSessions, []byte(id), &Session{ClientID: id})
		put(t, s, bucketSubs, subKey(id, "f"), &packets.Subscription{Filter: "f"})
	}
	if err := s.DeleteSession("a"); err != nil {
		t.Fatal(err)
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Sessions) != len(ids)-1 || st.Dropped != 0 {
		t.Fatalf("sessions %d (dropped %d), want %d", len(st.Sessions), st.Dropped, len(ids)-1)
	}
	for _, ss := range st.Sessions {
		if ss.ClientID == "a" || len(ss.Subscriptions) != 1 {
			t.Errorf("session %q: %d subscriptions", ss.ClientID, len(ss.Subscriptions))
		}
	}
}

// A message keeps what the gateway needs of it across a restart: the
// publisher (origin, and the device behind a delayed will), expiry, the
// properties, the packet ID.
func TestStore_MessageRoundTrip(t *testing.T) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		PacketID:    9, TopicName: "devices/x/state", Payload: []byte("p"),
		Origin: "ztgate:will", Created: 100, Expiry: 200, ProtocolVersion: 5,
		Properties: packets.Properties{ContentType: "c", ResponseTopic: "r", CorrelationData: []byte("d"),
			PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 100,
			User: []packets.UserProperty{{Key: "k", Val: "v"}}},
	}
	pk.Connect.ClientIdentifier = "spiffe://example.org/device/x x"
	got := messageOf(&pk).packet()
	switch {
	case got.TopicName != pk.TopicName, string(got.Payload) != "p", got.Origin != pk.Origin,
		got.Connect.ClientIdentifier != pk.Connect.ClientIdentifier, got.Expiry != 200, got.Created != 100,
		got.PacketID != 9, !got.FixedHeader.Retain, got.FixedHeader.Qos != 1, got.ProtocolVersion != 5,
		got.Properties.ContentType != "c", string(got.Properties.CorrelationData) != "d",
		!got.Properties.PayloadFormatFlag, got.Properties.PayloadFormat != 1, len(got.Properties.User) != 1:
		t.Errorf("round trip: %+v", got)
	}
}

// A session counts its expiry from its disconnection, across restarts.
func TestSession_Expiry(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name    string
		s       Session
		expired bool
		left    uint32
	}{
		{"connected at the crash", Session{ProtocolVersion: 5, SessionExpiry: 10}, false, 10},
		{"within its expiry", Session{ProtocolVersion: 5, SessionExpiry: 10, DisconnectedAt: 995}, false, 5},
		{"past its expiry", Session{ProtocolVersion: 5, SessionExpiry: 10, DisconnectedAt: 900}, true, 0},
		{"MQTT 3.1.1 has none", Session{ProtocolVersion: 4, DisconnectedAt: 1}, false, 0},
	} {
		if got := tc.s.Expired(now); got != tc.expired {
			t.Errorf("%s: expired %v", tc.name, got)
		}
		if got := tc.s.RemainingExpiry(now); got != tc.left {
			t.Errorf("%s: remaining %d, want %d", tc.name, got, tc.left)
		}
	}
}

// A closed store refuses writes with ErrClosed, never panics; a store of
// another schema version is refused at Open, and a second Open of the
// same file while the first holds it fails instead of hanging.
func TestStore_Refusals(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := open(t, path, false)
	if _, err := Open(Options{Path: path}); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Errorf("second open: %v", err)
	}
	if err := s.do(func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, u64(99)) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSession("x"); !errors.Is(err, ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
	s.DeleteWill("x") // queued writes after close are dropped, not a panic
	if _, err := Open(Options{Path: path}); err == nil || !strings.Contains(err.Error(), "schema version") {
		t.Errorf("open of another version: %v", err)
	}
	if _, err := Open(Options{}); err == nil {
		t.Error("open without a path succeeded")
	}
}
