package testclient

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Collector records every PUBLISH a client receives. A message is taken
// once: by topic (Expect) or in arrival order (Next, Take), whichever
// comes first; ExpectNone then complains about any message not taken.
type Collector struct {
	mu       sync.Mutex
	msgs     []*paho.Publish
	consumed []bool
	arrived  chan struct{} // closed and replaced at each arrival
}

// NewCollector returns an empty collector.
func NewCollector() *Collector {
	return &Collector{arrived: make(chan struct{})}
}

// receive records one PUBLISH; it is the client's OnPublishReceived.
func (c *Collector) receive(pr paho.PublishReceived) (bool, error) {
	c.mu.Lock()
	c.msgs = append(c.msgs, pr.Packet)
	c.consumed = append(c.consumed, false)
	close(c.arrived)
	c.arrived = make(chan struct{})
	c.mu.Unlock()
	return true, nil
}

// wait waits up to within for the first message not yet taken that match
// accepts, takes it and returns it.
func (c *Collector) wait(within time.Duration, match func(*paho.Publish) bool) (*paho.Publish, bool) {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		for i, m := range c.msgs {
			if !c.consumed[i] && match(m) {
				c.consumed[i] = true
				c.mu.Unlock()
				return m, true
			}
		}
		arrived := c.arrived
		c.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			return nil, false
		}
	}
}

func anyMessage(*paho.Publish) bool { return true }

// Take waits up to within (zero: not at all) for the next message, in
// arrival order, that nothing took yet, and takes it. ok is false when
// none came.
func (c *Collector) Take(within time.Duration) (m *paho.Publish, ok bool) {
	return c.wait(within, anyMessage)
}

// Next is Take that fails the test when no message comes within.
func (c *Collector) Next(t testing.TB, within time.Duration) *paho.Publish {
	t.Helper()
	m, ok := c.Take(within)
	if !ok {
		t.Fatalf("no message received within %s", within)
	}
	return m
}

// ExpectNext fails the test unless the next message in arrival order is
// on topic: anything received before it was delivered against the test's
// expectation. Tests send the message they expect after the ones that
// must not arrive, over the same path, so its arrival bounds the wait.
func (c *Collector) ExpectNext(t testing.TB, topic string, within time.Duration) *paho.Publish {
	t.Helper()
	m := c.Next(t, within)
	if m.Topic != topic {
		t.Fatalf("received %q (%q) before %q: delivered against policy", m.Topic, m.Payload, topic)
	}
	return m
}

// Expect waits up to within for a message on topic that nothing took
// yet, takes it and returns it.
func (c *Collector) Expect(t testing.TB, topic string, within time.Duration) *paho.Publish {
	t.Helper()
	m, ok := c.wait(within, func(m *paho.Publish) bool { return m.Topic == topic })
	if !ok {
		t.Fatalf("no message on %q within %s; received: %s", topic, within, c.summary())
	}
	return m
}

// ExpectPayload is Expect that also checks the payload.
func (c *Collector) ExpectPayload(t testing.TB, topic, payload string, within time.Duration) *paho.Publish {
	t.Helper()
	m := c.Expect(t, topic, within)
	if string(m.Payload) != payload {
		t.Fatalf("message on %q has payload %q; want %q", topic, m.Payload, payload)
	}
	return m
}

// ExpectNone fails the test if a message that nothing took is present
// now or arrives within d. Call it after the positive control.
func (c *Collector) ExpectNone(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		var extra []string
		for i, m := range c.msgs {
			if !c.consumed[i] {
				extra = append(extra, fmt.Sprintf("%s %q", m.Topic, m.Payload))
			}
		}
		arrived := c.arrived
		c.mu.Unlock()
		if len(extra) > 0 {
			t.Fatalf("unexpected messages: %s", strings.Join(extra, ", "))
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return
		}
	}
}

// Never fails the test if any message (taken or not) was received on
// topic.
func (c *Collector) Never(t testing.TB, topic string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.msgs {
		if m.Topic == topic {
			t.Fatalf("a message was delivered on %q (payload %q)", topic, m.Payload)
		}
	}
}

// Drain takes every message received so far on topic and returns how
// many there were.
func (c *Collector) Drain(topic string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i, m := range c.msgs {
		if m.Topic == topic && !c.consumed[i] {
			c.consumed[i] = true
			n++
		}
	}
	return n
}

// All returns every message received so far.
func (c *Collector) All() []*paho.Publish {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*paho.Publish(nil), c.msgs...)
}

// Count is the number of messages received so far.
func (c *Collector) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *Collector) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 0 {
		return "nothing"
	}
	parts := make([]string, len(c.msgs))
	for i, m := range c.msgs {
		parts[i] = fmt.Sprintf("%s %q", m.Topic, m.Payload)
	}
	return strings.Join(parts, ", ")
}
