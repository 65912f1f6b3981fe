package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// WorkloadSourceOptions configures NewWorkloadSource.
type WorkloadSourceOptions struct {
	// Socket is the Workload API address, unix:///path/to/agent.sock (or
	// tcp://IP:PORT). Empty: the SPIFFE_ENDPOINT_SOCKET environment
	// variable, as every SPIFFE workload reads it.
	Socket string
	// TrustDomain is the gateway's trust domain: its SVID must be in it.
	TrustDomain spiffeid.TrustDomain
	// Logger gets updates and the Workload API client's errors; nil
	// discards them.
	Logger *slog.Logger
}

// WorkloadSource is a Source fed by a SPIFFE Workload API, a SPIRE agent's:
// the agent pushes a new SVID before the current one expires and every
// bundle change (own trust domain and federated ones) as it happens, over
// one stream that go-spiffe's client reopens with backoff when it breaks.
//
// It watches the stream itself rather than through go-spiffe's X509Source
// so that it sees whole updates: an update that changes nothing is not
// reported, and an SVID outside the trust domain is refused while the
// bundles of the same update still apply.
type WorkloadSource struct {
	addr    string
	td      spiffeid.TrustDomain
	log     *slog.Logger
	client  *workloadapi.Client
	updated chan struct{}
	first   chan struct{} // closed at the first update
	cancel  context.CancelFunc
	done    chan struct{} // closed when the watch ends
	watch   error         // why the watch ended, once done is closed

	mu        sync.RWMutex
	state     *workloadState
	closed    bool
	closeOnce sync.Once
	firstOnce sync.Once
}

var _ Source = (*WorkloadSource)(nil)

// workloadState is one update of the Workload API.
type workloadState struct {
	svid    *x509svid.SVID // nil when svidErr is set
	svidErr error
	bundles *x509bundle.Set
}

// NewWorkloadSource connects to the Workload API and waits for the first
// X.509 context until ctx ends. The gateway's SVID (the first the agent
// sends in opts.TrustDomain) must be in the trust domain.
func NewWorkloadSource(ctx context.Context, opts WorkloadSourceOptions) (*WorkloadSource, error) {
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("identity: workload API: no trust domain")
	}
	addr := opts.Socket
	if addr == "" {
		addr = os.Getenv(workloadapi.SocketEnv)
	}
	if addr == "" {
		return nil, fmt.Errorf("identity: workload API: no socket configured (workload_api_socket) and %s is not set", workloadapi.SocketEnv)
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return nil, fmt.Errorf("identity: workload API %q: %w; want unix:///path/to/agent.sock or tcp://IP:PORT", addr, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clientLog := &workloadLogger{log: log}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr), workloadapi.WithLogger(clientLog))
	if err != nil {
		return nil, fmt.Errorf("identity: workload API %s: %w", addr, err)
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	s := &WorkloadSource{
		addr:    addr,
		td:      opts.TrustDomain,
		log:     log,
		client:  client,
		updated: make(chan struct{}, 1),
		first:   make(chan struct{}),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		s.watch = client.WatchX509Context(watchCtx, s)
	}()

	select {
	case <-s.first:
	case <-s.done:
		_ = s.Close()
		return nil, fmt.Errorf("identity: workload API %s: %w", addr, s.watch)
	case <-ctx.Done():
		_ = s.Close()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("identity: workload API %s: no X.509-SVID received before the deadline: %w%s", addr, ctx.Err(), clientLog.lastError())
		}
		return nil, fmt.Errorf("identity: workload API %s: no X.509-SVID received: %w%s", addr, ctx.Err(), clientLog.lastError())
	}
	s.mu.RLock()
	svidErr := s.state.svidErr
	s.mu.RUnlock()
	if svidErr != nil {
		_ = s.Close()
		return nil, fmt.Errorf("identity: workload API %s: %w", addr, svidErr)
	}
	return s, nil
}

// OnX509ContextUpdate takes an update of the Workload API; it is called by
// go-spiffe's client on the watch goroutine. An update equal to the state
// in force is no change.
func (s *WorkloadSource) OnX509ContextUpdate(x *workloadapi.X509Context) {
	next := s.stateOf(x)
	s.mu.Lock()
	prev := s.state
	changed := !next.equal(prev)
	if changed {
		s.state = next
	}
	s.mu.Unlock()

	s.firstOnce.Do(func() { close(s.first) })
	if prev == nil {
		s.logState("identity: workload API: first X.509 context", next)
		return
	}
	if !changed {
		s.log.Debug("identity: workload API update, unchanged")
		return
	}
	s.logState("identity: workload API update", next)
	select {
	case s.updated <- struct{}{}:
	default:
	}
}

// OnX509ContextWatchError is a broken stream or an update go-spiffe could
// not parse; the client retries and the state in force stays. The client
// logs the error through workloadLogger.
func (s *WorkloadSource) OnX509ContextWatchError(error) {}

