package testclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/internal/mqttconn"
)

// Dialer connects paho MQTT 5 clients to one gateway as one identity.
type Dialer struct {
	// Addr is the gateway's MQTT listener, host:port.
	Addr string
	// TLS is the client side of mTLS: the roots the gateway is verified
	// against and the certificate presented (if any).
	TLS *tls.Config
	// Name is who connects (a SPIFFE ID, say), for failure messages.
	Name string
	// Settle, if set, runs at the end of Client.Close with the client
	// ID. A harness that can see the gateway waits there until the
	// gateway has let the session go, so that a test reconnecting with
	// the same client ID does not race the server into a session
	// takeover (which publishes the old Last Will).
	Settle func(clientID string)
}

// ConnOpts are the CONNECT options a test may set. The zero value is a
// clean session with no will.
type ConnOpts struct {
	// Persistent sends Clean Start 0 and a session expiry interval
	// (SessionExpiry, or 300 s when zero), so that the session, its
	// subscriptions and queued messages outlive the connection.
	Persistent    bool
	SessionExpiry uint32
	Will          *paho.WillMessage
	// WillDelay is the MQTT 5 Will Delay Interval in seconds.
	WillDelay uint32
	Username  string
	Password  string
	// TLS replaces the Dialer's TLS configuration for this connection
	// (for example to add a session cache).
	TLS *tls.Config
}

// packet is the CONNECT o describes.
func (o *ConnOpts) packet(clientID string) *paho.Connect {
	cp := &paho.Connect{
		ClientID:   clientID,
		KeepAlive:  30,
		CleanStart: !o.Persistent,
		Properties: &paho.ConnectProperties{},
	}
	if o.Persistent {
		exp := o.SessionExpiry
		if exp == 0 {
			exp = 300
		}
		cp.Properties.SessionExpiryInterval = &exp
	}
	if o.Will != nil {
		cp.WillMessage = o.Will
		cp.WillProperties = &paho.WillProperties{}
		if o.WillDelay > 0 {
			d := o.WillDelay
			cp.WillProperties.WillDelayInterval = &d
		}
	}
	if o.Username != "" {
		cp.Username, cp.UsernameFlag = o.Username, true
	}
	if o.Password != "" {
		cp.Password, cp.PasswordFlag = []byte(o.Password), true
	}
	return cp
}

// Client is a connected paho MQTT 5 client with a message collector.
type Client struct {
	*paho.Client
	Msgs *Collector
	// Connack is the server's answer to CONNECT.
	Connack *paho.Connack
	// TLSState is the state of the TLS connection (DidResume, peer chain).
	TLSState tls.ConnectionState

	raw      net.Conn // the TCP connection under TLS
	clientID string
	settle   func(clientID string)

	mu         sync.Mutex
	serverDisc *paho.Disconnect
}

// Connect opens a TLS connection to the gateway and sends CONNECT with
// clientID and o (nil: a clean session). On a refused handshake or
// CONNECT it returns the error and, when the server answered, its
// CONNACK; the connection is then closed. A successful client is closed
// when the test ends.
func (d Dialer) Connect(t testing.TB, clientID string, o *ConnOpts) (*Client, *paho.Connack, error) {
	t.Helper()
	if o == nil {
		o = &ConnOpts{}
	}
	if o.TLS != nil {
		d.TLS = o.TLS
	}
	return d.Dial(t, o.packet(clientID))
}

// Dial is Connect with the CONNECT packet given as is. Only a TCP dial
// that fails ends the test: nothing listening is never the refusal a test
// looks for. The error of a refused TLS handshake or CONNECT is an
// *mqttconn.Error that says which.
func (d Dialer) Dial(t testing.TB, cp *paho.Connect) (*Client, *paho.Connack, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	c := &Client{Msgs: NewCollector(), clientID: cp.ClientID, settle: d.Settle}
	conn, err := mqttconn.Dial(ctx, d.Addr, mqttconn.Options{
		TLS:                d.TLS,
		Connect:            cp,
		OnPublishReceived:  c.Msgs.receive,
		OnServerDisconnect: c.serverDisconnect,
		PacketTimeout:      Wait,
	})
	var de *mqttconn.Error
	switch {
	case errors.As(err, &de) && de.Stage == mqttconn.StageDial:
		t.Fatalf("dial %s: %v", d.Addr, err)
	case errors.As(err, &de):
		return nil, de.Connack, err
	case err != nil:
		t.Fatalf("connect to %s: %v", d.Addr, err)
	}
	c.Client, c.Connack, c.raw = conn.Client, conn.Connack, conn.TLS.NetConn()
	c.TLSState = conn.TLS.ConnectionState()
	t.Cleanup(c.Close)
	return c, c.Connack, nil
}

