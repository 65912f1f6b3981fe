package api

import "net/http"

// access is who may call a route, and how that is established.
type access int

const (
	// adminAccess routes need a verified client SVID (401 without one)
	// and the policy's "admin" decision for it (403 when denied). A
	// caller without a certificate may instead bring a console session
	// cookie: the session's SPIFFE ID is then decided the same way, and a
	// state change also needs the session's CSRF token.
	adminAccess access = iota
	// selfAccess routes need a verified client SVID but no admin decision:
	// the caller acts on its own identity only, and the handler checks
	// that identity's registry entry. A device renewing its SVID is not
	// an admin.
	selfAccess
	// publicAccess routes need no client certificate and no decision:
	// health probes, the trust bundle, and enrollment, where the
	// bootstrap token is the credential.
	publicAccess
)

// route is one entry of the API's route table. The table is the single
// source of truth for what the server serves: New registers exactly these
// patterns, and the OpenAPI test compares them with api/openapi.yaml.
type route struct {
	method string
	path   string // ServeMux path pattern; {name} wildcards match OpenAPI templates
	access access
	// action names the route in the audit log (denials, failures, and the
	// entries the handler records itself).
	action string
	// maxBody bounds the request body; 0 means maxBodyBytes.
	maxBody int64
	// signs marks a route that signs an SVID with the built-in CA (or
	// hands out what leads to one, a bootstrap token): without a CA it
	// answers 409 once the caller is authenticated and authorized.
	signs   bool
	handler func(*Server, http.ResponseWriter, *http.Request)
}

func (rt route) pattern() string { return rt.method + " " + rt.path }

// readyzPattern is the readiness probe's route, which tells more to admins.
const readyzPattern = "GET /readyz"

func (rt route) bodyLimit() int64 {
	if rt.maxBody > 0 {
		return rt.maxBody
	}
	return maxBodyBytes
}

var routes = []route{
	{method: http.MethodPost, path: "/v1/devices", action: "device.create", handler: (*Server).createDevice},
	{method: http.MethodGet, path: "/v1/devices", action: "device.list", handler: (*Server).listDevices},
	{method: http.MethodPost, path: "/v1/devices/import", action: "device.import", maxBody: maxImportBodyBytes, handler: (*Server).importDevices},
	{method: http.MethodGet, path: "/v1/devices/{name}", action: "device.get", handler: (*Server).getDevice},
	{method: http.MethodPost, path: "/v1/devices/{name}/svid", action: actionSVIDIssue, signs: true, handler: (*Server).signSVID},
	{method: http.MethodPost, path: "/v1/devices/{name}/revoke", action: "device.revoke", handler: (*Server).revokeDevice},
	{method: http.MethodPost, path: "/v1/devices/{name}/suspend", action: "device.suspend", handler: (*Server).suspendDevice},
	{method: http.MethodPost, path: "/v1/devices/{name}/resume", action: "device.resume", handler: (*Server).resumeDevice},
	{method: http.MethodPatch, path: "/v1/devices/{name}/labels", action: "device.label", handler: (*Server).patchLabels},
	{method: http.MethodDelete, path: "/v1/devices/{name}/sessions", action: actionSessionKick, handler: (*Server).kickSessions},
	{method: http.MethodDelete, path: "/v1/devices/{name}", action: "device.delete", handler: (*Server).deleteDevice},
	{method: http.MethodPost, path: "/v1/tokens", action: "token.create", signs: true, handler: (*Server).createToken},
	{method: http.MethodPost, path: "/v1/enroll", access: publicAccess, action: "token.redeem", signs: true, handler: (*Server).enroll},
	{method: http.MethodPost, path: "/v1/svid/renew", access: selfAccess, action: actionSVIDRenew, signs: true, handler: (*Server).renewSVID},
	{method: http.MethodGet, path: "/v1/audit", action: "audit.list", handler: (*Server).listAudit},
	{method: http.MethodGet, path: "/v1/policy", action: "policy.status", handler: (*Server).policyStatus},
	{method: http.MethodPut, path: "/v1/policy/modules/{name}", action: actionPolicyPut, maxBody: maxModuleBodyBytes, handler: (*Server).putPolicyModule},
	{method: http.MethodDelete, path: "/v1/policy/modules/{name}", action: actionPolicyDelete, handler: (*Server).deletePolicyModule},
	{method: http.MethodPost, path: "/v1/policy/eval", action: "policy.eval", handler: (*Server).evalPolicy},
	{method: http.MethodGet, path: "/v1/sessions", action: "session.list", handler: (*Server).listSessions},
	{method: http.MethodGet, path: "/v1/bridges", action: "bridge.list", handler: (*Server).listBridges},
	{method: http.MethodGet, path: "/v1/retained", action: "retained.list", handler: (*Server).listRetained},
	{method: http.MethodDelete, path: "/v1/retained", action: actionRetainedDelete, handler: (*Server).deleteRetained},
	// The web console. Minting a login needs a client certificate (the
	// handler refuses a console session); the other /v1 routes also
	// take the console's cookie. Under /ui/: the sign-in, where the login
	// token is the credential, and the embedded assets, which carry no
	// data (the pages fetch it with the cookie).
	{method: http.MethodPost, path: "/v1/console/logins", action: actionConsoleLogin, handler: (*Server).createConsoleLogin},
	{method: http.MethodGet, path: "/v1/console/session", action: "console.session", handler: (*Server).consoleSession},
	{method: http.MethodGet, path: "/v1/overview", action: "overview.read", handler: (*Server).overview},
	{method: http.MethodGet, path: "/v1/denials/stream", action: "denials.stream", handler: (*Server).streamDenials},
	{method: http.MethodGet, path: "/ui/login", access: publicAccess, action: actionConsoleSignIn, handler: (*Server).consoleLoginPage},
	{method: http.MethodPost, path: "/ui/login", access: publicAccess, action: actionConsoleSignIn, handler: (*Server).consoleSignIn},
	{method: http.MethodPost, path: "/ui/logout", access: publicAccess, action: actionConsoleSignOut, handler: (*Server).consoleSignOut},
	{method: http.MethodGet, path: "/ui/", access: publicAccess, action: "console.assets", handler: (*Server).serveConsoleAssets},
	// Probes: a load balancer must reach them without credentials, and
	// they reveal nothing but whether the API is up and ready.
	{method: http.MethodGet, path: "/healthz", access: publicAccess, action: "health", handler: (*Server).healthz},
	{method: http.MethodGet, path: "/readyz", access: publicAccess, action: "health", handler: (*Server).readyz},
	// The own trust domain's bundle, for partners federating with it
	// (SPIFFE bundle endpoint): public, as a bundle is.
	{method: http.MethodGet, path: "/v1/bundle", access: publicAccess, action: "bundle.get", handler: (*Server).getBundle},
	// Metrics reveal device names, request rates and process details, so
	// they are an admin action like any other.
	{method: http.MethodGet, path: "/metrics", action: "metrics.read", handler: (*Server).serveMetrics},
}
