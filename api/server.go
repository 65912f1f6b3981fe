// Package api is ztgate's admin and enrollment API: JSON over HTTPS on its
// own port. Every admin request needs a verified client X.509-SVID and is
// decided by the policy engine with action "admin", for the peer's SPIFFE ID
// and its registry entry; there is no other way in. Four kinds of request
// need no admin decision: a device renewing its own SVID (a verified SVID of
// an active device), enrollment with a one-time bootstrap token (no client
// certificate; rate limited per remote address), the health probes, and the
// trust domain's bundle (GET /v1/bundle, a SPIFFE bundle endpoint). Without
// a CA (identities from files or SPIRE) the routes that sign answer 409.
// Every admin and enrollment action leaves an entry in the registry's audit
// log. The routes and their schemas are described in openapi.yaml, which the
// tests hold to the server.
package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/console"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

const (
	// DefaultSVIDTTL is the lifetime of an X.509-SVID signed by the API when
	// Config.SVIDTTL is zero.
	DefaultSVIDTTL = 24 * time.Hour

	// maxBodyBytes bounds a request body unless its route says otherwise;
	// a CSR or a device is far smaller.
	maxBodyBytes = 64 << 10
	// maxImportBodyBytes bounds an import (at most maxImportRows rows).
	maxImportBodyBytes = 2 << 20
	// maxModuleBodyBytes bounds an uploaded Rego module.
	maxModuleBodyBytes = 1 << 20

	// decisionTimeout bounds one admin decision, on top of the engine's own
	// deadline, so a stuck evaluation cannot hold a request open.
	decisionTimeout = 2 * time.Second

	shutdownTimeout = 5 * time.Second
)

// Config configures a Server. TLS, Registry, Verifier, Decider and a CA or
// a TrustDomain are required.
type Config struct {
	Addr string
	// TLS is the listener's configuration, identity.APIServerTLSConfig: a
	// client SVID is optional (enrollment and probes come without one) and
	// verified in the handshake when presented. The server verifies the
	// peer again on every request that needs one, so a weaker config cannot
	// let an unverified peer through. With a config that requires a client
	// certificate (identity.ServerTLSConfig) everything works but
	// enrollment by token and anonymous probes.
	TLS      *tls.Config
	Registry *registry.Store
	// CA signs device SVIDs. Nil when the gateway's identities come from
	// elsewhere (an operator's PKI, SPIRE): the routes that sign answer
	// 409, and TrustDomain must be set.
	CA *identity.CA
	// TrustDomain is the gateway's own trust domain, where devices are
	// enrolled by default; zero means the CA's.
	TrustDomain spiffeid.TrustDomain
	// TrustDomains lists the trust domains the gateway serves, its own and
	// the federated ones: a device may be registered with a SPIFFE ID of
	// any of them. Nil means the own trust domain only.
	TrustDomains func() []spiffeid.TrustDomain
	// IdentitySource names where the gateway's identities come from
	// (files, workload_api), for the answer of a signing route without CA.
	IdentitySource string
	// BundleEndpoint serves GET /v1/bundle, the own trust domain's SPIFFE
	// bundle for partners that federate with it; nil answers 404.
	BundleEndpoint http.Handler
	Verifier       *identity.Verifier
	Decider        policy.Decider
	// Sessions lists the live MQTT sessions, of spiffeID only when it is
	// not empty (a hint: the API filters again); in a cluster, every
	// node's. An error matching ErrUnavailable answers 503 (a node did not
	// answer); nil means none.
	Sessions func(ctx context.Context, spiffeID string) ([]brokerview.Session, error)
	// SVIDTTL is the lifetime of signed SVIDs; zero means DefaultSVIDTTL.
	SVIDTTL time.Duration
	// Logger receives one line per request; nil means slog.Default().
	Logger *slog.Logger
	// Metrics is the registry /metrics serves and the API's own metrics are
	// registered in; nil means a fresh one with the Go and process collectors.
	Metrics *prometheus.Registry
	// Policy administers the policy engine (status, module upload, dry
	// runs); nil makes the /v1/policy routes answer 501.
	Policy PolicyAdmin
	// Console signs operators in to the web console and holds their
	// sessions; nil serves no console: /ui/ answers 404 and the
	// /v1/console routes 501.
	Console *console.Console
	// Sampler keeps the decision rate the overview shows; the server
	// runs it from Start to Close. Nil shows no points.
	Sampler *console.Sampler
	// Denials is where GET /v1/denials/stream takes the denies it
	// streams (the decision log); nil answers 501.
	Denials DenialSource
	// EnrollRate and EnrollBurst limit POST /v1/enroll per remote address
	// (IPv4 address or IPv6 /64); zero means DefaultEnrollRate and
	// DefaultEnrollBurst, rate.Inf means no limit.
	EnrollRate  rate.Limit
	EnrollBurst int
	// Ready reports whether the rest of the process (the gateway's
	// listeners, say) is ready; GET /readyz fails while it returns an
	// error. The API checks the registry and the policy revision itself;
	// nil adds nothing to those checks.
	Ready func() error
	// RenewRate and RenewBurst limit POST /v1/svid/renew per SPIFFE ID;
	// zero means DefaultRenewRate and DefaultRenewBurst, rate.Inf means
	// no limit.
	RenewRate  rate.Limit
	RenewBurst int
	// Bridges reports the bridges to upstream brokers; nil means there are
	// none.
	Bridges func() []bridge.Status
	// ListRetained lists at most limit of the gateway's retained messages
	// whose topics match filter (a valid MQTT filter, not a shared one);
	// nil means there are none.
	ListRetained func(filter string, limit int) ([]brokerview.RetainedMessage, error)
	// DeleteRetained removes the retained message of a topic name and
	// reports whether there was one; nil means there never is.
	DeleteRetained func(topic string) (bool, error)

	// ioTimeout replaces the server's 30 s read and write timeouts; tests
	// shorten it to see a stream outlive them.
	ioTimeout time.Duration
	// KickSessions ends the live MQTT connections of the identity
	// spiffeID (MQTT 5 clients get DISCONNECT 0x98) without changing its
	// registry entry, and reports how many it ended; in a cluster, on
	// every node. An error matching ErrUnavailable comes with the count
	// of the part done and answers 503. nil means there are none to end.
	KickSessions func(ctx context.Context, spiffeID string) (int, error)
}

