package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

var (
	gatewayID   = spiffeid.RequireFromString("spiffe://example.org/gateway")
	tlsVersions = []struct {
		name string
		v    uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}}
)

// serverResult is what the server side saw of one connection.
type serverResult struct {
	err       error
	didResume bool
	peerID    spiffeid.ID
	peerErr   error
}

// serve runs a TLS server on a loopback port that handshakes each
// connection, reports it, and on success writes "ok".
func serve(t *testing.T, cfg *tls.Config, v *identity.Verifier) (string, <-chan serverResult) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan serverResult, 64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			conn := tls.Server(raw, cfg)
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			var r serverResult
			if r.err = conn.Handshake(); r.err == nil {
				cs := conn.ConnectionState()
				r.didResume = cs.DidResume
				r.peerID, r.peerErr = v.PeerID(cs)
				_, _ = conn.Write([]byte("ok"))
			}
			_ = conn.Close()
			results <- r
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String(), results
}

func nextResult(t *testing.T, results <-chan serverResult) serverResult {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake result from the server")
		return serverResult{}
	}
}

// dial connects and reads the server's "ok": with TLS 1.3 a refused client
// certificate only shows on the first read, after the client's handshake.
func dial(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := &tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return tls.ConnectionState{}, err
	}
	if string(buf) != "ok" {
		return tls.ConnectionState{}, fmt.Errorf("server said %q", buf)
	}
	return c.(*tls.Conn).ConnectionState(), nil
}

func clientConfig(ca *identity.CA, cert *tls.Certificate, version uint16) *tls.Config {
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: version, MaxVersion: version}
	if cert != nil {
		// Present the certificate whatever the server asks for, so the
		// server's verification is what is tested.
		c := *cert
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	return cfg
}

func serverCert(t *testing.T, ca *identity.CA) tls.Certificate {
	t.Helper()
	cert, err := ca.IssueServerCert(gatewayID, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, time.Hour)
	if err != nil {
		t.Fatalf("IssueServerCert: %v", err)
	}
	return cert
}

func TestServerTLSConfigFields(t *testing.T) {
	ca := newCA(t, td)
	cfg := identity.ServerTLSConfig(serverCert(t, ca), identity.NewVerifier(ca.Bundle()))
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %#x", cfg.MinVersion)
	}
	if cfg.ClientAuth != tls.RequireAnyClientCert {
		t.Errorf("ClientAuth = %v", cfg.ClientAuth)
	}
	if !cfg.SessionTicketsDisabled {
		t.Error("session tickets enabled")
	}
	if cfg.VerifyConnection == nil || cfg.VerifyPeerCertificate != nil {
		t.Error("verification must be in VerifyConnection only")
	}
	for _, id := range cfg.CipherSuites {
		name := tls.CipherSuiteName(id)
		if !strings.Contains(name, "ECDHE") || !(strings.Contains(name, "GCM") || strings.Contains(name, "CHACHA20")) {
			t.Errorf("cipher suite %s is not forward-secret AEAD", name)
		}
	}
}

func TestIssueServerCert(t *testing.T) {
	ca := newCA(t, td)
	cert := serverCert(t, ca)
	leaf := cert.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != gatewayID.String() {
		t.Errorf("URI SANs = %v", leaf.URIs)
	}
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("VerifyHostname(%s): %v", host, err)
		}
	}
	if err := leaf.VerifyHostname("example.com"); err == nil {
		t.Error("positive control: serving cert valid for an unlisted host")
	}
	if !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
		t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
	}
	if id, err := identity.NewVerifier(ca.Bundle()).Verify([]*x509.Certificate{leaf, ca.Certificate()}); err != nil || id != gatewayID {
		t.Errorf("serving cert is not a valid SVID: %v, %v", id, err)
	}
	if len(cert.Certificate) != 2 {
		t.Errorf("serving chain has %d certificates, want leaf and CA", len(cert.Certificate))
	}
	for _, bad := range []struct {
		name string
		id   spiffeid.ID
		dns  []string
	}{
		{"foreign trust domain", spiffeid.RequireFromString("spiffe://other.example/gateway"), nil},
		{"empty path", td.ID(), nil},
		{"empty DNS name", gatewayID, []string{""}},
	} {
		if _, err := ca.IssueServerCert(bad.id, bad.dns, nil, time.Hour); err == nil {
			t.Errorf("%s: IssueServerCert succeeded", bad.name)
		}
	}
}

