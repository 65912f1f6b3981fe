package policy_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/policy"
)

// bigTopic is a topic of n bytes, distinct per i.
func bigTopic(prefix string, i, n int) string {
	head := fmt.Sprintf("%s/%d/", prefix, i)
	return head + strings.Repeat("x", n-len(head))
}

// The cache is bounded by bytes, not only by entries: subjects deciding on
// 60 KiB topics (MQTT allows 64 KiB) fill it to its byte budget and no
// further, and its accounting covers at least the topics it keeps. A
// subject deciding on small topics still gets hits (control).
func TestCacheBoundedByBytes(t *testing.T) {
	e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow if startswith(input.topic, \"big/\")\n"}, policy.Options{})
	const budget = 4 << 20
	const topicSize = 60 << 10
	c := policy.NewCache(e, nil, policy.CacheOptions{MaxBytes: budget})
	ctx := context.Background()
	subjects := make([]*policy.Subject, 32)
	for i := range subjects {
		subjects[i] = subject(fmt.Sprintf("d%d", i))
		for j := range 8 {
			in := &policy.Input{Action: policy.ActionPublish, Subject: subjects[i], Topic: bigTopic("big", j, topicSize)}
			if d := c.Decide(ctx, in); !d.Allow || d.Err != nil {
				t.Fatalf("subject %d, topic %d: %+v", i, j, d)
			}
			st := c.Stats()
			kept := st.Entries * topicSize
			if kept > budget || st.Bytes > budget {
				t.Fatalf("after %d decisions: %d entries keep %d bytes of topics, %d bytes accounted; budget %d",
					i*8+j+1, st.Entries, kept, st.Bytes, budget)
			}
		}
	}
	if st := c.Stats(); st.Entries == 0 || st.Bytes < st.Entries*topicSize {
		t.Errorf("%+v: want 60 KiB topics (under the size limit of a 4 MiB cache) kept, and accounted for", st)
	}

	// Control: small decisions are kept and hit.
	s := subject("small")
	in := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "big/small"}
	before := c.Stats()
	for range 3 {
		if d := c.Decide(ctx, in); !d.Allow {
			t.Fatalf("%+v", d)
		}
	}
	if after := c.Stats(); after.Hits-before.Hits != 2 {
		t.Errorf("small topic: %d hits of 3 decisions, want 2 (%+v)", after.Hits-before.Hits, after)
	}
	runtime.KeepAlive(subjects)
	runtime.KeepAlive(s)
}

// A decision larger than a fraction of the budget is not kept at all: the
// engine decides it every time, and it takes no room from others.
func TestCacheSkipsHugeEntries(t *testing.T) {
	e := newEngine(t, map[string]string{"p.rego": "package ztgate.authz\n\nallow if startswith(input.topic, \"big/\")\n"}, policy.Options{})
	next := &counting{next: e}
	c := policy.NewCache(e, next, policy.CacheOptions{MaxBytes: 1 << 20})
	s := subject("a")
	huge := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: bigTopic("big", 0, 60<<10)}
	for range 3 {
		if d := c.Decide(context.Background(), huge); !d.Allow {
			t.Fatalf("%+v", d)
		}
	}
	if st := c.Stats(); st.Entries != 0 || st.Bytes != 0 || next.calls.Load() != 3 {
		t.Errorf("a 60 KiB entry in a 1 MiB cache: %+v, engine asked %d times; want it not kept", st, next.calls.Load())
	}
	// Control: a small one is kept.
	small := &policy.Input{Action: policy.ActionPublish, Subject: s, Topic: "big/a"}
	c.Decide(context.Background(), small)
	c.Decide(context.Background(), small)
	if st := c.Stats(); st.Entries != 1 || st.Bytes <= 0 || st.Hits != 1 {
		t.Errorf("small entry: %+v", st)
	}
	runtime.KeepAlive(s)
}

// The accounting balances under concurrent stores, evictions and revision
// changes: never over the budget, and back to zero when the subjects are
// gone. Run with -race.
func TestCacheBytesBalance(t *testing.T) {
	allowBig := map[string]string{"p.rego": "package ztgate.authz\n\nallow if startswith(input.topic, \"big/\")\n"}
	denyBig := map[string]string{"p.rego": "package ztgate.authz\n\nallow if startswith(input.topic, \"none/\")\n\nreasons contains input.topic if not allow\n"}
	e := newEngine(t, allowBig, policy.Options{})
	const budget = 1 << 20
	c := policy.NewCache(e, nil, policy.CacheOptions{MaxBytes: budget})
	subjects := []*policy.Subject{subject("a"), subject("b"), subject("c")}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 300 {
				in := &policy.Input{Action: policy.ActionReceive, Subject: subjects[(g+i)%3], Topic: bigTopic("big", i%40, 1<<10+i%7*(1<<10))}
				c.Decide(context.Background(), in)
				if b := c.Stats().Bytes; b > budget || b < 0 {
					t.Errorf("%d bytes accounted, budget %d", b, budget)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 10 {
			files := allowBig
			if i%2 == 0 {
				files = denyBig
			}
			if err := e.Load(mapFS(files)); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if st := c.Stats(); st.Entries == 0 || st.Bytes <= 0 {
		t.Errorf("%+v: want decisions kept", st)
	}
	clear(subjects)
	deadline := time.Now().Add(30 * time.Second)
	for st := c.Stats(); st.Entries != 0 || st.Bytes != 0; st = c.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("%+v left after the subjects were collected", st)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
