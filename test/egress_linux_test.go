//go:build linux

package test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testmosquitto"
)

// tcpSocket is one TCP (or UDP) socket of a process, as /proc tells it.
type tcpSocket struct {
	proto         string // "tcp", "tcp6", "udp", "udp6"
	local, remote netip.AddrPort
	state         string // "ESTABLISHED", "SYN_SENT", "LISTEN", ...; a connected UDP socket is "ESTABLISHED"
}

// tcpStates names the states of /proc/net/tcp (include/net/tcp_states.h).
var tcpStates = map[string]string{
	"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
	"05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
	"09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}

// processTCPSockets returns the TCP and UDP sockets the process pid holds
// open: the socket inodes of its file descriptors, looked up in its network
// namespace's /proc/PID/net/{tcp,tcp6,udp,udp6}.
func processTCPSockets(pid int) ([]tcpSocket, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := make(map[string]bool)
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []tcpSocket
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		socks, err := readProcNetTCP(fmt.Sprintf("/proc/%d/net/%s", pid, table), inodes)
		if err != nil {
			return nil, err
		}
		out = append(out, socks...)
	}
	return out, nil
}

// readProcNetTCP parses one /proc/net/tcp{,6} table, keeping the sockets
// whose inode is in keep.
func readProcNetTCP(path string, keep map[string]bool) ([]tcpSocket, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []tcpSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || !keep[fields[9]] {
			continue
		}
		local, err := parseProcAddr(fields[1])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		remote, err := parseProcAddr(fields[2])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, tcpSocket{proto: filepath.Base(path), local: local, remote: remote, state: tcpStates[fields[3]]})
	}
	return out, sc.Err()
}

