package api

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/registry"
)

// DefaultTokenTTL is how long a bootstrap token stays valid when the
// request names no ttl.
const DefaultTokenTTL = time.Hour

// errInvalidToken is the one answer to every refused bootstrap token:
// malformed, unknown, wrong, expired, used, or for a device that is no
// longer pending. The caller learns nothing about which; the log does.
const errInvalidToken = "invalid token"

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Name string `json:"name"`
	// TTL is a Go duration ("1h", "30m"); empty means DefaultTokenTTL, at
	// most registry.MaxTokenTTL.
	TTL    string            `json:"ttl,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// TokenResponse is the answer of POST /v1/tokens. Token is shown once and
// stored nowhere; the device needs it and CAPin to enroll.
type TokenResponse struct {
	Token     string    `json:"token"`
	CAPin     string    `json:"ca_pin"` // sha256:HEX of the CA's public key
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Device    Device    `json:"device"` // the pending device
}

// EnrollRequest is the body of POST /v1/enroll.
type EnrollRequest struct {
	Token string `json:"token"`
	CSR   string `json:"csr"` // one PEM CERTIFICATE REQUEST block
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	if err := decodeJSON(r, &req); err != nil {
		s.fail(w, "decode token request", err)
		return
	}
	if err := registry.ValidateName(req.Name); err != nil {
		s.fail(w, "validate name", err)
		return
	}
	stateOf(r).target = req.Name
	ttl := DefaultTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			s.fail(w, "token ttl", badRequest("ttl %s is not a duration such as 1h or 30m", clip(req.TTL)))
			return
		}
		ttl = d
	}
	// Bootstrap tokens enroll devices, so they always yield the device's
	// default SPIFFE ID.
	id, err := s.deviceSPIFFEID(req.Name, "")
	if err != nil {
		s.fail(w, "spiffe id", err)
		return
	}
	st := stateOf(r)
	tok, d, err := s.cfg.Registry.CreateToken(req.Name, ttl, req.Labels, id.String(), st.peer,
		registry.WithDetail("remote "+r.RemoteAddr))
	if err != nil {
		s.fail(w, "create token", err)
		return
	}
	// CreateToken stamps the device and the token with the same time.
	expires := d.UpdatedAt.Add(ttl).UTC()
	s.log.Info("api: bootstrap token created", "device", d.Name, "spiffe_id", d.SPIFFEID,
		"token_id", registry.TokenID(tok), "expires_at", expires, "by", st.peer)
	w.Header().Set("Location", "/v1/devices/"+d.Name)
	writeJSON(w, http.StatusCreated, TokenResponse{
		Token:     tok,
		CAPin:     identity.CAPin(s.cfg.CA.Certificate()),
		SPIFFEID:  d.SPIFFEID,
		ExpiresAt: expires,
		Device:    deviceOf(d),
	})
}

// enroll redeems a bootstrap token for an SVID. The caller has no client
// certificate; the token is its only credential. Order matters: the rate
// limit comes before the token is looked at, and the CSR is checked before
// the token is spent, so a bad CSR never burns a good token.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	if !s.enrollLimit.allow(limitKey(r.RemoteAddr), now) {
		s.metrics.enrollments.WithLabelValues("rate_limited").Inc()
		s.log.Warn("api: enrollment rate limited", "remote_addr", r.RemoteAddr)
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(float64(s.cfg.EnrollRate))))
		writeError(w, http.StatusTooManyRequests, "too many enrollment attempts; retry later")
		return
	}
	var req EnrollRequest
	if err := decodeJSON(r, &req); err != nil {
		s.metrics.enrollments.WithLabelValues("bad_request").Inc()
		s.fail(w, "decode enroll request", err)
		return
	}
	csrPEM, err := parseCSRPEM([]byte(req.CSR))
	if err == nil {
		if cerr := identity.CheckCSR(csrPEM); cerr != nil {
			err = badRequest("CSR refused: %v", cerr)
		}
	}
	var keySum [sha256.Size]byte
	if err == nil {
		keySum, err = csrKeySum(csrPEM)
	}
	if err != nil {
		s.metrics.enrollments.WithLabelValues("bad_request").Inc()
		s.fail(w, "enroll csr", err)
		return
	}

	// The token ID names the record and is no secret; the secret is never
	// logged. A malformed token has no ID. The token is bound to the CSR's
	// key (whose possession the CSR's signature proved), so that the
	// device, and only the device, can redeem it again if this answer is
	// lost.
	tokenID := registry.TokenID(req.Token)
	d, retry, err := s.cfg.Registry.RedeemTokenForKey(req.Token, keySum, now, registry.WithDetail("remote "+r.RemoteAddr))
	if errors.Is(err, registry.ErrTokenInvalid) {
		s.metrics.enrollments.WithLabelValues("invalid_token").Inc()
		reason := "token " + tokenID + " refused (unknown, wrong secret, used with another key, expired, or its device is not pending)"
		if tokenID == "" {
			reason = "malformed token"
		}
		s.log.Warn("api: enrollment refused", "remote_addr", r.RemoteAddr, "token_id", tokenID, "reason", reason)
		target := ""
		if tokenID != "" {
			target = "token " + tokenID
		}
		_ = s.record(r, registry.AuditEntry{Actor: registry.ActorBootstrapToken, Action: "token.redeem",
			Target: target, Result: registry.ResultDenied, Detail: reason})
		writeError(w, http.StatusUnauthorized, errInvalidToken)
		return
	}
	if err != nil {
		s.metrics.enrollments.WithLabelValues("error").Inc()
		s.internalError(w, "redeem token", err)
		return
	}
	// The device is active now, enrolled under the one SPIFFE ID its
	// token was made for; that is the ID signed, whatever the CSR says.
	result := "ok"
	if retry {
		result = "retry"
		s.log.Info("api: bootstrap token retried with its key; re-issuing the SVID", "device", d.Name,
			"spiffe_id", d.SPIFFEID, "token_id", tokenID, "remote_addr", r.RemoteAddr)
		if err := s.record(r, registry.AuditEntry{Actor: registry.ActorBootstrapToken, Action: "token.redeem",
			Target: d.Name, Result: registry.ResultOK,
			Detail: fmt.Sprintf("token %s retry with the key it was redeemed for (sha256:%x); SVID re-issued", tokenID, keySum[:8])}); err != nil {
			s.metrics.enrollments.WithLabelValues("error").Inc()
			s.internalError(w, "audit token retry", err)
			return
		}
	} else {
		s.log.Info("api: bootstrap token redeemed", "device", d.Name, "spiffe_id", d.SPIFFEID,
			"token_id", tokenID, "remote_addr", r.RemoteAddr)
	}
	rec := &recorder{ResponseWriter: w}
	s.issueSVID(rec, r, svidIssue{
		action: actionSVIDIssue,
		actor:  registry.ActorBootstrapToken,
		device: d,
		csrPEM: csrPEM,
		changed: func(w http.ResponseWriter) {
			writeError(w, http.StatusConflict, fmt.Sprintf("device %q changed during enrollment", d.Name))
		},
	})
	if rec.status == http.StatusOK {
		s.metrics.enrollments.WithLabelValues(result).Inc()
	} else {
		s.metrics.enrollments.WithLabelValues("error").Inc()
	}
}

// csrKeySum returns the SHA-256 of the DER SubjectPublicKeyInfo of a CSR
// that parseCSRPEM accepted.
func csrKeySum(csrPEM []byte) ([sha256.Size]byte, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return [sha256.Size]byte{}, badRequest("CSR is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return [sha256.Size]byte{}, badRequest("CSR does not parse: %v", err)
	}
	return sha256.Sum256(csr.RawSubjectPublicKeyInfo), nil
}

// retryAfter is the Retry-After seconds for one more request at limit.
func retryAfter(limit float64) int {
	if limit <= 0 || math.IsInf(limit, 1) {
		return 1
	}
	return max(1, int(math.Ceil(1/limit)))
}

// renewSVID signs a new SVID for the caller's own SPIFFE ID. The TLS layer
// has verified the caller's current SVID (still valid, our trust domain);
// the registry must hold that ID as an active device.
func (s *Server) renewSVID(w http.ResponseWriter, r *http.Request) {
	st := stateOf(r)
	st.target = st.peer
	// Per identity, before anything is read, looked up, signed or written.
	// A refusal is logged and counted, not audited: each audit entry is a
	// synced write, which is what a looping device must not get for free.
	if !s.renewLimit.allow(st.peer, s.now()) {
		st.audited = true
		s.metrics.renewLimited.Inc()
		s.log.Warn("api: svid renewal rate limited", "spiffe_id", st.peer, "remote_addr", r.RemoteAddr)
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(float64(s.cfg.RenewRate))))
		writeError(w, http.StatusTooManyRequests, "too many SVID renewals for this identity; retry later")
		return
	}
	csrPEM, rawTTL, err := readCSR(r)
	if err != nil {
		s.fail(w, "read csr", err)
		return
	}
	// A renewing device keeps the lifetime its SVID had, which it cannot
	// know to be longer than what the gateway signs now (svid_ttl may have
	// been shortened since): above, it gets svid_ttl rather than a refusal
	// that would leave it to expire.
	ttl, err := s.svidTTL(rawTTL, true)
	if err != nil {
		s.fail(w, "svid ttl", err)
		return
	}
	deny := func(w http.ResponseWriter, target, why string) {
		s.log.Warn("api: svid renewal refused", "spiffe_id", st.peer, "reason", why)
		_ = s.record(r, registry.AuditEntry{Action: actionSVIDRenew, Target: target,
			Result: registry.ResultDenied, Detail: why})
		writeError(w, http.StatusForbidden, why)
	}
	d, err := s.cfg.Registry.GetBySPIFFEID(st.peer)
	if errors.Is(err, registry.ErrNotFound) {
		deny(w, st.peer, "identity not enrolled; only an active device renews its SVID")
		return
	}
	if err != nil {
		s.fail(w, "lookup peer", err)
		return
	}
	st.target = d.Name
	if d.Status != registry.StatusActive {
		deny(w, d.Name, fmt.Sprintf("device %q is %s; only an active device renews its SVID", d.Name, d.Status))
		return
	}
	s.issueSVID(w, r, svidIssue{
		action: actionSVIDRenew,
		device: d,
		csrPEM: csrPEM,
		ttl:    ttl,
		changed: func(w http.ResponseWriter) {
			deny(w, d.Name, fmt.Sprintf("device %q changed while its SVID was signed", d.Name))
		},
	})
}
