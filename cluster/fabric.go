package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The message fabric: every message a node's gateway accepts is stored in
// one stream, on the subject of the node it came from, and every other node
// reads it through a durable consumer of its own. The MQTT topic travels in
// the message body, never in the subject: MQTT topics may hold '.', ' ',
// '*' and '>', which mean something else to NATS.
const (
	MsgsStream        = "ZTGATE_MSGS"
	msgsSubjectPrefix = "ztgate.msg."
	msgsSubjectAll    = msgsSubjectPrefix + ">"

	// Defaults of FabricOptions.
	defaultFabricMaxAge   = time.Hour
	defaultFabricMaxBytes = 1 << 30
	defaultMaxAckPending  = 1024
	defaultAsyncPending   = 4096
	defaultMaxRetained    = 100_000

	// fabricCallTimeout bounds a call whose context has no deadline.
	fabricCallTimeout = 10 * time.Second
	// asyncStallWait is how long a QoS 0 publish waits for room among the
	// outstanding ones before it is dropped: a QoS 0 message may be lost,
	// a device's connection may not stall on the cluster.
	asyncStallWait = 50 * time.Millisecond
	// asyncAckTimeout bounds the wait for the acknowledgement of a QoS 0
	// publish, so that one lost answer does not hold a slot for ever.
	asyncAckTimeout = 5 * time.Second
	// consumeBatch is how many messages a node pulls at once.
	consumeBatch = 256
	// nakDelay is when a message the gateway could not deliver comes back.
	nakDelay = time.Second
	// runRetry is the pause before a broken consumption is resumed.
	runRetry = time.Second
	// consumerAckWait is how long a delivered message may stay unacked
	// before JetStream sends it again.
	consumerAckWait = 30 * time.Second
)

// UserProperty is an MQTT 5 User Property.
type UserProperty struct{ Key, Value string }

// Message is an MQTT message accepted by one node's gateway, on its way to
// the subscribers of the others. Each delivery is decided again on the
// subscriber's node.
type Message struct {
	Topic     string
	Payload   []byte
	QoS       byte
	Retain    bool
	Publisher string // SPIFFE ID of the device that published it
	Origin    string // name of the node that accepted it; set by Publish

	// The MQTT 5 properties that travel with a message.
	PayloadFormat   byte
	MessageExpiry   uint32 // seconds left; 0: none. Run counts the time spent in the stream.
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	UserProperties  []UserProperty
}

// FabricOptions tune a Fabric; the zero value is usable.
type FabricOptions struct {
	Replicas int           // JetStream replicas of both streams; 0 means 1
	MaxAge   time.Duration // how long a message waits for a node that is down; 0 means 1 h
	MaxBytes int64         // size bound of the message stream; 0 means 1 GiB, < 0 unlimited
	// MaxRetained bounds the number of retained messages (topics) of the
	// cluster; 0 means 100,000. A retained message on a new topic beyond
	// it is refused.
	MaxRetained int
	// MaxAckPending bounds the messages delivered to this node and not yet
	// acknowledged; 0 means 1,024.
	MaxAckPending int
	// MaxAsyncPending bounds the QoS 0 publishes awaiting their
	// acknowledgement; 0 means 4,096. Beyond it QoS 0 messages are dropped
	// (see Dropped).
	MaxAsyncPending int
	Logger          *slog.Logger // nil discards
}

