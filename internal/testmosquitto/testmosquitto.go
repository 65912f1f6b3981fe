// Package testmosquitto runs a real Mosquitto broker on loopback for tests:
// a TLS listener that requires client certificates from its own test CA,
// the certificate's CN as the user name, stopped and started again on the
// same port. It stands in for the upstream broker of a bridge.
package testmosquitto

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/freeport"
	"github.com/ztgate/ztgate/internal/testpki"
)

// RequireEnv names the environment variable that turns a missing
// mosquitto binary from a skip into a failure (CI sets it).
const RequireEnv = "ZTGATE_REQUIRE_MOSQUITTO"

// Broker is one Mosquitto process and what a client needs to reach it.
type Broker struct {
	// Addr is host:port of its TLS listener on 127.0.0.1.
	Addr string
	// CA signed the broker's certificate and is the only CA of client
	// certificates it accepts.
	CA *testpki.CA
	// CAFile is CA's certificate in PEM, for a client's ca_file.
	CAFile string

	t    testing.TB
	bin  string
	conf string
	log  *testpki.LogBuffer
	cmd  *exec.Cmd
	done chan struct{}
}

// Binary returns the mosquitto broker's path, skipping the test when it is
// not installed (failing it when RequireEnv is set).
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"mosquitto", "/usr/sbin/mosquitto"} {
		if bin, err := exec.LookPath(p); err == nil {
			return bin
		}
	}
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("mosquitto is not installed and %s is set", RequireEnv)
	}
	t.Skip("mosquitto is not installed (apt-get install mosquitto)")
	return ""
}

// Start starts a broker with a fresh CA and waits until it accepts TLS
// connections. It is stopped when the test ends.
func Start(t testing.TB) *Broker {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	ca := testpki.NewCA(t, "upstream.test")
	server := testpki.SignLeaf(t, testpki.ServingTemplate(t, "spiffe://upstream.test/mosquitto"), ca.Cert, ca.Key)
	chain, key := testpki.CertPEM(t, server)
	b := &Broker{CA: ca, CAFile: filepath.Join(dir, "ca.pem"), t: t, bin: bin,
		conf: filepath.Join(dir, "mosquitto.conf"), log: &testpki.LogBuffer{}}
	ports, err := freeport.Loopback(1)
	if err != nil {
		t.Fatalf("testmosquitto: %v", err)
	}
	b.Addr = ports[0]
	_, port, _ := net.SplitHostPort(b.Addr)
	conf := fmt.Sprintf(`listener %s 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type subscribe
connection_messages true
`, port, b.CAFile, filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	if os.Getuid() == 0 {
		// Started as root, mosquitto becomes the user "mosquitto", who
		// cannot read the test's private temporary directory.
		conf += "user root\n"
	}
	for name, data := range map[string][]byte{
		"ca.pem": ca.BundlePEM(), "server.pem": chain, "server.key": key, "mosquitto.conf": []byte(conf),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatalf("testmosquitto: %v", err)
		}
	}
	b.start()
	t.Cleanup(b.Stop)
	return b
}

// ClientCert is a client certificate of the broker's CA whose CN, the
// broker's user name for it, is cn.
func (b *Broker) ClientCert(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	tmpl := testpki.LeafTemplate(t, "spiffe://upstream.test/client/"+cn)
	tmpl.Subject = pkix.Name{CommonName: cn}
	return testpki.SignLeaf(t, tmpl, b.CA.Cert, b.CA.Key)
}

// ClientCertFiles writes ClientCert(cn) to dir as cert.pem and key.pem and
// returns their paths.
func (b *Broker) ClientCertFiles(t testing.TB, cn, dir string) (certFile, keyFile string) {
	t.Helper()
	chain, key := testpki.CertPEM(t, b.ClientCert(t, cn))
	certFile, keyFile = filepath.Join(dir, cn+"-cert.pem"), filepath.Join(dir, cn+"-key.pem")
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TLSConfig is a client configuration for the broker with cert.
func (b *Broker) TLSConfig(cert tls.Certificate) *tls.Config {
	roots := x509.NewCertPool()
	roots.AddCert(b.CA.Cert)
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// Log is what the broker wrote so far (connections, subscriptions,
// errors), for a failing test's message.
func (b *Broker) Log() string { return b.log.String() }

func (b *Broker) start() {
	b.t.Helper()
	b.cmd = exec.Command(b.bin, "-c", b.conf)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	b.done = make(chan struct{})
	if err := b.cmd.Start(); err != nil {
		b.t.Fatalf("testmosquitto: start: %v", err)
	}
	done := b.done
	go func() { _ = b.cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.Addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			b.t.Fatalf("testmosquitto: mosquitto exited at start:\n%s", b.log.String())
		default:
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("testmosquitto: %s not listening after 10 s:\n%s", b.Addr, b.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the broker (SIGTERM, then SIGKILL after 5 s); its port is
// free again when Stop returns. Stopping a stopped broker does nothing.
func (b *Broker) Stop() {
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	select {
	case <-b.done:
		return
	default:
	}
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		b.t.Errorf("testmosquitto: SIGTERM: %v", err)
	}
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

// Restart starts a stopped broker again on the same port.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.Stop()
	b.start()
}
