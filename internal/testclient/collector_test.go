package testclient

import (
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// short bounds the waits that must end empty-handed in these tests; no
// message is ever on its way then, so it only needs to be non-zero.
const short = 20 * time.Millisecond

func deliver(c *Collector, topic, payload string) {
	_, _ = c.receive(paho.PublishReceived{Packet: &paho.Publish{Topic: topic, Payload: []byte(payload)}})
}

// A message is taken once, by topic or in arrival order, and both ways
// see what the other took.
func TestCollectorTakesEachMessageOnce(t *testing.T) {
	c := NewCollector()
	deliver(c, "a", "1")
	deliver(c, "b", "2")
	deliver(c, "a", "3")

	if m := c.Expect(t, "b", Wait); string(m.Payload) != "2" {
		t.Fatalf("Expect(b) = %q", m.Payload)
	}
	if m := c.Next(t, Wait); m.Topic != "a" || string(m.Payload) != "1" {
		t.Fatalf("first Next = %s %q; want a \"1\" (b was taken)", m.Topic, m.Payload)
	}
	if m := c.ExpectNext(t, "a", Wait); string(m.Payload) != "3" {
		t.Fatalf("ExpectNext(a) = %q; want \"3\"", m.Payload)
	}
	if m, ok := c.Take(0); ok {
		t.Fatalf("Take after everything was taken = %s %q", m.Topic, m.Payload)
	}
	c.ExpectNone(t, short)
	if n := c.Count(); n != 3 {
		t.Fatalf("Count = %d; want every message received, taken or not", n)
	}
}

// Take waits for a message that arrives after it started waiting.
func TestCollectorTakeWaits(t *testing.T) {
	c := NewCollector()
	go deliver(c, "late", "x")
	m, ok := c.Take(Wait)
	if !ok || m.Topic != "late" {
		t.Fatalf("Take = %v, %v; want the late message", m, ok)
	}
}

// The helpers that assert fail when what they assert is not so; each has
// its passing counterpart above.
func TestCollectorFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(testing.TB, *Collector)
		want string
	}{
		{"ExpectNext sees an earlier message", func(tb testing.TB, c *Collector) {
			deliver(c, "forbidden", "x")
			deliver(c, "allowed", "y")
			c.ExpectNext(tb, "allowed", Wait)
		}, "delivered against policy"},
		{"Next with nothing", func(tb testing.TB, c *Collector) { c.Next(tb, short) }, "no message received"},
		{"Expect another topic", func(tb testing.TB, c *Collector) {
			deliver(c, "a", "1")
			c.Expect(tb, "b", short)
		}, `no message on "b"`},
		{"ExpectNone with one not taken", func(tb testing.TB, c *Collector) {
			deliver(c, "a", "1")
			deliver(c, "b", "2")
			c.Expect(tb, "a", Wait)
			c.ExpectNone(tb, short)
		}, `unexpected messages: b "2"`},
		{"Never after a taken one", func(tb testing.TB, c *Collector) {
			deliver(c, "a", "1")
			c.Next(tb, Wait)
			c.Never(tb, "a")
		}, `delivered on "a"`},
		{"ExpectPayload another payload", func(tb testing.TB, c *Collector) {
			deliver(c, "a", "1")
			c.ExpectPayload(tb, "a", "2", Wait)
		}, `payload "1"; want "2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := failure(t, func(tb testing.TB) { tc.run(tb, NewCollector()) })
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("failure %q; want one containing %q", msg, tc.want)
			}
		})
	}
}
