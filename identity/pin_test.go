package identity_test

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

func TestCAPin(t *testing.T) {
	ca := newCA(t, td)
	pin := identity.CAPin(ca.Certificate())
	spki, err := x509.MarshalPKIXPublicKey(ca.Certificate().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	if want := "sha256:" + hex.EncodeToString(sum[:]); pin != want {
		t.Fatalf("CAPin = %q, want %q", pin, want)
	}

	// The pin names the key, not the certificate: a CA certificate
	// re-issued for the same key keeps it, another CA does not share it.
	tmpl := *ca.Certificate()
	tmpl.NotAfter = tmpl.NotAfter.Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, ca.Certificate().PublicKey, ca.SignerForTest())
	if err != nil {
		t.Fatal(err)
	}
	reissued, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if reissued.Equal(ca.Certificate()) {
		t.Fatal("the re-issued certificate is the same certificate")
	}
	if got := identity.CAPin(reissued); got != pin {
		t.Errorf("re-issued CA: pin %q, want %q", got, pin)
	}
	if other := identity.CAPin(newCA(t, td).Certificate()); other == pin {
		t.Error("two CAs share a pin")
	}
	if got := identity.CAPin(nil); got != "" {
		t.Errorf("CAPin(nil) = %q", got)
	}
}

func TestVerifyPin(t *testing.T) {
	ca := newCA(t, td)
	other := newCA(t, td)
	pin := identity.CAPin(ca.Certificate())
	server := serverCert(t, ca)
	good := []*x509.Certificate{server.Leaf, ca.Certificate()}

	// A serving-shaped leaf signed by another CA, presented with our CA
	// appended: the pinned CA is in the chain but did not sign the leaf.
	foreignTmpl := leafTemplate(gatewayID)
	foreignTmpl.DNSNames = []string{"localhost"}
	foreign, _ := signLeaf(t, foreignTmpl, other.Certificate(), other.SignerForTest())
	// A device SVID of our own CA: valid, but not a serving certificate.
	device, _ := signLeaf(t, leafTemplate(sensor), ca.Certificate(), ca.SignerForTest())
	expiredTmpl := leafTemplate(gatewayID)
	expiredTmpl.DNSNames = []string{"localhost"}
	expiredTmpl.NotBefore, expiredTmpl.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	expired, _ := signLeaf(t, expiredTmpl, ca.Certificate(), ca.SignerForTest())
	clientOnlyTmpl := leafTemplate(gatewayID)
	clientOnlyTmpl.DNSNames = []string{"localhost"}
	clientOnlyTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	clientOnly, _ := signLeaf(t, clientOnlyTmpl, ca.Certificate(), ca.SignerForTest())

	cases := []struct {
		name     string
		pin      string
		chain    []*x509.Certificate
		host     string
		ok       bool
		mismatch bool // the error must be ErrPinMismatch
	}{
		{"serving chain, host name", pin, good, "localhost", true, false},
		{"serving chain, IP address", pin, good, "127.0.0.1", true, false},
		{"serving chain, no host (IP dial without SNI)", pin, good, "", true, false},
		{"upper-case hex pin", "sha256:" + strings.ToUpper(strings.TrimPrefix(pin, "sha256:")), good, "localhost", true, false},
		{"pin of another CA", identity.CAPin(other.Certificate()), good, "localhost", false, true},
		{"leaf only, no CA in the chain", pin, good[:1], "localhost", false, true},
		{"foreign leaf with its own CA pinned (control)", identity.CAPin(other.Certificate()), foreign, "localhost", true, false},
		{"pinned CA appended to a foreign leaf", pin, []*x509.Certificate{foreign[0], ca.Certificate()}, "localhost", false, false},
		{"pin matches a leaf, not a CA", identity.CAPin(device[0]), []*x509.Certificate{server.Leaf, device[0]}, "localhost", false, true},
		{"device SVID of the pinned CA, no host", pin, device, "", false, false},
		{"device SVID of the pinned CA, host name", pin, device, "localhost", false, false},
		{"wrong host name", pin, good, "example.com", false, false},
		{"expired serving leaf", pin, expired, "localhost", false, false},
		{"leaf without serverAuth", pin, clientOnly, "localhost", false, false},
		{"empty chain", pin, nil, "localhost", false, false},
		{"nil certificate", pin, []*x509.Certificate{server.Leaf, nil}, "localhost", false, false},
		{"empty pin", "", good, "localhost", false, false},
		{"no prefix", strings.TrimPrefix(pin, "sha256:"), good, "localhost", false, false},
		{"other hash", "sha1:" + strings.TrimPrefix(pin, "sha256:"), good, "localhost", false, false},
		{"short pin", pin[:len(pin)-2], good, "localhost", false, false},
		{"not hex", "sha256:" + strings.Repeat("zz", 32), good, "localhost", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := identity.VerifyPin(tc.pin, tc.chain, tc.host)
			if tc.ok {
				if err != nil {
					t.Fatalf("VerifyPin: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("VerifyPin accepted the chain")
			}
			if !strings.HasPrefix(err.Error(), "identity: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if got := errors.Is(err, identity.ErrPinMismatch); got != tc.mismatch {
				t.Errorf("errors.Is(%v, ErrPinMismatch) = %v, want %v", err, got, tc.mismatch)
			}
		})
	}
}

func TestPinnedClientTLSConfig(t *testing.T) {
	ca := newCA(t, td)
	other := newCA(t, td)
	v := identity.NewVerifier(ca.Bundle())
	addr, results := serve(t, identity.APIServerTLSConfig(serverCert(t, ca), v), v)

	// An impostor whose chain ends in our CA's certificate, with a leaf and
	// key of its own CA.
	impTmpl := leafTemplate(gatewayID)
	impTmpl.DNSNames = []string{"localhost"}
	impTmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	_, imp := signLeaf(t, impTmpl, other.Certificate(), other.SignerForTest())
	imp.Certificate = [][]byte{imp.Certificate[0], ca.Certificate().Raw}
	impAddr, impResults := serve(t, identity.APIServerTLSConfig(imp, v), v)
	// Control: with its own CA the impostor's leaf is a fine serving
	// certificate, so it is refused below for the CA alone.
	if err := identity.VerifyPin(identity.CAPin(other.Certificate()),
		[]*x509.Certificate{imp.Leaf, other.Certificate()}, "localhost"); err != nil {
		t.Fatalf("control: %v", err)
	}

	pinned := func(t *testing.T, pin, serverName string) *tls.Config {
		t.Helper()
		cfg, err := identity.PinnedClientTLSConfig(pin)
		if err != nil {
			t.Fatalf("PinnedClientTLSConfig: %v", err)
		}
		cfg.ServerName = serverName
		return cfg
	}
	pin := identity.CAPin(ca.Certificate())

	cases := []struct {
		name       string
		addr       string
		results    <-chan serverResult
		pin        string
		serverName string // "" dials the IP address: no SNI
		why        string // "" = must connect
	}{
		{"right pin, host name", addr, results, pin, "localhost", ""},
		{"right pin, IP address", addr, results, pin, "", ""},
		{"wrong pin", addr, results, identity.CAPin(other.Certificate()), "localhost", "matches the pin"},
		{"right pin, name the server is not valid for", addr, results, pin, "gateway.example.com", "not gateway.example.com"},
		{"impostor presenting the pinned CA", impAddr, impResults, pin, "localhost", "does not verify"},
	}
	for _, ver := range tlsVersions {
		for _, tc := range cases {
			t.Run(ver.name+"/"+tc.name, func(t *testing.T) {
				cfg := pinned(t, tc.pin, tc.serverName)
				cfg.MinVersion, cfg.MaxVersion = ver.v, ver.v
				cs, err := dial(tc.addr, cfg)
				r := nextResult(t, tc.results)
				if tc.why == "" {
					if err != nil || r.err != nil {
						t.Fatalf("client %v, server %v", err, r.err)
					}
					// No client certificate: the API config lets the
					// connection through anonymously.
					if !errors.Is(r.peerErr, identity.ErrNoCertificate) {
						t.Errorf("server PeerID error %v, want ErrNoCertificate", r.peerErr)
					}
					if len(cs.PeerCertificates) != 2 {
						t.Errorf("server presented %d certificates, want leaf and CA", len(cs.PeerCertificates))
					}
					return
				}
				if err == nil {
					t.Fatal("connected")
				}
				if !strings.Contains(err.Error(), tc.why) {
					t.Errorf("client error %q, want it to mention %q", err, tc.why)
				}
			})
		}
	}

	cfg := pinned(t, pin, "")
	if !cfg.InsecureSkipVerify || cfg.VerifyConnection == nil || cfg.MinVersion != tls.VersionTLS12 || len(cfg.Certificates) != 0 {
		t.Errorf("config %+v", cfg)
	}
	for _, bad := range []string{"", "sha256:", pin[:20], "md5:" + strings.TrimPrefix(pin, "sha256:")} {
		if _, err := identity.PinnedClientTLSConfig(bad); err == nil {
			t.Errorf("PinnedClientTLSConfig(%q) succeeded", bad)
		}
	}
}

func TestAPIServerTLSConfig(t *testing.T) {
	ca := newCA(t, td)
	wrongCA := newCA(t, td)
	v := identity.NewVerifier(ca.Bundle())
	cfg := identity.APIServerTLSConfig(serverCert(t, ca), v)
	if cfg.ClientAuth != tls.RequestClientCert || !cfg.SessionTicketsDisabled || cfg.VerifyConnection == nil ||
		cfg.VerifyPeerCertificate != nil || cfg.MinVersion != tls.VersionTLS12 {
		t.Fatalf("config: ClientAuth %v, tickets disabled %v", cfg.ClientAuth, cfg.SessionTicketsDisabled)
	}
	addr, results := serve(t, cfg, v)

	good, err := tls.X509KeyPair(mustIssue(t, ca, sensor))
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := tls.X509KeyPair(mustIssue(t, wrongCA, sensor))
	if err != nil {
		t.Fatal(err)
	}
	type tc struct {
		name string
		cert func(t *testing.T) *tls.Certificate
		// want: "" connects with a verified ID, "anonymous" connects
		// without one, anything else is part of the server's refusal.
		want string
	}
	tests := []tc{
		{"no client certificate", func(*testing.T) *tls.Certificate { return nil }, "anonymous"},
		{"good SVID", func(*testing.T) *tls.Certificate { return &good }, ""},
		{"SVID of a CA we do not trust", func(*testing.T) *tls.Certificate { return &wrong }, "unknown authority"},
	}
	for _, b := range badLeaves() {
		tests = append(tests, tc{b.name, func(t *testing.T) *tls.Certificate {
			tmpl := leafTemplate(sensor)
			b.mutate(t, tmpl)
			_, cert := signLeaf(t, tmpl, ca.Certificate(), ca.SignerForTest())
			return &cert
		}, b.why})
	}
	for _, ver := range tlsVersions {
		for _, tt := range tests {
			t.Run(ver.name+"/"+tt.name, func(t *testing.T) {
				_, cerr := dial(addr, clientConfig(ca, tt.cert(t), ver.v))
				r := nextResult(t, results)
				switch tt.want {
				case "":
					if cerr != nil || r.err != nil || r.peerErr != nil || r.peerID != sensor {
						t.Fatalf("client %v, server %v, peer %v %v", cerr, r.err, r.peerID, r.peerErr)
					}
				case "anonymous":
					if cerr != nil || r.err != nil {
						t.Fatalf("client %v, server %v", cerr, r.err)
					}
					if !errors.Is(r.peerErr, identity.ErrNoCertificate) {
						t.Fatalf("PeerID error %v, want ErrNoCertificate", r.peerErr)
					}
				default:
					if cerr == nil || r.err == nil {
						t.Fatalf("a bad certificate was accepted (client %v, server %v)", cerr, r.err)
					}
					if !strings.Contains(r.err.Error(), tt.want) {
						t.Errorf("server refused with %q, want it to mention %q", r.err, tt.want)
					}
				}
			})
		}
	}

	// Without a verifier nothing gets through, not even an anonymous client.
	nilAddr, nilResults := serve(t, identity.APIServerTLSConfig(serverCert(t, ca), nil), v)
	if _, err := dial(nilAddr, clientConfig(ca, nil, tls.VersionTLS13)); err == nil {
		t.Error("a config without a verifier accepted a connection")
	}
	if r := nextResult(t, nilResults); r.err == nil {
		t.Error("server handshake succeeded without a verifier")
	}
}

func TestCheckCSR(t *testing.T) {
	_, good, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.CheckCSR(good); err != nil {
		t.Fatalf("good CSR: %v", err)
	}
	withSAN := makeCSR(t, p256(t), &x509.CertificateRequest{DNSNames: []string{"evil.example"}})
	withURI := makeCSR(t, p256(t), &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, spiffeid.RequireFromPath(td, "/admin/dev").String())}})
	for name, csr := range map[string][]byte{
		"DNS SAN":   withSAN,
		"URI SAN":   withURI,
		"not PEM":   []byte("hello"),
		"empty":     nil,
		"two CSRs":  append(append([]byte(nil), good...), good...),
		"cert type": []byte(strings.Replace(string(good), "CERTIFICATE REQUEST", "CERTIFICATE", 2)),
	} {
		if err := identity.CheckCSR(csr); !errors.Is(err, identity.ErrInvalidCSR) {
			t.Errorf("%s: CheckCSR = %v, want ErrInvalidCSR", name, err)
		}
	}
}
