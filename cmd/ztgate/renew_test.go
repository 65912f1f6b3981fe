package main

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testutil"
)

// renewWait bounds how long a test waits for a renewal loop to do what it
// must: a few half-lives of the short SVIDs below, on a busy machine.
const renewWait = 90 * time.Second

// startRenew runs `ztgate renew args...` in the background (see
// runInBackground); its output is shown if the test fails.
func startRenew(t *testing.T, args ...string) *background {
	t.Helper()
	b := runInBackground(t, append([]string{"renew"}, args...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ztgate renew %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), b.out.String(), b.errb.String())
		}
	})
	return b
}

// waitForLog waits until stderr holds n lines containing substr, and fails
// the test if the command ends first or renewWait passes.
func (b *background) waitForLog(t *testing.T, substr string, n int) {
	t.Helper()
	deadline := time.Now().Add(renewWait)
	for b.logCount(substr) < n {
		select {
		case <-b.done:
			t.Fatalf("command ended (exit %d) before %d lines with %q", b.code, n, substr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines with %q within %s, want %d", b.logCount(substr), substr, renewWait, n)
		}
	}
}

func (b *background) logCount(substr string) int { return strings.Count(b.errb.String(), substr) }

// interrupt ends the command as SIGINT or SIGTERM would (its context) and
// returns its exit code.
func (b *background) interrupt(t *testing.T) int {
	t.Helper()
	b.cancel()
	return b.exited(t)
}

// exited waits for the command to end and returns its exit code.
func (b *background) exited(t *testing.T) int {
	t.Helper()
	select {
	case <-b.done:
		return b.code
	case <-time.After(renewWait):
		t.Fatalf("command still running after %s", renewWait)
		return -1
	}
}

// svidFiles is the content of an SVID directory.
type svidFiles struct{ chain, key, bundle []byte }

func readSVIDFiles(t *testing.T, dir string) svidFiles {
	t.Helper()
	var f svidFiles
	for name, dst := range map[string]*[]byte{identity.SVIDFile: &f.chain, identity.SVIDKeyFile: &f.key, identity.BundleFile: &f.bundle} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		*dst = b
	}
	return f
}

func (f svidFiles) equal(g svidFiles) bool {
	return bytes.Equal(f.chain, g.chain) && bytes.Equal(f.key, g.key) && bytes.Equal(f.bundle, g.bundle)
}

