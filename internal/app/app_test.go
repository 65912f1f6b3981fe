package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/registry"
)

func testConfig(t *testing.T) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.APIAddr = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

func start(t *testing.T, cfg Config) *App {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// adminSVIDFor checks the admin dir holds a usable SVID for the dev admin
// identity that a's CA verifies, and returns the svid.pem contents.
func adminSVIDFor(t *testing.T, a *App) []byte {
	t.Helper()
	dir := a.AdminDir()
	for name, want := range map[string]os.FileMode{"svid.pem": 0o644, "svid.key": 0o600, "bundle.pem": 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("admin %s: %v", name, err)
		}
		if name == "svid.key" && st.Mode().Perm() != want {
			t.Errorf("admin svid.key mode = %v, want %v", st.Mode().Perm(), want)
		}
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"))
	if err != nil {
		t.Fatalf("admin SVID does not load: %v", err)
	}
	id, err := a.Verifier().Verify(svid.Certificates)
	if err != nil {
		t.Fatalf("admin SVID does not verify against the CA: %v", err)
	}
	if want := "spiffe://example.org/admin/dev"; id.String() != want {
		t.Fatalf("admin SVID is for %s, want %s", id, want)
	}
	if !bytes.Equal(readFile(t, filepath.Join(dir, "bundle.pem")), a.CA().BundlePEM()) {
		t.Fatal("admin bundle.pem is not the CA bundle")
	}
	return readFile(t, filepath.Join(dir, "svid.pem"))
}

func TestStartCreatesThenReuses(t *testing.T) {
	cfg := testConfig(t)
	a := start(t, cfg)

	for _, addr := range []net.Addr{a.MQTTAddr(), a.APIAddr()} {
		if tcp, ok := addr.(*net.TCPAddr); !ok || tcp.Port == 0 || !tcp.IP.IsLoopback() {
			t.Fatalf("listener address %v: want a loopback port", addr)
		}
	}
	if st, err := os.Stat(cfg.DataDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v, mode %v; want 0700", err, st.Mode().Perm())
	}
	if got, want := a.AdminDir(), filepath.Join(cfg.DataDir, "admin"); got != want {
		t.Fatalf("AdminDir = %s, want %s", got, want)
	}
	dev, err := a.Registry().Get(AdminDeviceName)
	if err != nil {
		t.Fatalf("admin device not enrolled: %v", err)
	}
	if dev.SPIFFEID != "spiffe://example.org/admin/dev" || dev.Labels["role"] != "admin" || dev.Status != registry.StatusActive {
		t.Fatalf("admin device = %+v", dev)
	}
	svid1 := adminSVIDFor(t, a)
	key1 := readFile(t, filepath.Join(a.AdminDir(), "svid.key"))
	bundle1 := a.CA().BundlePEM()

	// The admin identity written by Start is the one the API lets in.
	devs := apiGet[struct {
		Devices []map[string]any `json:"devices"`
	}](t, a, "/v1/devices").Devices
	if len(devs) != 1 || devs[0]["name"] != AdminDeviceName {
		t.Fatalf("GET /v1/devices = %v, want the admin device", devs)
	}

	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	b := start(t, cfg)
	if !bytes.Equal(b.CA().BundlePEM(), bundle1) {
		t.Fatal("second start made a new CA; want the one in the data dir")
	}
	if svid2 := adminSVIDFor(t, b); !bytes.Equal(svid2, svid1) {
		t.Fatal("second start replaced a valid admin SVID")
	}
	if !bytes.Equal(readFile(t, filepath.Join(b.AdminDir(), "svid.key")), key1) {
		t.Fatal("second start replaced the admin key")
	}
	if n, _ := b.Registry().List(); len(n) != 1 {
		t.Fatalf("registry after restart holds %d devices, want 1", len(n))
	}
}

func TestStartReissuesUnusableAdminSVID(t *testing.T) {
	cfg := testConfig(t)
	a := start(t, cfg)
	old := adminSVIDFor(t, a)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	t.Run("missing key", func(t *testing.T) {
		if err := os.Remove(filepath.Join(cfg.DataDir, "admin", "svid.key")); err != nil {
			t.Fatal(err)
		}
		b := start(t, cfg)
		if bytes.Equal(adminSVIDFor(t, b), old) {
			t.Fatal("admin SVID not reissued")
		}
		_ = b.Close()
	})

	t.Run("new CA", func(t *testing.T) {
		before := readFile(t, filepath.Join(cfg.DataDir, "admin", "svid.pem"))
		if err := os.RemoveAll(filepath.Join(cfg.DataDir, "ca")); err != nil {
			t.Fatal(err)
		}
		b := start(t, cfg)
		// adminSVIDFor verifies against the new CA: the old SVID would not.
		if bytes.Equal(adminSVIDFor(t, b), before) {
			t.Fatal("admin SVID not reissued under the new CA")
		}
		_ = b.Close()
	})
}

func TestServingCertificate(t *testing.T) {
	cfg := testConfig(t)
	cfg.ServerNames = []string{"gw.example.test", "192.0.2.7"}
	a := start(t, cfg)
	clientTLS, err := identity.LoadSVIDDir(a.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		ok     bool
		listen net.Addr
	}{
		{"localhost", true, a.MQTTAddr()},
		{"127.0.0.1", true, a.MQTTAddr()},
		{"::1", true, a.MQTTAddr()},
		{"gw.example.test", true, a.MQTTAddr()},
		{"192.0.2.7", true, a.MQTTAddr()},
		{"localhost", true, a.APIAddr()},
		{"other.example.test", false, a.MQTTAddr()},
		{"192.0.2.8", false, a.APIAddr()},
	} {
		conf := clientTLS.Clone()
		conf.ServerName = tc.name
		d := &net.Dialer{Timeout: 10 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", tc.listen.String(), conf)
		if tc.ok != (err == nil) {
			t.Errorf("handshake with %s as %q: err = %v, want ok=%v", tc.listen, tc.name, err, tc.ok)
		}
		if err != nil {
			continue
		}
		leaf := conn.ConnectionState().PeerCertificates[0]
		id, err := x509svid.IDFromCert(leaf)
		if err != nil || id.String() != "spiffe://example.org/ztgate" {
			t.Errorf("serving certificate SPIFFE ID = %v, %v; want spiffe://example.org/ztgate", id, err)
		}
		conn.Close()
	}
}

func TestStartFailures(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"MQTT port in use", func(c *Config) { c.MQTTAddr = busy.Addr().String() }, busy.Addr().String()},
		{"API port in use", func(c *Config) { c.APIAddr = busy.Addr().String() }, busy.Addr().String()},
		{"missing policy dir", func(c *Config) { c.PolicyDir = filepath.Join(t.TempDir(), "nope") }, "policy"},
		{"bad policy", func(c *Config) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "x.rego"), []byte("package ztgate.authz\nallow if {"), 0o600); err != nil {
				t.Fatal(err)
			}
			c.PolicyDir = dir
		}, "policy"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "Bad Domain" }, "trust_domain"},
		{"bad address", func(c *Config) { c.MQTTAddr = "nowhere" }, "mqtt_addr"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.mod(&cfg)
			a, err := Start(context.Background(), cfg)
			if err == nil {
				a.Close()
				t.Fatal("Start succeeded")
			}
			t.Log(err)
			if msg := err.Error(); !strings.HasPrefix(msg, "app: ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q: want \"app: ...\" naming %q", msg, tc.want)
			}
			// Whatever the failed start opened is closed again: the same
			// data dir starts cleanly (bbolt would refuse a held lock).
			if _, err := os.Stat(cfg.DataDir); err == nil {
				ok := testConfig(t)
				ok.DataDir = cfg.DataDir
				ok.TrustDomain = cfg.TrustDomain
				start(t, ok)
			}
		})
	}
}

func TestStartRefusesDataDirOfAnotherTrustDomain(t *testing.T) {
	cfg := testConfig(t)
	a := start(t, cfg)
	a.Close()

	other := cfg
	other.TrustDomain = "other.example"
	b, err := Start(context.Background(), other)
	if err == nil {
		b.Close()
		t.Fatal("Start with another trust domain on the same data dir succeeded")
	}
	if !strings.HasPrefix(err.Error(), "app: ") {
		t.Fatalf("error %q: want an app: error", err)
	}
	start(t, cfg) // positive control: the original trust domain still starts
}

func TestStartCanceled(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if a, err := Start(ctx, cfg); err == nil {
		a.Close()
		t.Fatal("Start with a canceled context succeeded")
	}
	start(t, cfg)
}

// apiGet calls the admin API as the dev admin identity.
func apiGet[T any](t *testing.T, a *App, path string) T {
	t.Helper()
	conf, err := identity.LoadSVIDDir(a.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(a.APIURL() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	var out T
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, body)
	}
	return out
}
