package api

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/registry"
)

// Device is a registry entry as the API returns it.
type Device struct {
	Name      string            `json:"name"`
	SPIFFEID  string            `json:"spiffe_id"`
	Labels    map[string]string `json:"labels"`
	Status    string            `json:"status"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// CreateDeviceRequest is the body of POST /v1/devices.
type CreateDeviceRequest struct {
	Name string `json:"name"`
	// SPIFFEID defaults to spiffe://TD/device/NAME in the CA's trust domain.
	SPIFFEID string            `json:"spiffe_id,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// SVIDRequest is the JSON form of POST /v1/devices/{name}/svid and POST
// /v1/svid/renew; the body may also be the PEM CSR itself (Content-Type
// application/x-pem-file), which asks for the configured lifetime.
type SVIDRequest struct {
	CSR string `json:"csr"`
	// TTL is the lifetime asked for, a Go duration such as "36h"; empty
	// means the configured SVID lifetime. At least MinSVIDTTL, at most the
	// configured lifetime.
	TTL string `json:"ttl,omitempty"`
}

// MinSVIDTTL is the shortest lifetime a request may ask for: a shorter SVID
// could expire before a peer whose clock runs a little late accepts it, or
// before its holder has used it. Lifetimes this short suit tests; renewed
// at half-life, an SVID of less than 40 seconds renews faster than the
// renewal limit refills (one per 20 seconds once the burst is spent).
const MinSVIDTTL = 10 * time.Second

// SVIDResponse is the answer of POST /v1/devices/{name}/svid.
type SVIDResponse struct {
	SVIDPEM   string    `json:"svid_pem"`   // leaf X.509-SVID, then the CA
	BundlePEM string    `json:"bundle_pem"` // trust bundle to verify the gateway with
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// DeviceList is the answer of GET /v1/devices: one page, sorted by name.
type DeviceList struct {
	Devices []Device `json:"devices"`
	// Next is the after value of the next page, "" when this is the last.
	Next string `json:"next"`
}

// ImportRequest is the body of POST /v1/devices/import.
type ImportRequest struct {
	Devices []ImportDevice `json:"devices"`
}

// ImportDevice is one row of an import. SPIFFEID defaults to
// spiffe://TD/device/NAME and Status to active.
type ImportDevice struct {
	Name     string            `json:"name"`
	SPIFFEID string            `json:"spiffe_id,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Status   string            `json:"status,omitempty"`
}

// ImportResponse is the answer of POST /v1/devices/import: one result per
// row, in the order of the rows.
type ImportResponse struct {
	Results []ImportResult `json:"results"`
}

// ImportResult is the outcome of one row.
type ImportResult struct {
	Row    int    `json:"row"` // index of the row in the request
	Name   string `json:"name"`
	Result string `json:"result"` // created | unchanged | error
	Error  string `json:"error,omitempty"`
}

// maxImportRows bounds the rows of one import request; larger files are
// sent in several.
const maxImportRows = 1000

func deviceOf(d *registry.Device) Device {
	labels := d.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	return Device{
		Name:      d.Name,
		SPIFFEID:  d.SPIFFEID,
		Labels:    labels,
		Status:    string(d.Status),
		CreatedAt: d.CreatedAt,
		UpdatedAt: d.UpdatedAt,
	}
}

func (s *Server) createDevice(w http.ResponseWriter, r *http.Request) {
	var req CreateDeviceRequest
	if err := decodeJSON(r, &req); err != nil {
		s.fail(w, "decode device", err)
		return
	}
	if err := registry.ValidateName(req.Name); err != nil {
		s.fail(w, "validate name", err)
		return
	}
	stateOf(r).target = req.Name
	id, err := s.deviceSPIFFEID(req.Name, req.SPIFFEID)
	if err != nil {
		s.fail(w, "spiffe id", err)
		return
	}
	d, err := s.cfg.Registry.Create(registry.Device{
		Name:     req.Name,
		SPIFFEID: id.String(),
		Labels:   req.Labels,
		Status:   registry.StatusActive,
	}, s.writeOpts(r)...)
	if err != nil {
		s.fail(w, "create device", err)
		return
	}
	w.Header().Set("Location", "/v1/devices/"+d.Name)
	writeJSON(w, http.StatusCreated, deviceOf(d))
}

// deviceSPIFFEID returns the SPIFFE ID a new device is enrolled under: by
// default spiffe://TD/device/NAME in the own trust domain; a given one in
// the own trust domain or in a federated one the gateway serves.
func (s *Server) deviceSPIFFEID(name, given string) (spiffeid.ID, error) {
	td := s.cfg.TrustDomain
	def, err := identity.DeviceID(td, name)
	if err != nil {
		return spiffeid.ID{}, badRequest("%v", err)
	}
	if given == "" {
		return def, nil
	}
	id, err := spiffeid.FromString(given)
	if err != nil {
		return spiffeid.ID{}, badRequest("invalid spiffe_id %q: %v", given, err)
	}
	if id.Path() == "" {
		return spiffeid.ID{}, badRequest("spiffe_id %q has an empty path", given)
	}
	if id.TrustDomain() != td {
		// A partner's IDs follow the partner's naming, which the own
		// device namespace rule below knows nothing of; the partner's
		// policy recipe decides what they may do.
		if !s.serves(id.TrustDomain()) {
			return spiffeid.ID{}, badRequest("spiffe_id %q is in trust domain %q, which this gateway does not serve (its own is %q; others must be federated)",
				given, id.TrustDomain().Name(), td.Name())
		}
		return id, nil
	}
	// Policies template device topics on the name and on /device/NAME; an
	// ID in the device namespace that names another device would let the
	// two disagree.
	if strings.HasPrefix(id.Path(), "/device/") && id != def {
		return spiffeid.ID{}, badRequest("spiffe_id %q is in the device namespace but is not %q", given, def.String())
	}
	return id, nil
}

// serves reports whether td is a federated trust domain the gateway
// serves now (or its own).
func (s *Server) serves(td spiffeid.TrustDomain) bool {
	if td == s.cfg.TrustDomain {
		return true
	}
	if s.cfg.TrustDomains == nil {
		return false
	}
	return slices.Contains(s.cfg.TrustDomains(), td)
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	q, err := queryParams(r, "selector", "status", "after", "limit")
	if err != nil {
		s.fail(w, "device query", err)
		return
	}
	sel, err := registry.ParseSelector(q["selector"])
	if err != nil {
		s.fail(w, "device query", err)
		return
	}
	limit, err := parseLimit(q["limit"])
	if err != nil {
		s.fail(w, "device query", err)
		return
	}
	ds, next, err := s.cfg.Registry.ListDevices(registry.Query{
		Selector: sel,
		Status:   registry.Status(q["status"]),
		After:    q["after"],
		Limit:    limit,
	})
	if err != nil {
		s.fail(w, "list devices", err)
		return
	}
	out := DeviceList{Devices: make([]Device, 0, len(ds)), Next: next}
	for _, d := range ds {
		out.Devices = append(out.Devices, deviceOf(d))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) importDevices(w http.ResponseWriter, r *http.Request) {
	var req ImportRequest
	if err := decodeJSON(r, &req); err != nil {
		s.fail(w, "decode import", err)
		return
	}
	if len(req.Devices) > maxImportRows {
		s.fail(w, "import", badRequest("%d rows; at most %d per request", len(req.Devices), maxImportRows))
		return
	}
	// Rows the API refuses itself (a SPIFFE ID it would not enroll) are
	// reported without reaching the registry; the others are imported
	// together and their results put back in row order.
	results := make([]ImportResult, len(req.Devices))
	rows := make([]registry.Device, 0, len(req.Devices))
	rowOf := make([]int, 0, len(req.Devices))
	for i, d := range req.Devices {
		results[i] = ImportResult{Row: i, Name: d.Name}
		if err := registry.ValidateName(d.Name); err != nil {
			results[i].Result, results[i].Error = registry.ImportError, err.Error()
			continue
		}
		id, err := s.deviceSPIFFEID(d.Name, d.SPIFFEID)
		if err != nil {
			results[i].Result, results[i].Error = registry.ImportError, err.Error()
			continue
		}
		rows = append(rows, registry.Device{Name: d.Name, SPIFFEID: id.String(), Labels: d.Labels, Status: registry.Status(d.Status)})
		rowOf = append(rowOf, i)
	}
	res, err := s.cfg.Registry.Import(rows, stateOf(r).peer, registry.WithDetail("remote "+r.RemoteAddr))
	if err != nil {
		// The batches before the failure are durable; importing again is
		// safe, since rows already created come back unchanged.
		s.fail(w, "import", err)
		return
	}
	for _, rr := range res {
		if rr.Row < 0 || rr.Row >= len(rowOf) {
			s.internalError(w, "import", fmt.Errorf("registry result for row %d of %d", rr.Row, len(rowOf)))
			return
		}
		i := rowOf[rr.Row]
		results[i] = ImportResult{Row: i, Name: rr.Name, Result: rr.Result, Error: rr.Error}
	}
	counts := map[string]int{}
	for _, res := range results {
		counts[res.Result]++
	}
	_ = s.record(r, registry.AuditEntry{Action: actionImport, Target: "devices", Result: registry.ResultOK,
		Detail: fmt.Sprintf("%d rows: %d created, %d unchanged, %d refused", len(results),
			counts[registry.ImportCreated], counts[registry.ImportUnchanged], counts[registry.ImportError])})
	writeJSON(w, http.StatusOK, ImportResponse{Results: results})
}

// pathName returns the validated {name} of the request's path.
func pathName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if err := registry.ValidateName(name); err != nil {
		return "", err
	}
	return name, nil
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	name, err := pathName(r)
	if err != nil {
		s.fail(w, "device name", err)
		return
	}
	d, err := s.cfg.Registry.Get(name)
	if err != nil {
		s.fail(w, "get device", err)
		return
	}
	writeJSON(w, http.StatusOK, deviceOf(d))
}

func (s *Server) revokeDevice(w http.ResponseWriter, r *http.Request) {
	s.setStatus(w, r, registry.StatusRevoked)
}

func (s *Server) suspendDevice(w http.ResponseWriter, r *http.Request) {
	s.setStatus(w, r, registry.StatusSuspended)
}

func (s *Server) resumeDevice(w http.ResponseWriter, r *http.Request) {
	s.setStatus(w, r, registry.StatusActive)
}

func (s *Server) setStatus(w http.ResponseWriter, r *http.Request, st registry.Status) {
	name, err := pathName(r)
	if err != nil {
		s.fail(w, "device name", err)
		return
	}
	stateOf(r).target = name
	d, err := s.cfg.Registry.SetStatus(name, st, s.writeOpts(r)...)
	if err != nil {
		s.fail(w, "set device status", err)
		return
	}
	s.log.Info("api: device status changed", "device", name, "status", string(st))
	writeJSON(w, http.StatusOK, deviceOf(d))
}

func (s *Server) signSVID(w http.ResponseWriter, r *http.Request) {
	name, err := pathName(r)
	if err != nil {
		s.fail(w, "device name", err)
		return
	}
	stateOf(r).target = name
	csrPEM, rawTTL, err := readCSR(r)
	if err != nil {
		s.fail(w, "read csr", err)
		return
	}
	// An admin who asks for more than the gateway signs is told so.
	ttl, err := s.svidTTL(rawTTL, false)
	if err != nil {
		s.fail(w, "svid ttl", err)
		return
	}
	d, err := s.cfg.Registry.Get(name)
	if err != nil {
		s.fail(w, "get device", err)
		return
	}
	if d.Status != registry.StatusActive {
		writeError(w, http.StatusConflict, fmt.Sprintf("device %q is %s; only an active device gets an SVID", name, d.Status))
		return
	}
	s.issueSVID(w, r, svidIssue{
		action: actionSVIDIssue,
		device: d,
		csrPEM: csrPEM,
		ttl:    ttl,
		// The device may have been suspended or revoked while we signed;
		// the gateway would refuse the SVID anyway, but do not hand it out.
		changed: func(w http.ResponseWriter) {
			writeError(w, http.StatusConflict, fmt.Sprintf("device %q changed while its SVID was signed; retry", name))
		},
	})
}

// svidIssue is one SVID to sign for a device.
type svidIssue struct {
	action string // audit action
	actor  string // audit actor; "" is the caller
	device *registry.Device
	csrPEM []byte
	ttl    time.Duration // 0: the configured lifetime
	// changed answers when the device is no longer active once the SVID
	// is signed.
	changed func(w http.ResponseWriter)
}

// issueSVID signs the CSR for the device's SPIFFE ID, checks that the device
// is still active, records the issue in the audit log and only then answers
// with the SVID: an SVID whose entry could not be written is not handed out.
func (s *Server) issueSVID(w http.ResponseWriter, r *http.Request, is svidIssue) {
	d := is.device
	id, err := spiffeid.FromString(d.SPIFFEID)
	if err != nil {
		s.fail(w, "stored spiffe id", err) // the registry holds only valid IDs
		return
	}
	if !id.MemberOf(s.cfg.CA.TrustDomain()) {
		// A federated device's SVIDs are its own trust domain's to sign.
		writeError(w, http.StatusConflict, fmt.Sprintf("device %q is in trust domain %q: the built-in CA signs for %q only; its SVID comes from its own trust domain",
			d.Name, id.TrustDomain().Name(), s.cfg.CA.TrustDomain().Name()))
		return
	}
	ttl := is.ttl
	if ttl == 0 {
		ttl = s.cfg.SVIDTTL
	}
	chain, err := s.cfg.CA.SignCSR(is.csrPEM, id, ttl)
	if errors.Is(err, identity.ErrInvalidCSR) {
		writeError(w, http.StatusBadRequest, "CSR refused: "+err.Error())
		return
	}
	if err != nil {
		s.fail(w, "sign csr", err)
		return
	}
	leaf, err := firstCert(chain)
	if err != nil {
		s.fail(w, "parse signed svid", err)
		return
	}
	if cur, err := s.cfg.Registry.Get(d.Name); err != nil || cur.Status != registry.StatusActive || cur.SPIFFEID != d.SPIFFEID {
		if err != nil && !errors.Is(err, registry.ErrNotFound) {
			s.fail(w, "recheck device", err)
			return
		}
		is.changed(w)
		return
	}
	if err := s.record(r, registry.AuditEntry{Actor: is.actor, Action: is.action, Target: d.Name, Result: registry.ResultOK,
		Detail: fmt.Sprintf("%s, serial %x, expires %s", id, leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339))}); err != nil {
		s.internalError(w, "audit svid", err)
		return
	}
	s.metrics.svids.Inc()
	s.log.Info("api: svid issued", "device", d.Name, "spiffe_id", id.String(), "action", is.action,
		"expires_at", leaf.NotAfter)
	writeJSON(w, http.StatusOK, SVIDResponse{
		SVIDPEM:   string(chain),
		BundlePEM: string(s.cfg.CA.BundlePEM()),
		SPIFFEID:  id.String(),
		ExpiresAt: leaf.NotAfter.UTC(),
	})
}

// readCSR returns the PEM CSR of the request, sent as the body
// (application/x-pem-file) or as {"csr": "..."} (application/json), after
// checking that it parses and is signed by its own key, and the ttl the
// JSON form asks for ("" when none).
func readCSR(r *http.Request) ([]byte, string, error) {
	var (
		csrPEM []byte
		ttl    string
	)
	switch mediaType(r) {
	case "application/x-pem-file":
		b, err := io.ReadAll(r.Body)
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, "", err
			}
			return nil, "", badRequest("reading CSR: %v", err)
		}
		csrPEM = b
	case "application/json":
		var req SVIDRequest
		if err := decodeJSON(r, &req); err != nil {
			return nil, "", err
		}
		csrPEM, ttl = []byte(req.CSR), req.TTL
	default:
		return nil, "", unsupportedMediaType("application/x-pem-file", "application/json")
	}
	csrPEM, err := parseCSRPEM(csrPEM)
	return csrPEM, ttl, err
}

// svidTTL is the lifetime to sign for a request's ttl: the configured one
// when raw is empty, else raw within [MinSVIDTTL, configured]. Above the
// configured lifetime, capAbove signs the configured one instead of
// refusing.
func (s *Server) svidTTL(raw string, capAbove bool) (time.Duration, error) {
	if raw == "" {
		return s.cfg.SVIDTTL, nil
	}
	bounds := fmt.Sprintf("want at least %s and at most %s (the gateway's svid_ttl)", MinSVIDTTL, s.cfg.SVIDTTL)
	d, err := time.ParseDuration(raw)
	if err != nil {
		return 0, badRequest("ttl %s is not a duration such as 36h or 90m; %s", clip(raw), bounds)
	}
	if d > s.cfg.SVIDTTL && capAbove {
		return s.cfg.SVIDTTL, nil
	}
	if d < MinSVIDTTL || d > s.cfg.SVIDTTL {
		return 0, badRequest("ttl %s is out of range: %s", d, bounds)
	}
	return d, nil
}

// parseCSRPEM checks that csrPEM is exactly one PEM CSR that parses and is
// signed by its own key, and returns it.
func parseCSRPEM(csrPEM []byte) ([]byte, error) {
	block, rest := pem.Decode(csrPEM)
	if block == nil {
		return nil, badRequest("CSR is not PEM")
	}
	if block.Type != "CERTIFICATE REQUEST" {
		return nil, badRequest("PEM block is %q, want CERTIFICATE REQUEST", block.Type)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, badRequest("CSR must be exactly one PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, badRequest("CSR does not parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, badRequest("CSR signature invalid: %v", err)
	}
	return csrPEM, nil
}

func firstCert(chainPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(chainPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("api: signed chain has no certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	s.metricsH.ServeHTTP(w, r)
}

// fail answers err: a client error with its own status, a registry error
// with the status it means, anything else as a logged 500 with a generic
// message.
func (s *Server) fail(w http.ResponseWriter, op string, err error) {
	if writeClientError(w, err) {
		return
	}
	switch {
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrRevoked), errors.Is(err, registry.ErrPending):
		// ErrRevoked: revocation is final. ErrPending: a pending device
		// becomes active only by redeeming its token.
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, registry.ErrInvalidName), errors.Is(err, registry.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, registry.ErrNoQuorum), errors.Is(err, ErrUnavailable):
		// A cluster node cut off from the majority: the write was not
		// made anywhere; another node, or this one later, can make it.
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		s.internalError(w, op, err)
	}
}

func (s *Server) internalError(w http.ResponseWriter, op string, err error) {
	s.log.Error("api: internal error", "op", op, "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}