// MustConnect is Connect that fails the test unless the CONNECT succeeds.
func (d Dialer) MustConnect(t testing.TB, clientID string, o *ConnOpts) *Client {
	t.Helper()
	c, ca, err := d.Connect(t, clientID, o)
	if err != nil {
		t.Fatalf("connect %s as %q: %v (connack %s)", d.Name, clientID, err, connackString(ca))
	}
	return c
}

// RequireRefused fails the test unless a CONNECT is refused. With code
// non-zero, the refusal must be a CONNACK with that reason code (the TLS
// handshake succeeded and the MQTT layer said no); with code zero, any
// refusal counts (the TLS layer refusing the certificate included), but a
// successful CONNACK never does. It returns the error for logging.
func (d Dialer) RequireRefused(t testing.TB, clientID string, o *ConnOpts, code byte) error {
	t.Helper()
	c, ca, err := d.Connect(t, clientID, o)
	if err == nil {
		c.Close()
		t.Fatalf("CONNECT as %s was accepted (connack %s); want it refused", d.Name, connackString(ca))
	}
	if code != 0 {
		if ca == nil {
			t.Fatalf("CONNECT as %s: %v; want CONNACK reason %#x", d.Name, err, code)
		}
		if ca.ReasonCode != code {
			t.Fatalf("CONNECT as %s: CONNACK reason %#x; want %#x", d.Name, ca.ReasonCode, code)
		}
	} else if ca != nil && ca.ReasonCode < 0x80 {
		t.Fatalf("CONNECT as %s: CONNACK reason %#x with error %v", d.Name, ca.ReasonCode, err)
	}
	return err
}

func connackString(ca *paho.Connack) string {
	if ca == nil {
		return "none"
	}
	return fmt.Sprintf("reason %#x, session present %v", ca.ReasonCode, ca.SessionPresent)
}

func (c *Client) serverDisconnect(d *paho.Disconnect) {
	c.mu.Lock()
	c.serverDisc = d
	c.mu.Unlock()
}

// Close sends DISCONNECT (normal) and closes the connection, then runs
// the Dialer's Settle. It is safe to call more than once and on a
// connection the server closed.
func (c *Client) Close() {
	select {
	case <-c.Done():
	default:
		_ = c.Client.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	_ = c.raw.Close()
	if c.clientID != "" && c.settle != nil {
		c.settle(c.clientID)
	}
}

// Kill drops the TCP connection without DISCONNECT, as a device that loses
// power does; the server sees a network error and sends the Last Will.
func (c *Client) Kill() {
	_ = c.raw.Close()
	select {
	case <-c.Done():
	case <-time.After(Wait):
	}
}

// Closed reports whether the connection has ended.
func (c *Client) Closed() bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// WaitClosed fails the test unless the connection ends within d. It
// returns the server's DISCONNECT, if one was received.
func (c *Client) WaitClosed(t testing.TB, d time.Duration) *paho.Disconnect {
	t.Helper()
	c.waitDone(t, d)
	return c.disconnect()
}

func (c *Client) waitDone(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(d):
		t.Fatalf("connection still open after %s", d)
	}
}

// disconnect is the server's DISCONNECT, nil until one came.
func (c *Client) disconnect() *paho.Disconnect {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.serverDisc
}