// Server is the admin API server.
type Server struct {
	cfg       Config
	log       *slog.Logger
	mux       *http.ServeMux
	byPattern map[string]*route
	csrf      *http.CrossOriginProtection
	metrics   *metrics
	metricsH  http.Handler
	srv       *http.Server
	// enrollLimit is the per-address limit of enrollment attempts.
	enrollLimit *addrLimiter
	// renewLimit is the per-identity limit of SVID renewals.
	renewLimit *addrLimiter
	// refusalAudit bounds how many refusals and failures per second are
	// written to the audit log (see record).
	refusalAudit *rate.Limiter
	// now is the clock of token expiry and rate limits (tests move it).
	now func() time.Time

	mu       sync.Mutex
	listener net.Listener
	started  bool
	done     chan struct{} // closed when Serve returns

	// closing is closed when Close begins, ending the long-lived
	// responses (the denial stream) that Shutdown would otherwise wait
	// for; stopSampler ends the sampler.
	closing     chan struct{}
	closeOnce   sync.Once
	stopSampler context.CancelFunc
	// assets serves the console's embedded files.
	assets http.Handler
	// overviewCounts caches the registry's device counts (overview.go).
	overviewCounts deviceCounts
}

// New checks cfg and builds a Server. It does not listen; see Start.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.TLS == nil:
		return nil, errors.New("api: TLS config is required (the API has no plaintext mode)")
	case cfg.Registry == nil:
		return nil, errors.New("api: registry is required")
	case cfg.CA == nil && cfg.TrustDomain.IsZero():
		return nil, errors.New("api: a trust domain is required when there is no CA")
	case cfg.CA != nil && !cfg.TrustDomain.IsZero() && cfg.CA.TrustDomain() != cfg.TrustDomain:
		return nil, fmt.Errorf("api: the CA is of trust domain %q, not %q", cfg.CA.TrustDomain(), cfg.TrustDomain)
	case cfg.Verifier == nil:
		return nil, errors.New("api: verifier is required")
	case cfg.Decider == nil:
		return nil, errors.New("api: policy decider is required")
	case cfg.SVIDTTL < 0:
		return nil, fmt.Errorf("api: negative SVID TTL %s", cfg.SVIDTTL)
	case cfg.EnrollRate < 0:
		return nil, fmt.Errorf("api: negative enrollment rate %v", cfg.EnrollRate)
	case cfg.EnrollBurst < 0:
		return nil, fmt.Errorf("api: negative enrollment burst %d", cfg.EnrollBurst)
	case cfg.RenewRate < 0:
		return nil, fmt.Errorf("api: negative renewal rate %v", cfg.RenewRate)
	case cfg.RenewBurst < 0:
		return nil, fmt.Errorf("api: negative renewal burst %d", cfg.RenewBurst)
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = cfg.CA.TrustDomain()
	}
	if cfg.SVIDTTL == 0 {
		cfg.SVIDTTL = DefaultSVIDTTL
	}
	if cfg.EnrollRate == 0 {
		cfg.EnrollRate = DefaultEnrollRate
	}
	if cfg.EnrollBurst == 0 {
		cfg.EnrollBurst = DefaultEnrollBurst
	}
	if cfg.RenewRate == 0 {
		cfg.RenewRate = DefaultRenewRate
	}
	if cfg.RenewBurst == 0 {
		cfg.RenewBurst = DefaultRenewBurst
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
		cfg.Metrics.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	limiter, err := newAddrLimiter(cfg.EnrollRate, cfg.EnrollBurst, maxLimitedAddrs)
	if err != nil {
		return nil, err
	}
	renewLimiter, err := newAddrLimiter(cfg.RenewRate, cfg.RenewBurst, maxLimitedIDs)
	if err != nil {
		return nil, err
	}

	s := &Server{
		cfg:          cfg,
		log:          cfg.Logger,
		mux:          http.NewServeMux(),
		byPattern:    make(map[string]*route),
		csrf:         http.NewCrossOriginProtection(),
		metrics:      m,
		enrollLimit:  limiter,
		renewLimit:   renewLimiter,
		refusalAudit: rate.NewLimiter(refusalAuditRate, refusalAuditBurst),
		now:          time.Now,
		done:         make(chan struct{}),
		closing:      make(chan struct{}),
		assets:       console.Assets(),
	}
	s.metricsH = promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelError),
	})
	for i := range routes {
		rt := &routes[i]
		h := rt.handler
		s.mux.HandleFunc(rt.pattern(), func(w http.ResponseWriter, r *http.Request) { h(s, w, r) })
		s.byPattern[rt.pattern()] = rt
	}
	ioTimeout := 30 * time.Second
	if cfg.ioTimeout > 0 {
		ioTimeout = cfg.ioTimeout
	}
	if cfg.TLS.ClientAuth == tls.RequireAnyClientCert || cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert {
		cfg.Logger.Warn("api: the TLS config requires a client certificate; enrollment by bootstrap token " +
			"and anonymous probes will fail in the handshake (use identity.APIServerTLSConfig)")
	}
	s.srv = &http.Server{
		Addr:              cfg.Addr,
		Handler:           http.HandlerFunc(s.serve),
		TLSConfig:         cfg.TLS.Clone(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       ioTimeout,
		WriteTimeout:      ioTimeout,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Handler returns the API's HTTP handler. It expects requests that arrived
// over TLS (r.TLS set); any other request is refused with 401, since a
// bootstrap token sent in the clear would be spent by whoever saw it.
func (s *Server) Handler() http.Handler { return s.srv.Handler }

// Start listens on Config.Addr and serves in the background. The listener is
// open when Start returns.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("api: server already started")
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("api: listen: %w", err)
	}
	s.listener = ln
	s.started = true
	if s.cfg.Sampler != nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.stopSampler = cancel
		go s.cfg.Sampler.Run(ctx)
	}
	go func() {
		defer close(s.done)
		// ServeTLS (not a bare tls.NewListener) so HTTP/2 is negotiated.
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("api: serve", "addr", ln.Addr().String(), "err", err)
		}
	}()
	s.log.Info("api: listening", "addr", ln.Addr().String())
	return nil
}

