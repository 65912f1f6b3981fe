package test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testutil"
)

// bootstrapToken is the answer of POST /v1/tokens.
type bootstrapToken struct {
	Token     string    `json:"token"`
	CAPin     string    `json:"ca_pin"`
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Device    struct {
		Name   string            `json:"name"`
		Status string            `json:"status"`
		Labels map[string]string `json:"labels"`
	} `json:"device"`
}

// mintToken registers name as a pending device and returns its one-time
// bootstrap token, as `ztgate device token NAME --ttl TTL` does.
func mintToken(t *testing.T, env *testutil.Env, name, ttl string, labels map[string]string) bootstrapToken {
	t.Helper()
	res := env.API(t, env.Admin, "POST", "/v1/tokens", map[string]any{"name": name, "ttl": ttl, "labels": labels})
	if res.Status != 201 {
		t.Fatalf("POST /v1/tokens %s: %d %s", name, res.Status, res.Body)
	}
	var tok bootstrapToken
	res.Decode(t, &tok)
	if tok.Token == "" {
		t.Fatalf("POST /v1/tokens %s: no token: %s", name, res.Body)
	}
	return tok
}

// enrollAnswer is a raw answer of POST /v1/enroll.
type enrollAnswer = testutil.Response

// enrollment is the body of a successful POST /v1/enroll.
type enrollment struct {
	SVIDPEM   string    `json:"svid_pem"`
	BundlePEM string    `json:"bundle_pem"`
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// redeem calls POST /v1/enroll as a device in the field does: no client
// certificate, and a TLS client that trusts nothing but the CA whose public
// key matches pin. A transport error (the pin refusing the server, say) is
// returned.
func redeem(env *testutil.Env, pin, token string, csrPEM []byte) (*enrollAnswer, error) {
	cfg, err := identity.PinnedClientTLSConfig(pin)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(map[string]string{"token": token, "csr": string(csrPEM)})
	if err != nil {
		return nil, err
	}
	res, err := testclient.Request(cfg, http.MethodPost, env.APIURL+"/v1/enroll", "application/json", body)
	if err != nil {
		return nil, err
	}
	return &res, nil
}

func mustRedeem(t *testing.T, env *testutil.Env, pin, token string, csrPEM []byte) *enrollAnswer {
	t.Helper()
	a, err := redeem(env, pin, token, csrPEM)
	if err != nil {
		t.Fatalf("POST /v1/enroll: %v", err)
	}
	return a
}

// requireInvalidToken fails unless a is the one answer to every refused
// token: 401 {"error":"invalid token"}, no detail.
func requireInvalidToken(t *testing.T, what string, a *enrollAnswer) {
	t.Helper()
	if a.Status != 401 {
		t.Fatalf("%s: POST /v1/enroll: %d %s; want 401", what, a.Status, a.Body)
	}
	var e map[string]any
	if err := json.Unmarshal(a.Body, &e); err != nil || len(e) != 1 || e["error"] != "invalid token" {
		t.Errorf(`%s: 401 body %s; want exactly {"error":"invalid token"}`, what, a.Body)
	}
}

// enrolledDevice turns a successful enrollment into a device: the SVID
// chain it got with the key it made, and a TLS configuration that trusts
// the gateway through the bundle it got, nothing else.
func enrolledDevice(t *testing.T, env *testutil.Env, a *enrollAnswer, keyPEM []byte) (*testutil.Device, *testutil.ConnOpts, enrollment) {
	t.Helper()
	if a.Status != 200 {
		t.Fatalf("POST /v1/enroll: %d %s; want 200", a.Status, a.Body)
	}
	var out enrollment
	if err := json.Unmarshal(a.Body, &out); err != nil {
		t.Fatalf("POST /v1/enroll: %v: %s", err, a.Body)
	}
	cert, err := tls.X509KeyPair([]byte(out.SVIDPEM), keyPEM)
	if err != nil {
		t.Fatalf("enrolled SVID: %v", err)
	}
	leaf := leafOf(t, cert)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != out.SPIFFEID {
		t.Fatalf("enrolled SVID carries %v; want exactly %s", leaf.URIs, out.SPIFFEID)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(out.BundlePEM)) {
		t.Fatalf("enrollment bundle holds no certificate: %q", out.BundlePEM)
	}
	o := &testutil.ConnOpts{TLS: &tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		ServerName:   "127.0.0.1",
		MinVersion:   tls.VersionTLS12,
	}}
	return env.WithCert(t, &cert), o, out
}

