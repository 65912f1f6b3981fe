package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
	"github.com/ztgate/ztgate/registry"
)

// The SPIRE test runs real spire-server and spire-agent binaries, which take
// minutes to build: tools/spire/build.sh builds them once per version.
const (
	// envSpireBin names the directory holding spire-server and
	// spire-agent; unset, the test is skipped.
	envSpireBin = "ZTGATE_SPIRE_BIN"
	// envRequireSpire=1 turns that skip into a failure (CI sets it, so
	// that a broken build step cannot pass as a skipped test).
	envRequireSpire = "ZTGATE_REQUIRE_SPIRE"

	spireTD = "spire.test"
	// spireGatewayTTL is the lifetime of the gateway's SVID: the agent
	// renews it at about half of it, so it rotates during the test.
	spireGatewayTTL = 20 * time.Second
	// spireStartWait bounds the start of each SPIRE process and the
	// first SVID of a workload: both are slower than a gateway start,
	// more so on a loaded CI machine.
	spireStartWait = time.Minute
)

// The gateway's and the admin's SPIFFE IDs; the admin is a bootstrap admin.
var (
	spireGatewayID = spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(spireTD), app.ServerIDPath)
	spireAdminID   = "spiffe://" + spireTD + "/ops/admin"
)

// Rule: a gateway whose identity comes from a real SPIRE agent serves the
// SVID SPIRE rotates, and polices devices holding SPIRE SVIDs exactly as
// enrolled ones: a SPIRE SVID alone grants nothing until an admin (itself
// a SPIRE workload, a bootstrap admin) registers the device; registered
// devices are held to their own topics; the gateway's certificate rotates
// under a live session, which keeps going; an SVID of a trust domain the
// gateway does not serve is refused at the handshake; a suspension cuts a
// SPIRE device's session.
func TestSPIRE_WorkloadAPISource(t *testing.T) {
	t.Parallel()
	bin := spireBinDir(t)
	ztgate := buildZtgate(t)

	began := time.Now()
	sp := startSpire(t, bin)
	t.Logf("SPIRE server and agent ready in %s", time.Since(began).Round(time.Millisecond))

	// The gateway runs in this process: the agent tells it apart by the
	// test binary's path. Its SVID names localhost for the clients that
	// check a host name (the ztgate command calling the API).
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sp.createEntry(t, spireGatewayID.String(), self, "-x509SVIDTTL", strconv.Itoa(int(spireGatewayTTL/time.Second)), "-dns", "localhost")
	workloads := map[string]*spireWorkload{}
	for _, w := range []struct{ name, id string }{
		{"admin", spireAdminID},
		{"sensor-1", "spiffe://" + spireTD + "/device/sensor-1"},
		{"sensor-2", "spiffe://" + spireTD + "/device/sensor-2"},
		{"ctl", "spiffe://" + spireTD + "/ctl/main"},
	} {
		workloads[w.name] = sp.newWorkload(t, w.name, w.id)
	}

	began = time.Now()
	e := testutil.Start(t, testutil.WithConfig(func(c *app.Config) {
		c.TrustDomain = spireTD
		c.Identity = app.IdentityConfig{
			Source:            app.IdentityWorkloadAPI,
			WorkloadAPISocket: "unix://" + sp.agentSock,
			BootstrapAdmins:   []string{spireAdminID},
		}
	}))
	t.Logf("gateway started with its first SPIRE SVID in %s", time.Since(began).Round(time.Millisecond))
	if e.App.CA() != nil {
		t.Fatal("a workload_api gateway has a CA")
	}
	began = time.Now()
	for _, w := range workloads {
		w.fetch(t, sp)
	}
	t.Logf("SVIDs of %d workloads fetched in %s", len(workloads), time.Since(began).Round(time.Millisecond))
	admin, s1, s2, ctl := workloads["admin"], workloads["sensor-1"], workloads["sensor-2"], workloads["ctl"]
	cli := &ztgateCLI{bin: ztgate, api: localhostURL(t, e.APIURL), adminDir: admin.dir}

	// A SPIRE SVID is not a registration: the gateway refuses sensor-1
	// until the admin registers it.
	e.RequireRefused(t, s1.device(t, e, sp), "sensor-1", s1.opts(sp), testutil.ReasonNotAuthorized)
	if out := cli.run(t, "device", "register", "sensor-1", "--spiffe-id", s1.id); !strings.Contains(out, "registered device sensor-1: "+s1.id+", active") {
		t.Fatalf("ztgate device register sensor-1 printed %q", out)
	}
	cli.run(t, "device", "register", "sensor-2", "--spiffe-id", s2.id)
	cli.run(t, "device", "register", "ctl", "--spiffe-id", ctl.id, "--label", "role=controller")

	// Policed as enrolled devices: telemetry of their own flows to the
	// controller, sensor-2 cannot publish as sensor-1.
	ctlc := e.MustConnect(t, ctl.device(t, e, sp), "ctl", ctl.opts(sp))
	ctlc.Sub(t, "devices/+/telemetry/#")
	c1 := e.MustConnect(t, s1.device(t, e, sp), "sensor-1", s1.opts(sp))
	c1.Sub(t, "devices/sensor-1/commands/#")
	c2 := e.MustConnect(t, s2.device(t, e, sp), "sensor-2", s2.opts(sp))
	telemetry(t, c1, ctlc, "sensor-1", "21.5")
	c2.PubDenied(t, msg{Topic: "devices/sensor-1/telemetry/forged", Payload: "forged"})
	telemetry(t, c2, ctlc, "sensor-2", "19.0")
	ctlc.Msgs.Never(t, "devices/sensor-1/telemetry/forged")

	// The agent rotates the gateway's SVID at about half its lifetime:
	// new handshakes get the new certificate, c1 (connected before) keeps
	// its session and its messages still flow.
	before := c1.TLSState.PeerCertificates[0].SerialNumber
	began = time.Now()
	after := waitRotated(t, e, s1, sp, before, 2*spireGatewayTTL+wait)
	t.Logf("gateway SVID rotated %s after the check began: serial %x (c1's handshake) -> %x (new handshake)",
		time.Since(began).Round(time.Millisecond), before, after)
	if c1.Closed() {
		t.Fatal("sensor-1's session ended at the gateway's SVID rotation")
	}
	telemetry(t, c1, ctlc, "sensor-1", "after rotation")
	ctlc.Pub(t, msg{Topic: "devices/sensor-1/commands/reboot", Payload: "now", QoS: 1})
	c1.Msgs.ExpectPayload(t, "devices/sensor-1/commands/reboot", "now", wait)

	// An SVID of a trust domain the gateway does not serve (its CA is in
	// no bundle the gateway holds) is refused at the handshake, whatever
	// name it claims.
	other := testpki.NewCA(t, "other.example").Issue(t, "spiffe://other.example/device/sensor-1")
	foreignOpts := spireClientOpts(toSVID(t, other), sp.bundle)
	if err := handshake12(e, foreignOpts); err == nil {
		t.Fatal("other.example device: TLS 1.2 handshake succeeded; want it refused")
	} else {
		t.Logf("other.example device refused at the handshake: %v", err)
	}
	if err := handshake12(e, s1.opts(sp)); err != nil {
		t.Fatalf("sensor-1: TLS 1.2 handshake: %v", err)
	}
	if _, ack, err := e.Connect(t, e.ExternalDevice(t, "", other, nil), "sensor-1-other", foreignOpts); err == nil || ack != nil {
		t.Fatalf("other.example device: err %v, CONNACK %v; want the connection refused before any CONNACK", err, ack)
	}
	telemetry(t, c1, ctlc, "sensor-1", "after the foreign attempt")

	// The lifecycle of enrolled devices: suspending the SPIRE device cuts
	// its session and refuses it; resuming lets it back in. sensor-1 is
	// untouched.
	cli.run(t, "device", "suspend", "sensor-2")
	c2.WaitClosed(t, wait)
	e.RequireRefused(t, s2.device(t, e, sp), "sensor-2", s2.opts(sp), testutil.ReasonNotAuthorized)
	telemetry(t, c1, ctlc, "sensor-1", "after the suspension")
	cli.run(t, "device", "resume", "sensor-2")
	c2 = e.MustConnect(t, s2.device(t, e, sp), "sensor-2", s2.opts(sp))
	telemetry(t, c2, ctlc, "sensor-2", "resumed")

	// The audit log names the SPIRE admin as the actor of each change.
	requireAudited(t, cli, spireAdminID, "sensor-1", registry.ActionDeviceCreate)
	requireAudited(t, cli, spireAdminID, "sensor-2", registry.ActionDeviceSuspend)
	requireAudited(t, cli, spireAdminID, "sensor-2", registry.ActionDeviceResume)
}

