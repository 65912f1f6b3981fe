package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/ztgate/ztgate/registry"
)

// Audit actions the API records itself; the registry records the changes it
// makes (device.create, device.revoke, token.create, token.redeem, ...).
const (
	actionSVIDIssue = "svid.issue"
	actionSVIDRenew = "svid.renew"
	actionPolicyPut = "policy.module.put"
	actionImport    = "device.import"
	// actionSessionKick and actionPolicyDelete are also their routes'
	// actions.
	actionSessionKick  = "session.kick"
	actionPolicyDelete = "policy.delete"
)

const (
	// refusalAuditRate and refusalAuditBurst bound how many refusals and
	// failures per second reach the audit log. Each entry is a synced disk
	// write, and refusals are what an attacker controls: wrong bootstrap
	// tokens come from anyone. Past the limit a refusal is still logged and
	// counted (ztgate_api_audit_suppressed_total), just not written.
	// Successful actions are always written.
	refusalAuditRate  = 10
	refusalAuditBurst = 50

	// maxAuditTarget bounds a target the API derives from a request (a
	// path); longer ones are cut.
	maxAuditTarget = 256
)

// AuditEntry is one entry of the audit log as GET /v1/audit returns it.
type AuditEntry struct {
	ID     uint64    `json:"id"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"` // a SPIFFE ID, "bootstrap-token" or "system"
	Action string    `json:"action"`
	Target string    `json:"target"`
	Result string    `json:"result"` // ok | denied | error
	Detail string    `json:"detail"`
}

// AuditList is the answer of GET /v1/audit.
type AuditList struct {
	Entries []AuditEntry `json:"entries"`
	// Next is the after value of the next page, 0 when this is the last.
	Next uint64 `json:"next"`
}

// writeOpts are the audit options of a change made for request r: its
// caller and remote address.
func (s *Server) writeOpts(r *http.Request) []registry.WriteOption {
	return []registry.WriteOption{
		registry.WithActor(stateOf(r).peer),
		registry.WithDetail("remote " + r.RemoteAddr + viaConsole(r)),
	}
}

// record writes an audit entry for an outcome that is not a registry change
// (an SVID issued, a request refused), adding the remote address. Refusals
// and failures pass refusalAudit first. The error is logged here; callers
// that must not answer without the entry (an issued SVID) check it.
func (s *Server) record(r *http.Request, e registry.AuditEntry) error {
	st := stateOf(r)
	st.audited = true
	if e.Actor == "" {
		e.Actor = st.peer
	}
	if len(e.Target) > maxAuditTarget {
		e.Target = e.Target[:maxAuditTarget-3] + "..."
	}
	if e.Detail != "" {
		e.Detail += "; "
	}
	e.Detail += "remote " + r.RemoteAddr + viaConsole(r)
	if e.Result != registry.ResultOK && !s.refusalAudit.AllowN(s.now(), 1) {
		s.metrics.auditSuppressed.Inc()
		s.log.Warn("api: audit entry not written: refusals over the audit rate limit",
			"actor", e.Actor, "action", e.Action, "target", e.Target, "result", e.Result, "detail", e.Detail)
		return nil
	}
	if err := s.cfg.Registry.RecordAudit(e); err != nil {
		s.log.Error("api: audit entry not written", "actor", e.Actor, "action", e.Action,
			"target", e.Target, "result", e.Result, "err", err)
		return err
	}
	return nil
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) {
	q, err := queryParams(r, "after", "limit")
	if err != nil {
		s.fail(w, "audit query", err)
		return
	}
	var after uint64
	if v := q["after"]; v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.fail(w, "audit query", badRequest("after %q is not an entry id", v))
			return
		}
	}
	limit, err := parseLimit(q["limit"])
	if err != nil {
		s.fail(w, "audit query", err)
		return
	}
	entries, err := s.cfg.Registry.ListAudit(after, limit)
	if err != nil {
		s.fail(w, "list audit", err)
		return
	}
	out := AuditList{Entries: make([]AuditEntry, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, AuditEntry(e))
	}
	if n := len(entries); n > 0 {
		// Look one entry ahead, so that next is 0 exactly on the last
		// page and a client never fetches an empty one.
		last := entries[n-1].ID
		more, err := s.cfg.Registry.ListAudit(last, 1)
		if err != nil {
			s.fail(w, "list audit", err)
			return
		}
		if len(more) > 0 {
			out.Next = last
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// registryOK is a successful audit entry of the caller.
func registryOK(action, target, detail string) registry.AuditEntry {
	return registry.AuditEntry{Action: action, Target: target, Result: registry.ResultOK, Detail: detail}
}
