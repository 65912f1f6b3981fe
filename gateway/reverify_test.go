package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/registry"
)

// swapBundles is a bundle source whose authorities a test replaces, as a
// rewritten bundle file or a Workload API update would.
type swapBundles struct {
	b atomic.Pointer[x509bundle.Bundle]
}

func (s *swapBundles) set(cas ...*x509.Certificate) {
	s.b.Store(x509bundle.FromX509Authorities(testTD, cas))
}

func (s *swapBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b := s.b.Load()
	if b == nil || td != testTD {
		return nil, errors.New("no bundle")
	}
	return b, nil
}

// newSwapEnv is newEnv with the verifier asking src for the trust domain's
// bundle at every verification.
func newSwapEnv(t *testing.T, src *swapBundles) *env {
	t.Helper()
	return newEnvWith(t, engine(t), func(cfg *Config) {
		v, err := identity.NewVerifierFromSource(src, testTD)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Verifier = v
		cfg.TLS = identity.ServerTLSConfig(cfg.TLS.Certificates[0], v)
	})
}

// foreignDevice enrolls name and returns a client config holding an SVID
// for it signed by ca, trusting the gateway's own CA.
func (e *env) foreignDevice(ca *testpki.CA, name string, labels map[string]string) *tls.Config {
	e.t.Helper()
	id := spiffeid.RequireFromSegments(testTD, "device", name)
	if _, err := e.reg.Create(registry.Device{Name: name, SPIFFEID: id.String(), Labels: labels}); err != nil {
		e.t.Fatalf("enroll %s: %v", name, err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(e.ca.Certificate())
	cert := ca.Issue(e.t, id.String())
	return testclient.TLSConfig(roots, &cert)
}

func TestReevaluateCutsSessionsWhoseChainNoLongerVerifies(t *testing.T) {
	src := &swapBundles{}
	e := newSwapEnv(t, src)
	second := testpki.NewCA(t, testTD.Name())
	src.set(e.ca.Certificate(), second.Cert)

	ctl := e.mustConnect(e.enroll("ctl", controllerLabels), "ctl")
	ctl.Sub(t, "devices/+/telemetry/#")
	kept := e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	goneCfg := e.foreignDevice(second, "sensor-2", nil)
	gone, _, err := e.connect(goneCfg, &paho.Connect{ClientID: "sensor-2", CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300), RequestProblemInfo: true}})
	if err != nil {
		t.Fatalf("second CA's device while its CA is trusted: %v", err)
	}
	gone.Sub(t, "devices/sensor-2/commands/#")
	old311 := e.dial311(e.svidFrom(second, "sensor-3"))
	if code := old311.Connect(t, "sensor-3"); code != 0 {
		t.Fatalf("3.1.1 CONNACK %#x", code)
	}

	// Positive control: a pass with the bundle unchanged cuts nothing.
	e.gw.reevaluateNow(t, "unchanged")
	if n := len(e.gw.Sessions()); n != 4 {
		t.Fatalf("%d sessions after an unchanged pass, want 4", n)
	}

	src.set(e.ca.Certificate())
	e.gw.reevaluateNow(t, "trust bundle changed")
	d := gone.WaitDisconnect(t, waitFor)
	if d.ReasonCode != 0x87 {
		t.Errorf("DISCONNECT %#x, want 0x87", d.ReasonCode)
	}
	if d.Properties == nil || d.Properties.ReasonString != "identity no longer verifies" {
		t.Errorf("DISCONNECT properties %+v, want reason string %q", d.Properties, "identity no longer verifies")
	}
	old311.ExpectClosed(t)
	poll(t, "the second CA's sessions to end", func() bool { return len(e.gw.Sessions()) == 2 })

	// The kept CA's sessions stay and still deliver.
	kept.Pub(t, testclient.Msg{Topic: "devices/sensor-1/telemetry/t", QoS: 1, Payload: "21.5"})
	ctl.Msgs.ExpectPayload(t, "devices/sensor-1/telemetry/t", "21.5", waitFor)
	logs := e.logs.String()
	if !strings.Contains(logs, "unverified=2") {
		t.Errorf("the pass does not count the cut sessions as unverified:\n%s", logs)
	}

	// Cut like a policy cut: the persistent session is kept (detached) for
	// the device to come back with a chain that verifies.
	cl := e.brokerClient("sensor-2", "sensor-2")
	if got := filters(cl); len(got) != 1 {
		t.Fatalf("kept session's subscriptions %q, want its one filter", got)
	}
	if _, _, err := (testclient.Dialer{Addr: e.addr, TLS: goneCfg}).Dial(t, &paho.Connect{ClientID: "sensor-2-again", CleanStart: true, KeepAlive: 30}); err == nil {
		t.Fatal("a new connection with the removed CA's chain was accepted")
	}
	back, ack, err := e.connect(e.svid(spiffeid.RequireFromSegments(testTD, "device", "sensor-2")),
		&paho.Connect{ClientID: "sensor-2", CleanStart: false, Properties: &paho.ConnectProperties{SessionExpiryInterval: u32(300)}})
	if err != nil {
		t.Fatalf("sensor-2 with a chain of the kept CA: %v", err)
	}
	if !ack.SessionPresent {
		t.Error("the detached session was not resumed")
	}
	back.Close()
}

// svidFrom enrolls name and returns a client config with an SVID for it
// signed by ca.
func (e *env) svidFrom(ca *testpki.CA, name string) *tls.Config {
	e.t.Helper()
	return e.foreignDevice(ca, name, nil)
}

// BenchmarkReevaluateSession is the cost a re-evaluation pass spends on one
// connected session: the policy's connect decision (what a pass did
// before), and the re-verification of the session's chain it now adds.
func BenchmarkReevaluateSession(b *testing.B) {
	e := newEnv(b, engine(b))
	e.mustConnect(e.enroll("sensor-1", nil), "sensor-1")
	var s *session
	e.gw.sessions.Range(func(_, v any) bool { s = v.(*session); return false })
	if s == nil {
		b.Fatal("no session")
	}
	b.Run("policy", func(b *testing.B) {
		for b.Loop() {
			if !e.gw.admitted(s) {
				b.Fatal("not admitted")
			}
		}
	})
	b.Run("reverify", func(b *testing.B) {
		for b.Loop() {
			if err := e.gw.reverify(s); err != nil {
				b.Fatal(err)
			}
		}
	})
}
