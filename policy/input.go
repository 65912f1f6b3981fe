package policy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Action is what a decision is about. The values are the strings of the
// policy input's "action" field.
type Action string

const (
	ActionConnect   Action = "connect"
	ActionSubscribe Action = "subscribe"
	ActionPublish   Action = "publish"
	ActionReceive   Action = "receive"
	ActionAdmin     Action = "admin"
	// ActionBridgeOut decides whether a local message a device published
	// (and was allowed to) leaves through a bridge to an upstream broker;
	// the subject is the publisher.
	ActionBridgeOut Action = "bridge_out"
	// ActionBridgeIn decides whether a message received from an upstream
	// broker is published locally; the subject is the bridge's own
	// identity, spiffe://TD/bridge/NAME.
	ActionBridgeIn Action = "bridge_in"
)

// Identity is the verified SPIFFE identity of a peer.
type Identity struct {
	SPIFFEID    string
	TrustDomain string
	Path        string
	Segments    []string
}

// Device is the registry's view of an enrolled identity, as the policy sees it.
type Device struct {
	Name   string
	Labels map[string]string
	Status string
}

// Client describes the MQTT (or HTTP) connection of a peer.
type Client struct {
	ID              string // the client ID the peer sent (or was assigned), never a scoped one
	RemoteAddr      string
	ProtocolVersion byte
}

// Subject is everything about a peer that stays the same for the life of a
// session. The gateway builds one per session and reuses it for every
// decision, so the engine can convert it to a policy value once instead of
// once per message. A Subject must not be mutated after its first use in a
// decision; build a new one instead (for example after a registry change).
type Subject struct {
	Identity Identity
	Device   *Device // nil when the identity is not enrolled
	Client   Client

	// cache is owned by the engine: the converted form of this subject.
	once  sync.Once
	cache any
	// memo holds a Cache's decisions for this subject, so they are
	// dropped with it (see Cache).
	memo atomic.Pointer[subjectMemo]
}

// Cached returns the engine's converted form of the subject, building it with
// build on first use. It is safe for concurrent use.
func (s *Subject) Cached(build func(*Subject) any) any {
	s.once.Do(func() { s.cache = build(s) })
	return s.cache
}

// Request is the HTTP request of an admin decision. Path is the request's
// path as the API routed it: decoded, and canonical (the API refuses any
// other spelling before routing). Route names the route it matched, the
// action of the API's route table ("device.create", "policy.status"), or
// is empty when no route matched.
type Request struct {
	Method string
	Path   string
	Route  string
}

// Bridge is the bridge a bridge_out or bridge_in decision is about, and
// the topic on the upstream's side (Input.Topic is the local one).
type Bridge struct {
	Name        string
	URL         string
	RemoteTopic string
}

// Input is one policy decision request: the document of DESIGN.md's policy
// contract. Topic is set for publish/receive (and the Last Will), Filter for
// subscribe, Request for admin, Topic and Bridge for bridge_out/bridge_in.
type Input struct {
	Action      Action
	Subject     *Subject
	Topic       string
	Filter      string
	QoS         byte
	Retain      bool
	Will        bool
	PayloadSize int
	Request     *Request
	Bridge      *Bridge
	Time        time.Time
}

// Decision is the outcome of evaluating data.ztgate.authz for one Input.
type Decision struct {
	Allow    bool
	Reasons  []string
	Revision string // content hash of the policy revision that decided
	ID       string // decision id, set by a decision logger; empty otherwise
	Err      error  // set when evaluation failed; Allow is then false
}

// Decider is the one interface every enforcement point calls. A cache can sit
// in front of an implementation without any caller changing. Implementations
// fail closed: any error yields Allow == false.
type Decider interface {
	Decide(ctx context.Context, in *Input) Decision
}

// DeciderFunc adapts a function to the Decider interface.
type DeciderFunc func(ctx context.Context, in *Input) Decision

// Decide calls f.
func (f DeciderFunc) Decide(ctx context.Context, in *Input) Decision { return f(ctx, in) }
