package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/console"
	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/registry"
)

// Audit actions of the console.
const (
	actionConsoleLogin   = "console.login"
	actionConsoleSignIn  = "console.signin"
	actionConsoleSignOut = "console.signout"
	// actorConsoleToken is the actor of a refused sign-in: the token
	// names nobody until it is redeemed.
	actorConsoleToken = "console-token"
)

// LoginResponse is the answer of POST /v1/console/logins.
type LoginResponse struct {
	Token     string    `json:"token"`
	Path      string    `json:"path"` // where to open it: /ui/login?token=...
	ExpiresAt time.Time `json:"expires_at"`
}

// ConsoleSession is the answer of GET /v1/console/session.
type ConsoleSession struct {
	SPIFFEID  string    `json:"spiffe_id"`
	CSRFToken string    `json:"csrf_token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// DenialSource is where the denial stream takes its denies; the decision
// log (*decisionlog.Logger) is one.
type DenialSource interface {
	Subscribe() (<-chan decisionlog.Denial, func(), error)
}

// errCSRF is the answer to a state change by cookie without the session's
// CSRF token.
const errCSRF = "missing or wrong CSRF token"

// authenticateAdmin authenticates the caller of an admin route: by its
// client certificate when it presented one (the certificate always wins,
// and a bad one is refused, never replaced by a cookie), else by a console
// session cookie. A cookie request that changes state must carry the
// session's CSRF token. It answers 401 or 403 itself; sess is set when the
// caller came with a live console session, even when refused for CSRF.
func (s *Server) authenticateAdmin(w http.ResponseWriter, r *http.Request) (id spiffeid.ID, sess *console.Session, ok bool) {
	if s.cfg.Console == nil || r.TLS == nil || len(r.TLS.PeerCertificates) > 0 {
		id, ok = s.authenticate(w, r)
		return id, nil, ok
	}
	cookie := console.SessionCookie(r)
	if cookie == "" {
		id, ok = s.authenticate(w, r)
		return id, nil, ok
	}
	cs, live := s.cfg.Console.Lookup(cookie)
	if !live {
		writeError(w, http.StatusUnauthorized, "the console session has ended; sign in again (ztgate dashboard)")
		return spiffeid.ID{}, nil, false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !cs.CheckCSRF(r.Header.Get(console.CSRFHeader)) {
		writeError(w, http.StatusForbidden, errCSRF)
		return cs.SPIFFEID, &cs, false
	}
	return cs.SPIFFEID, &cs, true
}

// viaConsole is the audit detail's note of a request made through the
// console.
func viaConsole(r *http.Request) string {
	if stateOf(r).console != nil {
		return "; via console session"
	}
	return ""
}

// consoleOr501 returns the console, or answers 501 for an API route.
func (s *Server) consoleOr501(w http.ResponseWriter) (*console.Console, bool) {
	if s.cfg.Console == nil {
		writeError(w, http.StatusNotImplemented, "the web console is not enabled")
		return nil, false
	}
	return s.cfg.Console, true
}

// consoleOr404 returns the console, or answers 404 for a /ui/ path: without
// a console there is nothing there.
func (s *Server) consoleOr404(w http.ResponseWriter) (*console.Console, bool) {
	if s.cfg.Console == nil {
		writeError(w, http.StatusNotFound, "the web console is not enabled")
		return nil, false
	}
	return s.cfg.Console, true
}

func (s *Server) createConsoleLogin(w http.ResponseWriter, r *http.Request) {
	con, ok := s.consoleOr501(w)
	if !ok {
		return
	}
	st := stateOf(r)
	st.target = "console"
	if st.console != nil {
		// A stolen cookie must not outlive its 8 hours by minting
		// itself fresh sessions: only a certificate holder mints.
		writeError(w, http.StatusForbidden, "a console session cannot mint another; run ztgate dashboard with a client certificate")
		return
	}
	id, err := spiffeid.FromString(st.peer)
	if err != nil {
		s.internalError(w, "console login peer", err)
		return
	}
	l, err := con.NewLogin(id)
	switch {
	case errors.Is(err, console.ErrFull):
		w.Header().Set("Retry-After", "60")
		writeError(w, http.StatusTooManyRequests, "too many unused console logins; wait for some to expire")
		return
	case err != nil:
		s.internalError(w, "console login", err)
		return
	}
	exp := l.ExpiresAt.UTC()
	if err := s.record(r, registryOK(actionConsoleLogin, "console", "login token expiring "+exp.Format(time.RFC3339))); err != nil {
		// Fail closed: a login nobody can account for is not handed out.
		s.internalError(w, "console login audit", err)
		return
	}
	writeJSON(w, http.StatusCreated, LoginResponse{
		Token:     l.Token,
		Path:      console.UIPrefix + "login?" + url.Values{"token": {l.Token}}.Encode(),
		ExpiresAt: exp,
	})
}

func (s *Server) consoleSession(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.consoleOr501(w); !ok {
		return
	}
	cs := stateOf(r).console
	if cs == nil {
		writeError(w, http.StatusNotFound, "no console session")
		return
	}
	writeJSON(w, http.StatusOK, ConsoleSession{SPIFFEID: cs.SPIFFEID.String(), CSRFToken: cs.CSRFToken, ExpiresAt: cs.ExpiresAt.UTC()})
}

// badLink is the sign-in page's message for a token that cannot be used.
const badLink = "This sign-in link is unknown, already used or expired."

func (s *Server) consoleLoginPage(w http.ResponseWriter, r *http.Request) {
	con, ok := s.consoleOr404(w)
	if !ok {
		return
	}
	tok := r.URL.Query().Get("token")
	if tok == "" || !con.Valid(tok) {
		console.ErrorPage(w, http.StatusUnauthorized, badLink)
		return
	}
	console.LoginPage(w, tok)
}

func (s *Server) consoleSignIn(w http.ResponseWriter, r *http.Request) {
	con, ok := s.consoleOr404(w)
	if !ok {
		return
	}
	if mediaType(r) != "application/x-www-form-urlencoded" {
		s.fail(w, "console sign-in", unsupportedMediaType("application/x-www-form-urlencoded"))
		return
	}
	if err := r.ParseForm(); err != nil {
		var tooBig *http.MaxBytesError
		if !errors.As(err, &tooBig) {
			err = badRequest("reading the form: %v", err)
		}
		s.fail(w, "console sign-in", err)
		return
	}
	sess, err := con.Redeem(r.PostForm.Get("token"))
	switch {
	case errors.Is(err, console.ErrInvalidToken):
		_ = s.record(r, registry.AuditEntry{Actor: actorConsoleToken, Action: actionConsoleSignIn, Target: "console",
			Result: registry.ResultDenied, Detail: "unknown, used or expired login token"})
		console.ErrorPage(w, http.StatusUnauthorized, badLink)
		return
	case errors.Is(err, console.ErrFull):
		console.ErrorPage(w, http.StatusServiceUnavailable, "The console has as many sessions open as it may; sign out elsewhere or wait.")
		return
	case err != nil:
		s.log.Error("api: console sign-in", "err", err)
		console.ErrorPage(w, http.StatusInternalServerError, "The sign-in failed; see the gateway's log.")
		return
	}
	stateOf(r).peer = sess.SPIFFEID.String()
	_ = s.record(r, registryOK(actionConsoleSignIn, "console", "session until "+sess.ExpiresAt.UTC().Format(time.RFC3339)))
	s.log.Info("api: console session opened", "spiffe_id", sess.SPIFFEID.String(), "remote_addr", r.RemoteAddr)
	h := w.Header()
	console.SecurityHeaders(h)
	h.Set("Cache-Control", "no-store")
	http.SetCookie(w, con.Cookie(sess))
	http.Redirect(w, r, console.UIPrefix, http.StatusSeeOther)
}

func (s *Server) consoleSignOut(w http.ResponseWriter, r *http.Request) {
	con, ok := s.consoleOr404(w)
	if !ok {
		return
	}
	cookie := console.SessionCookie(r)
	cs, live := con.Lookup(cookie)
	if !live {
		http.SetCookie(w, console.ClearCookie())
		writeError(w, http.StatusUnauthorized, "no console session")
		return
	}
	csrf := r.Header.Get(console.CSRFHeader)
	if csrf == "" && mediaType(r) == "application/x-www-form-urlencoded" {
		// A plain form (no script) sends it as a field.
		csrf = r.PostFormValue("csrf_token")
	}
	if !cs.CheckCSRF(csrf) {
		// Another site must not sign the operator out.
		writeError(w, http.StatusForbidden, errCSRF)
		return
	}
	con.End(cookie)
	stateOf(r).peer = cs.SPIFFEID.String()
	_ = s.record(r, registryOK(actionConsoleSignOut, "console", ""))
	h := w.Header()
	console.SecurityHeaders(h)
	h.Set("Cache-Control", "no-store")
	http.SetCookie(w, console.ClearCookie())
	http.Redirect(w, r, console.UIPrefix, http.StatusSeeOther)
}

func (s *Server) serveConsoleAssets(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.consoleOr404(w); !ok {
		return
	}
	s.assets.ServeHTTP(w, r)
}

// Overview is the answer of GET /v1/overview: the console's first page.
type Overview struct {
	Sessions int          `json:"sessions"`
	Devices  DeviceCounts `json:"devices"`
	// Decisions are the decisions allowed and denied per sampling
	// interval (10 s) over the last 10 minutes, oldest first.
	Decisions []console.Point `json:"decisions"`
	Policy    *PolicyStatus   `json:"policy"` // null without policy administration
}

// DeviceCounts are the registry's devices by status.
type DeviceCounts struct {
	Active    int `json:"active"`
	Suspended int `json:"suspended"`
	Revoked   int `json:"revoked"`
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	counts, err := s.deviceCounts()
	if err != nil {
		s.fail(w, "overview", err)
		return
	}
	out := Overview{Devices: counts, Decisions: s.cfg.Sampler.Points()}
	if s.cfg.Sessions != nil {
		// In a cluster, a node that does not answer leaves its sessions
		// out of the count: the overview shows what is known.
		all, err := s.cfg.Sessions(r.Context(), "")
		if err != nil {
			s.log.Warn("api: overview: sessions", "err", err)
		}
		out.Sessions = len(all)
	}
	if s.cfg.Policy != nil {
		st := statusOf(s.cfg.Policy.Status())
		out.Policy = &st
	}
	writeJSON(w, http.StatusOK, out)
}

// deviceCounts caches the registry's counts until the registry changes,
// so a console polling the overview does not copy the registry each time.
type deviceCounts struct {
	mu     sync.Mutex
	watch  <-chan struct{}
	counts DeviceCounts
}

func (s *Server) deviceCounts() (DeviceCounts, error) {
	c := &s.overviewCounts
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watch != nil {
		select {
		case <-c.watch:
		default:
			return c.counts, nil
		}
	}
	devs, watch, err := s.cfg.Registry.ListWatch()
	if err != nil {
		return DeviceCounts{}, err
	}
	var n DeviceCounts
	for _, d := range devs {
		switch d.Status {
		case registry.StatusActive:
			n.Active++
		case registry.StatusSuspended:
			n.Suspended++
		case registry.StatusRevoked:
			n.Revoked++
		}
	}
	c.counts, c.watch = n, watch
	return n, nil
}

const (
	// pingInterval is how often an idle denial stream sends a comment,
	// so proxies and the browser see it alive.
	pingInterval = 15 * time.Second
	// streamWriteWindow bounds one write of the stream: a client that
	// stops reading is dropped instead of holding a goroutine.
	streamWriteWindow = 2 * pingInterval
)

func (s *Server) streamDenials(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Denials == nil {
		writeError(w, http.StatusNotImplemented, "the denial stream needs the decision log (decision_log.enabled)")
		return
	}
	ch, cancel, err := s.cfg.Denials.Subscribe()
	switch {
	case errors.Is(err, decisionlog.ErrTooManySubscribers):
		w.Header().Set("Retry-After", "30")
		writeError(w, http.StatusTooManyRequests, "too many denial streams open; close one")
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "denial stream: "+err.Error())
		return
	}
	defer cancel()
	rc := http.NewResponseController(w)
	// The stream outlives the server's read and write timeouts: no read
	// deadline (the connection's read is what tells a gone client), and a
	// write deadline renewed before every write.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if !s.streamWrite(w, rc, []byte(": stream of denies\n\n")) {
		return
	}
	ping := time.NewTicker(pingInterval)
	defer ping.Stop()
	for {
		var msg []byte
		select {
		case <-r.Context().Done():
			return
		case <-s.closing:
			return
		case <-ping.C:
			msg = []byte(": ping\n\n")
		case dn, ok := <-ch:
			if !ok {
				return // the decision log closed
			}
			b, err := json.Marshal(dn)
			if err != nil {
				continue
			}
			msg = fmt.Appendf(nil, "event: denial\ndata: %s\n\n", b)
		}
		if !s.streamWrite(w, rc, msg) {
			return
		}
	}
}

// streamWrite writes and flushes one event within the write window.
func (s *Server) streamWrite(w http.ResponseWriter, rc *http.ResponseController, msg []byte) bool {
	_ = rc.SetWriteDeadline(time.Now().Add(streamWriteWindow))
	if _, err := w.Write(msg); err != nil {
		return false
	}
	return rc.Flush() == nil
}
