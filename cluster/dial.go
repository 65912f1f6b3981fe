package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DialConfig describes a node that uses an existing NATS cluster with
// JetStream instead of an embedded server.
type DialConfig struct {
	URL  string // nats:// (loopback hosts only) or tls://, comma-separated for several servers
	Node string // this node's name, unique in the ztgate cluster
	// TLS is the client TLS (required for a tls:// URL): the gateway's SVID
	// as client certificate and the roots that verify the servers.
	TLS *tls.Config
}

// Dial connects to an existing NATS cluster. The handle it returns has no
// embedded server: Peers and ClusterAddr are empty, Close closes only the
// connection. Reconnects are left to nats.go, without limit, since the
// cluster is the gateway's shared state.
func Dial(ctx context.Context, cfg DialConfig) (*Node, error) {
	if cfg.Node == "" {
		return nil, errors.New("cluster: node is empty")
	}
	if err := checkNATSURL(cfg.URL, cfg.TLS != nil); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name("ztgate-" + cfg.Node),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
	}
	if cfg.TLS != nil {
		opts = append(opts, nats.Secure(cfg.TLS))
	}
	if d, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(time.Until(d)))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to %s: %w", redactURL(cfg.URL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cluster: jetstream context: %w", err)
	}
	return &Node{name: cfg.Node, nc: nc, js: js, log: newSlogAdapter(nil, cfg.Node)}, nil
}

// checkNATSURL refuses what would send the gateway's state in clear over a
// network: nats:// is taken for loopback hosts only, tls:// needs a TLS
// config.
func checkNATSURL(raw string, haveTLS bool) error {
	if raw == "" {
		return errors.New("cluster: nats_url is empty")
	}
	for _, one := range splitURLs(raw) {
		u, err := url.Parse(one)
		if err != nil || u.Host == "" {
			return fmt.Errorf("cluster: nats_url %q: want nats://host:port or tls://host:port", redactURL(one))
		}
		switch u.Scheme {
		case "tls":
			if !haveTLS {
				return fmt.Errorf("cluster: nats_url %q: tls:// needs a TLS configuration", redactURL(one))
			}
		case "nats":
			ip := net.ParseIP(u.Hostname())
			if ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("cluster: nats_url %q: nats:// is plain text, allowed only to a loopback IP; use tls://", redactURL(one))
			}
		default:
			return fmt.Errorf("cluster: nats_url %q: scheme %q, want nats or tls", redactURL(one), u.Scheme)
		}
	}
	return nil
}

func splitURLs(raw string) []string {
	var out []string
	for p := range strings.SplitSeq(raw, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// redactURL drops a password from a URL before it is logged or returned.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}