// stateOf picks the gateway's SVID out of an update: the first in the
// trust domain. With none, the gateway serves nothing until the agent
// sends one, rather than an identity outside its trust domain.
func (s *WorkloadSource) stateOf(x *workloadapi.X509Context) *workloadState {
	st := &workloadState{bundles: x.Bundles}
	if st.bundles == nil {
		st.bundles = x509bundle.NewSet()
	}
	var ids []string
	for _, svid := range x.SVIDs {
		if svid == nil || len(svid.Certificates) == 0 {
			continue
		}
		if svid.ID.MemberOf(s.td) && svid.ID.Path() != "" {
			st.svid = svid
			return st
		}
		ids = append(ids, svid.ID.String())
	}
	st.svidErr = fmt.Errorf("the agent's SVIDs (%s) are not in trust domain %q", strings.Join(ids, ", "), s.td)
	return st
}

func (s *WorkloadSource) logState(msg string, st *workloadState) {
	tds := make([]string, 0, st.bundles.Len())
	for _, b := range st.bundles.Bundles() {
		tds = append(tds, b.TrustDomain().Name())
	}
	if st.svidErr != nil {
		s.log.Error(msg+"; no SVID is served until the agent sends one in the trust domain",
			"addr", s.addr, "err", st.svidErr, "bundles", tds)
		return
	}
	leaf := st.svid.Certificates[0]
	s.log.Info(msg, "addr", s.addr, "spiffe_id", st.svid.ID.String(), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "bundles", tds)
}

func (a *workloadState) equal(b *workloadState) bool {
	if a == nil || b == nil {
		return a == b
	}
	switch {
	case (a.svid == nil) != (b.svid == nil):
		return false
	case a.svid != nil && !slices.EqualFunc(a.svid.Certificates, b.svid.Certificates, certEqual):
		return false
	case a.svidErr != nil && a.svidErr.Error() != b.svidErr.Error():
		return false
	case a.bundles.Len() != b.bundles.Len():
		return false
	}
	for _, ab := range a.bundles.Bundles() {
		if bb, ok := b.bundles.Get(ab.TrustDomain()); !ok || !ab.Equal(bb) {
			return false
		}
	}
	return true
}

func certEqual(a, b *x509.Certificate) bool { return a.Equal(b) }

// GetX509SVID is the gateway's SVID of the latest update. The caller gets
// its own copy of the chain slice.
func (s *WorkloadSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.closed:
		return nil, errors.New("identity: workload API source is closed")
	case s.state.svidErr != nil:
		return nil, fmt.Errorf("identity: workload API %s: %w", s.addr, s.state.svidErr)
	}
	svid := *s.state.svid
	svid.Certificates = slices.Clone(svid.Certificates)
	return &svid, nil
}

// GetX509BundleForTrustDomain is a copy of td's bundle of the latest
// update, for the own and every federated trust domain the agent sent.
func (s *WorkloadSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("identity: workload API source is closed")
	}
	b, ok := s.state.bundles.Get(td)
	if !ok {
		return nil, fmt.Errorf("identity: the workload API sent no bundle for trust domain %q", td)
	}
	return b.Clone(), nil
}

// TrustDomains lists the trust domains of the bundles of the latest
// update, sorted: the own one and those SPIRE federates with.
func (s *WorkloadSource) TrustDomains() []spiffeid.TrustDomain {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil
	}
	var tds []spiffeid.TrustDomain
	for _, b := range s.state.bundles.Bundles() {
		tds = append(tds, b.TrustDomain())
	}
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.String(), b.String()) })
	return tds
}

// Updated has a value after each update that changed the SVID or a bundle.
func (s *WorkloadSource) Updated() <-chan struct{} { return s.updated }

// Close ends the watch and the connection. The source serves nothing
// after.
func (s *WorkloadSource) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		<-s.done
		err = s.client.Close()
		if err != nil {
			err = fmt.Errorf("identity: workload API %s: closing: %w", s.addr, err)
		}
	})
	return err
}

// workloadLogger passes go-spiffe's client logs to slog and keeps the
// last error, so a start that times out can say why the agent gave
// nothing (no socket, connection refused, permission denied).
type workloadLogger struct {
	log  *slog.Logger
	mu   sync.Mutex
	last string
}

func (l *workloadLogger) Debugf(format string, args ...any) {
	l.log.Debug("identity: workload API client: " + fmt.Sprintf(format, args...))
}

func (l *workloadLogger) Infof(format string, args ...any) {
	l.log.Info("identity: workload API client: " + fmt.Sprintf(format, args...))
}

func (l *workloadLogger) Warnf(format string, args ...any) {
	l.log.Warn("identity: workload API client: " + fmt.Sprintf(format, args...))
}

func (l *workloadLogger) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.last = msg
	l.mu.Unlock()
	// The client retries with backoff; until it gets through, the state
	// in force stays, so this is a warning, not a failure.
	l.log.Warn("identity: workload API client: " + msg)
}

// lastError is "" or " (last error: ...)" for an error message.
func (l *workloadLogger) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == "" {
		return ""
	}
	return " (last error: " + l.last + ")"
}
