package testutil

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
)

// MQTT 5 reason codes the tests assert on.
const (
	ReasonSuccess         byte = 0x00
	ReasonGrantedQoS1     byte = 0x01
	ReasonNotAuthorized   byte = 0x87
	ReasonUnspecifiedErr  byte = 0x80
	ReasonBadUserOrPasswd byte = 0x86
)

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
	// TLS replaces the device's client TLS configuration (for example to
	// add a session cache).
	TLS *tls.Config
}

// Client is a connected paho MQTT 5 client with a message collector.
type Client struct {
	*paho.Client
	Msgs *Collector
	// Connack is the server's answer to CONNECT.
	Connack *paho.Connack
	// TLSState is the state of the TLS connection (DidResume, peer chain).
	TLSState tls.ConnectionState

	raw      net.Conn
	env      *Env
	spiffeID string
	clientID string

	mu         sync.Mutex
	serverDisc *paho.Disconnect
	lastErr    error
}

// Connect opens a TLS connection to the gateway as dev and sends CONNECT
// with clientID. On a refused handshake or CONNECT it returns the error and,
// when the server answered, its CONNACK; the connection is then closed.
// A successful client is disconnected when the test ends.
func (e *Env) Connect(t testing.TB, dev *Device, clientID string, o *ConnOpts) (*Client, *paho.Connack, error) {
	t.Helper()
	if o == nil {
		o = &ConnOpts{}
	}
	cfg := o.TLS
	if cfg == nil {
		cfg = dev.TLSConfig()
	}
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()

	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", e.MQTTAddr)
	if err != nil {
		t.Fatalf("dial %s: %v", e.MQTTAddr, err)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, nil, fmt.Errorf("tls handshake: %w", err)
	}

	c := &Client{Msgs: NewCollector(), TLSState: tc.ConnectionState(), raw: raw, env: e, spiffeID: dev.ID, clientID: clientID}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn:              packets.NewThreadSafeConn(tc),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.Msgs.receive},
		OnClientError:     c.clientError,
		OnServerDisconnect: func(d *paho.Disconnect) {
			c.mu.Lock()
			c.serverDisc = d
			c.mu.Unlock()
		},
		PacketTimeout: Wait,
	})

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
	ca, err := c.Client.Connect(ctx, cp)
	if err != nil {
		_ = raw.Close()
		return nil, ca, err
	}
	c.Connack = ca
	t.Cleanup(c.Close)
	return c, ca, nil
}

// MustConnect is Connect that fails the test unless the CONNECT succeeds.
func (e *Env) MustConnect(t testing.TB, dev *Device, clientID string, o *ConnOpts) *Client {
	t.Helper()
	c, ca, err := e.Connect(t, dev, clientID, o)
	if err != nil {
		t.Fatalf("connect %s as %q: %v (connack %s)", dev.ID, clientID, err, connackString(ca))
	}
	return c
}

// RequireRefused fails the test unless a CONNECT as dev is refused. With
// code non-zero, the refusal must be a CONNACK with that reason code (the
// TLS handshake succeeded and the MQTT layer said no); with code zero, any
// refusal counts (the TLS layer refusing the certificate included), but a
// successful CONNACK never does. It returns the error for logging.
func (e *Env) RequireRefused(t testing.TB, dev *Device, clientID string, o *ConnOpts, code byte) error {
	t.Helper()
	c, ca, err := e.Connect(t, dev, clientID, o)
	if err == nil {
		c.Close()
		t.Fatalf("CONNECT as %s was accepted (connack %s); want it refused", dev.ID, connackString(ca))
	}
	if code != 0 {
		if ca == nil {
			t.Fatalf("CONNECT as %s: %v; want CONNACK reason %#x", dev.ID, err, code)
		}
		if ca.ReasonCode != code {
			t.Fatalf("CONNECT as %s: CONNACK reason %#x; want %#x", dev.ID, ca.ReasonCode, code)
		}
	} else if ca != nil && ca.ReasonCode < 0x80 {
		t.Fatalf("CONNECT as %s: CONNACK reason %#x with error %v", dev.ID, ca.ReasonCode, err)
	}
	return err
}

func connackString(ca *paho.Connack) string {
	if ca == nil {
		return "none"
	}
	return fmt.Sprintf("reason %#x, session present %v", ca.ReasonCode, ca.SessionPresent)
}

