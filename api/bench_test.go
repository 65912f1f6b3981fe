package api

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
	"github.com/ztgate/ztgate/registry"
)

// Enrollment throughput through the real API: mTLS listener on 127.0.0.1,
// the built-in CA, the registry on disk (every write committed and fsynced
// before the answer), the default policy deciding every admin request.
// BenchmarkRegistryCreate is the baseline of the same run: the registry's
// writes alone, so that the ratio shows what the API adds.

// benchAPI is a running API server and what a benchmark client needs.
type benchAPI struct {
	base  string
	reg   *registry.Store
	roots *x509.CertPool
	admin tls.Certificate
	csr   string // one PEM CSR, reused: the server signs it afresh each time
}

func newBenchAPI(b *testing.B) *benchAPI {
	b.Helper()
	dir := b.TempDir()
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), td)
	if err != nil {
		b.Fatal(err)
	}
	v := identity.NewVerifier(ca.Bundle())
	reg, err := registry.Open(filepath.Join(dir, "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = reg.Close() })
	cert, err := ca.IssueServerCert(spiffeid.RequireFromPath(td, "/ztgate"), []string{"localhost"},
		[]net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	eng, err := policy.NewEngine(defaultpolicy.FS, policy.Options{
		Logger: slog.New(slog.DiscardHandler),
		Data:   map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": td.Name()}}},
	})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Config{
		Addr:       "127.0.0.1:0",
		TLS:        identity.APIServerTLSConfig(cert, v),
		Registry:   reg,
		CA:         ca,
		Verifier:   v,
		Decider:    eng,
		Policy:     eng,
		EnrollRate: rate.Inf, // throughput, not the limiter, is measured
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Close() })

	adminID := spiffeid.RequireFromPath(td, "/admin/dev")
	if _, err := reg.Create(registry.Device{Name: "admin-dev", SPIFFEID: adminID.String(),
		Labels: map[string]string{"role": "admin"}}); err != nil {
		b.Fatal(err)
	}
	chainPEM, keyPEM, err := ca.IssueSVID(adminID, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	admin, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		b.Fatal(err)
	}
	_, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	return &benchAPI{base: "https://" + srv.Addr().String(), reg: reg, roots: roots, admin: admin, csr: string(csrPEM)}
}

// client returns an HTTP client presenting cert (none if nil); keepAlive
// false makes every request a new connection with a full mTLS handshake.
func (a *benchAPI) client(b *testing.B, cert *tls.Certificate, keepAlive bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: testclient.TLSConfig(a.roots, cert), DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func (a *benchAPI) post(c *http.Client, path string, body any, want int) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	resp, err := c.Post(a.base+path, "application/json", bytes.NewReader(raw))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, out)
	}
	return nil
}

// enrollDevice is `ztgate device enroll`: create the device, have a CSR
// signed for it.
func (a *benchAPI) enrollDevice(c *http.Client, name string) error {
	if err := a.post(c, "/v1/devices", CreateDeviceRequest{Name: name}, http.StatusCreated); err != nil {
		return err
	}
	return a.post(c, "/v1/devices/"+name+"/svid", SVIDRequest{CSR: a.csr}, http.StatusOK)
}

func reportRate(b *testing.B, unit string) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), unit)
}

// BenchmarkEnrollDevice is one enrollment by the admin (POST /v1/devices,
// then POST /v1/devices/NAME/svid): two policy decisions, two fsynced
// registry commits (the device with its audit entry, the SVID's audit
// entry), one signature. keepalive reuses one connection; new-connection
// makes a full mTLS handshake per request, as one CLI call per device
// does; parallel runs 4 clients per core on kept connections.
func BenchmarkEnrollDevice(b *testing.B) {
	for _, bc := range []struct {
		name      string
		keepAlive bool
	}{{"keepalive", true}, {"new-connection", false}} {
		b.Run(bc.name, func(b *testing.B) {
			a := newBenchAPI(b)
			c := a.client(b, &a.admin, bc.keepAlive)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := a.enrollDevice(c, fmt.Sprintf("dev-%d", i)); err != nil {
					b.Fatal(err)
				}
				i++
			}
			reportRate(b, "enrollments/s")
		})
	}
	b.Run("parallel", func(b *testing.B) {
		a := newBenchAPI(b)
		c := a.client(b, &a.admin, true)
		var next atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(4)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := a.enrollDevice(c, fmt.Sprintf("dev-%d", next.Add(1))); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRate(b, "enrollments/s")
	})
}

// BenchmarkRegistryCreate is the baseline: the registry's part of an
// enrollment without the API. create is registry.Create (one fsynced
// commit: the device and its audit entry); create+audit adds the SVID's
// audit entry (a second commit), the whole disk work of one enrollment.
func BenchmarkRegistryCreate(b *testing.B) {
	for _, withAudit := range []bool{false, true} {
		name, unit := "create", "creates/s"
		if withAudit {
			name, unit = "create+audit", "enrollments/s"
		}
		b.Run(name, func(b *testing.B) {
			reg, err := registry.Open(filepath.Join(b.TempDir(), "registry.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer reg.Close()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				name := fmt.Sprintf("dev-%d", i)
				if _, err := reg.Create(registry.Device{Name: name, SPIFFEID: "spiffe://" + td.Name() + "/device/" + name,
					Status: registry.StatusActive}, registry.WithActor("spiffe://"+td.Name()+"/admin/dev")); err != nil {
					b.Fatal(err)
				}
				if withAudit {
					if err := reg.RecordAudit(registry.AuditEntry{Actor: "spiffe://" + td.Name() + "/admin/dev",
						Action: actionSVIDIssue, Target: name, Result: registry.ResultOK}); err != nil {
						b.Fatal(err)
					}
				}
				i++
			}
			reportRate(b, unit)
		})
	}
}

// BenchmarkBootstrapEnroll is a device enrolling itself: POST /v1/enroll
// with a bootstrap token and a CSR, over server-auth TLS (no client
// certificate), rate limit off. The token is made outside the timer, by
// the registry directly. A redemption is one fsynced commit, the SVID's
// audit entry a second.
func BenchmarkBootstrapEnroll(b *testing.B) {
	a := newBenchAPI(b)
	c := a.client(b, nil, true)
	admin := "spiffe://" + td.Name() + "/admin/dev"
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("dev-%d", i)
		tok, _, err := a.reg.CreateToken(name, time.Hour, nil, "spiffe://"+td.Name()+"/device/"+name, admin)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := a.post(c, "/v1/enroll", EnrollRequest{Token: tok, CSR: a.csr}, http.StatusOK); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, "enrollments/s")
}
