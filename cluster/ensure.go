package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ensureAttempt bounds one attempt of an idempotent JetStream management
// call (creating a stream, a bucket or a consumer).
const ensureAttempt = 5 * time.Second

// codeNoSuitablePeers is JetStream's "no suitable peers for placement":
// right after the cluster forms, the meta leader may not yet count the
// other nodes as online, and refuses an R3 placement it will take a moment
// later.
const codeNoSuitablePeers = 10005

func noPeersYet(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == codeNoSuitablePeers
}

// ensure runs fn, an idempotent creation, until it succeeds, fails for a
// reason other than a missing quorum, or ctx ends; each attempt has its own
// deadline; "no suitable peers" is retried too. The nodes of a cluster start together and each creates the
// same streams: with nats-server 2.15.3, three concurrent
// CreateOrUpdateStream calls of one R3 stream were all left unanswered
// until their deadline (TestConcurrentStreamCreation), and a meta leader
// just elected may drop a request. Sent again, the call finds the stream
// there and answers at once.
func ensure(ctx context.Context, fn func(ctx context.Context) error) error {
	backoff := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, ensureAttempt)
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !(isNoQuorum(err) || noPeersYet(err)) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
