package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ztgate/ztgate/internal/brokerstore"
)

// The session directory: which node holds the persistent session (or the
// live connection) of each client ID, in the KV bucket ztgate-sessions, and
// the takeover request a node sends the holder to take a session over.
//
// The client IDs are the gateway's scoped ones (SPIFFE ID, space, client
// ID): two identities never share a key, as they never share a session on
// one node. The SPIFFE ID in the record and in the request is checked all
// the same, so that a record or a request that does not match is refused
// rather than trusted.
const (
	// SessionsBucket is the KV bucket of the session directory.
	SessionsBucket = "ztgate-sessions"
	// takeoverPrefix is the subject prefix of the takeover requests; the
	// holder's node name ends it.
	takeoverPrefix = "ztgate.session.takeover."
	// DefaultTakeoverTimeout bounds a takeover request: the holder ends the
	// connection (waiting for it up to HandoverWait) and answers.
	DefaultTakeoverTimeout = 3 * time.Second
	// HandoverWait is how long the holder waits for the connection it
	// ended to close before it takes the session's state: less than the
	// request's timeout, so the answer still arrives.
	HandoverWait = 2 * time.Second
	// DefaultMaxHandoverMessages bounds the queued messages a takeover
	// carries (the gateway's default in-flight maximum per session).
	DefaultMaxHandoverMessages = 1024
	// sessionOpTimeout bounds a directory call whose context has no
	// deadline.
	sessionOpTimeout = 5 * time.Second
	// maxTakeovers bounds the takeover requests answered at once; more
	// are refused (the requester refuses its CONNECT: the client retries).
	maxTakeovers = 64
	// maxKeyIDLen is the longest client ID used as its key as is
	// (base64url); a longer one is keyed by its SHA-256, so that a key
	// stays well under NATS's subject length limit.
	maxKeyIDLen = 512
	// replyHeadroom is kept free under the server's maximum payload for
	// the reply's envelope and headers.
	replyHeadroom = 4096
	// casAttempts bounds the read-compare-write loops of the directory.
	casAttempts = 5
)

// ErrSessionIdentity is returned (wrapped) by Claim when the session of
// the client ID belongs to another identity. It has the method the gateway
// recognises (IdentityMismatch), so that the gateway refuses the CONNECT as
// not authorized rather than as server unavailable.
var ErrSessionIdentity error = identityError{}

type identityError struct{}

func (identityError) Error() string {
	return "cluster: session directory: the client ID's session belongs to another identity"
}

// IdentityMismatch marks the error for the gateway, which does not import
// this package.
func (identityError) IdentityMismatch() bool { return true }

func isIdentityMismatch(err error) bool {
	var m interface{ IdentityMismatch() bool }
	return errors.As(err, &m) && m.IdentityMismatch()
}

// SessionDirectoryOptions configures a SessionDirectory.
type SessionDirectoryOptions struct {
	// Replicas of the bucket (the cluster's replicas setting).
	Replicas int
	// TakeoverTimeout bounds a takeover request; 0 means
	// DefaultTakeoverTimeout.
	TakeoverTimeout time.Duration
	// MaxHandoverMessages bounds the queued messages a takeover carries;
	// 0 means DefaultMaxHandoverMessages. The oldest are kept.
	MaxHandoverMessages int
	Logger              *slog.Logger // nil means slog.Default()
}

// SessionDirectory is the gateway's session directory over JetStream (see
// gateway.SessionDirectory, which it implements: the gateway's tests check
// it, since this package does not import the gateway).
type SessionDirectory struct {
	nc *nats.Conn
	js jetstream.JetStream
	kv jetstream.KeyValue
	// stream is the bucket's stream: Record reads through it, from its
	// leader (see Record).
	stream   jetstream.Stream
	node     string
	timeout  time.Duration
	maxMsgs  int
	log      *slog.Logger
	slots    chan struct{}
	handlers sync.WaitGroup
}