// requireAudited fails the test unless `ztgate audit` lists action on
// target by actor, done.
func requireAudited(t *testing.T, cli *ztgateCLI, actor, target, action string) {
	t.Helper()
	var entries []api.AuditEntry
	if err := json.Unmarshal([]byte(cli.run(t, "audit", "--json")), &entries); err != nil {
		t.Fatalf("ztgate audit --json: %v", err)
	}
	for _, e := range entries {
		if e.Actor == actor && e.Target == target && e.Action == action && e.Result == "ok" {
			return
		}
	}
	t.Fatalf("no audit entry %s %s by %s in %+v", action, target, actor, entries)
}

// spireBinDir is the directory of the SPIRE binaries, or a skip telling how
// to get them.
func spireBinDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv(envSpireBin)
	if dir == "" {
		const how = envSpireBin + " is not set; build SPIRE once (about ten minutes, then cached) with: export " +
			envSpireBin + "=$(tools/spire/build.sh)"
		if os.Getenv(envRequireSpire) == "1" {
			t.Fatalf("%s=1 but %s", envRequireSpire, how)
		}
		t.Skip(how)
	}
	for _, name := range []string{"spire-server", "spire-agent"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode()&0o111 == 0 {
			t.Fatalf("%s=%s: no executable %s there (%v); run tools/spire/build.sh", envSpireBin, dir, name, err)
		}
	}
	return dir
}

