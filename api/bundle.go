package api

import "net/http"

// getBundle serves the own trust domain's SPIFFE bundle (GET /v1/bundle), a
// SPIFFE bundle endpoint partners federate with. The handler is the
// identity package's; off, the route says which setting turns it on.
func (s *Server) getBundle(w http.ResponseWriter, r *http.Request) {
	if s.cfg.BundleEndpoint == nil {
		writeError(w, http.StatusNotFound, "this gateway serves no bundle endpoint (federation.bundle_endpoint is off)")
		return
	}
	s.cfg.BundleEndpoint.ServeHTTP(w, r)
}
