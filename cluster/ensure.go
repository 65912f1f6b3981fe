package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
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
	return ensureEach(ctx, ensureAttempt, fn)
}

// opAttempt bounds one attempt of a session directory read, well within a
// CONNECT's claim: a request sent while the stream's leader changes is
// dropped, not answered, and only a second one, to the new leader, is
// (TestSessionClaimAcrossLeaderChange).
const opAttempt = time.Second

// ensureEach is ensure with attempts of at most attempt each.
func ensureEach(ctx context.Context, attempt time.Duration, fn func(ctx context.Context) error) error {
	return retry(ctx, attempt, func(err error) bool { return isNoQuorum(err) || noPeersYet(err) }, fn)
}

// notTaken reports whether err says a request reached no one who would
// act on it: no responders, as while a stream's leader changes. Unlike a
// timeout, such a write was not made, so sending it again cannot make it
// twice or meet its own first try.
func notTaken(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// ensureSent runs fn, a write, until it succeeds, fails for a reason other
// than notTaken, or ctx ends.
func ensureSent(ctx context.Context, fn func(ctx context.Context) error) error {
	return retry(ctx, 0, notTaken, fn)
}

// retry runs fn, each attempt bounded by attempt (0: by ctx alone), until
// it succeeds, fails with an error again does not accept, or ctx ends,
// backing off between attempts.
func retry(ctx context.Context, attempt time.Duration, again func(error) bool, fn func(ctx context.Context) error) error {
	backoff := 100 * time.Millisecond
	for {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if attempt > 0 {
			actx, cancel = context.WithTimeout(ctx, attempt)
		}
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !again(err) {
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
