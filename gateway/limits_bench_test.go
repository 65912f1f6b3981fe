package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/mqttconn"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/registry"
)

// publishStream is n QoS 0 PUBLISH packets of a sensor, back to back.
func publishStream(b *testing.B, n int) []byte {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "devices/sensor-1/telemetry/temp",
		Payload: []byte("21.5 C at sensor"), ProtocolVersion: 5}
	one := testclient.EncodePacket(b, pk)
	for range n {
		buf.Write(one)
	}
	return buf.Bytes()
}

// streamConn returns the same stream of packets forever.
type streamConn struct {
	net.Conn
	b   []byte
	off int
}

func (c *streamConn) Read(p []byte) (int, error) {
	n := copy(p, c.b[c.off:])
	c.off = (c.off + n) % len(c.b)
	return n, nil
}

// BenchmarkPublishRateLimiter is the reader's cost per PUBLISH (64 per
// 2 KiB read, as mochi reads): following the headers, and charging the
// identity's two buckets. no-session is the baseline (headers followed,
// nothing charged), off an identity without rates, on both buckets charged
// at a rate that never holds back. None may allocate.
func BenchmarkPublishRateLimiter(b *testing.B) {
	stream := publishStream(b, 64)
	per := len(stream) / 64
	for _, rate := range []struct {
		name       string
		msgs, byts float64
	}{{"no-session", -1, -1}, {"off", 0, 0}, {"on", 1e12, 1e15}} {
		b.Run(rate.name, func(b *testing.B) {
			g := newIdleGateway(b, allowAll)
			_, s := g.addSession("sensor-1", nil, 5)
			s.lim.ident = g.identity(s.spiffeID)
			s.lim.maxPacket = 1 << 20
			s.lim.ident.msgs.set(rate.msgs, 1e6)
			s.lim.ident.bytes.set(rate.byts, 1e9)
			c := newPacketConn(&streamConn{b: stream}, 1<<20, 1<<20)
			c.first = false
			if rate.msgs >= 0 {
				c.attach(g, s)
			}
			buf := make([]byte, len(stream))
			b.ReportAllocs()
			b.SetBytes(int64(per))
			for b.Loop() {
				// One PUBLISH per iteration: a read of the whole buffer
				// every 64.
				if _, err := c.Read(buf[:per]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnectWhileHalfOpen is a device's mTLS connect plus MQTT
// CONNECT, with none and with 1,000 half-open connections (TCP, no
// ClientHello) held from another address.
func BenchmarkConnectWhileHalfOpen(b *testing.B) {
	for _, held := range []int{0, 1000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			e := newEnvWith(b, allowAll, func(c *Config) {
				// The defaults, but the device reconnects hundreds of
				// times a second: no per-address rate.
				c.Limits = DefaultLimits()
				c.Limits.ConnRatePerIP = 0
			})
			cfg := e.enroll("sensor-1", nil)
			conns := holdHalfOpen(b, e.addr, held)
			defer closeAll(conns)
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				c, err := mqttconn.Dial(ctx, e.addr, mqttconn.Options{TLS: cfg,
					Connect: &paho.Connect{ClientID: "s", CleanStart: true, KeepAlive: 30}})
				if err != nil {
					b.Fatal(err)
				}
				_ = c.Client.Disconnect(&paho.Disconnect{})
			}
		})
	}
}

// BenchmarkIdleDeviceRSS measures what an idle mTLS device costs the
// gateway process: RSS (and Go heap plus stacks) of a gateway in a child
// process, after ZTGATE_IDLE_DEVICES (default 10,000) devices connected
// over mTLS and sent their CONNECT, divided by their number, at mochi's
// default outbound queue (8,192 slots) and at ztgate's; the queue is made
// at the first delivery, so an idle device should cost the same. Run it
// alone: go test -run '^$' -bench BenchmarkIdleDeviceRSS -benchtime 1x ./gateway/
func BenchmarkIdleDeviceRSS(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("ZTGATE_IDLE_DEVICES")); err == nil && v > 0 {
		n = v
	}
	for _, q := range []int{8192, DefaultMaxOutboundQueue} {
		b.Run(fmt.Sprintf("queue=%d", q), func(b *testing.B) {
			for b.Loop() {
				rss, heap := measureIdle(b, n, q)
				b.ReportMetric(rss, "RSS-KiB/device")
				b.ReportMetric(heap, "heap+stack-KiB/device")
			}
		})
	}
}

func measureIdle(b *testing.B, n, queue int) (rssKiB, heapKiB float64) {
	dir := b.TempDir()
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), testTD)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleGatewayProcess$")
	cmd.Env = append(os.Environ(), "ZTGATE_IDLE_GATEWAY="+dir, "ZTGATE_IDLE_QUEUE="+strconv.Itoa(queue))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	out := bufio.NewScanner(stdout)
	line := func(prefix string) []string {
		for out.Scan() {
			if f := strings.Fields(out.Text()); len(f) > 0 && f[0] == prefix {
				return f[1:]
			}
		}
		b.Fatalf("child: no %q line", prefix)
		return nil
	}
	addr := line("addr")[0]
	sample := func() (float64, float64) {
		_, _ = io.WriteString(stdin, "rss\n")
		f := line("rss")
		rss, _ := strconv.ParseFloat(f[0], 64)
		heap, _ := strconv.ParseFloat(f[1], 64)
		return rss, heap
	}

	// 100 identities, n devices: one SVID each, shared round-robin.
	cfgs := make([]*tls.Config, 100)
	for i := range cfgs {
		id := spiffeid.RequireFromSegments(testTD, "device", fmt.Sprintf("d%d", i))
		chain, key, err := ca.IssueSVID(id, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		if cfgs[i], err = identity.ClientTLSConfigPEM(chain, key, ca.BundlePEM()); err != nil {
			b.Fatal(err)
		}
		cfgs[i].ServerName = "localhost"
		cfgs[i].ClientSessionCache = nil
	}
	connect := func(i int) net.Conn {
		// Keepalive 0: no deadline, the device is idle for good.
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true,
				ClientIdentifier: fmt.Sprintf("c%d", i)}}
		// 10k connections from one address: spread them over 127.0.0.0/8.
		d := &net.Dialer{Timeout: time.Minute, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 1, byte(i>>8), byte(i))}}
		c, err := tls.DialWithDialer(d, "tcp", addr, cfgs[i%len(cfgs)])
		if err != nil {
			b.Fatalf("device %d: %v", i, err)
		}
		if _, err := c.Write(testclient.EncodePacket(b, pk)); err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		r := testclient.NewRaw(c, 5)
		if ack, err := r.Read(); err != nil || ack.ReasonCode != 0 {
			b.Fatalf("device %d: CONNACK %v, %v", i, ack.ReasonCode, err)
		}
		return c
	}
	conns := make([]net.Conn, n)
	warm := 100
	for i := range warm {
		conns[i] = connect(i)
	}
	rss0, heap0 := sample()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := warm + w; i < n; i += 4 {
				conns[i] = connect(i)
			}
		}()
	}
	wg.Wait()
	time.Sleep(time.Second) // let the handshakes' garbage go
	rss1, heap1 := sample()
	for _, c := range conns {
		_ = c.Close()
	}
	m := float64(n - warm)
	b.Logf("queue %d: %d devices: RSS %.0f -> %.0f KiB, heap+stacks %.0f -> %.0f KiB", queue, n, rss0, rss1, heap0, heap1)
	return (rss1 - rss0) / m, (heap1 - heap0) / m
}

