package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ztgate/ztgate/internal/brokerview"
)

// The admin fan-out answers the API requests about what only each node
// knows, its live MQTT connections, for the whole cluster: a request is
// published to every node (this one too) and each answers for itself.
const (
	adminSessionsSubject = "ztgate.admin.sessions"
	adminKickSubject     = "ztgate.admin.kick"

	// DefaultAdminTimeout bounds waiting for the nodes' answers.
	DefaultAdminTimeout = 3 * time.Second
)

// ErrNodesUnanswered is matched (errors.Is) by a fan-out that not every
// node answered in time: what it returns is the answered nodes' part.
var ErrNodesUnanswered = errors.New("cluster: not every node answered")

// AdminOptions configures the admin fan-out.
type AdminOptions struct {
	// Nodes is the number of nodes, this one included. 0 means unknown
	// (an external NATS cluster): a fan-out then waits its whole timeout
	// and takes the answers it got.
	Nodes   int
	Timeout time.Duration // 0 means DefaultAdminTimeout
	Logger  *slog.Logger  // nil means slog.Default()
}

// NodeAdmin serves this node's part of the admin fan-out and asks the
// cluster for the whole.
type NodeAdmin struct {
	nc      *nats.Conn
	node    string
	nodes   int
	timeout time.Duration
	log     *slog.Logger
	subs    []*nats.Subscription
}

// adminRequest asks for the live connections of one identity, or of all
// when SPIFFEID is empty (sessions only; a kick names one).
type adminRequest struct {
	SPIFFEID string `json:"spiffe_id,omitempty"`
}

type adminReply struct {
	Node     string               `json:"node"`
	Sessions []brokerview.Session `json:"sessions,omitempty"`
	Kicked   int                  `json:"kicked,omitempty"`
	Error    string               `json:"error,omitempty"`
}

// ServeAdmin answers the fan-out for this node with sessions (its live
// connections) and kick (ends those of an identity), and returns the
// NodeAdmin that asks the cluster.
func ServeAdmin(nc *nats.Conn, node string, opts AdminOptions, sessions func() []brokerview.Session, kick func(spiffeID string) (int, error)) (*NodeAdmin, error) {
	switch {
	case nc == nil:
		return nil, errors.New("cluster: admin: no NATS connection")
	case node == "":
		return nil, errors.New("cluster: admin: no node name")
	case sessions == nil || kick == nil:
		return nil, errors.New("cluster: admin: no sessions or kick function")
	case opts.Nodes < 0:
		return nil, fmt.Errorf("cluster: admin: %d nodes", opts.Nodes)
	}
	a := &NodeAdmin{nc: nc, node: node, nodes: opts.Nodes, timeout: opts.Timeout, log: opts.Logger}
	if a.timeout <= 0 {
		a.timeout = DefaultAdminTimeout
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	serve := func(subject string, answer func(req adminRequest) adminReply) error {
		sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
			var req adminRequest
			rep := adminReply{Node: node}
			if err := json.Unmarshal(m.Data, &req); err != nil {
				rep.Error = "unreadable request"
			} else {
				rep = answer(req)
				rep.Node = node
			}
			a.respond(m, &rep)
		})
		if err == nil {
			a.subs = append(a.subs, sub)
		}
		return err
	}
	err := serve(adminSessionsSubject, func(req adminRequest) adminReply {
		var out []brokerview.Session
		for _, s := range sessions() {
			if req.SPIFFEID == "" || s.SPIFFEID == req.SPIFFEID {
				s.Node = node
				out = append(out, s)
			}
		}
		return adminReply{Sessions: out}
	})
	if err == nil {
		err = serve(adminKickSubject, func(req adminRequest) adminReply {
			if req.SPIFFEID == "" {
				return adminReply{Error: "no identity to kick"}
			}
			n, err := kick(req.SPIFFEID)
			if err != nil {
				return adminReply{Kicked: n, Error: err.Error()}
			}
			return adminReply{Kicked: n}
		})
	}
	if err == nil {
		// The subscriptions are in place on the server before a request
		// may count on this node's answer.
		err = nc.Flush()
	}
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("cluster: admin: %w", err)
	}
	return a, nil
}

