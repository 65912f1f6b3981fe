package fakeworkload_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ztgate/ztgate/internal/fakeworkload"
	"github.com/ztgate/ztgate/internal/testpki"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("example.org")
	partnerTD = spiffeid.RequireTrustDomainFromString("partner.example")
	gatewayID = spiffeid.RequireFromPath(td, "/gateway")
)

func svidFor(t *testing.T, ca *testpki.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	cert := ca.Issue(t, id.String())
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert.Leaf}, PrivateKey: cert.PrivateKey.(crypto.Signer)}
}

func bundleOf(td spiffeid.TrustDomain, cas ...*testpki.CA) *x509bundle.Bundle {
	b := x509bundle.New(td)
	for _, ca := range cas {
		b.AddX509Authority(ca.Cert)
	}
	return b
}

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func client(t *testing.T, srv *fakeworkload.Server) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(ctx(t), workloadapi.WithAddr(srv.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestAddr(t *testing.T) {
	addr := fakeworkload.Start(t).Addr()
	if !strings.HasPrefix(addr, "unix:///") {
		t.Errorf("Addr = %q, want unix:///...", addr)
	}
	// sockaddr_un holds 104 bytes on macOS and 108 on Linux, with the NUL.
	if path := strings.TrimPrefix(addr, "unix://"); len(path) >= 104 {
		t.Errorf("socket path %q is %d bytes, too long for sockaddr_un", path, len(path))
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		t.Errorf("go-spiffe refuses the address: %v", err)
	}
}

// go-spiffe's client gets what SetX509 set: the SVIDs, the bundle of
// their trust domain and the federated bundles.
func TestFetchX509Context(t *testing.T) {
	ca, partner := testpki.NewCA(t, td.Name()), testpki.NewCA(t, partnerTD.Name())
	srv := fakeworkload.Start(t)
	svid := svidFor(t, ca, gatewayID)
	srv.SetX509([]*x509svid.SVID{svid}, bundleOf(td, ca), bundleOf(partnerTD, partner))

	x, err := client(t, srv).FetchX509Context(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := x.DefaultSVID(); got.ID != gatewayID || !got.Certificates[0].Equal(svid.Certificates[0]) {
		t.Errorf("SVID %s, want %s with the set certificate", got.ID, gatewayID)
	}
	for _, want := range []*x509bundle.Bundle{bundleOf(td, ca), bundleOf(partnerTD, partner)} {
		if b, err := x.Bundles.GetX509BundleForTrustDomain(want.TrustDomain()); err != nil || !b.Equal(want) {
			t.Errorf("bundle of %s: %v", want.TrustDomain(), err)
		}
	}
}

type recorder chan *workloadapi.X509Context

func (r recorder) OnX509ContextUpdate(x *workloadapi.X509Context) { r <- x }
func (r recorder) OnX509ContextWatchError(error)                  {}

// An open stream gets one message per SetX509, in order.
func TestWatchGetsEachUpdate(t *testing.T) {
	ca := testpki.NewCA(t, td.Name())
	srv := fakeworkload.Start(t)
	first, second := svidFor(t, ca, gatewayID), svidFor(t, ca, gatewayID)
	srv.SetX509([]*x509svid.SVID{first}, bundleOf(td, ca))

	updates := make(recorder, 8)
	watchCtx, cancel := context.WithCancel(ctx(t))
	done := make(chan error, 1)
	go func() { done <- client(t, srv).WatchX509Context(watchCtx, updates) }()
	next := func() *workloadapi.X509Context {
		t.Helper()
		select {
		case x := <-updates:
			return x
		case <-time.After(10 * time.Second):
			t.Fatal("no update")
			return nil
		}
	}
	if got := next().DefaultSVID(); !got.Certificates[0].Equal(first.Certificates[0]) {
		t.Error("first message is not the SVID set before the stream opened")
	}
	srv.SetX509([]*x509svid.SVID{second}, bundleOf(td, ca))
	if got := next().DefaultSVID(); !got.Certificates[0].Equal(second.Certificates[0]) {
		t.Error("the update is not the SVID set while the stream was open")
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled && err != context.Canceled {
		t.Errorf("watch ended with %v", err)
	}
}

func TestFetchX509Bundles(t *testing.T) {
	ca, partner := testpki.NewCA(t, td.Name()), testpki.NewCA(t, partnerTD.Name())
	srv := fakeworkload.Start(t)
	srv.SetX509([]*x509svid.SVID{svidFor(t, ca, gatewayID)}, bundleOf(td, ca), bundleOf(partnerTD, partner))

	set, err := client(t, srv).FetchX509Bundles(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 2 {
		t.Errorf("%d bundles, want own and partner", set.Len())
	}
	if b, err := set.GetX509BundleForTrustDomain(partnerTD); err != nil || !b.Equal(bundleOf(partnerTD, partner)) {
		t.Errorf("partner bundle: %v", err)
	}
}

// Like SPIRE's agent, the server refuses a call without the
// workload.spiffe.io header, which only a real Workload API client sends.
func TestSecurityHeader(t *testing.T) {
	ca := testpki.NewCA(t, td.Name())
	srv := fakeworkload.Start(t)
	srv.SetX509([]*x509svid.SVID{svidFor(t, ca, gatewayID)}, bundleOf(td, ca))
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := workload.NewSpiffeWorkloadAPIClient(conn)

	for name, c := range map[string]context.Context{
		"without the header": ctx(t),
		"header false":       metadata.AppendToOutgoingContext(ctx(t), "workload.spiffe.io", "false"),
		"with the header":    metadata.AppendToOutgoingContext(ctx(t), "workload.spiffe.io", "true"),
	} {
		stream, err := api.FetchX509SVID(c, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		if name == "with the header" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func TestOtherMethodsUnimplemented(t *testing.T) {
	srv := fakeworkload.Start(t)
	_, err := client(t, srv).FetchJWTSVID(ctx(t), jwtsvid.Params{Audience: "x"})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("FetchJWTSVID: %v, want Unimplemented", err)
	}
}