// WaitDisconnect fails the test unless the connection ends within d and
// the server said why with a DISCONNECT, which it returns. paho closes the
// connection before it hands the server's DISCONNECT to its callback, so
// the DISCONNECT may be recorded a moment after the connection is seen
// closed; WaitDisconnect waits (up to Wait) for it.
func (c *Client) WaitDisconnect(t testing.TB, d time.Duration) *paho.Disconnect {
	t.Helper()
	c.waitDone(t, d)
	deadline := time.Now().Add(Wait)
	for {
		if disc := c.disconnect(); disc != nil {
			return disc
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection closed without a server DISCONNECT (waited %s for one)", Wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// SubscribeWith sends one SUBSCRIBE with subs and returns the SUBACK's
// reason codes; it fails the test when no SUBACK comes.
func (c *Client) SubscribeWith(t testing.TB, subs ...paho.SubscribeOptions) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	sa, err := c.Client.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if sa == nil {
		t.Fatalf("subscribe %+v: %v", subs, err)
	}
	return sa.Reasons
}

// SubscribeCodes subscribes to each filter at QoS 1 in one SUBSCRIBE
// packet and returns the reason code of each filter, in order.
func (c *Client) SubscribeCodes(t testing.TB, filters ...string) []byte {
	t.Helper()
	subs := make([]paho.SubscribeOptions, len(filters))
	for i, f := range filters {
		subs[i] = paho.SubscribeOptions{Topic: f, QoS: 1}
	}
	codes := c.SubscribeWith(t, subs...)
	if len(codes) != len(filters) {
		t.Fatalf("subscribe %v: %d reason codes %v; want one per filter", filters, len(codes), codes)
	}
	return codes
}

// Sub subscribes to filters at QoS 1 and fails unless every one is granted.
func (c *Client) Sub(t testing.TB, filters ...string) {
	t.Helper()
	codes := c.SubscribeCodes(t, filters...)
	for i, code := range codes {
		if code >= 0x80 {
			t.Fatalf("subscribe %q: reason %#x; want granted", filters[i], code)
		}
	}
}

// Msg is a PUBLISH a test sends.
type Msg struct {
	Topic   string
	Payload string
	QoS     byte
	Retain  bool
	// Alias, when non-zero, is sent as the Topic Alias property; an empty
	// Topic with an Alias is an alias-only PUBLISH.
	Alias uint16
}

// PublishResult is what the server answered to a PUBLISH.
type PublishResult struct {
	// Reason is the PUBACK reason code for QoS 1 (0 for QoS 0).
	Reason byte
	// Err is set when no PUBACK came (for example, the server closed the
	// connection).
	Err error
}

// Send publishes m and returns the server's answer. For QoS 1 it waits for
// the PUBACK.
func (c *Client) Send(t testing.TB, m Msg) PublishResult {
	t.Helper()
	return c.SendWithin(t, m, Wait)
}

// SendWithin is Send waiting at most d for the PUBACK.
func (c *Client) SendWithin(t testing.TB, m Msg, d time.Duration) PublishResult {
	t.Helper()
	p := &paho.Publish{Topic: m.Topic, Payload: []byte(m.Payload), QoS: m.QoS, Retain: m.Retain}
	if m.Alias != 0 {
		a := m.Alias
		p.Properties = &paho.PublishProperties{TopicAlias: &a}
	}
	return c.publish(t, p, d)
}

// SendPacket publishes p as is and returns the server's answer.
func (c *Client) SendPacket(t testing.TB, p *paho.Publish) PublishResult {
	t.Helper()
	return c.publish(t, p, Wait)
}

func (c *Client) publish(t testing.TB, p *paho.Publish, d time.Duration) PublishResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	pr, err := c.Client.Publish(ctx, p)
	if errors.Is(err, paho.ErrInvalidArguments) {
		t.Fatalf("publish %q: %v", p.Topic, err)
	}
	if pr == nil {
		if err == nil {
			err = errors.New("no answer")
		}
		return PublishResult{Err: err}
	}
	return PublishResult{Reason: pr.ReasonCode}
}

// Pub publishes m and fails the test unless the server accepted it.
func (c *Client) Pub(t testing.TB, m Msg) {
	t.Helper()
	r := c.Send(t, m)
	if r.Err != nil || r.Reason >= 0x80 {
		t.Fatalf("publish %q: reason %#x, err %v; want accepted", m.Topic, r.Reason, r.Err)
	}
}

// PubDenied publishes m at QoS 1 and fails the test unless the PUBACK
// carries reason 0x87 (not authorized).
func (c *Client) PubDenied(t testing.TB, m Msg) {
	t.Helper()
	m.QoS = 1
	r := c.Send(t, m)
	if r.Err != nil {
		t.Fatalf("publish %q: %v; want PUBACK 0x87", m.Topic, r.Err)
	}
	if r.Reason != ReasonNotAuthorized {
		t.Fatalf("publish %q: PUBACK reason %#x; want 0x87 (not authorized)", m.Topic, r.Reason)
	}
}
