package test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/registry"
)

// Durable broker state, with the real binary: `ztgate dev` (storage on by
// default) is killed with SIGKILL while a persistent controller is offline
// with 100 acknowledged QoS 1 messages queued for it and a retained message
// is held. While it is down, a second persistent controller is revoked (in
// the registry file, with the process dead: a change the gateway could not
// have applied). After the restart:
//   - the controller resumes with Clean Start 0 and gets every message;
//   - a new subscriber gets the retained message;
//   - the revoked controller's session is not restored: dropped at start
//     and gone from broker.db (control: the first controller's is there).
//
// Once with the default mode, once with --storage-fsync.
func TestCrash_BrokerStateSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds ztgate and restarts it")
	}
	bin := buildZtgate(t)
	for _, mode := range []struct {
		name  string
		fsync bool
	}{{"default", false}, {"fsync", true}} {
		t.Run(mode.name, func(t *testing.T) {
			crashBrokerState(t, bin, fmt.Sprintf("--storage-fsync=%v", mode.fsync))
		})
	}
}

func crashBrokerState(t *testing.T, bin string, flags ...string) {
	const queued = 100
	dataDir := filepath.Join(t.TempDir(), "data")
	mqttAddr, apiAddr := testclient.ClosedAddr(t), testclient.ClosedAddr(t)

	proc, roots := startReadyProc(t, bin, dataDir, mqttAddr, apiAddr, flags...)
	adminCert, err := tls.LoadX509KeyPair(filepath.Join(dataDir, "admin", identity.SVIDFile),
		filepath.Join(dataDir, "admin", identity.SVIDKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := newAPIClient(apiAddr, roots, adminCert)
	defer admin.close()
	controller := map[string]string{"role": "controller"}
	certs := map[string]tls.Certificate{
		"ctrl":         enrollVia(t, admin, "ctrl", controller),
		"ctrl-revoked": enrollVia(t, admin, "ctrl-revoked", controller),
		"viewer":       enrollVia(t, admin, "viewer", controller),
		"pump":         enrollVia(t, admin, "pump", nil),
	}
	dial := func(name string) testclient.Dialer {
		c := certs[name]
		return testclient.Dialer{Addr: mqttAddr, TLS: testclient.TLSConfig(roots, &c), Name: name}
	}
	persistent := &testclient.ConnOpts{Persistent: true, SessionExpiry: 3600}

	for _, name := range []string{"ctrl", "ctrl-revoked"} {
		c := dial(name).MustConnect(t, name, persistent)
		c.SubscribeWith(t, paho.SubscribeOptions{Topic: "devices/+/telemetry/#", QoS: 1})
		c.Close()
	}
	pump := dial("pump").MustConnect(t, "pump", nil)
	if r := pump.Send(t, testclient.Msg{Topic: "devices/pump/state", Payload: "on", QoS: 1, Retain: true}); r.Err != nil || r.Reason != 0 {
		t.Fatalf("retained PUBLISH: %+v", r)
	}
	for i := range queued {
		m := testclient.Msg{Topic: "devices/pump/telemetry/t", Payload: fmt.Sprint(i), QoS: 1}
		if r := pump.Send(t, m); r.Err != nil || r.Reason != 0 {
			t.Fatalf("PUBLISH %d: %+v", i, r)
		}
	}
	// Every message above was acknowledged; nothing else happens first.
	proc.kill(t)
	pump.Kill()

	// While the gateway is down.
	reg, err := registry.Open(filepath.Join(dataDir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.SetStatus("ctrl-revoked", registry.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}

	proc, _ = startReadyProc(t, bin, dataDir, mqttAddr, apiAddr, flags...)
	ctrl, ack, err := dial("ctrl").Connect(t, "ctrl", persistent)
	if err != nil {
		t.Fatalf("controller reconnect: %v", err)
	}
	if !ack.SessionPresent {
		t.Fatalf("controller: no session after the restart; output:\n%s", proc.out.String())
	}
	got := map[string]int{}
	for deadline := time.Now().Add(30 * time.Second); len(got) < queued && time.Now().Before(deadline); {
		if m, ok := ctrl.Msgs.Take(time.Second); ok {
			got[string(m.Payload)]++
		}
	}
	for i := range queued {
		if got[fmt.Sprint(i)] == 0 {
			t.Errorf("queued message %d lost", i)
		}
	}
	dups := 0
	for _, n := range got {
		dups += n - 1
	}
	t.Logf("controller got %d of %d queued messages (%d duplicates)", len(got), queued, dups)

	viewer := dial("viewer").MustConnect(t, "viewer", nil)
	viewer.SubscribeWith(t, paho.SubscribeOptions{Topic: "devices/+/state", QoS: 1})
	viewer.Msgs.ExpectPayload(t, "devices/pump/state", "on", testclient.Wait)

	// The revoked controller's session was dropped at start.
	revokedID := "spiffe://example.org/device/ctrl-revoked ctrl-revoked"
	if !strings.Contains(proc.out.String(), "stored session not restored") ||
		!strings.Contains(proc.out.String(), "ctrl-revoked") {
		t.Errorf("no log of the revoked session being dropped; output:\n%s", proc.out.String())
	}
	ctrl.Close()
	viewer.Close()
	proc.kill(t)
	st, err := brokerstore.Open(brokerstore.Options{Path: filepath.Join(dataDir, brokerstore.FileName)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	state, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	for _, s := range state.Sessions {
		stored[s.ClientID] = true
	}
	if stored[revokedID] {
		t.Error("broker.db still holds the revoked controller's session")
	}
	if !stored["spiffe://example.org/device/ctrl ctrl"] {
		t.Error("broker.db lost the controller's session")
	}
}

// startReadyProc starts `ztgate dev` and waits until its API is ready; it
// returns the process and the roots of its CA.
func startReadyProc(t *testing.T, bin, dataDir, mqttAddr, apiAddr string, flags ...string) (*gatewayProc, *x509.CertPool) {
	t.Helper()
	p := startGatewayProc(t, bin, dataDir, mqttAddr, apiAddr, flags...)
	caPath := filepath.Join(dataDir, "ca", identity.CACertFile)
	for deadline := time.Now().Add(30 * time.Second); !p.exited() && time.Now().Before(deadline); {
		if _, err := os.Stat(caPath); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p.exited() {
		t.Fatalf("ztgate exited (%v); output:\n%s", p.err, p.out.String())
	}
	roots := rootsFromFile(t, caPath)
	if !p.waitReady(t, apiAddr, roots, 30*time.Second) {
		t.Fatalf("ztgate exited before it was ready (%v); output:\n%s", p.err, p.out.String())
	}
	return p, roots
}

// enrollVia creates device name through the API and returns an SVID for it.
func enrollVia(t *testing.T, c *apiClient, name string, labels map[string]string) tls.Certificate {
	t.Helper()
	st, raw, err := c.call(http.MethodPost, "/v1/devices", map[string]any{"name": name, "labels": labels}, nil)
	if err != nil || st != http.StatusCreated {
		t.Fatalf("POST /v1/devices %s: %d %v %s", name, st, err, raw)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	var sv struct {
		SVIDPEM string `json:"svid_pem"`
	}
	st, raw, err = c.call(http.MethodPost, "/v1/devices/"+name+"/svid", map[string]string{"csr": string(csrPEM)}, &sv)
	if err != nil || st != http.StatusOK {
		t.Fatalf("POST /v1/devices/%s/svid: %d %v %s", name, st, err, raw)
	}
	cert, err := tls.X509KeyPair([]byte(sv.SVIDPEM), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