func leafOf(t *testing.T, cert tls.Certificate) *x509.Certificate {
	t.Helper()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func newKeyAndCSR(t *testing.T) (keyPEM, csrPEM []byte) {
	t.Helper()
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	return keyPEM, csrPEM
}

func deviceStatus(t *testing.T, env *testutil.Env, name string) string {
	t.Helper()
	res := env.API(t, env.Admin, "GET", "/v1/devices/"+name, nil)
	if res.Status != 200 {
		t.Fatalf("GET /v1/devices/%s: %d %s", name, res.Status, res.Body)
	}
	var d struct {
		Status string `json:"status"`
	}
	res.Decode(t, &d)
	return d.Status
}

// Bootstrap enrollment end to end: the admin mints a token for field-1 (a
// pending device, which cannot connect, even with an SVID for its ID); the
// device makes its key and CSR, pins the CA, redeems the token without any
// client certificate, and with what it got (SVID chain and bundle) connects
// over MQTT and publishes telemetry that a controller receives.
func TestBootstrap_EnrollEndToEnd(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	ctl := env.MustConnect(t, env.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"}), "ctl", nil)
	ctl.Sub(t, "devices/+/telemetry/#")

	minted := time.Now()
	tok := mintToken(t, env, "field-1", "10m", map[string]string{"role": "sensor"})
	if tok.SPIFFEID != env.DeviceID("field-1") {
		t.Errorf("token for field-1 yields %s; want %s", tok.SPIFFEID, env.DeviceID("field-1"))
	}
	if tok.Device.Name != "field-1" || tok.Device.Status != "pending" || tok.Device.Labels["role"] != "sensor" {
		t.Errorf("token's device %+v; want field-1, pending, role=sensor", tok.Device)
	}
	if want := identity.CAPin(env.App.CA().Certificate()); tok.CAPin != want {
		t.Errorf("ca_pin %q; want %q", tok.CAPin, want)
	}
	if d := tok.ExpiresAt.Sub(minted); d < 9*time.Minute || d > 11*time.Minute {
		t.Errorf("10m token expires %s after it was minted", d)
	}

	// Pending is not enrolled: an SVID for the ID, signed by our CA, is
	// refused at CONNECT.
	env.RequireRefused(t, env.Issue(t, tok.SPIFFEID), "field-1", nil, testutil.ReasonNotAuthorized)

	keyPEM, csrPEM := newKeyAndCSR(t)
	dev, o, got := enrolledDevice(t, env, mustRedeem(t, env, tok.CAPin, tok.Token, csrPEM), keyPEM)
	if got.SPIFFEID != tok.SPIFFEID {
		t.Fatalf("enrolled as %s; want %s", got.SPIFFEID, tok.SPIFFEID)
	}
	if s := deviceStatus(t, env, "field-1"); s != "active" {
		t.Fatalf("field-1 is %s after enrollment; want active", s)
	}

	c := env.MustConnect(t, dev, "field-1", o)
	c.Pub(t, msg{Topic: "devices/field-1/telemetry/temp", Payload: "21.5", QoS: 1})
	ctl.Msgs.ExpectPayload(t, "devices/field-1/telemetry/temp", "21.5", wait)
	c.PubDenied(t, msg{Topic: "devices/ctl/telemetry/temp", Payload: "forged"})
	ctl.Msgs.ExpectNone(t, quiet)
}

// otherSecret returns tok with one character of its secret changed: the
// token ID of a real token with the wrong secret.
func otherSecret(t *testing.T, tok string) string {
	t.Helper()
	if len(tok) < 20 {
		t.Fatalf("token %q is too short to alter", tok)
	}
	b := []byte(tok)
	i := len(b) - 10 // inside the secret, away from its last (padding) character
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// Token misuse, each refused with the same 401 and no detail: a real token
// ID with the wrong secret, a malformed token, a reused token. A token
// yields only the SPIFFE ID it was made for: a CSR asking for the admin's
// ID gets nothing else, and an active device cannot be re-enrolled by
// minting a token for it. A client that pins another CA never talks to the
// API. The positive control: the right token, after the wrong attempts,
// still enrolls its device.
func TestBootstrap_TokenMisuse(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	tok := mintToken(t, env, "field-a", "10m", nil)
	_, csrPEM := newKeyAndCSR(t)

	// The enrollment endpoint allows five attempts in a burst per address:
	// this test makes exactly five.
	requireInvalidToken(t, "wrong secret", mustRedeem(t, env, tok.CAPin, otherSecret(t, tok.Token), csrPEM))
	requireInvalidToken(t, "malformed token", mustRedeem(t, env, tok.CAPin, "ztb_not-a-token", csrPEM))

	// A CSR asking for another identity gets that identity from no one.
	a := mustRedeem(t, env, tok.CAPin, tok.Token, []byte(csrWithSAN(t)))
	switch a.Status {
	case 200:
		var out enrollment
		if err := json.Unmarshal(a.Body, &out); err != nil {
			t.Fatal(err)
		}
		if out.SPIFFEID != tok.SPIFFEID {
			t.Fatalf("token for field-a with a CSR asking for the admin ID yielded %s", out.SPIFFEID)
		}
		t.Fatal("the token was spent on a CSR that asks for another identity; want it refused (400) without spending the token")
	case 400:
	default:
		t.Fatalf("CSR asking for the admin ID: %d %s; want 400", a.Status, a.Body)
	}

	keyPEM, csrPEM := newKeyAndCSR(t)
	dev, o, got := enrolledDevice(t, env, mustRedeem(t, env, tok.CAPin, tok.Token, csrPEM), keyPEM)
	if got.SPIFFEID != env.DeviceID("field-a") {
		t.Fatalf("token for field-a yielded %s", got.SPIFFEID)
	}
	env.MustConnect(t, dev, "field-a", o).Close()

	// A used token is worth nothing without the key it was redeemed with
	// (a retry with that key, after a lost answer, is api's
	// TestEnrollRetryWithTheSameKey).
	_, otherCSR := newKeyAndCSR(t)
	requireInvalidToken(t, "reused token with another key", mustRedeem(t, env, tok.CAPin, tok.Token, otherCSR))

	// No token can be minted for a device that is enrolled already: a
	// token never takes over an identity. A new name is the control.
	if res := env.API(t, env.Admin, "POST", "/v1/tokens", map[string]any{"name": "field-a"}); res.Status != 409 {
		t.Errorf("token for the active device field-a: %d %s; want 409", res.Status, res.Body)
	}
	mintToken(t, env, "field-b", "10m", nil)

	// A pin that is not the CA's: the client refuses the server before
	// sending anything.
	wrongPin := "sha256:" + fmt.Sprintf("%064x", 0)
	if a, err := redeem(env, wrongPin, tok.Token, csrPEM); err == nil {
		t.Fatalf("a client pinning another CA reached the API: %d %s", a.Status, a.Body)
	} else {
		t.Logf("wrong pin: %v", err)
	}
}

// An expired token is refused with the same 401; the device stays pending
// (and cannot connect). A fresh token for the same device, minted after,
// enrolls it (positive control).
func TestBootstrap_ExpiredToken(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	tok := mintToken(t, env, "field-x", "1s", nil)
	time.Sleep(time.Until(tok.ExpiresAt) + 50*time.Millisecond)

	keyPEM, csrPEM := newKeyAndCSR(t)
	requireInvalidToken(t, "expired token", mustRedeem(t, env, tok.CAPin, tok.Token, csrPEM))
	if s := deviceStatus(t, env, "field-x"); s != "pending" {
		t.Fatalf("field-x is %s after an expired token; want pending", s)
	}
	env.RequireRefused(t, env.Issue(t, tok.SPIFFEID), "field-x", nil, testutil.ReasonNotAuthorized)

	fresh := mintToken(t, env, "field-x", "10m", nil)
	dev, o, _ := enrolledDevice(t, env, mustRedeem(t, env, fresh.CAPin, fresh.Token, csrPEM), keyPEM)
	env.MustConnect(t, dev, "field-x", o).Close()
}

// Guessing tokens is rate limited per address: a burst of wrong tokens
// ends in 429 with Retry-After. The limit refills: the right token then
// enrolls its device (positive control), and the wrong guesses did not
// spend it.
func TestBootstrap_EnrollmentRateLimited(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	tok := mintToken(t, env, "field-r", "10m", nil)
	keyPEM, csrPEM := newKeyAndCSR(t)
	wrong := otherSecret(t, tok.Token)

	limited := false
	for i := 0; i < 30 && !limited; i++ {
		a := mustRedeem(t, env, tok.CAPin, wrong, csrPEM)
		switch a.Status {
		case 401:
		case 429:
			limited = true
			if s, err := strconv.Atoi(a.Header.Get("Retry-After")); err != nil || s < 1 {
				t.Errorf("429 with Retry-After %q; want a number of seconds", a.Header.Get("Retry-After"))
			}
			t.Logf("rate limited after %d wrong tokens", i)
		default:
			t.Fatalf("wrong token: %d %s; want 401 or 429", a.Status, a.Body)
		}
	}
	if !limited {
		t.Fatal("30 wrong tokens in a row were never rate limited")
	}

	deadline := time.Now().Add(wait)
	for {
		a := mustRedeem(t, env, tok.CAPin, tok.Token, csrPEM)
		if a.Status == 429 && time.Now().Before(deadline) {
			time.Sleep(250 * time.Millisecond)
			continue
		}
		dev, o, _ := enrolledDevice(t, env, a, keyPEM)
		env.MustConnect(t, dev, "field-r", o).Close()
		return
	}
}

// Renewal: an active device presents its current SVID to
// POST /v1/svid/renew and gets a new SVID for the same SPIFFE ID, then
// reconnects with it to its persistent session and gets the QoS 1 command
// queued while it was away. A suspended device's renewal is refused; once
// resumed it renews again (positive control).
func TestFleet_RenewAndReconnect(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	env := f.env
	p := &testutil.ConnOpts{Persistent: true, SessionExpiry: 300}
	d := env.MustConnect(t, f.s1, "sensor-1", p)
	d.Sub(t, "devices/sensor-1/commands/#")
	d.Close()
	ctl := env.MustConnect(t, f.ctl, "ctl", nil)
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/while-away", Payload: "q", QoS: 1})

	renew := func(who *testutil.Device) (*testutil.Response, []byte) {
		t.Helper()
		keyPEM, csrPEM := newKeyAndCSR(t)
		return env.API(t, who, "POST", "/v1/svid/renew", map[string]string{"csr": string(csrPEM)}), keyPEM
	}
	res, keyPEM := renew(f.s1)
	if res.Status != 200 {
		t.Fatalf("renew as sensor-1: %d %s", res.Status, res.Body)
	}
	var out enrollment
	res.Decode(t, &out)
	if out.SPIFFEID != f.s1.ID {
		t.Fatalf("renewal answered for %s; want %s", out.SPIFFEID, f.s1.ID)
	}
	cert, err := tls.X509KeyPair([]byte(out.SVIDPEM), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	oldLeaf, newLeaf := leafOf(t, f.s1.Cert), leafOf(t, cert)
	if len(newLeaf.URIs) != 1 || newLeaf.URIs[0].String() != f.s1.ID {
		t.Fatalf("renewed SVID carries %v; want exactly %s", newLeaf.URIs, f.s1.ID)
	}
	if newLeaf.SerialNumber.Cmp(oldLeaf.SerialNumber) == 0 {
		t.Fatal("renewal returned the same certificate")
	}
	if newLeaf.NotAfter.Before(oldLeaf.NotAfter) {
		t.Errorf("renewed SVID expires at %s, before the one it renews (%s)", newLeaf.NotAfter, oldLeaf.NotAfter)
	}

	renewed := env.WithCert(t, &cert)
	d2 := env.MustConnect(t, renewed, "sensor-1", p)
	if !d2.Connack.SessionPresent {
		t.Fatal("reconnecting with the renewed SVID lost the persistent session")
	}
	d2.Msgs.ExpectPayload(t, "devices/sensor-1/commands/while-away", "q", wait)

	env.SetStatus(t, "sensor-1", "suspend")
	d2.WaitClosed(t, wait)
	if res, _ := renew(renewed); res.Status != 403 && res.Status != 409 {
		t.Errorf("renew as a suspended device: %d %s; want 403 or 409", res.Status, res.Body)
	} else {
		res.ErrorMessage(t)
	}
	env.SetStatus(t, "sensor-1", "resume")
	if res, _ := renew(renewed); res.Status != 200 {
		t.Errorf("renew after resume: %d %s; want 200", res.Status, res.Body)
	}
}

// Continuous verification: a session lasts as long as its SVID. A device
// connected with a short-lived SVID is disconnected when it expires, with
// DISCONNECT 0xA0, and cannot reconnect with it; the same identity
// connected with a long-lived SVID stays and keeps receiving (control).
func TestFleet_SVIDExpiryCutsSession(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	env := f.env
	long := env.MustConnect(t, f.s1, "long", nil)
	long.Sub(t, "devices/sensor-1/commands/#")
	ctl := env.MustConnect(t, f.ctl, "ctl", nil)

	shortDev := env.IssueTTL(t, f.s1.ID, 4*time.Second)
	notAfter := leafOf(t, shortDev.Cert).NotAfter
	short := env.MustConnect(t, shortDev, "short", nil)
	short.Sub(t, "devices/sensor-1/commands/#")
	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/before", Payload: "1", QoS: 1})
	short.Msgs.ExpectPayload(t, "devices/sensor-1/commands/before", "1", wait)
	long.Msgs.ExpectPayload(t, "devices/sensor-1/commands/before", "1", wait)

	d := short.WaitDisconnect(t, time.Until(notAfter)+wait)
	closedAt := time.Now()
	if d.ReasonCode != 0xA0 {
		t.Errorf("DISCONNECT reason %#x; want 0xA0", d.ReasonCode)
	}
	if d.Properties != nil {
		t.Logf("DISCONNECT reason string %q", d.Properties.ReasonString)
	}
	if closedAt.Before(notAfter) {
		t.Errorf("session cut at %s, before its SVID expired at %s", closedAt, notAfter)
	}
	t.Logf("cut %s after expiry", closedAt.Sub(notAfter).Round(time.Millisecond))

	ctl.Pub(t, msg{Topic: "devices/sensor-1/commands/after", Payload: "2", QoS: 1})
	long.Msgs.ExpectPayload(t, "devices/sensor-1/commands/after", "2", wait)
	if long.Closed() {
		t.Fatal("the long-lived session of the same identity was cut")
	}
	env.RequireRefused(t, shortDev, "short", nil, 0)
}

// auditRecord is one entry of GET /v1/audit.
type auditRecord struct {
	ID     uint64    `json:"id"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Target string    `json:"target"`
	Result string    `json:"result"`
	Detail string    `json:"detail"`
}

// auditLog reads the whole audit log through the API, page by page.
func auditLog(t *testing.T, env *testutil.Env) []auditRecord {
	t.Helper()
	var all []auditRecord
	after := uint64(0)
	for range 1000 {
		res := env.API(t, env.Admin, "GET", fmt.Sprintf("/v1/audit?after=%d&limit=50", after), nil)
		if res.Status != 200 {
			t.Fatalf("GET /v1/audit: %d %s", res.Status, res.Body)
		}
		var page struct {
			Entries []auditRecord `json:"entries"`
			Next    uint64        `json:"next"`
		}
		res.Decode(t, &page)
		all = append(all, page.Entries...)
		if page.Next == 0 {
			return all
		}
		after = page.Next
	}
	t.Fatal("the audit log does not end")
	return nil
}

// Fleet operations through the API with the audit trail: a device enrolled
// by bootstrap token is suspended (its session ends with DISCONNECT 0x87
// and it cannot reconnect) and resumed (it connects and is served again).
// GET /v1/audit shows each step with its actor: the admin's SPIFFE ID for
// token.create, device.suspend and device.resume, "bootstrap-token" for
// token.redeem, including a refused redemption.
func TestFleet_SuspendResumeAudited(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	ctl := env.MustConnect(t, env.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"}), "ctl", nil)

	tok := mintToken(t, env, "field-1", "10m", map[string]string{"role": "sensor"})
	keyPEM, csrPEM := newKeyAndCSR(t)
	requireInvalidToken(t, "wrong secret", mustRedeem(t, env, tok.CAPin, otherSecret(t, tok.Token), csrPEM))
	dev, o, _ := enrolledDevice(t, env, mustRedeem(t, env, tok.CAPin, tok.Token, csrPEM), keyPEM)

	c := env.MustConnect(t, dev, "field-1", o)
	c.Sub(t, "devices/field-1/commands/#")
	ctl.Pub(t, msg{Topic: "devices/field-1/commands/hello", Payload: "1", QoS: 1})
	c.Msgs.ExpectPayload(t, "devices/field-1/commands/hello", "1", wait)

	env.SetStatus(t, "field-1", "suspend")
	if d := c.WaitDisconnect(t, wait); d.ReasonCode != testutil.ReasonNotAuthorized {
		t.Errorf("suspended session ended with DISCONNECT reason %#x; want 0x87", d.ReasonCode)
	}
	env.RequireRefused(t, dev, "field-1", o, testutil.ReasonNotAuthorized)

	env.SetStatus(t, "field-1", "resume")
	c = env.MustConnect(t, dev, "field-1", o)
	c.Sub(t, "devices/field-1/commands/#")
	ctl.Pub(t, msg{Topic: "devices/field-1/commands/welcome-back", Payload: "2", QoS: 1})
	c.Msgs.ExpectPayload(t, "devices/field-1/commands/welcome-back", "2", wait)

	entries := auditLog(t, env)
	admin := env.Admin.ID
	find := func(action, target, actor, result string) *auditRecord {
		t.Helper()
		for i := range entries {
			e := &entries[i]
			if e.Action == action && (target == "" || e.Target == target) && e.Actor == actor && e.Result == result {
				return e
			}
		}
		raw, _ := json.MarshalIndent(entries, "", "  ")
		t.Fatalf("no audit entry %s on %q by %s with result %s; the log:\n%s", action, target, actor, result, raw)
		return nil
	}
	created := find("token.create", "field-1", admin, "ok")
	denied := find("token.redeem", "", "bootstrap-token", "denied")
	redeemed := find("token.redeem", "field-1", "bootstrap-token", "ok")
	suspended := find("device.suspend", "field-1", admin, "ok")
	resumed := find("device.resume", "field-1", admin, "ok")
	for i, e := range []*auditRecord{created, denied, redeemed, suspended, resumed} {
		if e.Time.IsZero() {
			t.Errorf("audit entry %d (%s) has no time", e.ID, e.Action)
		}
		t.Logf("audit %d %s %s %s %s %s: %s", e.ID, e.Time.Format(time.RFC3339Nano), e.Actor, e.Action, e.Target, e.Result, e.Detail)
		if i > 0 {
			prev := []*auditRecord{created, denied, redeemed, suspended, resumed}[i-1]
			if e.ID <= prev.ID || e.Time.Before(prev.Time) {
				t.Errorf("audit entry %s (%d) is not after %s (%d)", e.Action, e.ID, prev.Action, prev.ID)
			}
		}
	}
	// The token's secret (its last 43 characters) is in no entry.
	if len(tok.Token) < 43 {
		t.Fatalf("token %q is shorter than its secret", tok.Token)
	}
	secret := tok.Token[len(tok.Token)-43:]
	for _, e := range entries {
		if strings.Contains(e.Actor+e.Target+e.Detail, secret) {
			t.Errorf("audit entry %d holds the bootstrap token's secret", e.ID)
		}
	}
}
