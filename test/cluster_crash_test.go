package test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testcluster"
)

// clusterProc is one node of a cluster run as `ztgate serve` in a child
// process, so that a test can SIGKILL it.
type clusterProc struct {
	*gatewayProc
	mqttAddr, apiAddr, dataDir string
}

// startClusterProcs starts n nodes of one cluster as child processes with
// one CA (made by `ztgate ca init`) and waits until each is ready; it
// returns them and the CA's roots.
func startClusterProcs(t *testing.T, bin string, n int) ([]*clusterProc, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if out, err := exec.Command(bin, "ca", "init", "--dir", caDir, "--trust-domain", "example.org").CombinedOutput(); err != nil {
		t.Fatalf("ztgate ca init: %v\n%s", err, out)
	}
	routes := testcluster.FreePorts(t, n)
	procs := make([]*clusterProc, n)
	for i := range n {
		p := &clusterProc{
			mqttAddr: testclient.ClosedAddr(t),
			apiAddr:  testclient.ClosedAddr(t),
			dataDir:  filepath.Join(dir, fmt.Sprintf("n%d", i)),
		}
		cfg := fmt.Sprintf(`data_dir: %s
mqtt_addr: %s
api_addr: %s
trust_domain: example.org
identity:
  ca_dir: %s
cluster:
  name: crash
  node: n%d
  listen: %s
  peers: [%s]
  start_timeout: 90s
`, p.dataDir, p.mqttAddr, p.apiAddr, caDir, i, routes[i], strings.Join(testcluster.Others(routes, i), ", "))
		path := filepath.Join(dir, fmt.Sprintf("n%d.yaml", i))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		p.gatewayProc = &gatewayProc{startChild(t, fmt.Sprintf("node n%d", i), exec.Command(bin, "serve", "--config", path))}
		t.Cleanup(func() { p.kill(t) })
		procs[i] = p
	}
	roots := rootsFromFile(t, filepath.Join(caDir, identity.CACertFile))
	for i, p := range procs {
		if !p.waitReady(t, p.apiAddr, roots, 120*time.Second) {
			t.Fatalf("node n%d exited before it was ready (%v); output:\n%s", i, p.err, p.out.String())
		}
	}
	return procs, roots
}

// TestClusterCrash_SIGKILLLosesNoAcknowledgedQoS1 streams QoS 1 telemetry
// from a device on node A to a controller's persistent session on node C,
// kills A with SIGKILL in the middle of the stream, and checks that every
// message whose PUBACK the device got reached the controller: a PUBACK on a
// cluster node means a quorum of JetStream stored the message.
func TestClusterCrash_SIGKILLLosesNoAcknowledgedQoS1(t *testing.T) {
	if testing.Short() {
		t.Skip("builds ztgate and runs three nodes")
	}
	const (
		total    = 2000
		killFrom = 300 // acknowledged messages before the kill
	)
	bin := buildZtgate(t)
	procs, roots := startClusterProcs(t, bin, 3)
	a, c := procs[0], procs[2]

	adminCert, err := tls.LoadX509KeyPair(filepath.Join(a.dataDir, "admin", identity.SVIDFile),
		filepath.Join(a.dataDir, "admin", identity.SVIDKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := newAPIClient(a.apiAddr, roots, adminCert)
	defer admin.close()
	pumpCert := enrollVia(t, admin, "pump", nil)
	ctrlCert := enrollVia(t, admin, "ctrl", map[string]string{"role": "controller"})

	dial := func(addr string, cert tls.Certificate, name string) testclient.Dialer {
		return testclient.Dialer{Addr: addr, TLS: testclient.TLSConfig(roots, &cert), Name: name}
	}
	persistentSub := &testclient.ConnOpts{Persistent: true, SessionExpiry: 3600}
	// The registry write on A reaches C through the replicated log.
	var ctrl *testclient.Client
	for deadline := time.Now().Add(10 * time.Second); ; {
		cl, _, err := dial(c.mqttAddr, ctrlCert, "ctrl").Connect(t, "ctrl", persistentSub)
		if err == nil {
			ctrl = cl
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller on C: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctrl.SubscribeWith(t, paho.SubscribeOptions{Topic: "devices/pump/telemetry/#", QoS: 1})

	pump := dial(a.mqttAddr, pumpCert, "pump").MustConnect(t, "pump", nil)
	var (
		mu    sync.Mutex
		acked []int
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			r := pump.SendWithin(t, testclient.Msg{Topic: "devices/pump/telemetry/t", Payload: fmt.Sprint(i), QoS: 1}, 5*time.Second)
			if r.Err != nil || r.Reason != 0 {
				return // the node is gone
			}
			mu.Lock()
			acked = append(acked, i)
			mu.Unlock()
		}
	}()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= killFrom {
			break
		}
		select {
		case <-done:
			t.Fatalf("the stream ended after %d acknowledged messages, before the kill", n)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d messages acknowledged in 60 s", n)
		}
	}
	a.kill(t)
	<-done
	pump.Kill()
	mu.Lock()
	want := append([]int(nil), acked...)
	mu.Unlock()

	got := map[string]int{}
	for deadline := time.Now().Add(60 * time.Second); len(got) < len(want) && time.Now().Before(deadline); {
		if m, ok := ctrl.Msgs.Take(time.Second); ok {
			got[string(m.Payload)]++
		}
	}
	lost := 0
	for _, i := range want {
		if got[fmt.Sprint(i)] == 0 {
			lost++
			if lost <= 10 {
				t.Errorf("acknowledged message %d never reached the controller on C", i)
			}
		}
	}
	dups := 0
	for _, n := range got {
		dups += n - 1
	}
	t.Logf("node A killed after %d acknowledged QoS 1 messages; C delivered %d distinct (%d duplicates), %d acknowledged lost",
		len(want), len(got), dups, lost)
	if lost > 0 {
		t.Fatalf("%d acknowledged messages lost; C's output:\n%s", lost, c.out.String())
	}
	ctrl.Close()
}