// NewSessionDirectory creates the bucket, or updates it to the replicas,
// and returns the directory of node.
func NewSessionDirectory(ctx context.Context, js jetstream.JetStream, nc *nats.Conn, node string, opts SessionDirectoryOptions) (*SessionDirectory, error) {
	switch {
	case opts.Replicas < 1:
		return nil, fmt.Errorf("cluster: session directory: replicas %d: must be at least 1", opts.Replicas)
	case node == "" || !subjectToken(node):
		return nil, fmt.Errorf("cluster: session directory: node name %q is not a subject token", node)
	case nc == nil || js == nil:
		return nil, errors.New("cluster: session directory: no NATS connection")
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	var kv jetstream.KeyValue
	err := ensure(ctx, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      SessionsBucket,
			Description: "ztgate: the node holding each client ID's session, and its subscriptions",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    opts.Replicas,
		})
		return err
	})
	if err != nil {
		return nil, classify("create bucket "+SessionsBucket, err)
	}
	if err := ensure(ctx, func(ctx context.Context) (err error) {
		kv, err = readsFromLeader(ctx, js)
		return err
	}); err != nil {
		return nil, err
	}
	// Every CONNECT claims its session with a write: do not let the
	// gateway open its listener before the bucket has a leader that
	// takes one (right after the bucket is made or changed, requests may
	// go unanswered). The probe key holds a '.', which no session key
	// outside the "h." ones has.
	probe := "_probe." + node
	if err := ensure(ctx, func(ctx context.Context) error {
		if _, err := kv.Put(ctx, probe, nil); err != nil {
			return err
		}
		return kv.Delete(ctx, probe)
	}); err != nil {
		return nil, classify("bucket "+SessionsBucket+": first write", err)
	}
	var st jetstream.Stream
	if err := ensure(ctx, func(ctx context.Context) (err error) {
		st, err = js.Stream(ctx, "KV_"+SessionsBucket)
		return err
	}); err != nil {
		return nil, classify("bucket "+SessionsBucket, err)
	}
	d := &SessionDirectory{
		nc:      nc,
		js:      js,
		kv:      kv,
		stream:  st,
		node:    node,
		timeout: opts.TakeoverTimeout,
		maxMsgs: opts.MaxHandoverMessages,
		log:     opts.Logger,
		slots:   make(chan struct{}, maxTakeovers),
	}
	if d.timeout <= 0 {
		d.timeout = DefaultTakeoverTimeout
	}
	if d.maxMsgs <= 0 {
		d.maxMsgs = DefaultMaxHandoverMessages
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	return d, nil
}

// readsFromLeader turns off direct gets on the bucket's stream, and binds
// the bucket again: a direct get is answered by any replica, so a node cut
// off from the majority would read its own stale copy and let a CONNECT
// start a second session of a client ID. Read from the stream's leader, a
// claim without a quorum fails instead (the CONNECT is refused).
func readsFromLeader(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	st, err := js.Stream(ctx, "KV_"+SessionsBucket)
	if err != nil {
		return nil, classify("bucket "+SessionsBucket, err)
	}
	if err := leaderReads(ctx, js, st); err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, SessionsBucket)
	if err != nil {
		return nil, classify("bucket "+SessionsBucket, err)
	}
	return kv, nil
}

// leaderReads makes st, a handle of the bucket's stream, read from the
// stream's leader. A handle reads with direct gets when the stream's
// config said so as it was bound, and every node creates the bucket with
// them on (the KV default) before turning them off: a node that binds in
// between, while another one starts, holds a handle that sends direct gets,
// which no server answers once they are off (every CONNECT on that node was
// refused, "no responders"), and which, while they are on, a replica
// answers from its own copy. So the handle asks for the config again, and
// direct gets still on are turned off.
func leaderReads(ctx context.Context, js jetstream.JetStream, st jetstream.Stream) error {
	for range casAttempts {
		info := st.CachedInfo()
		if info != nil && !info.Config.AllowDirect {
			return nil
		}
		info, err := st.Info(ctx)
		if err != nil {
			return classify("bucket "+SessionsBucket, err)
		}
		if !info.Config.AllowDirect {
			return nil
		}
		cfg := info.Config
		cfg.AllowDirect = false
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return classify("bucket "+SessionsBucket+": leader reads", err)
		}
	}
	return fmt.Errorf("cluster: bucket %s: direct gets kept being turned on", SessionsBucket)
}