// Addr returns the listening address, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return nil
	}
	return s.listener.Addr()
}

// Close shuts the server down gracefully, giving in-flight requests a few
// seconds before their connections are closed.
func (s *Server) Close() error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	// Streams end first: Shutdown waits for every active request, and a
	// stream would hold it for the whole timeout.
	s.closeOnce.Do(func() { close(s.closing) })
	if s.stopSampler != nil {
		s.stopSampler()
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	if err != nil {
		return fmt.Errorf("api: shutdown: %w", err)
	}
	return nil
}

// serve is the one entry point of every request: body limit, CSRF check,
// authentication and the admin decision as the route requires, routing,
// the audit entry of a failed action, then a log line and metrics.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	st := &reqState{}
	var pattern string
	defer func() {
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		route := pattern
		if route == "" {
			route = "unmatched"
		}
		d := time.Since(start)
		s.metrics.observe(r.Method, route, status, d)
		s.log.Info("api request",
			"method", r.Method,
			"path", r.URL.EscapedPath(),
			"status", status,
			"spiffe_id", st.peer,
			"remote_addr", r.RemoteAddr,
			"duration", d,
		)
	}()

	if r.TLS == nil {
		writeError(rec, http.StatusUnauthorized, "the API is served over TLS only")
		return
	}
	// Before routing: the router, the policy and the handler must all see
	// the one path.
	if err := checkPath(r.URL); err != nil {
		writeError(rec, http.StatusBadRequest, err.Error())
		return
	}
	_, pattern = s.mux.Handler(r)
	rt := s.byPattern[pattern] // nil: unknown path or method

	limit := int64(maxBodyBytes)
	acc := adminAccess // unknown routes too: nothing is answered anonymously by default
	if rt != nil {
		limit, acc = rt.bodyLimit(), rt.access
	}
	// The server's own writer, so that it closes the connection after an
	// oversized body instead of draining it.
	r.Body = http.MaxBytesReader(w, r.Body, limit)

	// A browser holding an admin certificate must not be turned into a
	// confused deputy by another site. Safe methods pass the check.
	if err := s.csrf.Check(r); err != nil {
		writeError(rec, http.StatusForbidden, "cross-origin request refused")
		return
	}
	switch acc {
	case adminAccess:
		id, ok := s.authorize(rec, r, rt, st)
		st.peer = id
		if !ok {
			return
		}
	case selfAccess:
		id, ok := s.authenticate(rec, r)
		st.peer = id.String()
		if !ok {
			return
		}
	}

	if rt != nil && rt.signs && s.cfg.CA == nil {
		// After the caller is known and authorized, so that the answer
		// (which names the identity source) goes only to who may ask.
		writeError(rec, http.StatusConflict, s.noCAMessage())
	} else {
		r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
		var out http.ResponseWriter = rec
		if pattern == "" {
			// ServeMux answers unknown paths and methods in plain text.
			out = &jsonErrors{ResponseWriter: rec}
		}
		s.mux.ServeHTTP(out, r)
	}

	// A failed change by an authenticated caller is audited here unless
	// the handler recorded it itself. Reads are not audited: the request
	// log has them, and the audit log is written to disk.
	if rt != nil && acc != publicAccess && r.Method != http.MethodGet && rec.status >= 400 && !st.audited {
		result := registry.ResultError
		if rec.status == http.StatusForbidden {
			result = registry.ResultDenied
		}
		target := st.target
		if target == "" {
			target = r.URL.EscapedPath()
		}
		_ = s.record(r, registry.AuditEntry{Actor: st.peer, Action: rt.action, Target: target, Result: result,
			Detail: fmt.Sprintf("%d: %s", rec.status, rec.errorMessage())})
	}
}