func (f svidFiles) leaf(t *testing.T) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(f.chain)
	if b == nil {
		t.Fatal("svid.pem holds no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// lifetime is what the SVID was signed for.
func lifetime(c *x509.Certificate) time.Duration {
	return c.NotAfter.Sub(c.NotBefore) - identity.NotBeforeBackdate
}

// usable fails the test unless dir holds a valid SVID for id that the
// gateway accepts in a TLS handshake.
func usable(t *testing.T, a *app.App, dir, id string) {
	t.Helper()
	conf, err := identity.LoadSVIDDir(dir)
	if err != nil {
		t.Fatalf("SVID directory %s: %v", dir, err)
	}
	if got := conf.Certificates[0].Leaf.URIs[0].String(); got != id {
		t.Fatalf("SVID is for %s, want %s", got, id)
	}
	conf.ServerName = "localhost"
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", a.MQTTAddr().String(), conf)
	if err != nil {
		t.Fatalf("TLS handshake with the gateway using %s: %v", dir, err)
	}
	conn.Close()
}

// enrollTTL enrolls name with `ztgate device enroll --ttl` and returns its
// SVID directory.
func enrollTTL(t *testing.T, a *app.App, name, ttl string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	args := append([]string{"device", "enroll", name, "--out", dir}, apiFlagsOf(a)...)
	if ttl != "" {
		args = append(args, "--ttl", ttl)
	}
	ok(t, args...)
	return dir
}

func markerLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// `ztgate device enroll --ttl` asks for the lifetime; the gateway's
// svid_ttl bounds it and a refusal says why.
func TestDeviceEnrollTTL(t *testing.T) {
	a := startApp(t)
	dir := enrollTTL(t, a, "sensor-1", "20s")
	if got := lifetime(readSVIDFiles(t, dir).leaf(t)); got != 20*time.Second {
		t.Fatalf("enroll --ttl 20s: SVID lives %s", got)
	}
	// Positive control: without --ttl, the gateway's svid_ttl.
	dir = enrollTTL(t, a, "sensor-2", "")
	if got := lifetime(readSVIDFiles(t, dir).leaf(t)); got != app.DefaultSVIDTTL {
		t.Fatalf("enroll without --ttl: SVID lives %s, want %s", got, app.DefaultSVIDTTL)
	}
	out := filepath.Join(t.TempDir(), "x")
	failsWith(t, "--ttl 5s: want at least 10s", append([]string{"device", "enroll", "sensor-3", "--ttl", "5s", "--out", out}, apiFlagsOf(a)...)...)
	failsWith(t, "at most 24h0m0s", append([]string{"device", "enroll", "sensor-3", "--ttl", "48h", "--out", out}, apiFlagsOf(a)...)...)
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a refused enrollment wrote %s (%v)", out, err)
	}
}

// The loop renews at half-life of the current SVID, with a new key each
// time and the lifetime the SVID had, writes files that the gateway
// accepts, and runs --exec once after each renewal.
func TestRenewAtHalfLife(t *testing.T) {
	// It waits for SVIDs to reach half-life or expire: mostly idle.
	t.Parallel()
	a := startApp(t)
	const id = "spiffe://example.org/device/sensor-1"
	dir := enrollTTL(t, a, "sensor-1", "20s")
	first := readSVIDFiles(t, dir)
	marker := filepath.Join(t.TempDir(), "marker")

	r := startRenew(t, "--dir", dir, "--api", a.APIURL(), "--exec", "echo renewed >> "+marker)
	r.waitForLog(t, "renewed svid, expires ", 2)
	// --exec runs after the renewal's log line: an interrupt sent at once
	// kills the second one in flight (seen under load).
	for deadline := time.Now().Add(10 * time.Second); markerLines(t, marker) < 2 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if code := r.interrupt(t); code != 0 {
		t.Fatalf("renew stopped with exit %d, want 0", code)
	}

	renewals := r.logCount("renewed svid, expires ")
	if got := markerLines(t, marker); got != renewals {
		t.Fatalf("--exec ran %d times for %d renewals", got, renewals)
	}
	if !strings.Contains(r.errb.String(), ", next renewal at ") {
		t.Fatal("renewal log lines do not say when the next one is")
	}
	usable(t, a, dir, id)
	now := readSVIDFiles(t, dir)
	oldLeaf, newLeaf := first.leaf(t), now.leaf(t)
	if !newLeaf.NotAfter.After(oldLeaf.NotAfter) {
		t.Fatalf("renewed NotAfter %s is not after the first %s", newLeaf.NotAfter, oldLeaf.NotAfter)
	}
	if bytes.Equal(first.key, now.key) || newLeaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(oldLeaf.PublicKey) {
		t.Fatal("the renewed SVID has the first one's key")
	}
	if got := lifetime(newLeaf); got != 20*time.Second {
		t.Fatalf("renewed SVID lives %s, want the 20s the first one had", got)
	}
	// Not before half-life (less the jitter of at most a tenth of the
	// half): the renewals are at least 9 s apart, counted in the CA's own
	// signing times.
	if gap := newLeaf.NotBefore.Sub(oldLeaf.NotBefore); gap < time.Duration(renewals)*9*time.Second {
		t.Fatalf("%d renewals %s after the first SVID was signed: earlier than half-life", renewals, gap)
	}
	if fi, err := os.Stat(filepath.Join(dir, identity.SVIDKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid.key mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}

// --once renews at once, runs --exec and exits; the API's URL comes from
// the environment when --api is not given.
func TestRenewOnce(t *testing.T) {
	a := startApp(t)
	const id = "spiffe://example.org/device/sensor-1"
	dir := enrollTTL(t, a, "sensor-1", "1h")
	first := readSVIDFiles(t, dir)
	marker := filepath.Join(t.TempDir(), "marker")

	r := ztgate(t, map[string]string{envAPI: a.APIURL()}, "", "renew", "--dir", dir, "--once", "--exec", "echo exec-output; echo x >> "+marker)
	if r.code != 0 {
		t.Fatalf("renew --once: exit %d, stderr %q", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "exec-output") {
		t.Fatalf("--exec's output is not ours: stdout %q", r.stdout)
	}
	if got := markerLines(t, marker); got != 1 {
		t.Fatalf("--exec ran %d times, want 1", got)
	}
	if !strings.Contains(r.stderr, "renewed svid, expires ") {
		t.Fatalf("no renewal logged: %q", r.stderr)
	}
	usable(t, a, dir, id)
	now := readSVIDFiles(t, dir)
	if bytes.Equal(now.chain, first.chain) || bytes.Equal(now.key, first.key) {
		t.Fatal("--once did not replace the SVID and its key")
	}
	if got := lifetime(now.leaf(t)); got != time.Hour {
		t.Fatalf("renewed SVID lives %s, want the hour the first one had", got)
	}

	// A failing --exec fails --once, though the renewal stands.
	before := readSVIDFiles(t, dir)
	res := ztgate(t, nil, "", "renew", "--dir", dir, "--api", a.APIURL(), "--once", "--exec", "exit 3")
	assertOneLineErrorLast(t, res, "--exec")
	if after := readSVIDFiles(t, dir); after.equal(before) {
		t.Fatal("the renewal before the failing --exec was not written")
	}
	usable(t, a, dir, id)
}

// assertOneLineErrorLast is assertOneLineError for a command that may log
// before it fails: exit 1, and the last line of stderr is the error.
func assertOneLineErrorLast(t *testing.T, r result, want string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	last := lines[len(lines)-1]
	if r.code != 1 || !strings.HasPrefix(last, "ztgate: ") || !strings.Contains(last, want) {
		t.Fatalf("exit %d, last line of stderr %q; want exit 1 and \"ztgate: ...%s...\"\nstderr:\n%s", r.code, last, want, r.stderr)
	}
	return last
}

// outage is a TCP proxy to the API that can be cut: while down it closes
// every connection at once, as a gateway that is down or unreachable
// would; while up it forwards bytes both ways. TLS runs end to end
// through it.
type outage struct {
	ln   net.Listener
	up   atomic.Bool
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

func newOutage(t *testing.T, upstream string) *outage {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &outage{ln: ln, open: map[net.Conn]struct{}{}}
	o.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !o.up.Load() {
				c.Close()
				continue
			}
			o.wg.Go(func() { o.forward(c, upstream) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		o.mu.Lock()
		for c := range o.open {
			c.Close()
		}
		o.mu.Unlock()
		o.wg.Wait()
	})
	return o
}

func (o *outage) track(c net.Conn) {
	o.mu.Lock()
	o.open[c] = struct{}{}
	o.mu.Unlock()
}

func (o *outage) forward(c net.Conn, upstream string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", upstream, 10*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	o.track(c)
	o.track(u)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(u, c)
		close(done)
	}()
	_, _ = io.Copy(c, u)
	c.Close()
	u.Close()
	<-done
}

func (o *outage) url() string { return "https://" + o.ln.Addr().String() }

// While the API cannot be reached the loop retries with backoff, logging
// each failure in one line, and leaves the SVID files as they are (still
// valid); once the API is back, the next attempt renews.
func TestRenewSurvivesAPIOutage(t *testing.T) {
	// It waits for SVIDs to reach half-life or expire: mostly idle.
	t.Parallel()
	a := startApp(t)
	const id = "spiffe://example.org/device/sensor-1"
	dir := enrollTTL(t, a, "sensor-1", "20s")
	first := readSVIDFiles(t, dir)
	proxy := newOutage(t, a.APIAddr().String())

	r := startRenew(t, "--dir", dir, "--api", proxy.url())
	r.waitForLog(t, "renewal failed", 2)
	if now := readSVIDFiles(t, dir); !now.equal(first) {
		t.Fatal("failed renewals changed the SVID files")
	}
	usable(t, a, dir, id) // still valid, still accepted
	for _, l := range strings.Split(strings.TrimSpace(r.errb.String()), "\n") {
		if strings.Contains(l, "renewal failed") && !strings.Contains(l, "retrying in ") {
			t.Fatalf("a failure line that does not say when the next attempt is: %q", l)
		}
	}

	proxy.up.Store(true)
	r.waitForLog(t, "renewed svid, expires ", 1)
	if code := r.interrupt(t); code != 0 {
		t.Fatalf("renew stopped with exit %d, want 0", code)
	}
	usable(t, a, dir, id)
	if now := readSVIDFiles(t, dir); !now.leaf(t).NotAfter.After(first.leaf(t).NotAfter) {
		t.Fatal("no renewal once the API was back")
	}
}

// An SVID that has expired cannot renew itself: the command says so in one
// line and exits 1, at start or when the SVID expires while the API is
// unreachable, and leaves the files where they are.
func TestRenewExpiredSVID(t *testing.T) {
	// It waits for SVIDs to reach half-life or expire: mostly idle.
	t.Parallel()
	e := testutil.Start(t)
	t.Run("at start", func(t *testing.T) {
		cert := e.CertWith(t, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		})
		dir := e.WithCert(t, &cert).Dir
		before := readSVIDFiles(t, dir)
		res := ztgate(t, nil, "", "renew", "--dir", dir, "--api", e.APIURL)
		assertOneLineError(t, res, "SVID expired at "+cert.Leaf.NotAfter.UTC().Format(time.RFC3339)+": re-enroll the device",
			[]string{"renew"})
		if after := readSVIDFiles(t, dir); !after.equal(before) {
			t.Fatal("the files of an expired SVID were changed")
		}
	})
	t.Run("while the API is unreachable", func(t *testing.T) {
		dir := enrollTTL(t, e.App, "sensor-1", "10s")
		before := readSVIDFiles(t, dir)
		r := startRenew(t, "--dir", dir, "--api", "https://"+testclient.ClosedAddr(t))
		code := r.exited(t)
		res := result{code: code, stdout: r.out.String(), stderr: r.errb.String()}
		assertOneLineErrorLast(t, res, "SVID expired at "+before.leaf(t).NotAfter.UTC().Format(time.RFC3339)+": re-enroll the device")
		if r.logCount("renewal failed") == 0 {
			t.Fatalf("expired without trying to renew:\n%s", res.stderr)
		}
		if after := readSVIDFiles(t, dir); !after.equal(before) {
			t.Fatal("the SVID files were changed or removed")
		}
	})
}

// A suspended or revoked device's renewal is refused by the API; the
// command says why and keeps the files. Resumed, the device renews.
func TestRenewRefusedForSuspendedOrRevoked(t *testing.T) {
	a := startApp(t)
	const id = "spiffe://example.org/device/sensor-1"
	dir := enrollTTL(t, a, "sensor-1", "")
	admin := apiFlagsOf(a)
	renewOnce := func() result {
		return ztgate(t, nil, "", "renew", "--dir", dir, "--api", a.APIURL(), "--once")
	}

	ok(t, append([]string{"device", "suspend", "sensor-1"}, admin...)...)
	before := readSVIDFiles(t, dir)
	assertOneLineErrorLast(t, renewOnce(), "suspended")
	if after := readSVIDFiles(t, dir); !after.equal(before) {
		t.Fatal("a refused renewal changed the files")
	}

	ok(t, append([]string{"device", "resume", "sensor-1"}, admin...)...)
	if r := renewOnce(); r.code != 0 {
		t.Fatalf("renewal once resumed: exit %d, stderr %q", r.code, r.stderr)
	}
	usable(t, a, dir, id)

	ok(t, append([]string{"device", "revoke", "sensor-1"}, admin...)...)
	before = readSVIDFiles(t, dir)
	assertOneLineErrorLast(t, renewOnce(), "revoked")
	if after := readSVIDFiles(t, dir); !after.equal(before) {
		t.Fatal("a refused renewal changed the files")
	}
}

func TestRenewBadArguments(t *testing.T) {
	a := startApp(t)
	dir := enrollTTL(t, a, "sensor-1", "")
	empty := t.TempDir()
	onlyCert := t.TempDir()
	chain, err := os.ReadFile(filepath.Join(dir, identity.SVIDFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(onlyCert, identity.SVIDFile), chain, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "nowhere")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no --dir", []string{"renew", "--api", a.APIURL()}, "--dir is required"},
		{"directory missing", []string{"renew", "--dir", missing, "--api", a.APIURL()}, filepath.Join(missing, identity.SVIDFile)},
		{"directory empty", []string{"renew", "--dir", empty, "--api", a.APIURL()}, filepath.Join(empty, identity.SVIDFile)},
		{"no key", []string{"renew", "--dir", onlyCert, "--api", a.APIURL()}, filepath.Join(onlyCert, identity.SVIDKeyFile)},
		{"plain http", []string{"renew", "--dir", dir, "--api", "http://" + a.APIAddr().String()}, "want an https:// URL"},
		{"exec timeout", []string{"renew", "--dir", dir, "--api", a.APIURL(), "--exec-timeout", "0s"}, "--exec-timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			failsWith(t, tc.want, tc.args...)
		})
	}
	// An argument renew does not take is a usage error: exit 2.
	usageFails(t, `unknown command "extra" for "ztgate renew"`, "renew", "--dir", dir, "extra")
	// Positive control: the same directory renews.
	if r := ztgate(t, nil, "", "renew", "--dir", dir, "--api", a.APIURL(), "--once"); r.code != 0 {
		t.Fatalf("renew --once: exit %d, stderr %q", r.code, r.stderr)
	}
}

// `ztgate enroll` records the API it enrolled through in DIR/api.url, so
// that `ztgate renew --dir DIR` needs nothing else on the device.
func TestRenewUsesEnrollmentAPI(t *testing.T) {
	a := startApp(t)
	tok := ok(t, append([]string{"device", "token", "sensor-1"}, apiFlagsOf(a)...)...)
	var token, pin string
	for _, l := range strings.Split(tok, "\n") {
		if v, found := strings.CutPrefix(l, "token="); found {
			token = v
		}
		if v, found := strings.CutPrefix(l, "ca_pin="); found {
			pin = v
		}
	}
	dir := filepath.Join(t.TempDir(), "sensor-1")
	ok(t, "enroll", "--api", localhostURL(a), "--token", token, "--ca-pin", pin, "--out", dir)
	recorded, err := os.ReadFile(filepath.Join(dir, apiURLFile))
	if err != nil || strings.TrimSpace(string(recorded)) != localhostURL(a) {
		t.Fatalf("%s = %q (%v), want %s", apiURLFile, recorded, err, localhostURL(a))
	}
	before := readSVIDFiles(t, dir)
	r := ztgate(t, nil, "", "renew", "--dir", dir, "--once")
	if r.code != 0 || !strings.Contains(r.stderr, localhostURL(a)) {
		t.Fatalf("renew without --api: exit %d, stderr %q; want a renewal through %s", r.code, r.stderr, localhostURL(a))
	}
	if after := readSVIDFiles(t, dir); after.equal(before) {
		t.Fatal("no renewal")
	}
	usable(t, a, dir, "spiffe://example.org/device/sensor-1")
	// --api overrides the recorded URL: nothing listens there.
	res := ztgate(t, nil, "", "renew", "--dir", dir, "--once", "--api", "https://"+testclient.ClosedAddr(t))
	assertOneLineErrorLast(t, res, "renew")
}