func (o *FabricOptions) defaults() {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.MaxAge == 0 {
		o.MaxAge = defaultFabricMaxAge
	}
	switch {
	case o.MaxBytes == 0:
		o.MaxBytes = defaultFabricMaxBytes
	case o.MaxBytes < 0:
		o.MaxBytes = -1
	}
	if o.MaxRetained == 0 {
		o.MaxRetained = defaultMaxRetained
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = defaultMaxAckPending
	}
	if o.MaxAsyncPending == 0 {
		o.MaxAsyncPending = defaultAsyncPending
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func (o *FabricOptions) validate() error {
	switch {
	case o.Replicas < 1:
		return fmt.Errorf("cluster: fabric: replicas %d: must be at least 1", o.Replicas)
	case o.MaxAge < 0:
		return fmt.Errorf("cluster: fabric: max age %s: must not be negative", o.MaxAge)
	case o.MaxRetained < 0, o.MaxAckPending < 0, o.MaxAsyncPending < 0:
		return errors.New("cluster: fabric: limits must not be negative")
	}
	return nil
}

// Fabric carries messages between the gateways of a cluster, and keeps the
// cluster's retained messages (retained.go).
type Fabric struct {
	js      jetstream.JetStream // synchronous publishes and management
	async   jetstream.JetStream // QoS 0 publishes, bounded
	node    string
	subject string // this node's publish subject
	durable string // this node's consumer
	opts    FabricOptions
	log     *slog.Logger

	msgs     jetstream.Stream
	retained jetstream.Stream

	dropped atomic.Uint64
}

// NewFabric creates (or updates) the streams ZTGATE_MSGS and
// ZTGATE_RETAINED and this node's durable consumer. The consumer is created
// here, not in Run, so that what is published between the two is not
// missed; created the first time it starts at new messages, so that a new
// node does not replay the stream's history, and afterwards it resumes
// from its acknowledgement floor: a node that was down catches up on what
// it missed while the stream still holds it (MaxAge).
func NewFabric(ctx context.Context, js jetstream.JetStream, nc *nats.Conn, node string, opts FabricOptions) (*Fabric, error) {
	opts.defaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if err := checkToken(node); err != nil {
		return nil, fmt.Errorf("cluster: fabric: node name: %w", err)
	}
	if js == nil || nc == nil {
		return nil, errors.New("cluster: fabric: no JetStream connection")
	}
	f := &Fabric{
		js:      js,
		node:    node,
		subject: msgsSubjectPrefix + node,
		durable: "node-" + node,
		opts:    opts,
		log:     opts.Logger,
	}
	async, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(opts.MaxAsyncPending),
		jetstream.WithPublishAsyncTimeout(asyncAckTimeout),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			if n := f.dropped.Add(1); n&(n-1) == 0 { // 1, 2, 4, 8...: a log line, not a flood
				f.log.Warn("cluster: QoS 0 message not stored", "err", err, "dropped_total", n)
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("cluster: fabric: %w", err)
	}
	f.async = async

	ctx, cancel := fabricDeadline(ctx)
	defer cancel()
	if err = ensure(ctx, func(ctx context.Context) (err error) {
		f.msgs, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        MsgsStream,
			Description: "ztgate messages between nodes",
			Subjects:    []string{msgsSubjectAll},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    opts.Replicas,
			MaxAge:      opts.MaxAge,
			MaxBytes:    opts.MaxBytes,
			Discard:     jetstream.DiscardOld,
		})
		return err
	}); err != nil {
		return nil, classify("create stream "+MsgsStream, err)
	}
	if err := ensure(ctx, f.createRetainedStream); err != nil {
		return nil, err
	}
	if err := ensure(ctx, func(ctx context.Context) error { _, err := f.consumer(ctx); return err }); err != nil {
		return nil, err
	}
	return f, nil
}

// checkToken accepts a name usable as one NATS subject token and consumer
// name.
func checkToken(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if i := strings.IndexAny(s, ".*> \t\r\n/\\"); i >= 0 {
		return fmt.Errorf("%q holds %q", s, s[i])
	}
	return nil
}

func fabricDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, fabricCallTimeout)
}

// consumer returns this node's durable consumer, creating it if it does
// not exist. An existing one is used as it is: its position is the point.
func (f *Fabric) consumer(ctx context.Context) (jetstream.Consumer, error) {
	c, err := f.msgs.Consumer(ctx, f.durable)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, classify("consumer "+f.durable, err)
	}
	c, err = f.msgs.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       f.durable,
		Description:   "ztgate node " + f.node + ": messages of the other nodes",
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       consumerAckWait,
		MaxAckPending: f.opts.MaxAckPending,
		FilterSubject: msgsSubjectAll,
	})
	if err != nil {
		return nil, classify("create consumer "+f.durable, err)
	}
	return c, nil
}

