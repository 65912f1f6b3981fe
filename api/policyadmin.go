package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"time"

	"github.com/ztgate/ztgate/policy"
)

// PolicyAdmin is what the API needs of the policy engine to administer it;
// *policy.Engine implements it.
type PolicyAdmin interface {
	// Status reports the active revision and the last refused one.
	Status() policy.Status
	// PutModule adds or replaces one module; the new set must compile and
	// pass its own tests (else an error wrapping policy.ErrPolicyRejected)
	// and is persisted to the engine's backing directory (else
	// policy.ErrNoBackingDir) before it is activated.
	PutModule(name string, src []byte) error
	// RemoveModule removes one module under the same checks, persisting
	// and replicating the set without it as PutModule does; a module not
	// in force is an error wrapping policy.ErrModuleNotFound, the last one
	// that is not a test one wrapping policy.ErrPolicyEmpty.
	RemoveModule(name string) error
	// DecideJSON evaluates the policy for a raw input document.
	DecideJSON(ctx context.Context, raw []byte) (policy.Decision, error)
}

// PolicyStatus is the answer of GET /v1/policy and of a module upload.
type PolicyStatus struct {
	Revision    string    `json:"revision"`     // content hash of the active revision
	ActivatedAt time.Time `json:"activated_at"` // when it was activated
	Modules     []string  `json:"modules"`      // its module names
	Dir         string    `json:"dir,omitempty"`
	LastError   string    `json:"last_error,omitempty"` // why the last refused revision was refused
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// EvalResponse is the answer of POST /v1/policy/eval.
type EvalResponse struct {
	Allow    bool     `json:"allow"`
	Reasons  []string `json:"reasons"`
	Revision string   `json:"revision"`
	// Error is set when evaluation failed; the decision is then a deny,
	// as it would be at enforcement.
	Error string `json:"error,omitempty"`
	// Input is the input built from the playground's shorthand (device,
	// action, topic); absent for a raw input document.
	Input json.RawMessage `json:"input,omitempty"`
}

// moduleNameRE is a module file name: no path, no hidden file.
var moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,250}\.rego$`)

func statusOf(st policy.Status) PolicyStatus {
	mods := st.Modules
	if mods == nil {
		mods = []string{}
	}
	return PolicyStatus{
		Revision:    st.Revision,
		ActivatedAt: st.ActivatedAt.UTC(),
		Modules:     mods,
		Dir:         st.Dir,
		LastError:   st.LastError,
		LastErrorAt: st.LastErrorAt.UTC(),
	}
}

// policyAdmin returns the configured PolicyAdmin, or answers 501.
func (s *Server) policyAdmin(w http.ResponseWriter) (PolicyAdmin, bool) {
	if s.cfg.Policy == nil {
		writeError(w, http.StatusNotImplemented, "policy administration not configured")
		return nil, false
	}
	return s.cfg.Policy, true
}

func (s *Server) policyStatus(w http.ResponseWriter, r *http.Request) {
	pa, ok := s.policyAdmin(w)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, statusOf(pa.Status()))
}

func (s *Server) putPolicyModule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !moduleNameRE.MatchString(name) {
		s.fail(w, "module name", badRequest("module name %s must be letters, digits, '.', '_' and '-' ending in .rego", clip(name)))
		return
	}
	stateOf(r).target = "policy module " + name
	pa, ok := s.policyAdmin(w)
	if !ok {
		return
	}
	if mediaType(r) != "text/plain" {
		s.fail(w, "module body", unsupportedMediaType("text/plain"))
		return
	}
	src, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if !errors.As(err, &tooBig) {
			err = badRequest("reading module: %v", err)
		}
		s.fail(w, "module body", err)
		return
	}
	if len(bytes.TrimSpace(src)) == 0 {
		s.fail(w, "module body", badRequest("the module is empty"))
		return
	}
	if err := pa.PutModule(name, src); err != nil {
		s.failModule(w, r, "upload", name, err)
		return
	}
	st := statusOf(pa.Status())
	if err := s.record(r, registryOK(actionPolicyPut, "policy module "+name, "active revision "+st.Revision)); err != nil {
		// The module is active and on disk; the missing entry is logged.
		s.log.Error("api: policy module activated without its audit entry", "module", name, "revision", st.Revision)
	}
	s.log.Info("api: policy module activated", "module", name, "revision", st.Revision, "by", stateOf(r).peer)
	writeJSON(w, http.StatusOK, st)
}

// failModule answers the error of a module upload or removal (op), after
// which the revision in force stays.
func (s *Server) failModule(w http.ResponseWriter, r *http.Request, op, name string, err error) {
	switch {
	case errors.Is(err, policy.ErrPolicyRejected):
		// The last good revision stays in force; say why the new one
		// did not make it.
		s.log.Warn("api: policy module "+op+" refused", "module", name, "by", stateOf(r).peer, "err", err)
		writeError(w, http.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, policy.ErrInvalidModuleName):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, policy.ErrNoBackingDir):
		writeError(w, http.StatusConflict, "the policy has no backing directory, so the module's "+op+" could not be kept; "+
			"run with a policy directory")
	case errors.Is(err, policy.ErrNotCommitted):
		// A cluster node that could not write the change to the cluster
		// (no quorum, or another node changed the policy first): it is
		// neither in force nor kept anywhere.
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		s.internalError(w, "policy module "+op, err)
	}
}

func (s *Server) evalPolicy(w http.ResponseWriter, r *http.Request) {
	pa, ok := s.policyAdmin(w)
	if !ok {
		return
	}
	if mediaType(r) != "application/json" {
		s.fail(w, "eval input", unsupportedMediaType("application/json"))
		return
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if !errors.As(err, &tooBig) {
			err = badRequest("reading input: %v", err)
		}
		s.fail(w, "eval input", err)
		return
	}
	// The input document is an object; decode it once here so a bad one
	// is the caller's 400, not an evaluation error.
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil || doc == nil {
		s.fail(w, "eval input", badRequest("the input must be one JSON object"))
		return
	}
	// The console's playground: a device, an action and a topic, made
	// into the input the gateway would build.
	var built json.RawMessage
	if isPlayground(doc) {
		if raw, err = s.playgroundInput(raw); err != nil {
			s.fail(w, "eval playground", err)
			return
		}
		built = raw
	}
	ctx, cancel := context.WithTimeout(r.Context(), decisionTimeout)
	defer cancel()
	dec, err := pa.DecideJSON(ctx, raw)
	out := EvalResponse{Allow: dec.Allow && err == nil && dec.Err == nil, Reasons: dec.Reasons, Revision: dec.Revision, Input: built}
	if out.Reasons == nil {
		out.Reasons = []string{}
	}
	if err == nil {
		err = dec.Err
	}
	if err != nil {
		out.Error = err.Error()
	}
	writeJSON(w, http.StatusOK, out)
}