func TestHandshake(t *testing.T) {
	ca := newCA(t, td)
	wrongCA := newCA(t, td)
	v := identity.NewVerifier(ca.Bundle())
	addr, results := serve(t, identity.ServerTLSConfig(serverCert(t, ca), v), v)

	// The good client is set up the way a device is: an SVID directory.
	dir := t.TempDir()
	chainPEM, keyPEM, err := ca.IssueSVID(sensor, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteSVIDDir(dir, chainPEM, keyPEM, ca.BundlePEM()); err != nil {
		t.Fatal(err)
	}
	good, err := identity.LoadSVIDDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := tls.X509KeyPair(mustIssue(t, wrongCA, sensor))
	if err != nil {
		t.Fatal(err)
	}

	type tc struct {
		name string
		cfg  func(t *testing.T, version uint16) *tls.Config
		why  string // empty: the handshake must succeed
	}
	tests := []tc{
		{"good SVID from an SVID directory", func(t *testing.T, version uint16) *tls.Config {
			c := good.Clone()
			c.MinVersion, c.MaxVersion = version, version
			return c // no ServerName: the IP SAN is verified
		}, ""},
		{"no client certificate", func(t *testing.T, version uint16) *tls.Config { return clientConfig(ca, nil, version) }, "certificate"},
		{"wrong CA", func(t *testing.T, version uint16) *tls.Config { return clientConfig(ca, &wrong, version) }, "unknown authority"},
	}
	for _, b := range badLeaves() {
		tests = append(tests, tc{b.name, func(t *testing.T, version uint16) *tls.Config {
			tmpl := leafTemplate(sensor)
			b.mutate(t, tmpl)
			_, cert := signLeaf(t, tmpl, ca.Certificate(), ca.SignerForTest())
			return clientConfig(ca, &cert, version)
		}, b.why})
	}
	for _, ver := range tlsVersions {
		for _, tt := range tests {
			t.Run(ver.name+"/"+tt.name, func(t *testing.T) {
				cs, cerr := dial(addr, tt.cfg(t, ver.v))
				r := nextResult(t, results)
				if tt.why == "" {
					if cerr != nil || r.err != nil {
						t.Fatalf("handshake failed: client %v, server %v", cerr, r.err)
					}
					if cs.Version != ver.v {
						t.Errorf("negotiated %#x, want %#x", cs.Version, ver.v)
					}
					if r.peerErr != nil || r.peerID != sensor {
						t.Errorf("PeerID = %v, %v; want %s", r.peerID, r.peerErr, sensor)
					}
					return
				}
				if cerr == nil || r.err == nil {
					t.Fatalf("handshake succeeded (client err %v, server err %v)", cerr, r.err)
				}
				if !strings.Contains(r.err.Error(), tt.why) {
					t.Errorf("server refused with %q, want it to mention %q", r.err, tt.why)
				}
			})
		}
	}
}

func TestHandshakeRefusesWeakProtocols(t *testing.T) {
	ca := newCA(t, td)
	v := identity.NewVerifier(ca.Bundle())
	addr, results := serve(t, identity.ServerTLSConfig(serverCert(t, ca), v), v)
	cert, err := tls.X509KeyPair(mustIssue(t, ca, sensor))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  func() *tls.Config
		ok   bool
	}{
		{"positive control: TLS 1.2 AEAD", func() *tls.Config {
			c := clientConfig(ca, &cert, tls.VersionTLS12)
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
			return c
		}, true},
		{"TLS 1.1", func() *tls.Config {
			c := clientConfig(ca, &cert, tls.VersionTLS11)
			c.MinVersion = tls.VersionTLS10
			return c
		}, false},
		{"TLS 1.2 CBC suite", func() *tls.Config {
			c := clientConfig(ca, &cert, tls.VersionTLS12)
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
			return c
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cerr := dial(addr, tt.cfg())
			r := nextResult(t, results)
			if tt.ok != (cerr == nil && r.err == nil) {
				t.Fatalf("ok = %v, want %v (client %v, server %v)", !tt.ok, tt.ok, cerr, r.err)
			}
		})
	}
}

// verifyLog records each VerifyConnection call of a server config.
type verifyLog struct {
	mu    sync.Mutex
	calls []verifyCall
}

type verifyCall struct {
	resumed bool
	err     error
}

func logVerify(cfg *tls.Config) *verifyLog {
	l := &verifyLog{}
	inner := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		err := inner(cs)
		l.mu.Lock()
		l.calls = append(l.calls, verifyCall{cs.DidResume, err})
		l.mu.Unlock()
		return err
	}
	return l
}

func (l *verifyLog) get() []verifyCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]verifyCall(nil), l.calls...)
}

// countingCache is a client session cache that counts what it stores and
// hands out.
type countingCache struct {
	tls.ClientSessionCache
	puts, hits atomic.Int32
}

func newCountingCache() *countingCache {
	return &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(8)}
}

func (c *countingCache) Get(key string) (*tls.ClientSessionState, bool) {
	s, ok := c.ClientSessionCache.Get(key)
	if ok {
		c.hits.Add(1)
	}
	return s, ok
}

func (c *countingCache) Put(key string, s *tls.ClientSessionState) {
	if s != nil {
		c.puts.Add(1)
	}
	c.ClientSessionCache.Put(key, s)
}