// spire is a SPIRE server and one agent attested to it with a join token,
// on loopback, with their files in one short temporary directory.
type spire struct {
	bin                   string
	dir                   string
	serverSock, agentSock string
	port                  int
	bundle                *x509bundle.Bundle // the trust domain's, as the server hands it out
	server, agent         *spireProc
}

// spireParentID is the agent's alias: the join token is made for it, and
// it is the parent of every workload entry.
const spireParentID = "spiffe://" + spireTD + "/agent/test"

func startSpire(t *testing.T, bin string) *spire {
	t.Helper()
	sp := &spire{bin: bin, dir: shortTempDir(t)}
	sp.serverSock = filepath.Join(sp.dir, "server.sock")
	sp.agentSock = filepath.Join(sp.dir, "agent.sock")
	sp.startServer(t)

	bundlePEM := sp.serverCmd(t, "bundle", "show")
	bootstrap := filepath.Join(sp.dir, "bootstrap.pem")
	writeFile(t, bootstrap, bundlePEM)
	b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(spireTD), []byte(bundlePEM))
	if err != nil {
		t.Fatalf("bundle of the SPIRE server: %v", err)
	}
	sp.bundle = b

	token := parseToken(t, sp.serverCmd(t, "token", "generate", "-spiffeID", spireParentID, "-ttl", "600"))
	conf := filepath.Join(sp.dir, "agent.conf")
	writeFile(t, conf, sp.agentConf(bootstrap))
	sp.agent = startSpireProc(t, "spire-agent", filepath.Join(bin, "spire-agent"), "run", "-config", conf, "-joinToken", token)
	if err := sp.waitHealthy(sp.agent, "spire-agent", sp.agentSock); err != nil {
		t.Fatal(err)
	}
	return sp
}