// subjectToken reports whether s can be one token of a subject.
func subjectToken(s string) bool {
	for _, r := range s {
		switch {
		case r == '.' || r == '*' || r == '>' || r <= ' ' || r == 0x7f:
			return false
		}
	}
	return true
}

func opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, sessionOpTimeout)
}

// Node is the name of this directory's node.
func (d *SessionDirectory) Node() string { return d.node }

// SessionRecord is the value of a client ID's key in the bucket.
type SessionRecord struct {
	ClientID       string `json:"client_id"`
	Node           string `json:"node"`
	SPIFFEID       string `json:"spiffe_id"`
	ExpiryInterval uint32 `json:"expiry_interval"`
	// DisconnectedAt is Unix seconds; null while connected.
	DisconnectedAt  *int64          `json:"disconnected_at"`
	ProtocolVersion byte            `json:"protocol_version"`
	Subscriptions   []RecordedTopic `json:"subscriptions"`
}

// RecordedTopic is one subscription of a SessionRecord.
type RecordedTopic struct {
	Filter            string `json:"filter"`
	QoS               byte   `json:"qos"`
	NoLocal           bool   `json:"no_local,omitempty"`
	RetainAsPublished bool   `json:"retain_as_published,omitempty"`
	RetainHandling    byte   `json:"retain_handling,omitempty"`
	Identifier        int    `json:"identifier,omitempty"`
}

// expired reports whether the session of r ended by expiry at now: a
// record still connected never has.
func (r *SessionRecord) expired(now time.Time) bool {
	return r.DisconnectedAt != nil && *r.DisconnectedAt+int64(r.ExpiryInterval) < now.Unix()
}

// session is the record as a stored session, for a holder that cannot be
// reached: its subscriptions, nothing queued.
func (r *SessionRecord) session(now time.Time) *brokerstore.Session {
	s := &brokerstore.Session{
		ClientID:          r.ClientID,
		ProtocolVersion:   r.ProtocolVersion,
		SessionExpiry:     r.ExpiryInterval,
		SessionExpiryFlag: r.ProtocolVersion == 5,
		DisconnectedAt:    now.Unix(), // died while connected: from now
	}
	if r.DisconnectedAt != nil {
		s.DisconnectedAt = *r.DisconnectedAt
	}
	for _, t := range r.Subscriptions {
		s.Subscriptions = append(s.Subscriptions, packets.Subscription{
			Filter:            t.Filter,
			Qos:               t.QoS,
			NoLocal:           t.NoLocal,
			RetainAsPublished: t.RetainAsPublished,
			RetainHandling:    t.RetainHandling,
			Identifier:        t.Identifier,
		})
	}
	return s
}

// SessionKey is the bucket key of a client ID: its base64url encoding
// without padding, or for a client ID longer than 512 bytes "h." and the
// base64url of its SHA-256 (base64url has no '.', so the two never meet).
func SessionKey(clientID string) string {
	if len(clientID) > maxKeyIDLen {
		sum := sha256.Sum256([]byte(clientID))
		return "h." + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return base64.RawURLEncoding.EncodeToString([]byte(clientID))
}

// Record returns the record of clientID and its revision; nil when there
// is none.
func (d *SessionDirectory) Record(ctx context.Context, clientID string) (*SessionRecord, uint64, error) {
	ctx, cancel := opContext(ctx)
	defer cancel()
	// Read from the stream's leader, not through the bucket: the nodes
	// create the bucket with direct reads on and each turns them off, so
	// a handle bound in between reads a replica, which may lag, and every
	// compare-and-set on what it read fails (seen as "record kept
	// changing" under load). A deleted record still has a revision: the
	// next write must name it.
	key := SessionKey(clientID)
	var m *jetstream.RawStreamMsg
	err := ensureEach(ctx, opAttempt, func(ctx context.Context) (err error) {
		// A read, so it may be sent again: "no responders" while the
		// stream's leader changes is over in a moment.
		if err := leaderReads(ctx, d.js, d.stream); err != nil {
			return err
		}
		m, err = d.stream.GetLastMsgForSubject(ctx, "$KV."+SessionsBucket+"."+key)
		return err
	})
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, 0, nil
	case err != nil:
		return nil, 0, classify("session directory: get", err)
	}
	switch m.Header.Get("KV-Operation") {
	case "DEL", "PURGE":
		return nil, m.Sequence, nil
	}
	var r SessionRecord
	if err := json.Unmarshal(m.Data, &r); err != nil || r.ClientID != clientID {
		// Unreadable, or a hash collision: no session is known.
		d.log.Warn("cluster: unreadable session record ignored", "key", key, "err", err)
		return nil, m.Sequence, nil
	}
	return &r, m.Sequence, nil
}

