package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// ErrUnavailable is matched by a Sessions or KickSessions error that left
// part of the work undone for now, such as a cluster node that did not
// answer: the answer is 503, with a Retry-After.
var ErrUnavailable = errors.New("api: unavailable")

// The day-2 routes: change a device's labels, delete a device, list and
// end its sessions, remove a policy module.

// LabelsPatch is the body of PATCH /v1/devices/{name}/labels: labels to
// add or replace, and keys to remove. At least one of the two must name
// something, and no key may be in both.
type LabelsPatch struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// KickResponse is the answer of DELETE /v1/devices/{name}/sessions.
type KickResponse struct {
	Device string `json:"device"`
	Kicked int    `json:"kicked"` // connections ended
}

func (s *Server) patchLabels(w http.ResponseWriter, r *http.Request) {
	name, err := pathName(r)
	if err != nil {
		s.fail(w, "device name", err)
		return
	}
	stateOf(r).target = name
	var req LabelsPatch
	if err := decodeJSON(r, &req); err != nil {
		s.fail(w, "decode labels", err)
		return
	}
	if len(req.Set) == 0 && len(req.Remove) == 0 {
		s.fail(w, "labels", badRequest("nothing to change: give labels to set or remove"))
		return
	}
	// The registry merges under its writer lock: two patches at once both
	// land, which a read here and a SetLabels would not guarantee.
	d, err := s.cfg.Registry.PatchLabels(name, req.Set, req.Remove, s.writeOpts(r)...)
	if err != nil {
		s.fail(w, "patch labels", err)
		return
	}
	s.log.Info("api: device labels changed", "device", name, "by", stateOf(r).peer)
	writeJSON(w, http.StatusOK, deviceOf(d))
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	name, err := pathName(r)
	if err != nil {
		s.fail(w, "device name", err)
		return
	}
	stateOf(r).target = name
	// The record as it was just before: the answer shows what went. The
	// gateway's registry watch ends the device's sessions once it is gone.
	d, err := s.cfg.Registry.Get(name)
	if err != nil {
		s.fail(w, "get device", err)
		return
	}
	if err := s.cfg.Registry.Delete(name, s.writeOpts(r)...); err != nil {
		s.fail(w, "delete device", err)
		return
	}
	s.log.Info("api: device deleted", "device", name, "spiffe_id", d.SPIFFEID, "by", stateOf(r).peer)
	writeJSON(w, http.StatusOK, deviceOf(d))
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	q, err := queryParams(r, "device")
	if err != nil {
		s.fail(w, "session query", err)
		return
	}
	spiffeID := ""
	if name, ok := q["device"]; ok {
		if err := registry.ValidateName(name); err != nil {
			s.fail(w, "session query", err)
			return
		}
		d, err := s.cfg.Registry.Get(name)
		if err != nil {
			s.fail(w, "get device", err)
			return
		}
		spiffeID = d.SPIFFEID
	}
	var all []brokerview.Session
	if s.cfg.Sessions != nil {
		if all, err = s.cfg.Sessions(r.Context(), spiffeID); err != nil {
			s.fail(w, "list sessions", err)
			return
		}
	}
	out := make([]brokerview.Session, 0, len(all))
	for _, ses := range all {
		// By identity rather than by the name the session carries: a
		// session of an identity enrolled after it connected is the
		// device's too.
		if spiffeID != "" && ses.SPIFFEID != spiffeID {
			continue
		}
		if ses.Subscriptions == nil {
			ses.Subscriptions = []brokerview.Subscription{}
		}
		out = append(out, ses)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) kickSessions(w http.ResponseWriter, r *http.Request) {
	name, err := pathName(r)
	if err != nil {
		s.fail(w, "device name", err)
		return
	}
	st := stateOf(r)
	st.target = name
	d, err := s.cfg.Registry.Get(name)
	if err != nil {
		s.fail(w, "get device", err)
		return
	}
	n := 0
	if s.cfg.KickSessions != nil {
		if n, err = s.cfg.KickSessions(r.Context(), d.SPIFFEID); err != nil {
			if !errors.Is(err, ErrUnavailable) {
				s.internalError(w, "kick sessions", err)
				return
			}
			// Ended where the nodes answered: the answer (and the audit
			// entry made of it) says how many, and what is missing.
			s.fail(w, "kick sessions", fmt.Errorf("%d sessions ended; %w", n, err))
			return
		}
	}
	if err := s.record(r, registryOK(actionSessionKick, name, fmt.Sprintf("%s: %d sessions ended", d.SPIFFEID, n))); err != nil {
		// The sessions are ended; the missing entry is logged.
		s.log.Error("api: sessions kicked without their audit entry", "device", name, "kicked", n)
	}
	s.log.Info("api: device sessions kicked", "device", name, "kicked", n, "by", st.peer)
	writeJSON(w, http.StatusOK, KickResponse{Device: name, Kicked: n})
}

func (s *Server) deletePolicyModule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !moduleNameRE.MatchString(name) {
		s.fail(w, "module name", badRequest("module name %s must be letters, digits, '.', '_' and '-' ending in .rego", clip(name)))
		return
	}
	st := stateOf(r)
	st.target = "policy module " + name
	pa, ok := s.policyAdmin(w)
	if !ok {
		return
	}
	err := pa.RemoveModule(name)
	switch {
	case errors.Is(err, policy.ErrModuleNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("no policy module %s in force", clip(name)))
		return
	case errors.Is(err, policy.ErrPolicyEmpty):
		writeError(w, http.StatusConflict, fmt.Sprintf("the policy would be empty: %s is its last module that is not a test", clip(name)))
		return
	case err != nil:
		// The same answers as a refused upload: 422 for a set that does
		// not compile or pass its tests, 409 without a policy directory,
		// 503 when the cluster did not take it.
		s.failModule(w, r, "remove", name, err)
		return
	}
	pst := statusOf(pa.Status())
	if err := s.record(r, registryOK(actionPolicyDelete, st.target, "active revision "+pst.Revision)); err != nil {
		s.log.Error("api: policy module removed without its audit entry", "module", name, "revision", pst.Revision)
	}
	s.log.Info("api: policy module removed", "module", name, "revision", pst.Revision, "by", st.peer)
	writeJSON(w, http.StatusOK, pst)
}
