package test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
)

// Crash safety: devices are enrolled through the API by several clients at
// once while the gateway, a real `ztgate dev` child process, is killed with
// SIGKILL at a random moment, several times over. After every restart:
//   - the process starts, so the registry opens (and after the last round
//     bbolt's own consistency check passes on the file), also after a
//     restart that was itself killed before it was ready;
//   - every enrollment that was answered 2xx is there, active, with its
//     audit entry (written in the same transaction as the change);
//   - the CA is the one from before the first crash: same certificate, and
//     its key still parses and matches it;
//   - the admin SVID from before the first crash still works;
//   - a device enrolled before a crash still connects over MQTT.
//
// The seed is fixed, so the kill moments are the same on every run.
func TestCrash_SIGKILLDuringConcurrentEnrollment(t *testing.T) {
	if testing.Short() {
		t.Skip("builds ztgate and restarts it several times")
	}
	const (
		rounds    = 5
		workers   = 4
		perWorker = 300 // bounds a round even if the kill came late
		seed      = 20261128
	)
	began := time.Now()
	bin := buildZtgate(t)
	t.Logf("ztgate built in %s", time.Since(began).Round(time.Millisecond))
	dataDir := filepath.Join(t.TempDir(), "data")
	mqttAddr, apiAddr := testclient.ClosedAddr(t), testclient.ClosedAddr(t)
	caPath := filepath.Join(dataDir, "ca", identity.CACertFile)

	var roots *x509.CertPool
	start := func() *gatewayProc {
		t.Helper()
		for attempt := 0; ; attempt++ {
			p := startGatewayProc(t, bin, dataDir, mqttAddr, apiAddr)
			if roots == nil {
				// First run: the CA appears before the listeners open.
				deadline := time.Now().Add(30 * time.Second)
				for !p.exited() && time.Now().Before(deadline) {
					if _, err := os.Stat(caPath); err == nil {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				if !p.exited() {
					roots = rootsFromFile(t, caPath)
				}
			}
			if roots != nil && p.waitReady(t, apiAddr, roots, 30*time.Second) {
				return p
			}
			if addrInUse(p.out.String()) && attempt < 3 {
				// Another process took a port between ClosedAddr and the start.
				mqttAddr, apiAddr = testclient.ClosedAddr(t), testclient.ClosedAddr(t)
				continue
			}
			t.Fatalf("ztgate exited before it was ready (%v); output:\n%s", p.err, p.out.String())
		}
	}

	proc := start()
	ca := readCAFiles(t, dataDir)
	ca.checkPair(t)
	adminCert, err := tls.LoadX509KeyPair(filepath.Join(dataDir, "admin", identity.SVIDFile),
		filepath.Join(dataDir, "admin", identity.SVIDKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu      sync.Mutex
		created = map[string]int{}             // name -> round, for every 201 to POST /v1/devices
		issued  = map[string]tls.Certificate{} // name -> SVID, for every 200 to POST .../svid
		order   []string                       // issued names, in order
	)
	enroll := func(c *apiClient, name string, round int) error {
		st, raw, err := c.call(http.MethodPost, "/v1/devices", map[string]any{
			"name": name, "labels": map[string]string{"round": fmt.Sprint(round)},
		}, nil)
		if err != nil {
			return err // no answer: the enrollment may or may not have happened
		}
		if st != http.StatusCreated {
			t.Errorf("POST /v1/devices %s: %d %s", name, st, raw)
			return fmt.Errorf("status %d", st)
		}
		mu.Lock()
		created[name] = round
		mu.Unlock()

		keyPEM, csrPEM, err := identity.NewKeyAndCSR()
		if err != nil {
			t.Error(err)
			return err
		}
		var sv struct {
			SVIDPEM string `json:"svid_pem"`
		}
		st, raw, err = c.call(http.MethodPost, "/v1/devices/"+name+"/svid", map[string]string{"csr": string(csrPEM)}, &sv)
		if err != nil {
			return err
		}
		if st != http.StatusOK {
			t.Errorf("POST /v1/devices/%s/svid: %d %s", name, st, raw)
			return fmt.Errorf("status %d", st)
		}
		cert, err := tls.X509KeyPair([]byte(sv.SVIDPEM), keyPEM)
		if err != nil {
			t.Errorf("SVID of %s: %v", name, err)
			return err
		}
		mu.Lock()
		issued[name] = cert
		order = append(order, name)
		mu.Unlock()
		return nil
	}

	// A device enrolled before any crash: it must connect after each one.
	admin := newAPIClient(apiAddr, roots, adminCert)
	if err := enroll(admin, "before-crash", 0); err != nil {
		t.Fatalf("enroll before-crash: %v", err)
	}
	admin.close()

	rng := rand.New(rand.NewPCG(seed, 0))
	for round := 1; round <= rounds; round++ {
		roundStart := time.Now()
		// Enroll concurrently; kill at a random moment.
		admin := newAPIClient(apiAddr, roots, adminCert)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWorker {
					if enroll(admin, fmt.Sprintf("r%d-w%d-%03d", round, w, i), round) != nil {
						return
					}
				}
			}()
		}
		killAfter := 20*time.Millisecond + time.Duration(rng.Int64N(int64(400*time.Millisecond)))
		time.Sleep(killAfter)
		proc.kill(t)
		wg.Wait()
		admin.close()
		if t.Failed() {
			t.Fatalf("round %d: unexpected answers before the kill; output:\n%s", round, proc.out.String())
		}

		// A restart killed while it opens the store and loads it, before
		// it is ready, must leave nothing behind either.
		early := startGatewayProc(t, bin, dataDir, mqttAddr, apiAddr)
		time.Sleep(time.Duration(rng.Int64N(int64(150 * time.Millisecond))))
		early.kill(t)

		proc = start()
		admin = newAPIClient(apiAddr, roots, adminCert)
		mu.Lock()
		nCreated, nIssued := len(created), len(issued)
		var thisRound []string
		for name, r := range created {
			if r == round {
				thisRound = append(thisRound, name)
			}
		}
		lastIssued := order[len(order)-1]
		mu.Unlock()
		sort.Strings(thisRound)

		// The CA is the one from before the first crash.
		now := readCAFiles(t, dataDir)
		if !bytes.Equal(now.certPEM, ca.certPEM) || !bytes.Equal(now.keyPEM, ca.keyPEM) {
			t.Fatalf("round %d: the CA files changed", round)
		}
		now.checkPair(t)

		// Every acknowledged enrollment is there: listed, and each of this
		// round readable one by one, active, with the SPIFFE ID it got.
		// (These calls also show that the admin SVID still works.)
		listed := admin.deviceNames(t)
		for name := range created {
			if !listed[name] {
				t.Errorf("round %d: device %s was created (201) but is not listed after the restart", round, name)
			}
		}
		for _, name := range thisRound {
			var d struct {
				SPIFFEID string `json:"spiffe_id"`
				Status   string `json:"status"`
			}
			st, raw, err := admin.call(http.MethodGet, "/v1/devices/"+name, nil, &d)
			if err != nil || st != http.StatusOK {
				t.Errorf("round %d: GET /v1/devices/%s: %d %v %s", round, name, st, err, raw)
				continue
			}
			if d.Status != "active" || d.SPIFFEID != "spiffe://example.org/device/"+name {
				t.Errorf("round %d: device %s is %+v", round, name, d)
			}
		}

		// The audit entry of each acknowledged change survived with it.
		audited := map[string]bool{}
		for _, e := range admin.audit(t) {
			if e.Result == "ok" {
				audited[e.Action+" "+e.Target] = true
			}
		}
		for name := range created {
			if !audited["device.create "+name] {
				t.Errorf("round %d: no audit entry for the creation of %s", round, name)
			}
		}
		for name := range issued {
			if !audited["svid.issue "+name] {
				t.Errorf("round %d: no audit entry for the SVID of %s", round, name)
			}
		}
		admin.close()

		// Devices enrolled before this crash (the first, and the last one
		// acknowledged) connect.
		for _, name := range []string{"before-crash", lastIssued} {
			if err := mqttConnect(mqttAddr, roots, issued[name], name); err != nil {
				t.Errorf("round %d: device %s enrolled before the crash cannot connect: %v", round, name, err)
			}
		}
		if t.Failed() {
			t.Fatalf("round %d failed; output:\n%s", round, proc.out.String())
		}
		t.Logf("round %d: killed after %s; %d devices created, %d SVIDs issued so far (%d created this round); round took %s",
			round, killAfter.Round(time.Millisecond), nCreated, nIssued, len(thisRound), time.Since(roundStart).Round(time.Millisecond))
	}

	// One last kill, then bbolt's own check of every page of the file.
	proc.kill(t)
	db, err := bbolt.Open(filepath.Join(dataDir, "registry.db"), 0o600, &bbolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open registry after the last kill: %v", err)
	}
	defer db.Close()
	if err := db.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("registry.db: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rounds in %s", rounds, time.Since(began).Round(time.Millisecond))
}
