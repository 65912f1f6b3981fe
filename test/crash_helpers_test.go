package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/mqttconn"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testpki"
)

// buildZtgate builds the ztgate command into a temporary directory.
func buildZtgate(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	bin := filepath.Join(t.TempDir(), "ztgate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/ztgate/ztgate/cmd/ztgate").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ztgate: %v\n%s", err, out)
	}
	return bin
}

// childProc is a process a test started, its output kept and its exit
// awaited by a goroutine of its own.
type childProc struct {
	cmd  *exec.Cmd
	out  *testpki.LogBuffer // stdout and stderr together
	done chan struct{}
	err  error // of Wait, once done is closed
}

// startChild starts cmd with its output collected; what names it in the
// error should it not start.
func startChild(t *testing.T, what string, cmd *exec.Cmd) *childProc {
	t.Helper()
	p := &childProc{cmd: cmd, out: &testpki.LogBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *childProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// gatewayProc is `ztgate dev` running as a child process.
type gatewayProc struct{ *childProc }

// startGatewayProc starts `ztgate dev` on dataDir and the given addresses,
// with extra flags if any. The process is killed when the test ends if it
// still runs.
func startGatewayProc(t *testing.T, bin, dataDir, mqttAddr, apiAddr string, extra ...string) *gatewayProc {
	t.Helper()
	args := append([]string{"dev", "--data-dir", dataDir, "--mqtt-addr", mqttAddr, "--api-addr", apiAddr,
		"--decision-log-enabled=false"}, extra...)
	p := &gatewayProc{startChild(t, "ztgate", exec.Command(bin, args...))}
	t.Cleanup(func() { p.kill(t) })
	return p
}

// kill sends SIGKILL (no shutdown of any kind) and waits for the exit.
func (p *gatewayProc) kill(t *testing.T) {
	t.Helper()
	if p.exited() {
		return
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("SIGKILL: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("ztgate still running 10 s after SIGKILL")
	}
}

// waitReady polls GET /readyz (no client certificate, server verified
// against roots) until it answers 200. It returns false if the process
// exited first; the caller decides whether that is a failure.
func (p *gatewayProc) waitReady(t *testing.T, apiAddr string, roots *x509.CertPool, within time.Duration) bool {
	t.Helper()
	c := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true},
	}
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		if p.exited() {
			return false
		}
		resp, err := c.Get("https://" + apiAddr + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("ztgate not ready within %s (last answer: %s); output:\n%s", within, last, p.out.String())
	return false
}

// rootsFromFile is a pool holding the certificates of a PEM file.
func rootsFromFile(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		t.Fatalf("no certificate in %s", path)
	}
	return pool
}

// apiClient calls the API of a child process with one client identity.
type apiClient struct {
	base string
	http *http.Client
}

func newAPIClient(apiAddr string, roots *x509.CertPool, cert tls.Certificate) *apiClient {
	return &apiClient{
		base: "https://" + apiAddr,
		http: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{
				RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
			}},
		},
	}
}

func (c *apiClient) close() { c.http.CloseIdleConnections() }

// call sends one JSON request (body nil or a value to marshal) and decodes
// a JSON answer into out when out is non-nil and the status is 2xx. err is
// a transport failure: no answer arrived.
func (c *apiClient) call(method, path string, body, out any) (status int, raw []byte, err error) {
	var b []byte
	ct := ""
	if body != nil {
		if b, err = json.Marshal(body); err != nil {
			return 0, nil, err
		}
		ct = "application/json"
	}
	res, err := testclient.Do(c.http, method, c.base+path, ct, b, nil)
	if err != nil {
		return 0, nil, err
	}
	if out != nil && res.Status/100 == 2 {
		if err := json.Unmarshal(res.Body, out); err != nil {
			return res.Status, res.Body, fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	}
	return res.Status, res.Body, nil
}

// deviceNames lists every device name through the API, page by page.
func (c *apiClient) deviceNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	after := ""
	for range 1000 {
		var page struct {
			Devices []struct {
				Name string `json:"name"`
			} `json:"devices"`
			Next string `json:"next"`
		}
		q := url.Values{"limit": {"1000"}}
		if after != "" {
			q.Set("after", after)
		}
		st, raw, err := c.call(http.MethodGet, "/v1/devices?"+q.Encode(), nil, &page)
		if err != nil || st != http.StatusOK {
			t.Fatalf("GET /v1/devices: %d %v %s", st, err, raw)
		}
		for _, d := range page.Devices {
			names[d.Name] = true
		}
		if page.Next == "" {
			return names
		}
		after = page.Next
	}
	t.Fatal("device list does not end")
	return nil
}

// auditEntry is one entry of GET /v1/audit.
type auditEntry struct {
	Action string `json:"action"`
	Target string `json:"target"`
	Result string `json:"result"`
	Detail string `json:"detail"`
}

// audit returns the whole audit log through the API.
func (c *apiClient) audit(t *testing.T) []auditEntry {
	t.Helper()
	var out []auditEntry
	var after uint64
	for range 10000 {
		var page struct {
			Entries []auditEntry `json:"entries"`
			Next    uint64       `json:"next"`
		}
		st, raw, err := c.call(http.MethodGet, "/v1/audit?limit=1000&after="+strconv.FormatUint(after, 10), nil, &page)
		if err != nil || st != http.StatusOK {
			t.Fatalf("GET /v1/audit: %d %v %s", st, err, raw)
		}
		out = append(out, page.Entries...)
		if page.Next == 0 {
			return out
		}
		after = page.Next
	}
	t.Fatal("audit log does not end")
	return nil
}

// mqttConnect opens an MQTT 5 connection over mTLS as cert and returns the
// CONNACK's error (nil: accepted). The connection is closed again.
func mqttConnect(addr string, roots *x509.CertPool, cert tls.Certificate, clientID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := mqttconn.Dial(ctx, addr, mqttconn.Options{
		TLS:           testclient.TLSConfig(roots, &cert),
		Connect:       &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true},
		PacketTimeout: 10 * time.Second,
	})
	if err != nil {
		return err
	}
	return c.Client.Disconnect(&paho.Disconnect{ReasonCode: 0})
}

// caFiles are the CA's certificate and key as read from the data dir.
type caFiles struct {
	certPEM, keyPEM []byte
}

func readCAFiles(t *testing.T, dataDir string) caFiles {
	t.Helper()
	var f caFiles
	var err error
	if f.certPEM, err = os.ReadFile(filepath.Join(dataDir, "ca", identity.CACertFile)); err != nil {
		t.Fatal(err)
	}
	if f.keyPEM, err = os.ReadFile(filepath.Join(dataDir, "ca", identity.CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	return f
}

// checkPair fails unless the CA key parses and is the key of the CA
// certificate.
func (f caFiles) checkPair(t *testing.T) {
	t.Helper()
	// tls.X509KeyPair parses the key (PKCS#8, SEC 1 or PKCS#1) and checks
	// that it matches the certificate's public key.
	if _, err := tls.X509KeyPair(f.certPEM, f.keyPEM); err != nil {
		t.Fatalf("CA key does not load as the key of the CA certificate: %v", err)
	}
}

// addrInUse reports whether a child's output says a listen address was
// taken (by a process outside the test, between ClosedAddr and the start).
func addrInUse(out string) bool {
	return strings.Contains(out, "address already in use")
}