// Owns reports whether the record of clientID names this node.
func (d *SessionDirectory) Owns(ctx context.Context, clientID string) (bool, error) {
	r, _, err := d.Record(ctx, clientID)
	if err != nil {
		return false, err
	}
	return r != nil && r.Node == d.node, nil
}

// Put writes the record of s, held by this node. With establish the
// record is replaced whoever held it (this node's connection is the newest);
// without, only a record this node holds is updated, so that a late write of
// a node whose session was taken over does not undo the takeover.
func (d *SessionDirectory) Put(ctx context.Context, spiffeID string, s *brokerstore.Session, establish bool) error {
	if s == nil || s.ClientID == "" {
		return errors.New("cluster: session directory: put: no client ID")
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	raw, err := json.Marshal(d.recordOf(spiffeID, s))
	if err != nil {
		return fmt.Errorf("cluster: session directory: put: %w", err)
	}
	key := SessionKey(s.ClientID)
	if establish {
		if _, err := d.kv.Put(ctx, key, raw); err != nil {
			return classify("session directory: put", err)
		}
		return nil
	}
	return d.casOwned(ctx, s.ClientID, func(ctx context.Context, rev uint64) error {
		_, err := d.kv.Update(ctx, key, raw, rev)
		return err
	})
}

// Delete removes the record of clientID if this node holds it.
func (d *SessionDirectory) Delete(ctx context.Context, clientID string) error {
	ctx, cancel := opContext(ctx)
	defer cancel()
	key := SessionKey(clientID)
	return d.casOwned(ctx, clientID, func(ctx context.Context, rev uint64) error {
		return d.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	})
}

// casOwned runs write on the revision of clientID's record while the
// record names this node, again when another write came in between, or
// when no leader took it (see own).
func (d *SessionDirectory) casOwned(ctx context.Context, clientID string, write func(ctx context.Context, rev uint64) error) error {
	for range casAttempts {
		r, rev, err := d.Record(ctx, clientID)
		if err != nil {
			return err
		}
		if r == nil || r.Node != d.node {
			return nil // another node's now, or gone
		}
		err = ensureSent(ctx, func(ctx context.Context) error { return write(ctx, rev) })
		if err == nil {
			return nil
		}
		if !isWrongRevision(err) {
			return classify("session directory: write", err)
		}
	}
	return errors.New("cluster: session directory: record kept changing")
}

func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (d *SessionDirectory) recordOf(spiffeID string, s *brokerstore.Session) *SessionRecord {
	r := &SessionRecord{
		ClientID:        s.ClientID,
		Node:            d.node,
		SPIFFEID:        spiffeID,
		ExpiryInterval:  s.SessionExpiry,
		ProtocolVersion: s.ProtocolVersion,
		Subscriptions:   make([]RecordedTopic, 0, len(s.Subscriptions)),
	}
	if s.DisconnectedAt != 0 {
		at := s.DisconnectedAt
		r.DisconnectedAt = &at
	}
	for _, sub := range s.Subscriptions {
		r.Subscriptions = append(r.Subscriptions, RecordedTopic{
			Filter:            sub.Filter,
			QoS:               sub.Qos,
			NoLocal:           sub.NoLocal,
			RetainAsPublished: sub.RetainAsPublished,
			RetainHandling:    sub.RetainHandling,
			Identifier:        sub.Identifier,
		})
	}
	sort.Slice(r.Subscriptions, func(i, j int) bool { return r.Subscriptions[i].Filter < r.Subscriptions[j].Filter })
	return r
}

// takeoverRequest asks the holder of a session to end it and hand it over.
type takeoverRequest struct {
	ClientID   string `json:"client_id"`
	SPIFFEID   string `json:"spiffe_id"`
	CleanStart bool   `json:"clean_start"`
	From       string `json:"from"`
}

// Takeover answers.
const (
	statusHandedOver = "ok"       // ended; Session holds its state unless clean start
	statusNone       = "none"     // the holder has no such session
	statusMismatch   = "mismatch" // the session belongs to another identity
	statusFailed     = "error"    // the holder could not hand it over
)

type takeoverReply struct {
	Status  string          `json:"status"`
	Error   string          `json:"error,omitempty"`
	Session json.RawMessage `json:"session,omitempty"`
	// Dropped counts the queued messages left out (bounds).
	Dropped int `json:"dropped,omitempty"`
}

// Claim ends the session of clientID on whichever other node holds it and
// returns its state to restore here (nil when there is none, or for a clean
// start), and makes the record this node's. A holder that cannot be reached
// (stopped, no answer in time) hands nothing over: the session's
// subscriptions come from its record, the messages queued on that node do
// not.
//
// The record is written on every claim, also when this node held it
// already: a write needs a quorum, where a read may be answered by a
// leader that has not yet noticed it lost its majority. An error means the
// directory could not be read or written (no quorum), or another node
// claimed the client ID at the same moment: the caller refuses the CONNECT.
func (d *SessionDirectory) Claim(ctx context.Context, clientID, spiffeID string, cleanStart bool) (*brokerstore.Session, error) {
	ctx, cancel := opContext(ctx)
	defer cancel()
	r, _, err := d.Record(ctx, clientID)
	if err != nil {
		return nil, err
	}
	var s *brokerstore.Session
	holder := ""
	if r != nil {
		holder = r.Node
		switch {
		case r.SPIFFEID != spiffeID:
			d.log.Warn("cluster: session claimed by another identity", "client_id", clientID,
				"spiffe_id", spiffeID, "holder", r.Node)
			return nil, fmt.Errorf("cluster: claim %q: %w", clientID, ErrSessionIdentity)
		case r.Node == d.node:
			// This node's: the broker here has it.
		case r.expired(time.Now()):
			// Ended by expiry on a node that could not remove it.
		default:
			if s, err = d.takeOver(ctx, r, spiffeID, cleanStart); err != nil {
				return nil, err
			}
		}
	}
	if err := d.own(ctx, clientID, spiffeID, holder, s); err != nil {
		return nil, err
	}
	return s, nil
}

// takeOver asks the holder in r to end the session and hand it over.
func (d *SessionDirectory) takeOver(ctx context.Context, r *SessionRecord, spiffeID string, cleanStart bool) (*brokerstore.Session, error) {
	clientID := r.ClientID
	rep, err := d.requestTakeover(ctx, r.Node, takeoverRequest{ClientID: clientID, SPIFFEID: spiffeID,
		CleanStart: cleanStart, From: d.node})
	if err != nil {
		if ctx.Err() != nil {
			// The caller's own time ran out, not only the holder's.
			return nil, classify("claim", ctx.Err())
		}
		// The holder is gone or mute: its node's queue is out of reach.
		d.log.Warn("cluster: session holder unreachable; resuming from the directory record",
			"client_id", clientID, "holder", r.Node, "err", err)
		if cleanStart {
			return nil, nil
		}
		return r.session(time.Now()), nil
	}
	switch rep.Status {
	case statusNone:
		return nil, nil
	case statusMismatch:
		return nil, fmt.Errorf("cluster: claim %q: holder %s: %w", clientID, r.Node, ErrSessionIdentity)
	case statusHandedOver:
	default:
		return nil, fmt.Errorf("cluster: claim %q: holder %s: %s", clientID, r.Node, rep.Error)
	}
	if rep.Dropped > 0 {
		d.log.Warn("cluster: takeover carried part of the session's queue", "client_id", clientID,
			"holder", r.Node, "dropped", rep.Dropped)
	}
	if cleanStart || len(rep.Session) == 0 {
		return nil, nil
	}
	s, err := brokerstore.UnmarshalSession(rep.Session)
	if err != nil {
		return nil, fmt.Errorf("cluster: claim %q: %w", clientID, err)
	}
	if s.ClientID != clientID {
		return nil, fmt.Errorf("cluster: claim %q: holder %s handed over %q", clientID, r.Node, s.ClientID)
	}
	return s, nil
}

// own writes the record of clientID as this node's, connected, with the
// subscriptions of s (the state claimed), else those it has when this node
// held it already. The record may meanwhile have been removed or updated by
// this node or by the former holder; a third node's means two claims at
// once, and fails.
func (d *SessionDirectory) own(ctx context.Context, clientID, spiffeID, holder string, s *brokerstore.Session) error {
	key := SessionKey(clientID)
	for range casAttempts {
		cur, rev, err := d.Record(ctx, clientID)
		if err != nil {
			return err
		}
		if cur != nil && cur.Node != d.node && cur.Node != holder {
			return fmt.Errorf("cluster: claim %q: claimed by node %s at the same time", clientID, cur.Node)
		}
		var rec *SessionRecord
		switch {
		case s != nil:
			rec = d.recordOf(spiffeID, s)
		case cur != nil && cur.Node == d.node:
			rec = cur
		default:
			rec = &SessionRecord{ClientID: clientID, Node: d.node, SPIFFEID: spiffeID, Subscriptions: []RecordedTopic{}}
		}
		rec.DisconnectedAt = nil
		raw, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("cluster: claim: %w", err)
		}
		// Revision 0 expects no message at all under the key: a create
		// that, unlike KeyValue.Create, does not read the key back
		// through the bucket's handle on a conflict (see leaderReads).
		// Sent again while the stream's leader changes ("no responders"):
		// not sent again after a timeout, which a minority's leader also
		// gives, and whose write may be pending there.
		err = ensureSent(ctx, func(ctx context.Context) error {
			_, err := d.kv.Update(ctx, key, raw, rev)
			return err
		})
		if err == nil {
			return nil
		}
		if !isWrongRevision(err) {
			return classify("claim: write", err)
		}
	}
	return fmt.Errorf("cluster: claim %q: record kept changing", clientID)
}

