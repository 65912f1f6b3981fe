// Package fakeworkload is a SPIFFE Workload API server for tests: the gRPC
// service a SPIRE agent serves, on a unix socket, handing out whatever
// X.509-SVIDs and bundles the test sets, and pushing every change to the
// open streams as the agent does on rotation.
//
// Like the agent, it refuses calls without the "workload.spiffe.io: true"
// metadata header, which only Workload API clients send, so a test cannot
// pass with a client that would fail against SPIRE. It does no workload
// attestation: every caller gets the same SVIDs. Only the X.509 methods
// are implemented; the others answer Unimplemented.
package fakeworkload

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Server is a running Workload API server.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	t    testing.TB
	addr string
	grpc *grpc.Server

	mu      sync.Mutex
	svids   *workload.X509SVIDResponse    // nil until the first SetX509
	bundles *workload.X509BundlesResponse // nil until the first SetX509
	changed chan struct{}                 // closed and replaced by SetX509
}

// Start serves the Workload API on a unix socket in a new temporary
// directory, stopped and removed by t.Cleanup. The directory is made
// under the system's temporary directory with a short name, not under
// t.TempDir: a socket path must fit sockaddr_un (104 bytes on macOS, 108
// on Linux), which a test's temporary directory can exceed.
//
// Until the first SetX509 a FetchX509SVID or FetchX509Bundles stream
// stays open without a message, like an agent whose registration entries
// have not reached it yet.
func Start(t testing.TB) *Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "fwl")
	if err != nil {
		t.Fatalf("fakeworkload: %v", err)
	}
	path := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatalf("fakeworkload: %v", err)
	}
	s := &Server{t: t, addr: "unix://" + path, changed: make(chan struct{})}
	s.grpc = grpc.NewServer(
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := checkHeader(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := checkHeader(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.grpc.Serve(ln)
	}()
	t.Cleanup(func() {
		// Stop, not GracefulStop: clients hold streams open for updates.
		s.grpc.Stop()
		<-served
		_ = os.RemoveAll(dir)
	})
	return s
}

// checkHeader is SPIRE's check: the header proves the caller is a
// Workload API client and not, say, a browser tricked into a request.
func checkHeader(ctx context.Context) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// Addr is the socket address for go-spiffe: "unix:///...".
func (s *Server) Addr() string { return s.addr }

// SetX509 replaces what the server hands out and pushes it to every open
// stream: the SVIDs (each sent with its chain as given, and with bundle as
// the bundle of its trust domain) and the federated bundles. A nil bundle
// is sent as an empty one.
func (s *Server) SetX509(svids []*x509svid.SVID, bundle *x509bundle.Bundle, federated ...*x509bundle.Bundle) {
	s.t.Helper()
	own := rawBundle(bundle)
	resp := &workload.X509SVIDResponse{FederatedBundles: map[string][]byte{}}
	bundles := &workload.X509BundlesResponse{Bundles: map[string][]byte{}}
	for _, svid := range svids {
		chain, key, err := svid.MarshalRaw()
		if err != nil {
			s.t.Fatalf("fakeworkload: SVID %s: %v", svid.ID, err)
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    svid.ID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      own,
			Hint:        svid.Hint,
		})
		bundles.Bundles[svid.ID.TrustDomain().IDString()] = own
	}
	if bundle != nil {
		bundles.Bundles[bundle.TrustDomain().IDString()] = own
	}
	for _, b := range federated {
		resp.FederatedBundles[b.TrustDomain().IDString()] = rawBundle(b)
		bundles.Bundles[b.TrustDomain().IDString()] = rawBundle(b)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.svids, s.bundles = resp, bundles
	close(s.changed)
	s.changed = make(chan struct{})
}

func rawBundle(b *x509bundle.Bundle) []byte {
	if b == nil {
		return nil
	}
	var buf bytes.Buffer
	for _, c := range b.X509Authorities() {
		buf.Write(c.Raw)
	}
	return buf.Bytes()
}

func (s *Server) current() (*workload.X509SVIDResponse, *workload.X509BundlesResponse, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svids, s.bundles, s.changed
}

// FetchX509SVID sends the current SVIDs, then one message per SetX509
// until the client goes away.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return pushUpdates(stream.Context(), s, func(svids *workload.X509SVIDResponse, _ *workload.X509BundlesResponse) *workload.X509SVIDResponse {
		return svids
	}, stream.Send)
}

// FetchX509Bundles sends the current bundles, then one message per
// SetX509 until the client goes away.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return pushUpdates(stream.Context(), s, func(_ *workload.X509SVIDResponse, bundles *workload.X509BundlesResponse) *workload.X509BundlesResponse {
		return bundles
	}, stream.Send)
}

// pushUpdates sends the message pick makes of the current state (none
// before the first SetX509), then again after each SetX509. The state and
// its change channel are taken together, so each state is sent once and a
// SetX509 during a send is not missed.
func pushUpdates[T any](ctx context.Context, s *Server, pick func(*workload.X509SVIDResponse, *workload.X509BundlesResponse) *T, send func(*T) error) error {
	for {
		svids, bundles, changed := s.current()
		if msg := pick(svids, bundles); msg != nil {
			if err := send(msg); err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}
