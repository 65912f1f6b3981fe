package mqttconn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/internal/mqttconn"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
)

const wait = testutil.Wait

func connectPacket(clientID string) *paho.Connect {
	return &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30}
}

func dial(t *testing.T, addr string, o mqttconn.Options) (*mqttconn.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := mqttconn.Dial(ctx, addr, o)
	if c != nil {
		t.Cleanup(func() { _ = c.Client.Disconnect(&paho.Disconnect{}) })
	}
	return c, err
}

// Each way a connection can fail is reported as the stage it reached, so
// that a caller (a test expecting a refusal, the bench) can tell "the
// gateway said no" from "the gateway was not there"; only the CONNECT
// stage carries the server's CONNACK.
func TestDialStages(t *testing.T) {
	env := testutil.Start(t)
	dev := env.Enroll(t, "sensor-1", nil)
	ghost := env.Issue(t, env.DeviceID("ghost"))

	foreignRoots := x509.NewCertPool()
	foreignRoots.AppendCertsFromPEM(testpki.NewCA(t, "other.example").BundlePEM())
	distrusting := dev.TLSConfig()
	distrusting.RootCAs = foreignRoots

	for _, tc := range []struct {
		name   string
		addr   string
		tls    *tls.Config
		stage  mqttconn.Stage // checked when wantOK is false
		wantOK bool
		reason byte // CONNACK reason at the CONNECT stage
	}{
		{name: "enrolled device", addr: env.MQTTAddr, tls: dev.TLSConfig(), wantOK: true},
		{name: "nothing listening", addr: testclient.ClosedAddr(t), tls: dev.TLSConfig(), stage: mqttconn.StageDial},
		{name: "server not trusted", addr: env.MQTTAddr, tls: distrusting, stage: mqttconn.StageHandshake},
		{name: "identity not enrolled", addr: env.MQTTAddr, tls: ghost.TLSConfig(), stage: mqttconn.StageConnect, reason: testutil.ReasonNotAuthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dial(t, tc.addr, mqttconn.Options{TLS: tc.tls, Connect: connectPacket("c-1")})
			if tc.wantOK {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				if c.Connack == nil || c.Connack.ReasonCode != 0 || c.TLS == nil || c.Client == nil {
					t.Fatalf("Dial = %+v; want a connected client with a success CONNACK", c)
				}
				if st := c.TLS.ConnectionState(); !st.HandshakeComplete || len(st.PeerCertificates) == 0 {
					t.Fatalf("TLS state %+v; want a completed handshake", st)
				}
				return
			}
			if err == nil || c != nil {
				t.Fatalf("Dial = %+v, %v; want an error and no connection", c, err)
			}
			if !strings.HasPrefix(err.Error(), "mqttconn: ") {
				t.Errorf("error %q is not prefixed with the package", err)
			}
			var de *mqttconn.Error
			if !errors.As(err, &de) {
				t.Fatalf("error %v (%T) is not a *mqttconn.Error", err, err)
			}
			if de.Stage != tc.stage {
				t.Fatalf("stage %v (%v); want %v", de.Stage, err, tc.stage)
			}
			if de.Err == nil || errors.Unwrap(err) == nil {
				t.Errorf("error %v does not wrap its cause", err)
			}
			switch {
			case tc.stage == mqttconn.StageConnect && (de.Connack == nil || de.Connack.ReasonCode != tc.reason):
				t.Fatalf("CONNACK %+v; want reason %#x", de.Connack, tc.reason)
			case tc.stage != mqttconn.StageConnect && de.Connack != nil:
				t.Fatalf("CONNACK %+v at stage %v, before any CONNECT", de.Connack, de.Stage)
			}
		})
	}
}

