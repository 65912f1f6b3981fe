// Package mqttconn opens an MQTT 5 connection to a gateway over mutual
// TLS: dial, handshake, CONNECT. `ztgate bench` and the test clients
// (internal/testclient) both connect through it, so the connection a
// benchmark measures is the one the tests check.
//
// A failure says how far the connection got (Stage): a caller that expects
// a refusal must be able to tell "the gateway said no" from "nothing
// answered".
package mqttconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
)

// DefaultPacketTimeout bounds the wait for an acknowledgement (CONNACK,
// SUBACK, PUBACK) when Options.PacketTimeout is zero.
const DefaultPacketTimeout = 30 * time.Second

// Options are what Dial sends and how the client reports back.
type Options struct {
	// TLS is the client side of mTLS: the roots the gateway is verified
	// against and the certificate presented. Required: there is no
	// plain-TCP fallback. With no ServerName, the host of the address
	// is verified, as crypto/tls.Dial does.
	TLS *tls.Config
	// Connect is the CONNECT packet, sent as is (client ID, clean start,
	// keepalive, session expiry and the other properties, will,
	// credentials). Required.
	Connect *paho.Connect
	// OnPublishReceived, if set, is called for each PUBLISH received.
	OnPublishReceived func(paho.PublishReceived) (bool, error)
	// OnClientError, if set, is called when the connection fails under
	// the client (a network error, a malformed packet).
	OnClientError func(error)
	// OnServerDisconnect, if set, is called with the server's DISCONNECT.
	OnServerDisconnect func(*paho.Disconnect)
	// PacketTimeout bounds each wait for an acknowledgement; zero means
	// DefaultPacketTimeout.
	PacketTimeout time.Duration
}

// Conn is a connected MQTT 5 client.
type Conn struct {
	Client *paho.Client
	// Connack is the server's success answer to CONNECT.
	Connack *paho.Connack
	// TLS is the connection under the client. Closing TLS.NetConn()
	// drops it without a DISCONNECT or a TLS close_notify, as a device
	// losing power does.
	TLS *tls.Conn
}

// Stage is how far a connection got.
type Stage int

// The stages of Dial, in order.
const (
	StageDial      Stage = iota // TCP connect
	StageHandshake              // TLS handshake
	StageConnect                // MQTT CONNECT and CONNACK
)

func (s Stage) String() string {
	switch s {
	case StageDial:
		return "dial"
	case StageHandshake:
		return "TLS handshake"
	case StageConnect:
		return "CONNECT"
	}
	return fmt.Sprintf("stage %d", int(s))
}

// Error is a failed Dial: the stage it failed at and why.
type Error struct {
	Stage Stage
	Addr  string
	// Connack is the server's refusal at StageConnect, when it sent one
	// (nil when it closed the connection without a CONNACK).
	Connack *paho.Connack
	Err     error
}

func (e *Error) Error() string {
	if e.Connack != nil {
		return fmt.Sprintf("mqttconn: %s to %s refused (reason %#x): %v", e.Stage, e.Addr, e.Connack.ReasonCode, e.Err)
	}
	return fmt.Sprintf("mqttconn: %s to %s: %v", e.Stage, e.Addr, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Dial connects to addr over TLS and sends o.Connect. On success the
// connection belongs to the returned client; on failure it is closed and
// the error is an *Error.
func Dial(ctx context.Context, addr string, o Options) (*Conn, error) {
	if o.Connect == nil {
		return nil, errors.New("mqttconn: no CONNECT packet")
	}
	conn, err := DialTLS(ctx, addr, o.TLS)
	if err != nil {
		return nil, err
	}
	timeout := o.PacketTimeout
	if timeout <= 0 {
		timeout = DefaultPacketTimeout
	}
	cfg := paho.ClientConfig{
		Conn:               packets.NewThreadSafeConn(conn),
		OnClientError:      o.OnClientError,
		OnServerDisconnect: o.OnServerDisconnect,
		PacketTimeout:      timeout,
	}
	if o.OnPublishReceived != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){o.OnPublishReceived}
	}
	c := paho.NewClient(cfg)
	ca, err := c.Connect(ctx, o.Connect)
	if err != nil {
		_ = conn.Close()
		return nil, &Error{Stage: StageConnect, Addr: addr, Connack: ca, Err: err}
	}
	return &Conn{Client: c, Connack: ca, TLS: conn}, nil
}

// DialTLS opens a TCP connection to addr and completes the TLS handshake
// with cfg (not modified). A failure is an *Error at StageDial or
// StageHandshake. Clients that speak MQTT themselves (raw packets, MQTT
// 3.1.1) start here.
func DialTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	if cfg == nil {
		return nil, errors.New("mqttconn: no TLS configuration")
	}
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, &Error{Stage: StageDial, Addr: addr, Err: err}
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &Error{Stage: StageDial, Addr: addr, Err: err}
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, &Error{Stage: StageHandshake, Addr: addr, Err: err}
	}
	return conn, nil
}
