package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoQuorum is matched (errors.Is) by an operation on replicated state
// that failed because the cluster could not reach a majority of its nodes
// in time: the operation was refused (or, for a write whose answer was
// lost, may still be applied once a majority is back; see each caller).
var ErrNoQuorum = errors.New("cluster: no quorum: a majority of the cluster's nodes cannot be reached")

// JetStream API error codes that mean "no leader or quorum right now".
const (
	codeClusterNotAvail  = 10008 // JetStream system temporarily unavailable
	codeClusterNotLeader = 10009
	codeStreamOffline    = 10118
	codeStreamOfflineWhy = 10194
	// codeMsgIDInProcess answers the retry of a publish whose first try
	// is proposed but not committed: on a minority node it never will be.
	codeMsgIDInProcess = 10158
)

// noQuorumError matches ErrNoQuorum, its cause, and the sentinels in also
// (the ones of the package whose interface the caller implements, such as
// registry.ErrNoQuorum).
type noQuorumError struct {
	op    string
	cause error
	also  []error
}

func (e *noQuorumError) Error() string {
	return fmt.Sprintf("cluster: no quorum: %s: %v", e.op, e.cause)
}

func (e *noQuorumError) Unwrap() []error {
	return append([]error{ErrNoQuorum, e.cause}, e.also...)
}

// isNoQuorum reports whether err from a JetStream call means that no
// leader or majority answered: timeouts and missing responders included,
// because that is how a lost quorum looks from a minority node.
func isNoQuorum(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeClusterNotAvail, codeClusterNotLeader, codeStreamOffline, codeStreamOfflineWhy, codeMsgIDInProcess:
			return true
		}
	}
	return false
}

// classify wraps err from operation op as a noQuorumError (also matching
// also) when it means no quorum, else as a plain "cluster: op: err".
func classify(op string, err error, also ...error) error {
	if isNoQuorum(err) {
		return &noQuorumError{op: op, cause: err, also: also}
	}
	return fmt.Errorf("cluster: %s: %w", op, err)
}