// TestIdleGatewayProcess is the child of BenchmarkIdleDeviceRSS: a gateway
// that allows everything, answering "rss" on stdin with its RSS and its Go
// heap plus stacks, in KiB, after a GC.
func TestIdleGatewayProcess(t *testing.T) {
	dir := os.Getenv("ZTGATE_IDLE_GATEWAY")
	if dir == "" {
		t.Skip("child process of BenchmarkIdleDeviceRSS")
	}
	queue, _ := strconv.Atoi(os.Getenv("ZTGATE_IDLE_QUEUE"))
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), testTD)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Open(filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cert, err := ca.IssueServerCert(spiffeid.RequireFromPath(testTD, "/ztgate/gateway"), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v := identity.NewVerifier(ca.Bundle())
	lim := DefaultLimits()
	lim.MaxOutboundQueue, lim.MaxSessionsPerIdentity, lim.ConnRatePerIP = queue, 0, 0
	g, err := New(Config{Addr: "127.0.0.1:0", TLS: identity.ServerTLSConfig(cert, v), Verifier: v, Registry: reg,
		Decider: allowAll, Logger: quietLogger(), Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	fmt.Printf("addr %s\n", g.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		// Each GC halves the stacks that use a quarter of theirs; a
		// gateway that runs for a while has had many.
		for range 8 {
			runtime.GC()
		}
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("rss %d %d\n", vmRSS(), (ms.HeapInuse+ms.StackInuse)>>10)
		fmt.Fprintf(os.Stderr, "child: heap in use %d KiB, stacks %d KiB, goroutines %d\n", ms.HeapInuse>>10, ms.StackInuse>>10, runtime.NumGoroutine())
		if p := os.Getenv("ZTGATE_IDLE_HEAPPROFILE"); p != "" {
			if f, err := os.Create(p); err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
		}
	}
}

// vmRSS is the process's resident set, in KiB (Linux).
func vmRSS() int {
	raw, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}
