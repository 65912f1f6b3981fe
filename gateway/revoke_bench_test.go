package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/registry"
)

// benchClientsEnv names the file that tells TestRevokeBenchClients, run in a
// child process of BenchmarkRevokeToDisconnect, which sessions to open.
const benchClientsEnv = "ZTGATE_BENCH_CLIENTS"

// Lines the child process writes on its standard output.
const (
	benchReady = "ztgate-bench-ready"
	benchError = "ztgate-bench-error: "
)

// benchClients is what the child process is asked to do: open Count MQTT 5
// sessions to Addr, one per device NamePrefix%05d, each on its own SVID
// issued from the CA in CADir.
type benchClients struct {
	Addr       string `json:"addr"`
	CADir      string `json:"ca_dir"`
	NamePrefix string `json:"name_prefix"`
	Count      int    `json:"count"`
	Workers    int    `json:"workers"`
}

// BenchmarkRevokeToDisconnect measures revocation-to-disconnect latency: N
// live mTLS sessions, each its own enrolled device; per round one more
// device connects, is revoked (registry SetStatus, durable write included)
// and the time until its connection receives the DISCONNECT (or is closed)
// is recorded. Reported: p50 and p99 of that latency, of the registry write
// alone, and of the gateway's pass over all sessions that applied it; the
// gateway's heap with N sessions; and the time of one Reevaluate pass over
// them.
//
// The N-1 other sessions live in a child process (the test binary running
// TestRevokeBenchClients), so that neither process needs more than about N
// file descriptors.
func BenchmarkRevokeToDisconnect(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			if n > 1000 && testing.Short() {
				b.Skip("10k sessions: not under -short")
			}
			benchRevokeToDisconnect(b, n)
		})
	}
}

func benchRevokeToDisconnect(b *testing.B, n int) {
	if err := raiseFileLimit(uint64(n) + 512); err != nil {
		b.Skip(err)
	}
	eng, err := defaultEngine()
	if err != nil {
		b.Fatal(err)
	}
	e := newEnvWith(b, eng, func(c *Config) { c.Logger = quietLogger() })

	// The other N-1 devices, enrolled in batches, and their sessions.
	const prefix = "bystander-"
	rows := make([]registry.Device, n-1)
	for i := range rows {
		name := fmt.Sprintf("%s%05d", prefix, i)
		rows[i] = registry.Device{Name: name, SPIFFEID: spiffeid.RequireFromSegments(testTD, "device", name).String()}
	}
	if _, err := e.reg.Import(rows, "bench"); err != nil {
		b.Fatal(err)
	}
	startBenchClients(b, benchClients{Addr: e.addr, CADir: e.caDir, NamePrefix: prefix, Count: n - 1, Workers: 16})
	deadline := time.Now().Add(time.Minute)
	for len(e.gw.Sessions()) != n-1 {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d sessions connected", len(e.gw.Sessions()), n-1)
		}
		time.Sleep(50 * time.Millisecond)
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapMB := float64(ms.HeapInuse) / (1 << 20)

	var total, write, pass []time.Duration
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		target, name := e.benchTarget(b, round)
		// Start from a registry whose every change has been applied, so
		// the round measures its own revocation only.
		deadline := time.Now().Add(waitFor)
		for e.gw.watch.waiting.Load() != e.reg.Watch() {
			if time.Now().After(deadline) {
				b.Fatal("registry watcher did not settle")
			}
			time.Sleep(time.Millisecond)
		}
		b.StartTimer()

		start := time.Now()
		if _, err := e.reg.SetStatus(name, registry.StatusRevoked); err != nil {
			b.Fatal(err)
		}
		written := time.Since(start)
		pk, err := target.Read()
		took := time.Since(start)
		if err == nil && pk.FixedHeader.Type != packets.Disconnect {
			b.Fatalf("round %d: read %d, want DISCONNECT", round, pk.FixedHeader.Type)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			b.Fatalf("round %d: revoked session not disconnected", round)
		}
		total = append(total, took)
		write = append(write, written)
		_ = target.Conn.Close()

		b.StopTimer()
		for e.gw.watch.waiting.Load() != e.reg.Watch() {
			time.Sleep(100 * time.Microsecond)
		}
		pass = append(pass, time.Duration(e.gw.watch.lastPass.Load()))
		b.StartTimer()
	}
	// What a policy activation costs at this size: one re-evaluation pass
	// (these sessions hold no subscriptions: a connect decision each).
	reevalStart := time.Now()
	e.gw.reevaluateNow(b, "benchmark")
	b.ReportMetric(float64(time.Since(reevalStart).Microseconds())/1000, "reevaluate-pass-ms")

	report := func(ds []time.Duration, name string) {
		slices.Sort(ds)
		pct := func(p float64) float64 {
			return float64(ds[min(len(ds)-1, int(p*float64(len(ds))))].Microseconds()) / 1000
		}
		b.ReportMetric(pct(0.50), name+"-p50-ms")
		b.ReportMetric(pct(0.99), name+"-p99-ms")
	}
	b.ReportMetric(heapMB, "gateway-heap-MB")
	report(total, "disconnect")
	report(write, "registry-write")
	report(pass, "watch-pass")
}

