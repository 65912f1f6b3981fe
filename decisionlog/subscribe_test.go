package decisionlog_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/policy"
)

// topicOK decides allow for topic "ok" and deny for anything else.
var topicOK = policy.DeciderFunc(func(_ context.Context, in *policy.Input) policy.Decision {
	if in.Topic == "ok" {
		return policy.Decision{Allow: true, Revision: "r1"}
	}
	return policy.Decision{Reasons: []string{"nope"}, Revision: "r1"}
})

func pubInput(name, topic string) *policy.Input {
	return &policy.Input{Action: policy.ActionPublish, Topic: topic, Subject: subject(name)}
}

func TestSubscribeReceivesDenies(t *testing.T) {
	var buf lockedBuffer
	l, err := decisionlog.New(decisionlog.Config{Writer: &buf, AggregateInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ch, cancel, err := l.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	dec := l.Wrap(topicOK)
	if d := dec.Decide(context.Background(), pubInput("a", "ok")); !d.Allow {
		t.Fatal("allow denied")
	}
	d := dec.Decide(context.Background(), pubInput("a", "x/y"))
	select {
	case got := <-ch:
		if got.DecisionID != d.ID || got.DecisionID == "" || got.Action != "publish" || got.Topic != "x/y" ||
			got.SPIFFEID != "spiffe://example.org/device/a" || got.Revision != "r1" || len(got.Reasons) != 1 {
			t.Fatalf("denial %+v, decision %+v", got, d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no denial")
	}
	select {
	case got := <-ch:
		t.Fatalf("a second event %+v (the allow?)", got)
	default:
	}
	cancel()
	cancel() // idempotent
	if _, ok := <-ch; ok {
		t.Fatal("channel open after cancel")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The deny streamed is the one logged.
	entries := buf.entries(t)
	if len(entries) != 1 || entries[0].DecisionID != d.ID {
		t.Fatalf("log %+v", entries)
	}
}

func TestSubscribeBoundsAndSlowSubscriber(t *testing.T) {
	l, err := decisionlog.New(decisionlog.Config{Writer: io.Discard, AggregateInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var cancels []func()
	var first <-chan decisionlog.Denial
	for i := range decisionlog.MaxSubscribers {
		ch, cancel, err := l.Subscribe()
		if err != nil {
			t.Fatalf("subscriber %d: %v", i, err)
		}
		if i == 0 {
			first = ch
		}
		cancels = append(cancels, cancel)
	}
	if _, _, err := l.Subscribe(); !errors.Is(err, decisionlog.ErrTooManySubscribers) {
		t.Fatalf("one too many: %v", err)
	}
	cancels[1]()
	if _, _, err := l.Subscribe(); err != nil {
		t.Fatalf("after a cancel: %v", err)
	}
	// Nobody reads: the decisions go on, the overflow is counted.
	dec := l.Wrap(topicOK)
	const n = 300
	for range n {
		dec.Decide(context.Background(), pubInput("a", "x"))
	}
	if got := l.SubscriberDropped(); got == 0 {
		t.Fatal("no drop counted for subscribers that do not read")
	}
	if len(first) == 0 {
		t.Fatal("the first subscriber got nothing")
	}
	// Close ends every subscription.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for range first {
	}
	if _, _, err := l.Subscribe(); err == nil {
		t.Fatal("Subscribe after Close")
	}
}