// parseProcAddr decodes "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6): the address is in 32-bit words of host byte order (little endian
// here), the port big endian.
func parseProcAddr(s string) (netip.AddrPort, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(hexIP)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port in %q", s)
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// outboundConnections are the process's connections that it opened itself:
// every TCP socket that is not listening and whose local port is none of
// its listening ports (an accepted connection shares its listener's port),
// and every connected UDP socket (a DNS lookup, say).
func outboundConnections(socks []tcpSocket) []tcpSocket {
	listening := make(map[uint16]bool)
	for _, s := range socks {
		if s.state == "LISTEN" {
			listening[s.local.Port()] = true
		}
	}
	var out []tcpSocket
	for _, s := range socks {
		switch s.proto {
		case "udp", "udp6":
			if s.state == "ESTABLISHED" {
				out = append(out, s)
			}
		default:
			if s.state != "LISTEN" && !listening[s.local.Port()] {
				out = append(out, s)
			}
		}
	}
	return out
}

// The /proc parser against this very process: a listener and a connection
// it opened to it are found, and the connection is outbound, the accepted
// end is not.
func TestProcessTCPSockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if a := <-accepted; a != nil {
		defer a.Close()
	}
	socks, err := processTCPSockets(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	lnAddr := netip.MustParseAddrPort(ln.Addr().String())
	dialed := netip.MustParseAddrPort(c.LocalAddr().String())
	var sawListen bool
	for _, s := range socks {
		if s.state == "LISTEN" && s.local == lnAddr {
			sawListen = true
		}
	}
	if !sawListen {
		t.Fatalf("listener %s not among %v", lnAddr, socks)
	}
	var out []netip.AddrPort
	for _, s := range outboundConnections(socks) {
		if s.remote == lnAddr {
			out = append(out, s.local)
		}
	}
	if len(out) != 1 || out[0] != dialed {
		t.Fatalf("outbound connections to %s: %v, want exactly the dialed %s", lnAddr, out, dialed)
	}
}

// The gateway opens no outbound connection but its bridge's: `ztgate
// serve` runs as a child process with one bridge to a real Mosquitto, and
// its sockets (TCP and UDP, from /proc) are sampled from its start through
// enrollment, a device's connection and a forwarded publish. Every
// connection it opened goes to the bridge's upstream, and the bridge's own
// connection is seen (the positive control: the sampling sees outbound
// connections at all).
func TestEgress_OnlyTheConfiguredBridge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds ztgate and runs it")
	}
	up := testmosquitto.Start(t)
	bin := buildZtgate(t)
	dir := t.TempDir()
	certFile, keyFile := up.ClientCertFiles(t, "ztgate-plant-a", dir)
	mqttAddr, apiAddr := testclient.ClosedAddr(t), testclient.ClosedAddr(t)
	cfg := fmt.Sprintf(`data_dir: %s
mqtt_addr: %s
api_addr: %s
trust_domain: example.org
bridges:
  - name: cloud
    url: mqtts://%s
    ca_file: %s
    cert_file: %s
    key_file: %s
    out:
      - filter: devices/+/telemetry/#
        remote_prefix: plant-a/
        qos: 1
    in:
      - filter: plant-a/devices/+/commands/#
        strip_prefix: plant-a/
        qos: 1
`, filepath.Join(dir, "data"), mqttAddr, apiAddr, up.Addr, up.CAFile, certFile, keyFile)
	path := filepath.Join(dir, "ztgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	upstream := netip.MustParseAddrPort(up.Addr)

	watcher := testclient.Dialer{Addr: up.Addr, TLS: up.TLSConfig(up.ClientCert(t, "watcher")), Name: "watcher"}.MustConnect(t, "watcher", nil)
	watcher.Sub(t, "#")

	p := &gatewayProc{startChild(t, "ztgate", exec.Command(bin, "serve", "--config", path))}
	t.Cleanup(func() { p.kill(t) })

	var sawBridge bool
	var stray []string
	sample := func() {
		socks, err := processTCPSockets(p.cmd.Process.Pid)
		if err != nil {
			if p.exited() {
				t.Fatalf("ztgate exited: %v\n%s", p.err, p.out.String())
			}
			t.Fatalf("sockets of ztgate: %v", err)
		}
		for _, s := range outboundConnections(socks) {
			if s.remote == upstream && (s.proto == "tcp" || s.proto == "tcp6") {
				sawBridge = true
				continue
			}
			stray = append(stray, fmt.Sprintf("%s %s -> %s (%s)", s.proto, s.local, s.remote, s.state))
		}
	}
	// Through the start, until ready.
	roots := x509.NewCertPool()
	deadline := time.Now().Add(60 * time.Second)
	caFile := filepath.Join(dir, "data", "ca", identity.CACertFile)
	for {
		sample()
		if raw, err := os.ReadFile(caFile); err == nil && roots.AppendCertsFromPEM(raw) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CA after 60 s:\n%s", p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.waitReady(t, apiAddr, roots, 60*time.Second)
	sample()

	adminCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "data", "admin", identity.SVIDFile),
		filepath.Join(dir, "data", "admin", identity.SVIDKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := newAPIClient(apiAddr, roots, adminCert)
	defer admin.close()
	devCert := enrollVia(t, admin, "sensor-1", nil)
	sample()
	dev := testclient.Dialer{Addr: mqttAddr, TLS: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{devCert}, MinVersion: tls.VersionTLS12}, Name: "sensor-1"}.MustConnect(t, "sensor-1", nil)
	sample()
	for i := range 5 {
		dev.Pub(t, testclient.Msg{Topic: "devices/sensor-1/telemetry/t", Payload: strconv.Itoa(i), QoS: 1})
		sample()
	}
	for i := range 5 {
		watcher.Msgs.ExpectPayload(t, "plant-a/devices/sensor-1/telemetry/t", strconv.Itoa(i), wait)
	}
	for range 20 {
		sample()
		time.Sleep(25 * time.Millisecond)
	}
	if !sawBridge {
		t.Fatalf("the bridge's connection to %s was never seen: the sampling would miss a stray one too", upstream)
	}
	if len(stray) > 0 {
		t.Fatalf("ztgate opened connections other than its bridge's: %v", stray)
	}
}
