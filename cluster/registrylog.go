package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ztgate/ztgate/registry"
)

// The registry's replicated log: one JetStream stream, one subject, one
// message per registry change (see registry.Log).
const (
	RegistryStream  = "ZTGATE_REGISTRY"
	RegistrySubject = "ztgate.registry.log"
	// registryDuplicates is how long a record ID is remembered, so that a
	// publish retried after a lost answer is stored once.
	registryDuplicates = 2 * time.Minute
	// appendAttemptTimeout bounds one publish of Append; a publish that
	// times out is retried with the same ID while the caller's context
	// allows.
	appendAttemptTimeout = 2 * time.Second
	// registryCallTimeout bounds a call whose context has no deadline.
	registryCallTimeout = 10 * time.Second
	followHeartbeat     = 500 * time.Millisecond
	followExpiry        = 5 * time.Second
)

// RegistryLog is registry.Log over the JetStream stream ZTGATE_REGISTRY.
// The stream keeps every record for ever (the registry's history is its
// state; no age or size limit) and refuses deletes and purges through the
// API, because a hole in the log would be a change some nodes never saw.
type RegistryLog struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

var _ registry.Log = (*RegistryLog)(nil)

// NewRegistryLog creates the stream, or updates it to replicas, and
// returns the log on it.
func NewRegistryLog(ctx context.Context, js jetstream.JetStream, replicas int) (*RegistryLog, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("cluster: registry log: replicas %d: must be at least 1", replicas)
	}
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	var st jetstream.Stream
	err := ensure(ctx, func(ctx context.Context) (err error) {
		st, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        RegistryStream,
			Description: "ztgate registry: ordered log of device, token and audit changes",
			Subjects:    []string{RegistrySubject},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			Duplicates:  registryDuplicates,
			DenyDelete:  true,
			DenyPurge:   true,
		})
		return err
	})
	if err != nil {
		return nil, classify("create stream "+RegistryStream, err)
	}
	return &RegistryLog{js: js, stream: st}, nil
}

func withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, registryCallTimeout)
}

// Append publishes rec on the condition that the stream's last sequence is
// expect. A publish whose answer is lost (timeout, no responders) is sent
// again with the same ID while ctx allows: the stream's duplicate window
// answers a retry of a stored record with its original sequence.
func (l *RegistryLog) Append(ctx context.Context, id string, expect uint64, rec []byte) (uint64, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, appendAttemptTimeout)
		ack, err := l.js.Publish(actx, RegistrySubject, rec,
			jetstream.WithMsgID(id),
			jetstream.WithExpectStream(RegistryStream),
			jetstream.WithExpectLastSequence(expect))
		acancel()
		switch {
		case err == nil:
			return ack.Sequence, nil
		case errors.Is(err, nats.ErrMaxPayload):
			return 0, fmt.Errorf("cluster: registry log append: %d bytes: %w (%w)", len(rec), registry.ErrRecordTooLarge, err)
		case isWrongLastSequence(err):
			// A single server checks the expected sequence before the
			// duplicate window, so the retry of a record an earlier
			// attempt stored looks like a conflict: look at the record.
			if attempt > 1 {
				if seq, ok := l.storedAt(ctx, expect+1, id); ok {
					return seq, nil
				}
			}
			return 0, fmt.Errorf("cluster: registry log append after %d: %w (%w)", expect, registry.ErrLogConflict, err)
		case !isNoQuorum(err) || ctx.Err() != nil:
			return 0, classify("registry log append", err, registry.ErrNoQuorum)
		}
	}
}

// storedAt reports whether the record at seq is the one with ID id.
func (l *RegistryLog) storedAt(ctx context.Context, seq uint64, id string) (uint64, bool) {
	msg, err := l.stream.GetMsg(ctx, seq)
	if err != nil || msg.Header.Get(jetstream.MsgIDHeader) != id {
		return 0, false
	}
	return seq, true
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Last asks the stream leader for the last sequence. Without a quorum
// there is no leader (once the old one noticed: until then it still
// answers, with what it committed), and the error matches
// registry.ErrNoQuorum: a node must not take its own copy's end for the
// cluster's.
func (l *RegistryLog) Last(ctx context.Context) (uint64, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	info, err := l.stream.Info(ctx)
	if err != nil {
		return 0, classify("registry log: stream info", err, registry.ErrNoQuorum)
	}
	// A member of a leaderless stream answers from its own copy, which
	// may be behind: that is no answer about the cluster's log.
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return 0, &noQuorumError{op: "registry log: stream info", cause: errors.New("stream has no leader"),
			also: []error{registry.ErrNoQuorum}}
	}
	return info.State.LastSeq, nil
}

// Follow delivers the records after sequence after, in order, through an
// ordered consumer (which recreates itself, from where it was, when its
// server goes away), until ctx ends or apply fails.
func (l *RegistryLog) Follow(ctx context.Context, after uint64, apply func(seq uint64, rec []byte) error) error {
	cctx, cancel := withDeadline(ctx)
	cons, err := l.js.OrderedConsumer(cctx, RegistryStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{RegistrySubject},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    after + 1,
	})
	cancel()
	if err != nil {
		return classify("registry log: follow", err, registry.ErrNoQuorum)
	}
	// A short heartbeat: the first pull request to a new consumer can be
	// lost while the consumer's interest is still spreading over the
	// routes, and the ordered consumer only recreates itself after two
	// missed heartbeats (1 s here; the default would stall the follower
	// for 10 s).
	it, err := cons.Messages(jetstream.PullHeartbeat(followHeartbeat), jetstream.PullExpiry(followExpiry))
	if err != nil {
		return classify("registry log: follow", err, registry.ErrNoQuorum)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return classify("registry log: follow", err, registry.ErrNoQuorum)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("cluster: registry log: follow: %w", err)
		}
		if err := apply(meta.Sequence.Stream, msg.Data()); err != nil {
			return err
		}
	}
}