// respond sends rep; a list too large for one NATS message is answered
// with an error instead, so the asker knows this node's part is missing.
func (a *NodeAdmin) respond(m *nats.Msg, rep *adminReply) {
	raw, err := json.Marshal(rep)
	if err == nil && int64(len(raw)) > a.nc.MaxPayload() {
		n := len(rep.Sessions)
		raw, err = json.Marshal(&adminReply{Node: rep.Node,
			Error: fmt.Sprintf("%d sessions are more than one message carries; ask for one device's", n)})
	}
	if err == nil {
		err = m.Respond(raw)
	}
	if err != nil {
		a.log.Warn("cluster: admin reply not sent", "subject", m.Subject, "err", err)
	}
}

// Close stops answering the fan-out.
func (a *NodeAdmin) Close() {
	for _, s := range a.subs {
		_ = s.Unsubscribe()
	}
	a.subs = nil
}

// Sessions lists the live connections on every node, of spiffeID only
// when it is not empty, each with its node; sorted by connection time. An
// error matching ErrNodesUnanswered comes with the answered nodes' part.
func (a *NodeAdmin) Sessions(ctx context.Context, spiffeID string) ([]brokerview.Session, error) {
	reps, err := a.ask(ctx, adminSessionsSubject, adminRequest{SPIFFEID: spiffeID})
	var out []brokerview.Session
	for _, r := range reps {
		out = append(out, r.Sessions...)
	}
	slices.SortStableFunc(out, func(x, y brokerview.Session) int {
		if c := x.ConnectedAt.Compare(y.ConnectedAt); c != 0 {
			return c
		}
		if c := strings.Compare(x.Node, y.Node); c != 0 {
			return c
		}
		return strings.Compare(x.ClientID, y.ClientID)
	})
	return out, err
}

// Kick ends the live connections of spiffeID on every node and returns how
// many ended. An error matching ErrNodesUnanswered comes with the count of
// the nodes that answered.
func (a *NodeAdmin) Kick(ctx context.Context, spiffeID string) (int, error) {
	if spiffeID == "" {
		return 0, errors.New("cluster: admin: kick: no identity")
	}
	reps, err := a.ask(ctx, adminKickSubject, adminRequest{SPIFFEID: spiffeID})
	n := 0
	for _, r := range reps {
		n += r.Kicked
	}
	return n, err
}

// ask publishes req on subject and gathers one answer per node until every
// node answered, the timeout passed or ctx ended. A node that answered
// with an error counts as not answered.
func (a *NodeAdmin) ask(ctx context.Context, subject string, req adminRequest) ([]adminReply, error) {
	raw, err := json.Marshal(&req)
	if err != nil {
		return nil, err
	}
	inbox := a.nc.NewRespInbox()
	sub, err := a.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("cluster: admin: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := a.nc.PublishRequest(subject, inbox, raw); err != nil {
		return nil, fmt.Errorf("cluster: admin: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	var (
		got    []adminReply
		seen   = map[string]bool{}
		failed []string
	)
	for a.nodes == 0 || len(seen) < a.nodes {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break // the timeout, ctx, or the connection closed
		}
		var rep adminReply
		if json.Unmarshal(m.Data, &rep) != nil || rep.Node == "" || seen[rep.Node] {
			continue
		}
		seen[rep.Node] = true
		if rep.Error != "" {
			failed = append(failed, rep.Node+": "+rep.Error)
		}
		got = append(got, rep)
	}
	switch {
	case len(failed) > 0:
		slices.Sort(failed)
		return got, fmt.Errorf("%w: %s", ErrNodesUnanswered, strings.Join(failed, "; "))
	case a.nodes > 0 && len(seen) < a.nodes:
		names := make([]string, 0, len(seen))
		for n := range seen {
			names = append(names, n)
		}
		slices.Sort(names)
		return got, fmt.Errorf("%w: %d of %d nodes answered within %s (%s)", ErrNodesUnanswered,
			len(seen), a.nodes, a.timeout, strings.Join(names, ", "))
	}
	return got, nil
}