// NoCAPrefix starts the 409 answer of a signing route on a gateway without
// a CA, so that clients can tell it from the other conflicts.
const NoCAPrefix = "api: this gateway signs no certificates"

// noCAMessage is the answer of a signing route on a gateway without CA.
func (s *Server) noCAMessage() string {
	src := s.cfg.IdentitySource
	if src == "" {
		src = "external"
	}
	return fmt.Sprintf(NoCAPrefix+" (identity source %s): "+
		"its devices get their SVIDs from the PKI or SPIRE server that issues them; "+
		"register a device's SPIFFE ID with POST /v1/devices (ztgate device register)", src)
}

// reqState is what serve learns about a request, shared with its handler
// through the request context.
type reqState struct {
	peer string // the verified SPIFFE ID of the caller, "" when anonymous
	// console is the console session the caller was authenticated by,
	// nil for a client certificate.
	console *console.Session
	target  string // what the request acts on, for the audit log (set by handlers)
	// audited is set by a handler that recorded the request's outcome in
	// the audit log itself.
	audited bool
}

type stateKey struct{}

// stateOf returns the request's state; a handler reached without serve (it
// never is) gets a throwaway one, so nothing dereferences nil.
func stateOf(r *http.Request) *reqState {
	if st, ok := r.Context().Value(stateKey{}).(*reqState); ok {
		return st
	}
	return &reqState{}
}

