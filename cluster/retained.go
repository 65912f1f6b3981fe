package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The cluster's retained messages: one stream holding at most one message
// per subject, one subject per MQTT topic, so that the stream is the
// retained set. The subject is ztgate.retained.t.<topic in unpadded
// base64url> (base64url has only characters NATS allows in a token, and
// one token is enough: NATS bounds the subject's length, not a token's);
// a topic whose encoding is longer than maxRetainedToken gets
// ztgate.retained.h.<base64url of its SHA-256> instead, which keeps every
// subject short. The topic itself is in the message body either way.
const (
	RetainedStream        = "ZTGATE_RETAINED"
	retainedSubjectPrefix = "ztgate.retained."
	maxRetainedToken      = 256
	// loadBatch is how many retained messages LoadRetained fetches at once.
	loadBatch = 512
	// loadWait bounds one fetch of LoadRetained.
	loadWait = 2 * time.Second
	// loadAttempts bounds the reads of LoadRetained.
	loadAttempts = 5
)

func retainedSubject(topic string) string {
	enc := base64.RawURLEncoding.EncodeToString([]byte(topic))
	if len(enc) <= maxRetainedToken {
		return retainedSubjectPrefix + "t." + enc
	}
	sum := sha256.Sum256([]byte(topic))
	return retainedSubjectPrefix + "h." + base64.RawURLEncoding.EncodeToString(sum[:])
}

// createRetainedStream creates (or updates) ZTGATE_RETAINED. Beyond
// MaxRetained topics a retained message on a new topic is refused
// (DiscardNew) rather than another topic's being dropped; replacing the
// message of a topic it holds is always possible.
func (f *Fabric) createRetainedStream(ctx context.Context) error {
	var err error
	f.retained, err = f.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              RetainedStream,
		Description:       "ztgate retained messages: one message per topic",
		Subjects:          []string{retainedSubjectPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          f.opts.Replicas,
		MaxMsgsPerSubject: 1,
		MaxMsgs:           int64(f.opts.MaxRetained),
		Discard:           jetstream.DiscardNew,
	})
	if err != nil {
		return classify("create stream "+RetainedStream, err)
	}
	return nil
}

// SetRetained makes m the retained message of its topic in the cluster; an
// empty payload clears the topic's. nil means a majority of the stream's
// replicas has it.
func (f *Fabric) SetRetained(ctx context.Context, m Message) error {
	if m.Topic == "" {
		return errors.New("cluster: set retained: empty topic")
	}
	ctx, cancel := fabricDeadline(ctx)
	defer cancel()
	subject := retainedSubject(m.Topic)
	if len(m.Payload) == 0 {
		if err := f.retained.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
			return classify("clear retained", err)
		}
		return nil
	}
	m.Origin, m.Retain = f.node, true
	data := encodeMessage(nil, &m)
	_, err := f.js.Publish(ctx, subject, data)
	if isStreamFull(err) {
		err = f.replaceAtLimit(ctx, subject, data)
	}
	if err != nil {
		return classify("set retained", err)
	}
	return nil
}

// replaceAtLimit replaces the message of subject when the stream holds
// MaxRetained topics: JetStream refuses any message then, even one that
// would replace another on its subject, so the old one is deleted first.
// A topic that holds none stays refused: that is the limit.
func (f *Fabric) replaceAtLimit(ctx context.Context, subject string, data []byte) error {
	raw, err := f.retained.GetLastMsgForSubject(ctx, subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return fmt.Errorf("%w (%d topics)", errRetainedFull, f.opts.MaxRetained)
	case err != nil:
		return err
	}
	if err := f.retained.DeleteMsg(ctx, raw.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return err
	}
	_, err = f.js.Publish(ctx, subject, data)
	return err
}

// errRetainedFull: the cluster holds MaxRetained retained messages.
var errRetainedFull = errors.New("retained message limit reached")

// isStreamFull reports whether err is JetStream refusing a message because
// the stream holds its maximum number of messages.
func isStreamFull(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == codeStoreFailed &&
		strings.Contains(apiErr.Description, "maximum messages")
}

// codeStoreFailed is JetStream's error code for a message it did not store.
const codeStoreFailed = 10077

// ClearRetained clears the retained message of topic if publisher published
// it (whoever did when publisher is empty). The check and the delete are
// tied to the message's sequence number, so a newer message on the topic,
// of anyone, is never cleared by mistake.
func (f *Fabric) ClearRetained(ctx context.Context, topic, publisher string) error {
	if topic == "" {
		return errors.New("cluster: clear retained: empty topic")
	}
	ctx, cancel := fabricDeadline(ctx)
	defer cancel()
	raw, err := f.retained.GetLastMsgForSubject(ctx, retainedSubject(topic))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil
	case err != nil:
		return classify("read retained", err)
	}
	m, err := decodeMessage(raw.Data)
	if err == nil && (m.Topic != topic || publisher != "" && m.Publisher != publisher) {
		return nil // another topic with the same hash, or another publisher's
	}
	// An undecodable message is cleared: it could never be loaded anyway.
	if err := f.retained.DeleteMsg(ctx, raw.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return classify("clear retained", err)
	}
	return nil
}

// LoadRetained returns the cluster's retained messages, at most MaxRetained
// of them, with their expiry reduced by the time they have been stored;
// expired and undecodable ones are left out.
func (f *Fabric) LoadRetained(ctx context.Context) ([]Message, error) {
	ctx, cancel := fabricDeadline(ctx)
	defer cancel()
	info, err := f.retained.Info(ctx)
	if err != nil {
		return nil, classify("retained info", err)
	}
	total := info.State.Msgs
	if total == 0 {
		return nil, nil
	}
	// A consumer just created may not be known yet to the server a fetch
	// reaches ("no responders"): the read is tried again from the start.
	for attempt := 1; ; attempt++ {
		out, err := f.readRetained(ctx, total)
		if err == nil || attempt == loadAttempts || !errors.Is(err, nats.ErrNoResponders) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return nil, classify("read retained", ctx.Err())
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
}

func (f *Fabric) readRetained(ctx context.Context, total uint64) ([]Message, error) {
	c, err := f.js.OrderedConsumer(ctx, RetainedStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, classify("read retained", err)
	}
	out := make([]Message, 0, min(total, uint64(f.opts.MaxRetained)))
	for len(out) < f.opts.MaxRetained {
		batch, err := c.Fetch(loadBatch, jetstream.FetchMaxWait(loadWait))
		if err != nil {
			return nil, classify("read retained", err)
		}
		got, pending := 0, uint64(0)
		for msg := range batch.Messages() {
			got++
			meta, err := msg.Metadata()
			if err != nil {
				continue
			}
			pending = meta.NumPending
			m, err := decodeMessage(msg.Data())
			if err != nil {
				f.log.Warn("cluster: undecodable retained message skipped", "subject", msg.Subject(), "err", err)
				continue
			}
			if !remainingExpiry(&m, meta.Timestamp) || len(out) >= f.opts.MaxRetained {
				continue
			}
			m.Payload = append([]byte(nil), m.Payload...) // msg's buffer is not ours to keep
			out = append(out, m)
		}
		if err := batch.Error(); err != nil {
			return nil, classify("read retained", err)
		}
		if ctx.Err() != nil {
			return nil, classify("read retained", ctx.Err())
		}
		if got == 0 || pending == 0 {
			break
		}
	}
	if total > uint64(len(out)) && len(out) >= f.opts.MaxRetained {
		f.log.Warn("cluster: more retained messages than the limit; the rest not loaded",
			"limit", f.opts.MaxRetained, "stored", total)
	}
	return out, nil
}
