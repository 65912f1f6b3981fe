package api

import (
	"context"
	"math"
	"net/http"
	"strings"
)

// Health is the answer of GET /healthz.
type Health struct {
	Status string `json:"status"`
}

// Readiness is the answer of GET /readyz when the API is ready.
type Readiness struct {
	Status string `json:"status"` // "ready"
	// PolicyRevision is the active policy revision, told only to a caller
	// whose client SVID the admin decision admits.
	PolicyRevision string `json:"policy_revision,omitempty"`
	Store          string `json:"store"` // "ok"
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Health{Status: "ok"})
}

// readyz reports whether the API can serve: the registry answers, the
// policy engine has an active revision, and Config.Ready (if any) has no
// complaint. Callers may be anonymous, so a failure names what is wrong but
// not the error's detail, which goes to the log, and the revision is told
// only to a caller the admin decision admits (see mayReadRevision).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	// A read of the audit log goes to bbolt, not only to memory: it fails
	// when the store of record is closed.
	if _, err := s.cfg.Registry.ListAudit(math.MaxUint64, 1); err != nil {
		s.log.Warn("api: not ready: registry", "err", err)
		problems = append(problems, "store unavailable")
	}
	rev, known := s.policyRevision()
	if known && rev == "" {
		problems = append(problems, "policy engine has no active revision")
	}
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			s.log.Warn("api: not ready", "err", err)
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		writeError(w, http.StatusServiceUnavailable, "not ready: "+strings.Join(problems, "; "))
		return
	}
	out := Readiness{Status: "ready", Store: "ok"}
	if s.mayReadRevision(r) {
		out.PolicyRevision = rev
	}
	writeJSON(w, http.StatusOK, out)
}

// mayReadRevision reports whether the caller of a probe may learn the
// policy revision: the revision is administrative (GET /v1/policy tells it
// to admins), and tells an attacker when the policy changed. So it takes a
// verified client SVID that the admin decision admits, status floor
// included, for this route. A refusal is not audited or counted as a
// denial: the probe itself is answered either way.
func (s *Server) mayReadRevision(r *http.Request) bool {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	id, err := s.cfg.Verifier.PeerID(*r.TLS)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(r.Context(), decisionTimeout)
	defer cancel()
	ref, err := s.admit(ctx, r, id, routeName(s.byPattern[readyzPattern]))
	if err != nil {
		s.log.Warn("api: readyz: registry lookup of peer", "spiffe_id", id.String(), "err", err)
		return false
	}
	return ref == nil
}

// policyRevision returns the active policy revision and whether the API
// can know it (from Config.Policy, or a Decider that reports it).
func (s *Server) policyRevision() (string, bool) {
	if s.cfg.Policy != nil {
		return s.cfg.Policy.Status().Revision, true
	}
	if rv, ok := s.cfg.Decider.(interface{ Revision() string }); ok {
		return rv.Revision(), true
	}
	return "", false
}