// With the config as ServerTLSConfig makes it, a client that keeps
// sessions gets none: every connection is a full, verified handshake.
func TestNoSessionResumption(t *testing.T) {
	for _, ver := range tlsVersions {
		t.Run(ver.name, func(t *testing.T) {
			ca := newCA(t, td)
			v := identity.NewVerifier(ca.Bundle())
			cfg := identity.ServerTLSConfig(serverCert(t, ca), v)
			log := logVerify(cfg)
			addr, results := serve(t, cfg, v)
			cert, err := tls.X509KeyPair(mustIssue(t, ca, sensor))
			if err != nil {
				t.Fatal(err)
			}
			cache := newCountingCache()
			ccfg := clientConfig(ca, &cert, ver.v)
			ccfg.ClientSessionCache = cache

			for i := 1; i <= 2; i++ {
				cs, err := dial(addr, ccfg)
				r := nextResult(t, results)
				if err != nil || r.err != nil {
					t.Fatalf("connection %d: client %v, server %v", i, err, r.err)
				}
				if cs.DidResume || r.didResume {
					t.Errorf("connection %d resumed a session", i)
				}
				if r.peerErr != nil || r.peerID != sensor {
					t.Errorf("connection %d: PeerID = %v, %v", i, r.peerID, r.peerErr)
				}
			}
			if n := cache.puts.Load(); n != 0 {
				t.Errorf("server issued %d session tickets, want none", n)
			}
			calls := log.get()
			if len(calls) != 2 {
				t.Fatalf("VerifyConnection ran %d times for 2 connections", len(calls))
			}
			for i, c := range calls {
				if c.err != nil || c.resumed {
					t.Errorf("call %d: %+v", i+1, c)
				}
			}
		})
	}
}

// Should tickets ever be re-enabled on a copy, a resumed session is still
// verified, against the bundles of the moment: a CA dropped since the
// session began no longer lets it in.
func TestResumedSessionIsReverified(t *testing.T) {
	for _, ver := range tlsVersions {
		t.Run(ver.name, func(t *testing.T) {
			ca := newCA(t, td)
			replacement := newCA(t, td)
			v := identity.NewVerifier(ca.Bundle())
			cfg := identity.ServerTLSConfig(serverCert(t, ca), v).Clone()
			cfg.SessionTicketsDisabled = false
			log := logVerify(cfg)
			addr, results := serve(t, cfg, v)
			cert, err := tls.X509KeyPair(mustIssue(t, ca, sensor))
			if err != nil {
				t.Fatal(err)
			}
			cache := newCountingCache()
			ccfg := clientConfig(ca, &cert, ver.v)
			ccfg.ClientSessionCache = cache

			// Positive control: the first connection is full, the second
			// really resumes, and both are verified.
			for i, wantResume := range []bool{false, true} {
				cs, err := dial(addr, ccfg)
				r := nextResult(t, results)
				if err != nil || r.err != nil {
					t.Fatalf("connection %d: client %v, server %v", i+1, err, r.err)
				}
				if cs.DidResume != wantResume || r.didResume != wantResume {
					t.Fatalf("connection %d: resumed client=%v server=%v, want %v", i+1, cs.DidResume, r.didResume, wantResume)
				}
				if r.peerErr != nil || r.peerID != sensor {
					t.Errorf("connection %d: PeerID = %v, %v", i+1, r.peerID, r.peerErr)
				}
			}
			if calls := log.get(); len(calls) != 2 || calls[1].err != nil || !calls[1].resumed {
				t.Fatalf("VerifyConnection calls %+v, want 2 with the second on the resumed session", calls)
			}

			// The trust domain's CA is replaced: the session from the old
			// CA must not resume.
			if err := v.SetBundle(replacement.Bundle()); err != nil {
				t.Fatal(err)
			}
			hits := cache.hits.Load()
			_, cerr := dial(addr, ccfg)
			r := nextResult(t, results)
			if cerr == nil || r.err == nil {
				t.Fatalf("resumed session accepted after its CA was dropped (client %v, server %v)", cerr, r.err)
			}
			if cache.hits.Load() == hits {
				t.Error("the client did not offer its session, so resumption was not exercised")
			}
			calls := log.get()
			if len(calls) != 3 {
				t.Fatalf("VerifyConnection ran %d times, want 3", len(calls))
			}
			if last := calls[2]; !last.resumed || last.err == nil || !errors.Is(r.err, last.err) {
				t.Errorf("third call %+v, server err %v: want a refused resumed session", last, r.err)
			}
			if !strings.Contains(r.err.Error(), "unknown authority") {
				t.Errorf("server refused with %q, want an unknown-authority error", r.err)
			}
		})
	}
}

func mustIssue(t *testing.T, ca *identity.CA, id spiffeid.ID) (chainPEM, keyPEM []byte) {
	t.Helper()
	chainPEM, keyPEM, err := ca.IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return chainPEM, keyPEM
}