// authenticate returns the peer's verified SPIFFE ID, or answers 401.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (spiffeid.ID, bool) {
	if r.TLS == nil {
		writeError(w, http.StatusUnauthorized, "a client X.509-SVID is required")
		return spiffeid.ID{}, false
	}
	id, err := s.cfg.Verifier.PeerID(*r.TLS)
	if err != nil {
		s.log.Warn("api: peer not verified", "remote_addr", r.RemoteAddr, "err", err)
		writeError(w, http.StatusUnauthorized, "a valid client X.509-SVID is required")
		return spiffeid.ID{}, false
	}
	return id, true
}

// authorize authenticates the peer and decides whether it may make this
// admin request (rt is nil for an unknown route; see admit). It writes the
// error response itself, audits a refusal, and returns false when the
// request must not proceed.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, rt *route, st *reqState) (spiffeID string, ok bool) {
	id, sess, ok := s.authenticateAdmin(w, r)
	if sess != nil {
		st.console = sess
		// Known even when refused (a missing CSRF token), for the audit.
		spiffeID = id.String()
	}
	if !ok {
		return spiffeID, false
	}
	spiffeID = id.String()
	action := "api.request"
	if rt != nil {
		action = rt.action
	}
	ctx, cancel := context.WithTimeout(r.Context(), decisionTimeout)
	defer cancel()
	ref, err := s.admit(ctx, r, id, routeName(rt))
	if err != nil {
		s.internalError(w, "registry lookup of peer", err)
		return spiffeID, false
	}
	if ref == nil {
		return spiffeID, true
	}
	if dec := ref.decision; dec != nil {
		s.metrics.denied.Inc()
		s.log.Info("api: denied by policy", "spiffe_id", spiffeID, "method", r.Method,
			"path", r.URL.Path, "reasons", dec.Reasons, "revision", dec.Revision, "decision_id", dec.ID)
	} else {
		s.log.Info("api: refused before the policy", "spiffe_id", spiffeID, "method", r.Method,
			"path", r.URL.Path, "why", ref.detail)
	}
	_ = s.record(r, registry.AuditEntry{Actor: spiffeID, Action: action,
		Target: r.Method + " " + r.URL.EscapedPath(), Result: registry.ResultDenied, Detail: ref.detail})
	writeError(w, http.StatusForbidden, ref.msg)
	return spiffeID, false
}

// refusal is why a verified peer may not make an admin request.
type refusal struct {
	msg    string // the answer's error message
	detail string // for the audit entry
	// decision is the policy's denial; nil when the request was refused
	// before the policy was asked.
	decision *policy.Decision
}

// routeName is the name the policy sees for a route: its action in the
// route table, "" when no route matched.
func routeName(rt *route) string {
	if rt == nil {
		return ""
	}
	return rt.action
}

// admit decides whether the verified peer id may make the admin request r
// on the route named route: nil when it may, else why not. An error is a
// failed registry lookup; the caller must refuse.
//
// An enrolled identity that is not active is refused here, before the
// policy is asked and whatever it would say, as the gateway refuses it at
// CONNECT: a policy that forgets the status must not keep a revoked admin
// in. An identity that is not enrolled is the policy's to decide (it sees
// device null).
func (s *Server) admit(ctx context.Context, r *http.Request, id spiffeid.ID, route string) (*refusal, error) {
	spiffeID := id.String()
	dev, err := s.cfg.Registry.GetBySPIFFEID(spiffeID)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		// Not enrolled: the policy sees device null and decides.
		dev = nil
	case err != nil:
		return nil, err
	case dev.Status != registry.StatusActive:
		return &refusal{
			msg:    fmt.Sprintf("device %q is %s; only an active identity uses the API", dev.Name, dev.Status),
			detail: fmt.Sprintf("device %s is %s: refused before the policy", dev.Name, dev.Status),
		}, nil
	}

	in := &policy.Input{
		Action: policy.ActionAdmin,
		// The subject the gateway would build for the same identity: an
		// admin rule reads the same identity and device documents as an
		// MQTT rule. An HTTP caller has no MQTT client ID or version.
		Subject: policy.NewSubject(id, dev, policy.Client{RemoteAddr: r.RemoteAddr}),
		// serve has refused every path that is not canonical, so the
		// decoded path is exactly the one the router matched.
		Request: &policy.Request{Method: r.Method, Path: r.URL.Path, Route: route},
		Time:    time.Now().UTC(),
	}
	dec := s.cfg.Decider.Decide(ctx, in)
	if dec.Err != nil {
		s.log.Error("api: policy evaluation failed; denying", "spiffe_id", spiffeID,
			"method", r.Method, "path", r.URL.Path, "err", dec.Err)
	}
	if dec.Allow && dec.Err == nil {
		return nil, nil
	}
	detail := "denied by policy revision " + dec.Revision
	if len(dec.Reasons) > 0 {
		detail += ": " + strings.Join(dec.Reasons, ", ")
	}
	return &refusal{msg: "forbidden by policy", detail: detail, decision: &dec}, nil
}