// Node is the name of this node.
func (f *Fabric) Node() string { return f.node }

// Dropped counts the QoS 0 messages that were not stored (no room among the
// outstanding publishes, or no acknowledgement in time).
func (f *Fabric) Dropped() uint64 { return f.dropped.Load() }

// Publish stores m, from this node, for the other nodes. A message of QoS 1
// or 2 is published synchronously: nil means the stream acknowledged it,
// that is a majority of its replicas stored it. A QoS 0 message is handed
// to the bounded asynchronous publisher and nil means only that it was
// sent; one that finds no room is dropped with an error.
func (f *Fabric) Publish(ctx context.Context, m Message) error {
	if m.Topic == "" {
		return errors.New("cluster: publish: empty topic")
	}
	m.Origin = f.node
	data := encodeMessage(nil, &m)
	if m.QoS == 0 {
		if _, err := f.async.PublishAsync(f.subject, data, jetstream.WithStallWait(asyncStallWait)); err != nil {
			f.dropped.Add(1)
			return fmt.Errorf("cluster: publish QoS 0: %w", err)
		}
		return nil
	}
	ctx, cancel := fabricDeadline(ctx)
	defer cancel()
	if _, err := f.js.Publish(ctx, f.subject, data); err != nil {
		return classify("publish", err)
	}
	return nil
}

// Run hands deliver every message the other nodes publish, in stream order,
// until ctx ends; it returns nil then. A message is acknowledged once
// deliver returns nil, and comes back later when it returns an error; an
// undecodable message is dropped for good. Messages of this node are
// acknowledged without deliver. A message whose expiry passed in the stream
// is dropped; the others have MessageExpiry reduced by the time spent there.
// Interruptions (a lost leader, a consumer deleted) are resumed from the
// consumer's acknowledgement floor. Run must not be called twice at once.
func (f *Fabric) Run(ctx context.Context, deliver func(Message) error) error {
	for {
		err := f.consume(ctx, deliver)
		if ctx.Err() != nil {
			return nil
		}
		f.log.Warn("cluster: message consumption interrupted; resuming", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(runRetry):
		}
	}
}

func (f *Fabric) consume(ctx context.Context, deliver func(Message) error) error {
	cctx, cancel := fabricDeadline(ctx)
	c, err := f.consumer(cctx)
	cancel()
	if err != nil {
		return err
	}
	it, err := c.Messages(jetstream.PullMaxMessages(consumeBatch))
	if err != nil {
		return fmt.Errorf("cluster: consume: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("cluster: consume: %w", err)
		}
		f.handle(msg, deliver)
	}
}

// handle delivers one message of the stream. Acks are not waited for: a
// lost one makes JetStream send the message again, which at-least-once
// allows.
func (f *Fabric) handle(msg jetstream.Msg, deliver func(Message) error) {
	m, err := decodeMessage(msg.Data())
	if err == nil && msg.Subject() != msgsSubjectPrefix+m.Origin {
		err = fmt.Errorf("origin %q published on %q", m.Origin, msg.Subject())
	}
	if err != nil {
		f.log.Warn("cluster: undecodable message dropped", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	if m.Origin == f.node {
		_ = msg.Ack()
		return
	}
	if meta, err := msg.Metadata(); err == nil && !remainingExpiry(&m, meta.Timestamp) {
		_ = msg.Ack()
		return
	}
	if err := deliver(m); err != nil {
		f.log.Debug("cluster: message not delivered; it comes back", "topic", m.Topic, "err", err)
		_ = msg.NakWithDelay(nakDelay)
		return
	}
	_ = msg.Ack()
}

// remainingExpiry reduces m's expiry by the time since stored, and reports
// whether any is left.
func remainingExpiry(m *Message, stored time.Time) bool {
	if m.MessageExpiry == 0 {
		return true
	}
	spent := time.Since(stored)
	if spent < 0 {
		spent = 0
	}
	left := time.Duration(m.MessageExpiry)*time.Second - spent
	if left <= 0 {
		return false
	}
	m.MessageExpiry = uint32((left + time.Second - 1) / time.Second)
	return true
}