func (c *Client) clientError(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

// Close sends DISCONNECT (normal) and closes the connection, then waits
// (up to Wait) until the gateway no longer lists the session as live, so
// that a test reconnecting with the same client ID does not race the
// server into a session takeover (which publishes the old Last Will). It
// is safe to call more than once and on a connection the server closed.
func (c *Client) Close() {
	select {
	case <-c.Done():
	default:
		_ = c.Client.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	_ = c.raw.Close()
	if c.clientID == "" {
		return
	}
	deadline := time.Now().Add(Wait)
	for time.Now().Before(deadline) && c.env.live(c.spiffeID, c.clientID) {
		time.Sleep(5 * time.Millisecond)
	}
}

// live reports whether the gateway lists a live session of spiffeID with
// clientID.
func (e *Env) live(spiffeID, clientID string) bool {
	for _, s := range e.App.Gateway().Sessions() {
		if s.SPIFFEID == spiffeID && s.ClientID == clientID {
			return true
		}
	}
	return false
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
	select {
	case <-c.Done():
	case <-time.After(d):
		t.Fatalf("connection still open after %s", d)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.serverDisc
}

// Subscribe subscribes to each filter at QoS 1 in one SUBSCRIBE packet
// and returns the reason code of each filter, in order.
func (c *Client) SubscribeCodes(t testing.TB, filters ...string) []byte {
	t.Helper()
	subs := make([]paho.SubscribeOptions, len(filters))
	for i, f := range filters {
		subs[i] = paho.SubscribeOptions{Topic: f, QoS: 1}
	}
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	sa, err := c.Client.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if sa == nil {
		t.Fatalf("subscribe %v: %v", filters, err)
	}
	if len(sa.Reasons) != len(filters) {
		t.Fatalf("subscribe %v: %d reason codes %v; want one per filter", filters, len(sa.Reasons), sa.Reasons)
	}
	return sa.Reasons
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
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	pr, err := c.Client.Publish(ctx, p)
	if errors.Is(err, paho.ErrInvalidArguments) {
		t.Fatalf("publish %+v: %v", m, err)
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

// Collector records every PUBLISH a client receives.
type Collector struct {
	mu       sync.Mutex
	msgs     []*paho.Publish
	consumed []bool
	arrived  chan struct{} // closed and replaced at each arrival
}

// NewCollector returns an empty collector.
func NewCollector() *Collector {
	return &Collector{arrived: make(chan struct{})}
}

func (c *Collector) receive(pr paho.PublishReceived) (bool, error) {
	c.mu.Lock()
	c.msgs = append(c.msgs, pr.Packet)
	c.consumed = append(c.consumed, false)
	close(c.arrived)
	c.arrived = make(chan struct{})
	c.mu.Unlock()
	return true, nil
}

// Expect waits up to within for a message on topic that no earlier Expect
// returned, marks it seen and returns it.
func (c *Collector) Expect(t testing.TB, topic string, within time.Duration) *paho.Publish {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		for i, m := range c.msgs {
			if !c.consumed[i] && m.Topic == topic {
				c.consumed[i] = true
				c.mu.Unlock()
				return m
			}
		}
		arrived := c.arrived
		c.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			t.Fatalf("no message on %q within %s; received: %s", topic, within, c.summary())
			return nil
		}
	}
}

// ExpectPayload is Expect that also checks the payload.
func (c *Collector) ExpectPayload(t testing.TB, topic, payload string, within time.Duration) *paho.Publish {
	t.Helper()
	m := c.Expect(t, topic, within)
	if string(m.Payload) != payload {
		t.Fatalf("message on %q has payload %q; want %q", topic, m.Payload, payload)
	}
	return m
}

// ExpectNone fails the test if a message that no Expect returned is
// present now or arrives within d. Call it after the positive control.
func (c *Collector) ExpectNone(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		var extra []string
		for i, m := range c.msgs {
			if !c.consumed[i] {
				extra = append(extra, fmt.Sprintf("%s %q", m.Topic, m.Payload))
			}
		}
		arrived := c.arrived
		c.mu.Unlock()
		if len(extra) > 0 {
			t.Fatalf("unexpected messages: %s", strings.Join(extra, ", "))
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return
		}
	}
}

// Never fails the test if any message (seen by Expect or not) was received
// on topic.
func (c *Collector) Never(t testing.TB, topic string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.msgs {
		if m.Topic == topic {
			t.Fatalf("a message was delivered on %q (payload %q)", topic, m.Payload)
		}
	}
}

// Drain marks every message received so far on topic as seen and returns
// how many there were.
func (c *Collector) Drain(topic string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i, m := range c.msgs {
		if m.Topic == topic && !c.consumed[i] {
			c.consumed[i] = true
			n++
		}
	}
	return n
}

// All returns every message received so far.
func (c *Collector) All() []*paho.Publish {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*paho.Publish(nil), c.msgs...)
}

// Count is the number of messages received so far.
func (c *Collector) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *Collector) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 0 {
		return "nothing"
	}
	parts := make([]string, len(c.msgs))
	for i, m := range c.msgs {
		parts[i] = fmt.Sprintf("%s %q", m.Topic, m.Payload)
	}
	return strings.Join(parts, ", ")
}