// startServer starts spire-server on a free loopback port. The port is
// picked before the server listens on it, so another process may take it
// in between: the server then exits at once, and another port is tried.
func (sp *spire) startServer(t *testing.T) {
	t.Helper()
	conf := filepath.Join(sp.dir, "server.conf")
	for attempt := 1; ; attempt++ {
		sp.port = freePort(t)
		writeFile(t, conf, sp.serverConf())
		sp.server = startSpireProc(t, "spire-server", filepath.Join(sp.bin, "spire-server"), "run", "-config", conf)
		err := sp.waitHealthy(sp.server, "spire-server", sp.serverSock)
		if err == nil {
			return
		}
		if attempt == 3 || !sp.server.exited() || !strings.Contains(sp.server.out.String(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("spire-server: port %d was taken; trying another", sp.port)
		_ = os.RemoveAll(filepath.Join(sp.dir, "server"))
	}
}

// serverConf has short lifetimes: ca_ttl an hour, SVIDs ten minutes (long
// enough for the device SVIDs fetched once to outlive the test).
func (sp *spire) serverConf() string {
	return fmt.Sprintf(`server {
    bind_address = "127.0.0.1"
    bind_port = "%d"
    socket_path = %q
    trust_domain = %q
    data_dir = %q
    log_level = "DEBUG"
    ca_ttl = "1h"
    default_x509_svid_ttl = "10m"
    default_jwt_svid_ttl = "10m"
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`, sp.port, sp.serverSock, spireTD, filepath.Join(sp.dir, "server"), filepath.Join(sp.dir, "server", "datastore.sqlite3"))
}

// agentConf syncs with the server every second, so that entries and the
// gateway's rotated SVID arrive within the test's waits. The unix
// attestor finds each workload's binary path (unix:path selectors) and
// hashes nothing: the test binary is large.
func (sp *spire) agentConf(bootstrap string) string {
	return fmt.Sprintf(`agent {
    data_dir = %q
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "%d"
    socket_path = %q
    trust_bundle_path = %q
    trust_domain = %q
    experimental {
        sync_interval = "1s"
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
            workload_size_limit = -1
        }
    }
}
`, filepath.Join(sp.dir, "agent"), sp.port, sp.agentSock, bootstrap, spireTD)
}

// waitHealthy polls the process's healthcheck command until it passes, the
// process exits or spireStartWait has passed.
func (sp *spire) waitHealthy(p *spireProc, name, sock string) error {
	deadline := time.Now().Add(spireStartWait)
	for {
		out, err := spireRun(filepath.Join(sp.bin, name), "healthcheck", "-socketPath", sock)
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited before it was healthy: %v", name, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after %s: %v\n%s", name, spireStartWait, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// serverCmd runs a spire-server command against the running server and
// returns its output.
func (sp *spire) serverCmd(t *testing.T, args ...string) string {
	t.Helper()
	args = append(args, "-socketPath", sp.serverSock)
	out, err := spireRun(filepath.Join(sp.bin, "spire-server"), args...)
	if err != nil {
		t.Fatalf("spire-server %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// createEntry registers a workload under the agent: whatever runs the
// binary at path gets an SVID for id.
func (sp *spire) createEntry(t *testing.T, id, path string, extra ...string) {
	t.Helper()
	args := append([]string{"entry", "create", "-parentID", spireParentID, "-spiffeID", id,
		"-selector", "unix:path:" + path}, extra...)
	sp.serverCmd(t, args...)
}

// spireWorkload is a program SPIRE issues an SVID to: a copy of the
// spire-agent binary under a name of its own (so that its unix:path
// selector matches it alone), run as `NAME api fetch x509` to write the
// SVID files, as spiffe-helper would for a real device.
type spireWorkload struct {
	name, id string
	exe      string // the copy
	dir      string // svid.pem, svid.key, bundle.pem once fetched
	svid     *x509svid.SVID
	cert     tls.Certificate
}

func (sp *spire) newWorkload(t *testing.T, name, id string) *spireWorkload {
	t.Helper()
	w := &spireWorkload{name: name, id: id, exe: filepath.Join(sp.dir, "fetch-"+name), dir: filepath.Join(sp.dir, "svid-"+name)}
	linkOrCopy(t, filepath.Join(sp.bin, "spire-agent"), w.exe)
	if err := os.Mkdir(w.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sp.createEntry(t, id, w.exe)
	return w
}

// fetch gets the workload's SVID from the agent (retrying until the entry
// has reached the agent) and keeps it under the names ztgate reads.
func (w *spireWorkload) fetch(t *testing.T, sp *spire) {
	t.Helper()
	deadline := time.Now().Add(spireStartWait)
	for {
		out, err := spireRun(w.exe, "api", "fetch", "x509", "-socketPath", sp.agentSock, "-write", w.dir, "-timeout", "5s")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SVID for %s (%s) after %s: %v\n%s", w.name, w.id, spireStartWait, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for from, to := range map[string]string{
		"svid.0.pem": identity.SVIDFile, "svid.0.key": identity.SVIDKeyFile, "bundle.0.pem": identity.BundleFile,
	} {
		if err := os.Rename(filepath.Join(w.dir, from), filepath.Join(w.dir, to)); err != nil {
			t.Fatalf("SVID files of %s: %v", w.name, err)
		}
	}
	// ztgate's own loader must take SPIRE's files as they are.
	if _, err := identity.LoadSVIDDir(w.dir); err != nil {
		t.Fatalf("SVID files of %s written by SPIRE: %v", w.name, err)
	}
	svid, err := x509svid.Load(filepath.Join(w.dir, identity.SVIDFile), filepath.Join(w.dir, identity.SVIDKeyFile))
	if err != nil {
		t.Fatalf("SVID of %s: %v", w.name, err)
	}
	if svid.ID.String() != w.id {
		t.Fatalf("SPIRE issued %s to %s; want %s", svid.ID, w.name, w.id)
	}
	w.svid = svid
	if w.cert, err = tls.LoadX509KeyPair(filepath.Join(w.dir, identity.SVIDFile), filepath.Join(w.dir, identity.SVIDKeyFile)); err != nil {
		t.Fatal(err)
	}
}

// device is the workload as a client of e.
func (w *spireWorkload) device(t *testing.T, e *testutil.Env, sp *spire) *testutil.Device {
	t.Helper()
	roots := x509.NewCertPool()
	for _, c := range sp.bundle.X509Authorities() {
		roots.AddCert(c)
	}
	return e.ExternalDevice(t, w.name, w.cert, roots)
}

// opts connects as the workload, verifying the gateway the SPIFFE way.
func (w *spireWorkload) opts(sp *spire) *testutil.ConnOpts {
	return spireClientOpts(w.svid, sp.bundle)
}

// spireClientOpts presents svid and accepts the gateway by its SPIFFE ID,
// verified against bundle: SPIRE's SVIDs carry no IP address, and a SPIFFE
// client checks whom it talks to, not a host name.
func spireClientOpts(svid *x509svid.SVID, bundle *x509bundle.Bundle) *testutil.ConnOpts {
	return &testutil.ConnOpts{TLS: tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(spireGatewayID))}
}

// waitRotated waits until a new handshake is served a certificate other
// than the one with serial before, and returns its serial.
func waitRotated(t *testing.T, e *testutil.Env, w *spireWorkload, sp *spire, before *big.Int, within time.Duration) *big.Int {
	t.Helper()
	cfg := w.opts(sp).TLS
	deadline := time.Now().Add(within)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", e.MQTTAddr, cfg)
		if err != nil {
			t.Fatalf("TLS handshake as %s: %v", w.id, err)
		}
		got := conn.ConnectionState().PeerCertificates[0].SerialNumber
		_ = conn.Close()
		if got.Cmp(before) != 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway still serves serial %x after %s; want SPIRE's rotated SVID", before, within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// handshake12 is a bare TLS 1.2 handshake with the gateway's MQTT listener:
// in TLS 1.2 the server checks the client's certificate before the
// handshake completes, so a refusal is an error here rather than on a
// later read, as it would be in TLS 1.3.
func handshake12(e *testutil.Env, o *testutil.ConnOpts) error {
	cfg := o.TLS.Clone()
	cfg.MaxVersion = tls.VersionTLS12
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", e.MQTTAddr, cfg)
	if err != nil {
		return err
	}
	return conn.Close()
}

// ztgateCLI runs the ztgate command against the test's gateway as the
// admin workload, whose SPIRE files are its --admin-dir.
type ztgateCLI struct {
	bin, api, adminDir string
}

func (c *ztgateCLI) run(t *testing.T, args ...string) string {
	t.Helper()
	args = append(args, "--api", c.api, "--admin-dir", c.adminDir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ztgate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// localhostURL is the API's URL by the name on the gateway's SPIRE SVID.
func localhostURL(t *testing.T, apiURL string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.TrimPrefix(apiURL, "https://"))
	if err != nil {
		t.Fatalf("API URL %s: %v", apiURL, err)
	}
	return "https://localhost:" + port
}

// spireProc is a SPIRE process of the test, stopped and waited for when the
// test ends; its output is printed if the test failed.
type spireProc struct{ *childProc }

func startSpireProc(t *testing.T, name, path string, args ...string) *spireProc {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.SysProcAttr = childProcAttr()
	p := &spireProc{startChild(t, name, cmd)}
	t.Cleanup(func() {
		p.stop(t, name)
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.out.String())
		}
	})
	return p
}

// stop asks the process to end (SIGTERM), then kills it if it has not
// within a few seconds, and waits for it either way.
func (p *spireProc) stop(t *testing.T, name string) {
	t.Helper()
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(10 * time.Second):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("kill %s: %v", name, err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s still running 10 s after SIGKILL", name)
	}
}

// spireRun runs a short SPIRE command (a healthcheck, an entry, a fetch)
// with a bound on its run time.
func spireRun(path string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.SysProcAttr = childProcAttr()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// parseToken takes the join token out of `spire-server token generate`'s
// "Token: ..." line.
func parseToken(t *testing.T, out string) string {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if tok, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Token: "); ok && tok != "" {
			return tok
		}
	}
	t.Fatalf("no join token in %q", out)
	return ""
}

// shortTempDir is a fresh directory whose path leaves room for unix socket
// names (at most 104 bytes on some systems): TMPDIR may be long, so /tmp is
// used when it is.
func shortTempDir(t *testing.T) string {
	t.Helper()
	const room = 104 - len("/server.sock") - 1
	dir, err := os.MkdirTemp("", "zs")
	if err == nil && len(dir) > room {
		_ = os.RemoveAll(dir)
		dir, err = os.MkdirTemp("/tmp", "zs")
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(dir) > room {
		t.Fatalf("no temporary directory short enough for unix sockets (%s)", dir)
	}
	// Registered first, so it runs after the processes are stopped.
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// freePort is a loopback TCP port that was free a moment ago (the SPIRE
// server needs its port in its configuration, before it listens).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// linkOrCopy makes dst the same executable as src under another path: a
// hard link where the file system allows, else a copy.
func linkOrCopy(t *testing.T, src, dst string) {
	t.Helper()
	if os.Link(src, dst) == nil {
		return
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
