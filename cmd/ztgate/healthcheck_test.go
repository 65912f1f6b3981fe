package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
)

// TestHealthcheckGateway probes a real gateway: ready, then stopped.
func TestHealthcheckGateway(t *testing.T) {
	e := testutil.Start(t)
	caFile := filepath.Join(e.DataDir, "ca", "ca.pem")
	_, port, _ := net.SplitHostPort(e.App.APIAddr().String())

	// By URL and CA file.
	if out := ok(t, "healthcheck", "--url", e.APIURL+"/readyz", "--ca", caFile); out != e.APIURL+"/readyz: ready\n" {
		t.Fatalf("healthcheck output %q", out)
	}
	// The base URL alone means its /readyz.
	ok(t, "healthcheck", "--url", e.APIURL, "--ca", caFile)
	// By the configuration the gateway runs with: the CA from its data dir
	// and the URL from api_addr, whose unspecified host means loopback.
	for _, addr := range []string{"127.0.0.1:" + port, "0.0.0.0:" + port, ":" + port} {
		cfgFile := filepath.Join(t.TempDir(), "ztgate.yaml")
		writeFile(t, cfgFile, fmt.Sprintf("data_dir: %s\napi_addr: %q\n", e.DataDir, addr))
		if out := ok(t, "healthcheck", "--config", cfgFile); out != "https://127.0.0.1:"+port+"/readyz: ready\n" {
			t.Fatalf("healthcheck --config (api_addr %s) output %q", addr, out)
		}
	}

	// A server the CA did not sign is not the gateway, whatever it says.
	other := testutil.Start(t)
	failsWith(t, "certificate", "healthcheck", "--url", other.APIURL+"/readyz", "--ca", caFile)
	failsWith(t, "cannot read the CA", "healthcheck", "--url", e.APIURL, "--ca", filepath.Join(t.TempDir(), "none.pem"))
	failsWith(t, "no CA certificate", "healthcheck", "--url", e.APIURL, "--ca", cfgFileWith(t, "not a certificate"))
	failsWith(t, "want an https:// URL", "healthcheck", "--url", "http://127.0.0.1:"+port+"/readyz", "--ca", caFile)

	// Stopped: exit 1 with one line.
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}
	failsWith(t, "cannot reach "+e.APIURL+"/readyz", "healthcheck", "--url", e.APIURL+"/readyz", "--ca", caFile)
}

// cfgFileWith writes body to a fresh file and returns its path.
func cfgFileWith(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	writeFile(t, p, body)
	return p
}

// TestHealthcheckNotReady: a 503 (or any status but 200) is unhealthy, and
// the line says what the server said; a 200 from the same server is the
// positive control.
func TestHealthcheckNotReady(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			fmt.Fprintln(w, `{"status":"ready","store":"ok"}`)
		case "/hang":
			<-r.Context().Done()
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, `{"error":"not ready: cluster has no quorum"}`)
		}
	}))
	defer srv.Close()
	caFile := cfgFileWith(t, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))

	ok(t, "healthcheck", "--url", srv.URL+"/readyz", "--ca", caFile)
	failsWith(t, "not ready: cluster has no quorum (HTTP 503)", "healthcheck", "--url", srv.URL+"/other", "--ca", caFile)
	failsWith(t, "did not answer within 200ms", "healthcheck", "--url", srv.URL+"/hang", "--ca", caFile, "--timeout", "200ms")
	failsWith(t, "--timeout", "healthcheck", "--url", srv.URL+"/readyz", "--ca", caFile, "--timeout", "0s")
	// The URL's host must be on the certificate: a name it does not carry
	// is refused.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "https://"))
	failsWith(t, "certificate", "healthcheck", "--url", "https://localhost:"+port+"/readyz", "--ca", caFile)
}

func TestHealthcheckTarget(t *testing.T) {
	for _, tc := range []struct {
		name          string
		cfg           func(*app.Config)
		wantURL, want string // want: the CA file, or the error
	}{
		{"defaults", func(*app.Config) {}, "https://127.0.0.1:8443/readyz", filepath.Join("ztgate-data", "ca", "ca.pem")},
		{"data dir and address", func(c *app.Config) { c.DataDir = "/var/lib/ztgate"; c.APIAddr = "0.0.0.0:9443" },
			"https://127.0.0.1:9443/readyz", "/var/lib/ztgate/ca/ca.pem"},
		{"IPv6 unspecified", func(c *app.Config) { c.APIAddr = "[::]:9443" }, "https://[::1]:9443/readyz", ""},
		{"host name", func(c *app.Config) { c.APIAddr = "gw.example.org:8443" }, "https://gw.example.org:8443/readyz", ""},
		{"ca_dir", func(c *app.Config) { c.Identity.CADir = "/etc/ztgate/ca" }, "", "/etc/ztgate/ca/ca.pem"},
		{"files", func(c *app.Config) {
			c.Identity.Source = app.IdentityFiles
			c.Identity.BundleFile = "/etc/ztgate/bundle.pem"
		},
			"", "/etc/ztgate/bundle.pem"},
		{"workload api", func(c *app.Config) { c.Identity.Source = app.IdentityWorkloadAPI }, "", "error: --ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := app.DefaultConfig()
			tc.cfg(&cfg)
			u, ca, err := healthTarget(cfg)
			if strings.HasPrefix(tc.want, "error: ") {
				if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "error: ")) {
					t.Fatalf("healthTarget = %q, %q, %v; want an error about %s", u, ca, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantURL != "" && u != tc.wantURL {
				t.Errorf("URL %q, want %q", u, tc.wantURL)
			}
			if tc.want != "" && filepath.Clean(ca) != filepath.Clean(tc.want) {
				t.Errorf("CA file %q, want %q", ca, tc.want)
			}
		})
	}
}

// TestHealthcheckSPIFFEServer: a gateway whose serving certificate (an
// operator's, identity.source files) names no loopback address is still
// verified when the trust domain is known: its SVID must chain to the CA,
// be for server use, and be of that trust domain.
func TestHealthcheckSPIFFEServer(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	caFile := cfgFileWith(t, string(ca.BundlePEM()))
	serve := func(tmpl *x509.Certificate) string {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, `{"status":"ready"}`)
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{testpki.SignLeaf(t, tmpl, ca.Cert, ca.Key)}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv.URL + "/readyz"
	}
	spiffeOnly := testpki.ServingTemplate(t, "spiffe://example.org/ztgate")
	spiffeOnly.DNSNames, spiffeOnly.IPAddresses = nil, nil
	gateway := serve(spiffeOnly)
	clientOnly := testpki.LeafTemplate(t, "spiffe://example.org/device/sensor-1") // client auth only
	device := serve(clientOnly)

	c := &cli{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
	for _, tc := range []struct {
		name, url, td string
		ok            bool
	}{
		{"the gateway's SVID, trust domain known", gateway, "example.org", true},
		{"no trust domain: the address must be on the certificate", gateway, "", false},
		{"another trust domain", gateway, "other.example", false},
		{"a device's SVID is not a server's", device, "example.org", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.probe(context.Background(), tc.url, caFile, tc.td, 10*time.Second)
			if (err == nil) != tc.ok {
				t.Fatalf("probe: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
