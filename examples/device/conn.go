package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// conns dials the gateway for autopaho and remembers the live connection,
// so that the device can end it cleanly when it holds a new SVID: autopaho
// then reconnects at once, and the new handshake presents the new SVID.
type conns struct {
	tls *tls.Config
	// dialTLS, when set, replaces the TLS dialer (tests slow it down).
	dialTLS func(ctx context.Context, network, addr string) (net.Conn, error)

	mu  sync.Mutex
	cur *packetConn
}

// packetConn is a connection paho writes whole packets to under its lock
// (paho takes it when the connection is a sync.Locker), so a DISCONNECT
// written from outside never lands inside one of paho's packets.
type packetConn struct {
	net.Conn
	sync.Mutex
}

// dial is autopaho's AttemptConnection.
func (c *conns) dial(ctx context.Context, cfg autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	if cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
	}
	dialTLS := c.dialTLS
	if dialTLS == nil {
		dialTLS = (&tls.Dialer{Config: c.tls}).DialContext
	}
	nc, err := dialTLS(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	pc := &packetConn{Conn: nc}
	c.mu.Lock()
	c.cur = pc
	c.mu.Unlock()
	return pc, nil
}

// restart ends the current connection with a normal DISCONNECT and closes
// it. The gateway keeps the session (CONNECT set a session expiry
// interval) with its subscriptions and every QoS 1 message not yet
// acknowledged, and discards the Last Will, so nobody sees "offline".
// autopaho reconnects at once with Clean Start 0 and resumes the session.
// It reports whether there was a connection to restart.
func (c *conns) restart() bool {
	c.mu.Lock()
	pc := c.cur
	c.cur = nil
	c.mu.Unlock()
	if pc == nil {
		return false
	}
	// A connection that already failed fails this write too; autopaho is
	// reconnecting then anyway.
	_, _ = (&paho.Disconnect{ReasonCode: 0}).Packet().WriteTo(pc)
	_ = pc.Close()
	return true
}