// requestTakeover sends req to node and waits for the answer, at most the
// takeover timeout.
func (d *SessionDirectory) requestTakeover(ctx context.Context, node string, req takeoverRequest) (*takeoverReply, error) {
	raw, err := json.Marshal(&req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	msg, err := d.nc.RequestWithContext(ctx, takeoverPrefix+node, raw)
	if err != nil {
		return nil, err
	}
	var rep takeoverReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return nil, fmt.Errorf("cluster: takeover reply from %s: %w", node, err)
	}
	return &rep, nil
}

// Serve answers the takeover requests for this node's sessions with
// handler, which ends the session of clientID (if spiffeID holds it) and
// returns its state; handler gets a context bounded by HandoverWait. stop
// ends the serving and waits for the requests being answered.
func (d *SessionDirectory) Serve(handler func(ctx context.Context, clientID, spiffeID string, cleanStart bool) (*brokerstore.Session, error)) (stop func(), err error) {
	if handler == nil {
		return nil, errors.New("cluster: session directory: no takeover handler")
	}
	sub, err := d.nc.Subscribe(takeoverPrefix+d.node, func(m *nats.Msg) {
		select {
		case d.slots <- struct{}{}:
		default:
			d.respond(m, &takeoverReply{Status: statusFailed, Error: "too many takeovers at once"})
			return
		}
		d.handlers.Add(1)
		// One goroutine each: a handler waits for a connection to close,
		// which must not hold up the other requests.
		go func() {
			defer func() { <-d.slots; d.handlers.Done() }()
			d.answer(m, handler)
		}()
	})
	if err == nil {
		// The subscription is on this node once Flush returns; the other
		// nodes learn of it over the routes shortly after.
		err = d.nc.Flush()
	}
	if err != nil {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		return nil, fmt.Errorf("cluster: session directory: subscribe: %w", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = sub.Unsubscribe()
			d.handlers.Wait()
		})
	}, nil
}