// recorder remembers the status written, for the log line and metrics, and
// the start of an error body, for the audit entry of a failed action.
type recorder struct {
	http.ResponseWriter
	status  int
	errBody []byte
}

// maxErrBody bounds how much of an error body the recorder keeps.
const maxErrBody = 512

// errorMessage returns the message of the JSON error the response carried,
// or the status text when there was none.
func (r *recorder) errorMessage() string {
	var er ErrorResponse
	if json.Unmarshal(r.errBody, &er) == nil && er.Error != "" {
		return er.Error
	}
	return strings.ToLower(http.StatusText(r.status))
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if r.status >= 400 && len(r.errBody) < maxErrBody {
		r.errBody = append(r.errBody, b[:min(len(b), maxErrBody-len(r.errBody))]...)
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// jsonErrors turns ServeMux's plain-text 404 and 405 answers into the API's
// JSON error form, keeping their status and Allow header.
type jsonErrors struct {
	http.ResponseWriter
	swallow bool
}

func (j *jsonErrors) WriteHeader(code int) {
	if code < 400 {
		j.ResponseWriter.WriteHeader(code)
		return
	}
	j.swallow = true
	writeError(j.ResponseWriter, code, strings.ToLower(http.StatusText(code)))
}

func (j *jsonErrors) Write(b []byte) (int, error) {
	if j.swallow {
		return len(b), nil
	}
	return j.ResponseWriter.Write(b)
}

// metrics are the API's own Prometheus collectors.
type metrics struct {
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	denied          prometheus.Counter
	svids           prometheus.Counter
	enrollments     *prometheus.CounterVec
	auditSuppressed prometheus.Counter
	renewLimited    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_api_requests_total",
			Help: "Admin API requests by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ztgate_api_request_duration_seconds",
			Help:    "Admin API request latency by method and route pattern.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method", "route"}),
		denied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_api_policy_denials_total",
			Help: "Admin API requests denied by policy.",
		}),
		svids: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_api_svids_issued_total",
			Help: "X.509-SVIDs signed through the API: by an admin, at enrollment and at renewal.",
		}),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_api_enrollments_total",
			Help: "Bootstrap-token enrollment attempts by result (ok, retry, invalid_token, rate_limited, bad_request, error).",
		}, []string{"result"}),
		auditSuppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_api_audit_suppressed_total",
			Help: "Refusals and failures not written to the audit log because they came faster than its refusal rate limit (they are still logged).",
		}),
		renewLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_api_renewals_rate_limited_total",
			Help: "SVID renewals refused because their identity renewed faster than the renewal rate limit.",
		}),
	}
	var err error
	m.requests = register(reg, m.requests, &err)
	m.duration = register(reg, m.duration, &err)
	m.denied = register(reg, m.denied, &err)
	m.svids = register(reg, m.svids, &err)
	m.enrollments = register(reg, m.enrollments, &err)
	m.auditSuppressed = register(reg, m.auditSuppressed, &err)
	m.renewLimited = register(reg, m.renewLimited, &err)
	if err != nil {
		return nil, fmt.Errorf("api: register metrics: %w", err)
	}
	return m, nil
}

// register registers c, or returns the identical collector already
// registered (a second Server on the same registry shares the series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C, errp *error) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	if *errp == nil {
		*errp = err
	}
	return c
}

func (m *metrics) observe(method, route string, status int, d time.Duration) {
	if !knownMethod(method) {
		method = "other" // bound label cardinality
	}
	m.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(method, route).Observe(d.Seconds())
}

func knownMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return true
	}
	return false
}