// The hooks are wired to the connection: a subscriber's OnPublishReceived
// sees what a publisher sends, OnServerDisconnect sees the DISCONNECT of a
// revocation, and OnClientError sees the connection end under the client.
func TestDialHooks(t *testing.T) {
	env := testutil.Start(t)
	sensor := env.Enroll(t, "sensor-1", nil)
	ctl := env.EnrollID(t, "ctl-1", "spiffe://"+testutil.TrustDomain+"/controller/ctl-1", map[string]string{"role": "controller"})

	received := make(chan *paho.Publish, 16)
	disconnects := make(chan *paho.Disconnect, 1)
	sub, err := dial(t, env.MQTTAddr, mqttconn.Options{
		TLS:     ctl.TLSConfig(),
		Connect: connectPacket("ctl-1"),
		OnPublishReceived: func(pr paho.PublishReceived) (bool, error) {
			received <- pr.Packet
			return true, nil
		},
		OnServerDisconnect: func(d *paho.Disconnect) { disconnects <- d },
	})
	if err != nil {
		t.Fatalf("subscriber: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if sa, err := sub.Client.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/+/telemetry/#", QoS: 1}}}); err != nil || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe: %v %+v", err, sa)
	}

	clientErrs := make(chan error, 4)
	pub, err := dial(t, env.MQTTAddr, mqttconn.Options{
		TLS:           sensor.TLSConfig(),
		Connect:       connectPacket("sensor-1"),
		OnClientError: func(err error) { clientErrs <- err },
	})
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	if pr, err := pub.Client.Publish(ctx, &paho.Publish{Topic: "devices/sensor-1/telemetry/t", QoS: 1, Payload: []byte("21.5")}); err != nil || pr.ReasonCode != 0 {
		t.Fatalf("publish: %v %+v", err, pr)
	}
	select {
	case m := <-received:
		if m.Topic != "devices/sensor-1/telemetry/t" || string(m.Payload) != "21.5" {
			t.Fatalf("received %s %q", m.Topic, m.Payload)
		}
	case <-time.After(wait):
		t.Fatal("OnPublishReceived not called")
	}

	// The connection dropped under the client is the client's error.
	_ = pub.TLS.Close()
	select {
	case <-clientErrs:
	case <-time.After(wait):
		t.Fatal("OnClientError not called after the connection closed")
	}

	env.SetStatus(t, "ctl-1", "revoke")
	select {
	case d := <-disconnects:
		if d.ReasonCode != testutil.ReasonNotAuthorized {
			t.Fatalf("DISCONNECT reason %#x; want 0x87", d.ReasonCode)
		}
	case <-time.After(wait):
		t.Fatal("OnServerDisconnect not called after the revocation")
	}
}

// With no server name in the TLS configuration, the host of the address
// is verified, as crypto/tls.Dial does.
func TestDialServerNameFromAddress(t *testing.T) {
	env := testutil.Start(t)
	cfg := env.Enroll(t, "sensor-1", nil).TLSConfig()
	cfg.ServerName = ""
	c, err := dial(t, env.MQTTAddr, mqttconn.Options{TLS: cfg, Connect: connectPacket("sensor-1")})
	if err != nil {
		t.Fatalf("Dial without a server name: %v", err)
	}
	if st := c.TLS.ConnectionState(); len(st.VerifiedChains) == 0 {
		t.Fatal("the gateway's certificate was not verified")
	}
	if cfg.ServerName != "" {
		t.Fatal("Dial changed the caller's TLS configuration")
	}
}

// Options that cannot make a connection are refused before anything is
// dialled: mqttconn never falls back to plain TCP.
func TestDialRefusesBadOptions(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			_ = c.Close()
		}
	}()
	cfg := &tls.Config{ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		o    mqttconn.Options
		want string
	}{
		{"no TLS", context.Background(), mqttconn.Options{Connect: connectPacket("x")}, "TLS"},
		{"no CONNECT", context.Background(), mqttconn.Options{TLS: cfg}, "CONNECT"},
		{"cancelled", cancelled, mqttconn.Options{TLS: cfg, Connect: connectPacket("x")}, "dial"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := mqttconn.Dial(tc.ctx, l.Addr().String(), tc.o)
			if err == nil || c != nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "mqttconn: ") {
				t.Fatalf("Dial = %+v, %v; want a mqttconn error naming %s", c, err, tc.want)
			}
		})
	}
	select {
	case <-accepted:
		t.Fatal("a connection was made with options that cannot connect")
	default:
	}
}