func (d *SessionDirectory) answer(m *nats.Msg, handler func(ctx context.Context, clientID, spiffeID string, cleanStart bool) (*brokerstore.Session, error)) {
	var req takeoverRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || req.ClientID == "" || req.SPIFFEID == "" {
		d.respond(m, &takeoverReply{Status: statusFailed, Error: "malformed takeover request"})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), HandoverWait)
	defer cancel()
	s, err := handler(ctx, req.ClientID, req.SPIFFEID, req.CleanStart)
	switch {
	case isIdentityMismatch(err):
		d.log.Warn("cluster: takeover by another identity refused", "client_id", req.ClientID,
			"spiffe_id", req.SPIFFEID, "from", req.From)
		d.respond(m, &takeoverReply{Status: statusMismatch})
		return
	case err != nil:
		d.respond(m, &takeoverReply{Status: statusFailed, Error: err.Error()})
		return
	case s == nil:
		d.respond(m, &takeoverReply{Status: statusNone})
		return
	}
	d.log.Info("cluster: session handed over", "client_id", req.ClientID, "to", req.From,
		"subscriptions", len(s.Subscriptions), "queued", len(s.Inflight))
	rep := &takeoverReply{Status: statusHandedOver}
	if req.CleanStart {
		d.respond(m, rep)
		return
	}
	rep.Session, rep.Dropped, err = d.encodeBounded(s)
	if err != nil {
		d.respond(m, &takeoverReply{Status: statusFailed, Error: err.Error()})
		return
	}
	if rep.Dropped > 0 {
		d.log.Warn("cluster: queued messages left out of a takeover (bounds)", "client_id", req.ClientID,
			"to", req.From, "dropped", rep.Dropped)
	}
	d.respond(m, rep)
}

