package api

import "net/http"

// route is one entry of the API's route table. The table is the single
// source of truth for what the server serves: New registers exactly these
// patterns, and the OpenAPI test compares them with api/openapi.yaml.
type route struct {
	method string
	path   string // ServeMux path pattern; {name} wildcards match OpenAPI templates
	// public routes are served without a policy decision. Only the health
	// check is: a load balancer must be able to probe it, and it reveals
	// nothing. The TLS handshake still requires a verified client SVID.
	public  bool
	handler func(*Server, http.ResponseWriter, *http.Request)
}

func (rt route) pattern() string { return rt.method + " " + rt.path }

var routes = []route{
	{method: http.MethodPost, path: "/v1/devices", handler: (*Server).createDevice},
	{method: http.MethodGet, path: "/v1/devices", handler: (*Server).listDevices},
	{method: http.MethodGet, path: "/v1/devices/{name}", handler: (*Server).getDevice},
	{method: http.MethodPost, path: "/v1/devices/{name}/svid", handler: (*Server).signSVID},
	{method: http.MethodPost, path: "/v1/devices/{name}/revoke", handler: (*Server).revokeDevice},
	{method: http.MethodPost, path: "/v1/devices/{name}/suspend", handler: (*Server).suspendDevice},
	{method: http.MethodPost, path: "/v1/devices/{name}/resume", handler: (*Server).resumeDevice},
	{method: http.MethodGet, path: "/v1/sessions", handler: (*Server).listSessions},
	{method: http.MethodGet, path: "/healthz", public: true, handler: (*Server).healthz},
	// Metrics reveal device names, request rates and process details, so
	// they are an admin action like any other.
	{method: http.MethodGet, path: "/metrics", handler: (*Server).serveMetrics},
}
