package api

import (
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
	Status         string `json:"status"`          // "ready"
	PolicyRevision string `json:"policy_revision"` // the active policy revision
	Store          string `json:"store"`           // "ok"
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Health{Status: "ok"})
}

// readyz reports whether the API can serve: the registry answers, the
// policy engine has an active revision, and Config.Ready (if any) has no
// complaint. Callers are anonymous, so a failure names what is wrong but
// not the error's detail, which goes to the log.
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
	writeJSON(w, http.StatusOK, Readiness{Status: "ready", PolicyRevision: rev, Store: "ok"})
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