// benchTarget enrolls device target-ROUND, connects it over MQTT 5 and
// returns the connection and the device name.
func (e *env) benchTarget(b *testing.B, round int) (*testclient.Raw, string) {
	name := fmt.Sprintf("target-%05d", round)
	id := spiffeid.RequireFromSegments(testTD, "device", name)
	if _, err := e.reg.Create(registry.Device{Name: name, SPIFFEID: id.String()}); err != nil {
		b.Fatal(err)
	}
	c := testclient.DialRaw(b, e.addr, e.svid(id), 5)
	if code := c.ConnectWith(b, packets.ConnectParams{Clean: true, ClientIdentifier: name, Keepalive: 3600}, packets.Properties{}); code != 0 {
		b.Fatalf("target CONNACK %#x", code)
	}
	return c, name
}

// raiseFileLimit raises the soft limit on open files to at least need, up
// to the hard limit.
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max < need {
		return fmt.Errorf("open files limited to %d, need %d", lim.Max, need)
	}
	lim.Cur = lim.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// startBenchClients runs TestRevokeBenchClients in a child process and
// waits until it has opened its sessions. The child ends when its standard
// input closes, at the benchmark's cleanup.
func startBenchClients(b *testing.B, spec benchClients) {
	raw, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	specFile := filepath.Join(b.TempDir(), "clients.json")
	if err := os.WriteFile(specFile, raw, 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRevokeBenchClients$", "-test.count=1")
	cmd.Env = append(os.Environ(), benchClientsEnv+"="+specFile)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	b.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		result := "child process exited before its sessions were ready"
		for sc.Scan() {
			line := sc.Text()
			if line == benchReady || strings.HasPrefix(line, benchError) {
				result = line
				break
			}
		}
		ready <- result
		_, _ = io.Copy(io.Discard, stdout)
		done <- cmd.Wait()
	}()
	select {
	case r := <-ready:
		if r != benchReady {
			b.Fatal(r)
		}
	case <-time.After(5 * time.Minute):
		b.Fatal("child process: sessions not ready")
	}
}

// TestRevokeBenchClients is the child process of
// BenchmarkRevokeToDisconnect; run on its own it is skipped.
func TestRevokeBenchClients(t *testing.T) {
	specFile := os.Getenv(benchClientsEnv)
	if specFile == "" {
		t.Skip("the child process of BenchmarkRevokeToDisconnect")
	}
	conns, err := openBenchClients(specFile)
	if err != nil {
		fmt.Println(benchError + err.Error())
		return
	}
	fmt.Println(benchReady)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
}

func openBenchClients(specFile string) ([]net.Conn, error) {
	raw, err := os.ReadFile(specFile)
	if err != nil {
		return nil, err
	}
	var spec benchClients
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, err
	}
	if err := raiseFileLimit(uint64(spec.Count) + 512); err != nil {
		return nil, err
	}
	ca, err := identity.LoadOrCreateCA(spec.CADir, testTD)
	if err != nil {
		return nil, err
	}
	conns := make([]net.Conn, spec.Count)
	errs := make(chan error, spec.Workers)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < spec.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				// A refusal can be a policy evaluation that ran out of
				// time on a loaded machine (it fails closed): try again.
				var c net.Conn
				var err error
				for try := 0; try < 5; try++ {
					if c, err = openBenchClient(ca, spec, i); err == nil {
						break
					}
				}
				if err != nil {
					errs <- err
					for range next {
					}
					return
				}
				conns[i] = c
			}
		}()
	}
	for i := 0; i < spec.Count; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
		return nil, err
	}
	return conns, nil
}

// openBenchClient opens one session: a bare MQTT 5 CONNECT, no goroutine
// and no buffer kept, so that thousands cost little more than their
// sockets. The keepalive outlasts any benchmark run.
func openBenchClient(ca *identity.CA, spec benchClients, i int) (net.Conn, error) {
	name := fmt.Sprintf("%s%05d", spec.NamePrefix, i)
	chain, key, err := ca.IssueSVID(spiffeid.RequireFromSegments(testTD, "device", name), time.Hour)
	if err != nil {
		return nil, err
	}
	cfg, err := identity.ClientTLSConfigPEM(chain, key, ca.BundlePEM())
	if err != nil {
		return nil, err
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: waitFor}, "tcp", spec.Addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 3600, ClientIdentifier: name},
	}
	var enc bytes.Buffer
	if err := pk.ConnectEncode(&enc); err != nil {
		_ = conn.Close()
		return nil, err
	}
	fail := func(what string, err error) (net.Conn, error) {
		_ = conn.Close()
		return nil, fmt.Errorf("%s: %s: %v", name, what, err)
	}
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	if _, err := conn.Write(enc.Bytes()); err != nil {
		return fail("CONNECT", err)
	}
	// The server sends nothing after the CONNACK, so the small reader
	// holds nothing when it is dropped.
	r := bufio.NewReaderSize(conn, 16)
	first, err := r.ReadByte()
	if err != nil {
		return fail("CONNACK", err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return fail("CONNACK", err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return fail("CONNACK", err)
	}
	if first>>4 != packets.Connack || len(body) < 2 || body[1] != 0 {
		return fail("CONNECT refused", fmt.Errorf("packet %#x, body %x", first, body))
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}
