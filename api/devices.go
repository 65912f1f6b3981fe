package api

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
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

// SVIDRequest is the JSON form of POST /v1/devices/{name}/svid; the body may
// also be the PEM CSR itself (Content-Type application/x-pem-file).
type SVIDRequest struct {
	CSR string `json:"csr"`
}

// SVIDResponse is the answer of POST /v1/devices/{name}/svid.
type SVIDResponse struct {
	SVIDPEM   string    `json:"svid_pem"`   // leaf X.509-SVID, then the CA
	BundlePEM string    `json:"bundle_pem"` // trust bundle to verify the gateway with
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Health is the answer of GET /healthz.
type Health struct {
	Status string `json:"status"`
}

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
	})
	if err != nil {
		s.fail(w, "create device", err)
		return
	}
	w.Header().Set("Location", "/v1/devices/"+d.Name)
	writeJSON(w, http.StatusCreated, deviceOf(d))
}

// deviceSPIFFEID returns the SPIFFE ID a new device is enrolled under.
func (s *Server) deviceSPIFFEID(name, given string) (spiffeid.ID, error) {
	td := s.cfg.CA.TrustDomain()
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
	if id.TrustDomain() != td {
		return spiffeid.ID{}, badRequest("spiffe_id %q is not in trust domain %q", given, td.Name())
	}
	if id.Path() == "" {
		return spiffeid.ID{}, badRequest("spiffe_id %q has an empty path", given)
	}
	// Policies template device topics on the name and on /device/NAME; an
	// ID in the device namespace that names another device would let the
	// two disagree.
	if strings.HasPrefix(id.Path(), "/device/") && id != def {
		return spiffeid.ID{}, badRequest("spiffe_id %q is in the device namespace but is not %q", given, def.String())
	}
	return id, nil
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	ds, err := s.cfg.Registry.List()
	if err != nil {
		s.fail(w, "list devices", err)
		return
	}
	out := make([]Device, 0, len(ds))
	for _, d := range ds {
		out = append(out, deviceOf(d))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
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
	d, err := s.cfg.Registry.SetStatus(name, st)
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
	csrPEM, err := readCSR(r)
	if err != nil {
		s.fail(w, "read csr", err)
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
	id, err := spiffeid.FromString(d.SPIFFEID)
	if err != nil {
		s.fail(w, "stored spiffe id", err) // the registry holds only valid IDs
		return
	}
	chain, err := s.cfg.CA.SignCSR(csrPEM, id, s.cfg.SVIDTTL)
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
	// The device may have been suspended or revoked while we signed; the
	// gateway would refuse the SVID anyway, but do not hand it out.
	if cur, err := s.cfg.Registry.Get(name); err != nil || cur.Status != registry.StatusActive {
		if err != nil && !errors.Is(err, registry.ErrNotFound) {
			s.fail(w, "recheck device", err)
			return
		}
		writeError(w, http.StatusConflict, fmt.Sprintf("device %q changed while its SVID was signed; retry", name))
		return
	}
	s.metrics.svids.Inc()
	s.log.Info("api: svid issued", "device", name, "spiffe_id", id.String(), "expires_at", leaf.NotAfter)
	writeJSON(w, http.StatusOK, SVIDResponse{
		SVIDPEM:   string(chain),
		BundlePEM: string(s.cfg.CA.BundlePEM()),
		SPIFFEID:  id.String(),
		ExpiresAt: leaf.NotAfter.UTC(),
	})
}

// readCSR returns the PEM CSR of the request, sent as the body
// (application/x-pem-file) or as {"csr": "..."} (application/json), after
// checking that it parses and is signed by its own key.
func readCSR(r *http.Request) ([]byte, error) {
	var csrPEM []byte
	switch mediaType(r) {
	case "application/x-pem-file":
		b, err := io.ReadAll(r.Body)
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, err
			}
			return nil, badRequest("reading CSR: %v", err)
		}
		csrPEM = b
	case "application/json":
		var req SVIDRequest
		if err := decodeJSON(r, &req); err != nil {
			return nil, err
		}
		csrPEM = []byte(req.CSR)
	default:
		return nil, unsupportedMediaType("application/x-pem-file", "application/json")
	}
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

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	var out []Session
	if s.cfg.Sessions != nil {
		out = s.cfg.Sessions()
	}
	if out == nil {
		out = []Session{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Health{Status: "ok"})
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
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrRevoked):
		// ErrRevoked: revocation is final.
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, registry.ErrInvalidName), errors.Is(err, registry.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		s.internalError(w, op, err)
	}
}

func (s *Server) internalError(w http.ResponseWriter, op string, err error) {
	s.log.Error("api: internal error", "op", op, "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}