// encodeBounded encodes s with as many of its oldest queued messages as
// the bounds allow: at most the configured count, and a reply within the
// server's maximum payload. It returns how many were left out.
func (d *SessionDirectory) encodeBounded(s *brokerstore.Session) (json.RawMessage, int, error) {
	all := s.Inflight
	n := min(len(all), d.maxMsgs)
	limit := int(d.nc.MaxPayload()) - replyHeadroom
	enc := func(k int) ([]byte, error) {
		c := *s
		c.Inflight = all[:k]
		return brokerstore.MarshalSession(&c)
	}
	raw, err := enc(n)
	if err != nil {
		return nil, 0, err
	}
	if len(raw) > limit {
		// The largest count that fits, by bisection: k fits, hi does not.
		k, hi := 0, n
		for hi-k > 1 {
			mid := (k + hi) / 2
			r, err := enc(mid)
			if err != nil {
				return nil, 0, err
			}
			if len(r) <= limit {
				k = mid
			} else {
				hi = mid
			}
		}
		if raw, err = enc(k); err != nil {
			return nil, 0, err
		}
		if len(raw) > limit {
			return nil, 0, errors.New("cluster: session too large to hand over")
		}
		n = k
	}
	return raw, len(all) - n, nil
}

func (d *SessionDirectory) respond(m *nats.Msg, rep *takeoverReply) {
	raw, err := json.Marshal(rep)
	if err == nil {
		err = m.Respond(raw)
	}
	if err != nil {
		d.log.Warn("cluster: takeover reply not sent", "err", err)
	}
}
