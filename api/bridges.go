package api

import (
	"net/http"

	"github.com/ztgate/ztgate/bridge"
)

func (s *Server) listBridges(w http.ResponseWriter, r *http.Request) {
	var out []bridge.Status
	if s.cfg.Bridges != nil {
		out = s.cfg.Bridges()
	}
	if out == nil {
		out = []bridge.Status{}
	}
	writeJSON(w, http.StatusOK, out)
}
