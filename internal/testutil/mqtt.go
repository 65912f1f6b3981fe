package testutil

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/internal/testclient"
)

// The client layer's types under the names the end-to-end tests use.
type (
	Client   = testclient.Client
	ConnOpts = testclient.ConnOpts
	Msg      = testclient.Msg
)

// ReasonNotAuthorized is the MQTT 5 reason code of a refusal by policy.
const ReasonNotAuthorized = testclient.ReasonNotAuthorized

// dialer connects as dev. Closing a client waits until the gateway no
// longer lists its session.
func (e *Env) dialer(dev *Device) testclient.Dialer {
	return testclient.Dialer{
		Addr:   e.MQTTAddr,
		TLS:    dev.TLSConfig(),
		Name:   dev.ID,
		Settle: func(clientID string) { e.settle(dev.ID, clientID) },
	}
}

// Connect opens a TLS connection to the gateway as dev and sends CONNECT
// with clientID. On a refused handshake or CONNECT it returns the error and,
// when the server answered, its CONNACK; the connection is then closed.
// A successful client is disconnected when the test ends.
func (e *Env) Connect(t testing.TB, dev *Device, clientID string, o *ConnOpts) (*Client, *paho.Connack, error) {
	t.Helper()
	return e.dialer(dev).Connect(t, clientID, o)
}

// MustConnect is Connect that fails the test unless the CONNECT succeeds.
func (e *Env) MustConnect(t testing.TB, dev *Device, clientID string, o *ConnOpts) *Client {
	t.Helper()
	return e.dialer(dev).MustConnect(t, clientID, o)
}

// RequireRefused fails the test unless a CONNECT as dev is refused; see
// testclient.Dialer.RequireRefused for what code means.
func (e *Env) RequireRefused(t testing.TB, dev *Device, clientID string, o *ConnOpts, code byte) error {
	t.Helper()
	return e.dialer(dev).RequireRefused(t, clientID, o, code)
}

// settle waits (up to Wait) until the gateway no longer lists a live
// session of spiffeID with clientID, so that a test reconnecting with the
// same client ID does not race the server into a session takeover (which
// publishes the old Last Will).
func (e *Env) settle(spiffeID, clientID string) {
	deadline := time.Now().Add(Wait)
	for time.Now().Before(deadline) && e.live(spiffeID, clientID) {
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
