package test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/internal/testutil"
)

// browserStep bounds every step of a browser test: a page that does not
// show what it must within it fails the step.
const browserStep = 10 * time.Second

// consoleCookie is the console session's cookie.
const consoleCookie = "ztgate_console"

// consolePages are the console's hash routes, in the order of its nav bar.
var consolePages = []string{"overview", "devices", "sessions", "denials", "policy", "audit"}

// Rule: the web console is an admin client like the CLI. Signed in with the
// one-time URL `ztgate dashboard` prints, it shows the fleet and its live
// sessions, suspends a device (after a confirmation) so that its MQTT
// session is cut, streams denials with their decision IDs, and runs the
// policy playground. A browser without the session cookie, a login URL used
// twice and a state change without the CSRF token are refused, while the
// signed-in console with its token still works (positive controls).
//
// With ZTGATE_SCREENSHOTS=DIR it saves one 1280x800 PNG per page in DIR.
func TestConsoleBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	ob := testutil.StartObserved(t, nil)
	env := ob.Env
	s1 := env.Enroll(t, "sensor-1", map[string]string{"role": "sensor", "site": "plant-a"})
	s2 := env.Enroll(t, "sensor-2", map[string]string{"role": "sensor", "site": "plant-b"})
	ctl := env.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"})
	c1 := env.MustConnect(t, s1, "sensor-1-main", nil)
	c1.Sub(t, "devices/sensor-1/commands/#")
	c2 := env.MustConnect(t, s2, "sensor-2-main", nil)
	cc := env.MustConnect(t, ctl, "ctl-main", nil)
	cc.Sub(t, "devices/+/telemetry/#")

	loginURL := dashboardURL(t, env)
	b := startBrowser(t, chromium, apiKeyPin(t, env))
	tab := b.tab(t)

	// Sign in with the printed URL: the form posts the token, the gateway
	// sets the cookie and sends the browser to the console.
	tab.signIn(t, loginURL)
	if who := tab.text(t, "#whoami"); who != env.Admin.ID {
		t.Fatalf("console signed in as %q, want the admin %q", who, env.Admin.ID)
	}
	tab.checkCookie(t, env.APIURL)

	// The enrolled devices, searched by label selector, and their live sessions.
	tab.show(t, "devices")
	tab.waitFor(t, "sensor-1 listed as active", deviceStatusJS("sensor-1", "active"))
	tab.waitFor(t, "sensor-2 listed", `document.querySelector('tr[data-device="sensor-2"]') !== null`)
	tab.setValue(t, "#device-search-selector", "site=plant-a")
	tab.click(t, "#device-search-submit")
	tab.waitFor(t, "the selector leaves only sensor-1",
		`[...document.querySelectorAll('#devices-body tr[data-device]')].map(r => r.dataset.device).join() === 'sensor-1'`)
	tab.setValue(t, "#device-search-selector", "")
	tab.click(t, "#device-search-submit")
	tab.waitFor(t, "sensor-2 listed again", `document.querySelector('tr[data-device="sensor-2"]') !== null`)

	// The label editor: one label changed, one added, in one PATCH.
	tab.click(t, `tr[data-device="sensor-2"] button[data-action="labels"]`)
	tab.waitFor(t, "the label editor", `document.getElementById('labels-dialog').open`)
	tab.setValue(t, "#labels-text", "role=sensor\nsite=plant-c\nzone=north")
	tab.click(t, "#labels-save")
	tab.waitFor(t, "sensor-2's new labels listed", `(() => { const r = document.querySelector('tr[data-device="sensor-2"]');
		return r !== null && r.textContent.includes('zone=north') && r.textContent.includes('site=plant-c'); })()`)
	if got := deviceOf(t, env, "sensor-2").Labels; !maps.Equal(got, map[string]string{"role": "sensor", "site": "plant-c", "zone": "north"}) {
		t.Fatalf("sensor-2's labels after the editor: %v", got)
	}

	tab.show(t, "sessions")
	tab.waitFor(t, "sensor-1's live session with its subscription",
		`(() => { const r = document.querySelector('tr[data-client-id="sensor-1-main"]');
			return r !== null && r.dataset.device === 'sensor-1' &&
				r.querySelector('[data-testid=session-subscriptions]').textContent.includes('devices/sensor-1/commands/#'); })()`)

	// Suspend from the page. Cancelling the confirmation changes nothing;
	// confirming cuts the MQTT session.
	tab.show(t, "devices")
	tab.click(t, `tr[data-device="sensor-1"] button[data-action="suspend"]`)
	tab.waitFor(t, "the confirmation dialog", `document.getElementById('confirm').open &&
		document.getElementById('confirm-message').textContent.includes('sensor-1')`)
	tab.click(t, "#confirm-cancel")
	tab.waitFor(t, "the dialog closed", `!document.getElementById('confirm').open`)
	time.Sleep(testutil.Quiet)
	if c1.Closed() {
		t.Fatal("cancelling the confirmation cut sensor-1's session")
	}
	requireStatus(t, env, "sensor-1", "active")

	tab.click(t, `tr[data-device="sensor-1"] button[data-action="suspend"]`)
	tab.waitFor(t, "the confirmation dialog", `document.getElementById('confirm').open`)
	tab.click(t, "#confirm-ok")
	if d := c1.WaitClosed(t, wait); d != nil {
		t.Logf("sensor-1 got DISCONNECT %#x", d.ReasonCode)
	}
	tab.waitFor(t, "sensor-1 listed as suspended", deviceStatusJS("sensor-1", "suspended"))
	requireStatus(t, env, "sensor-1", "suspended")
	if c2.Closed() {
		t.Fatal("suspending sensor-1 cut sensor-2")
	}

	// A publish where the device may not appears in the live stream, with
	// the decision ID the decision log has; an allowed one does not.
	tab.show(t, "denials")
	tab.waitFor(t, "the denial stream connected", `document.getElementById('denials-state').dataset.state === 'open'`)
	c2.Pub(t, msg{Topic: "devices/sensor-2/telemetry/ok", Payload: "1", QoS: 1})
	c2.PubDenied(t, msg{Topic: "devices/sensor-1/telemetry/spoof", Payload: "x"})
	id := tab.waitForString(t, "the denial in the stream",
		`(() => { const r = [...document.querySelectorAll('#denials-body tr[data-decision-id]')].find(r =>
			r.querySelector('[data-testid=denial-topic]').textContent === 'devices/sensor-1/telemetry/spoof');
			return r ? r.dataset.decisionId : ''; })()`)
	entry := ob.WaitDecision(t, id, wait)
	if entry.Result.Allow || !strings.Contains(string(entry.Input), `"devices/sensor-1/telemetry/spoof"`) {
		t.Fatalf("decision %s in the decision log: allow=%v input %s; want the refused publish", id, entry.Result.Allow, entry.Input)
	}
	if n := tab.count(t, `#denials-body tr[data-decision-id="`+id+`"] [data-testid=denial-reasons] li`); n == 0 {
		t.Fatal("the denial shows no reasons")
	}
	if tab.eval(t, `[...document.querySelectorAll('[data-testid=denial-topic]')].some(c => c.textContent === 'devices/sensor-2/telemetry/ok')`) {
		t.Fatal("an allowed publish appeared in the denial stream")
	}

	// The playground: allow for sensor-2's own topic, deny with reasons for
	// another's, and the input the gateway would build.
	tab.show(t, "policy")
	tab.waitFor(t, "sensor-2 in the device list", `[...document.getElementById('pg-device').options].some(o => o.value === 'sensor-2')`)
	tab.playground(t, "sensor-2", "publish", "devices/sensor-2/telemetry/temp", "allow")
	tab.playground(t, "sensor-2", "publish", "devices/sensor-1/telemetry/temp", "deny")
	if n := tab.count(t, "#pg-reasons li:not(.muted)"); n == 0 {
		t.Fatal("the playground's deny shows no reasons")
	}
	tab.playground(t, "sensor-1", "connect", "", "deny")
	if r := tab.text(t, "#pg-reasons"); !strings.Contains(r, "suspended") {
		t.Fatalf("the suspended device's connect: reasons %q, want it named suspended", r)
	}

	if dir := os.Getenv("ZTGATE_SCREENSHOTS"); dir != "" {
		tab.screenshots(t, dir)
	}

	// A state change without the CSRF token, or with a wrong one, is
	// refused; the same request with the session's token passes.
	for _, hdr := range []map[string]string{nil, {"X-CSRF-Token": "not-the-token"}} {
		res := tab.fetch(t, "POST", "/v1/devices/sensor-2/suspend", hdr)
		if res.Status != 403 || !strings.Contains(res.Body, "CSRF") {
			t.Fatalf("suspend with CSRF header %v: %d %s; want 403 naming the CSRF token", hdr, res.Status, res.Body)
		}
	}
	requireStatus(t, env, "sensor-2", "active")
	if c2.Closed() {
		t.Fatal("a refused state change cut sensor-2")
	}
	csrf := tab.waitForString(t, "the CSRF token", `fetch('/v1/console/session').then(r => r.json()).then(s => s.csrf_token || '')`)
	if res := tab.fetch(t, "POST", "/v1/devices/sensor-1/resume", map[string]string{"X-CSRF-Token": csrf}); res.Status != 200 {
		t.Fatalf("resume with the CSRF token: %d %s; want 200", res.Status, res.Body)
	}
	requireStatus(t, env, "sensor-1", "active")

	// A fresh browser context has no cookie: the console says it is signed
	// out and the API refuses it. The used login URL does not sign it in.
	fresh := b.freshTab(t)
	fresh.navigate(t, env.APIURL+"/ui/", 200)
	fresh.waitFor(t, "the signed-out notice", `!document.getElementById('signed-out').hidden &&
		document.getElementById('signed-out').textContent.includes('ztgate dashboard')`)
	for _, path := range []string{"/v1/overview", "/v1/devices", "/v1/console/session"} {
		if res := fresh.fetch(t, "GET", path, nil); res.Status != 401 {
			t.Fatalf("GET %s without the cookie: %d %s; want 401", path, res.Status, res.Body)
		}
	}
	fresh.reuseLogin(t, loginURL)
	if res := fresh.fetch(t, "GET", "/v1/console/session", nil); res.Status != 401 {
		t.Fatalf("after the reused login URL: GET /v1/console/session %d %s; want 401", res.Status, res.Body)
	}
	// Positive control: the first browser is still signed in.
	if res := tab.fetch(t, "GET", "/v1/console/session", nil); res.Status != 200 {
		t.Fatalf("the signed-in console: GET /v1/console/session %d %s; want 200", res.Status, res.Body)
	}

	// Signing out ends the session: the page says so and the API refuses.
	tab.click(t, "#logout")
	tab.waitFor(t, "the signed-out notice after sign-out", `!document.getElementById('signed-out').hidden`)
	if res := tab.fetch(t, "GET", "/v1/overview", nil); res.Status != 401 {
		t.Fatalf("after sign-out: GET /v1/overview %d %s; want 401", res.Status, res.Body)
	}
	b.checkPageErrors(t)
}

// chromiumPath finds the browser, or skips the test when there is none
// (fails it when ZTGATE_REQUIRE_BROWSER=1, as in CI).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("ZTGATE_REQUIRE_BROWSER") == "1" {
		t.Fatal("no chromium on PATH and ZTGATE_REQUIRE_BROWSER=1")
	}
	t.Skip("no chromium on PATH (set ZTGATE_REQUIRE_BROWSER=1 to fail instead)")
	return ""
}

// dashboardURL runs `ztgate dashboard` as the admin and returns the URL it
// prints as its last line.
func dashboardURL(t *testing.T, env *testutil.Env) string {
	t.Helper()
	bin := buildZtgate(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "dashboard", "--api", env.APIURL, "--admin-dir", env.Admin.Dir)
	cmd.Env = append(os.Environ(), "ZTGATE_API=", "ZTGATE_ADMIN_DIR=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ztgate dashboard: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	u, err := url.Parse(last)
	if err != nil || !strings.HasPrefix(last, env.APIURL+"/ui/login?") || u.Query().Get("token") == "" {
		t.Fatalf("ztgate dashboard: last line %q is not a login URL of %s", last, env.APIURL)
	}
	return last
}

// apiKeyPin is the base64 SHA-256 of the API server's public key, taken
// from a TLS connection verified against the gateway's CA. Chromium trusts
// exactly that key (--ignore-certificate-errors-spki-list), not every
// certificate: the test cannot add the gateway's CA to the browser's root
// store without writing to the user's NSS database.
func apiKeyPin(t *testing.T, env *testutil.Env) string {
	t.Helper()
	conf := env.Admin.TLSConfig()
	conf.Certificates = nil
	d := tls.Dialer{Config: conf, NetDialer: &net.Dialer{Timeout: wait}}
	conn, err := d.DialContext(context.Background(), "tcp", strings.TrimPrefix(env.APIURL, "https://"))
	if err != nil {
		t.Fatalf("dial the API: %v", err)
	}
	defer conn.Close()
	leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// browser is one headless Chromium for the whole test.
type browser struct {
	ctx context.Context // the browser's first tab; its cancel stops the browser
	out *testpki.LogBuffer
	// tabs records what every tab reported: uncaught errors and CSP
	// violations the pages would otherwise hide.
	tabs []*consoleTab
}

// pageProbe runs in every document before its own scripts: it records
// uncaught errors and Content-Security-Policy violations, so a test can
// assert that the console needs nothing the CSP forbids.
const pageProbe = `window.__problems = [];
window.addEventListener('error', e => window.__problems.push('error: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__problems.push('unhandled rejection: ' + e.reason));
document.addEventListener('securitypolicyviolation', e => window.__problems.push('CSP: ' + e.violatedDirective + ' ' + e.blockedURI));`

func startBrowser(t *testing.T, chromium, pin string) *browser {
	t.Helper()
	b := &browser{out: &testpki.LogBuffer{}}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", pin),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
		chromedp.CombinedOutput(b.out),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start %s: %v\n%s", chromium, err, b.out.String())
	}
	b.ctx = ctx
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("browser output:\n%s", b.out.String())
		}
	})
	return b
}

// tab opens a tab in the browser's own context (the one that signs in).
func (b *browser) tab(t *testing.T) *consoleTab {
	t.Helper()
	return b.newTab(t)
}

// freshTab opens a tab in a new browser context: no cookies.
func (b *browser) freshTab(t *testing.T) *consoleTab {
	t.Helper()
	return b.newTab(t, chromedp.WithNewBrowserContext())
}

func (b *browser) newTab(t *testing.T, opts ...chromedp.ContextOption) *consoleTab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, opts...)
	t.Cleanup(cancel)
	tab := &consoleTab{ctx: ctx}
	// The first Run on a context creates its tab, which lives as long as
	// the context of that Run: this one must have no timeout.
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		_, err := cdp.Call(ctx, tgt, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: pageProbe})
		return err
	}), chromedp.EmulateViewport(1280, 800))
	if err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	b.tabs = append(b.tabs, tab)
	return tab
}

// checkPageErrors fails the test if a page of any tab threw or broke its
// CSP. Only the last document of each tab is still there to ask.
func (b *browser) checkPageErrors(t *testing.T) {
	t.Helper()
	for _, tab := range b.tabs {
		ctx, cancel := context.WithTimeout(tab.ctx, browserStep)
		problems, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__problems || []`))
		cancel()
		if err != nil {
			t.Fatalf("read the page's problems: %v", err)
		}
		if len(problems) > 0 {
			t.Errorf("the console page reported: %q", problems)
		}
	}
}

// consoleTab is one browser tab on the console.
type consoleTab struct {
	ctx context.Context
}

// run runs the steps within browserStep, failing the test with what the
// page shows when they do not complete.
func (c *consoleTab) run(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, c.pageState())
	}
}

// pageState is what the page shows, for a failure message.
func (c *consoleTab) pageState() string {
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + '\n' + (window.__problems || []).join('\n') + '\n' + (document.body ? document.body.innerText : '')`))
	if err != nil {
		return "(page state unavailable: " + err.Error() + ")"
	}
	if len(s) > 4000 {
		s = s[:4000] + "..."
	}
	return "page: " + s
}

// waitFor waits until the JavaScript expression is truthy.
func (c *consoleTab) waitFor(t *testing.T, what, expr string) {
	t.Helper()
	c.run(t, "wait for "+what, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		_, err := chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond),
			chromedp.WithPollingTimeout(browserStep))(ctx, tgt)
		return err
	}))
}

// waitForString waits until the expression (or the promise it returns)
// gives a non-empty string and returns it.
func (c *consoleTab) waitForString(t *testing.T, what, expr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	for {
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
		if err == nil && s != "" {
			return s
		}
		select {
		case <-ctx.Done():
			t.Fatalf("wait for %s: %v (last error %v)\n%s", what, ctx.Err(), err, c.pageState())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// eval evaluates a boolean expression.
func (c *consoleTab) eval(t *testing.T, expr string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// count is the number of elements that match sel.
func (c *consoleTab) count(t *testing.T, sel string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll(`+jsString(sel)+`).length`))
	if err != nil {
		t.Fatalf("count %s: %v", sel, err)
	}
	return n
}

// text is the text content of the element sel (which must exist).
func (c *consoleTab) text(t *testing.T, sel string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v\n%s", sel, err, c.pageState())
	}
	return strings.TrimSpace(s)
}

func (c *consoleTab) click(t *testing.T, sel string) {
	t.Helper()
	c.run(t, "click "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// setValue sets the value of the form field sel as if typed or picked.
func (c *consoleTab) setValue(t *testing.T, sel, v string) {
	t.Helper()
	c.waitFor(t, sel, `document.querySelector(`+jsString(sel)+`) !== null`)
	ok := c.eval(t, `(() => { const e = document.querySelector(`+jsString(sel)+`);
		e.value = `+jsString(v)+`;
		e.dispatchEvent(new Event('input', {bubbles: true}));
		e.dispatchEvent(new Event('change', {bubbles: true}));
		return e.value === `+jsString(v)+`; })()`)
	if !ok {
		t.Fatalf("set %s to %q: the field did not take it\n%s", sel, v, c.pageState())
	}
}

// navigate loads url and fails unless the document answers want.
func (c *consoleTab) navigate(t *testing.T, url string, want int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	res, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err != nil {
		t.Fatalf("navigate to %s: %v", url, err)
	}
	if res.Status != want {
		t.Fatalf("navigate to %s: status %d, want %d\n%s", url, res.Status, want, c.pageState())
	}
}

// submitLogin loads the login URL and presses its sign-in button; it
// returns the status of the document the form post ends on.
func (c *consoleTab) submitLogin(t *testing.T, loginURL string) (int64, string) {
	t.Helper()
	c.navigate(t, loginURL, 200)
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	res, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(`form[method="post"] button, form[method="post"] input[type="submit"]`)))
	if err != nil {
		t.Fatalf("press sign in: %v\n%s", err, c.pageState())
	}
	return res.Status, res.URL
}

// signIn signs in with loginURL and waits for the console to be ready.
func (c *consoleTab) signIn(t *testing.T, loginURL string) {
	t.Helper()
	status, at := c.submitLogin(t, loginURL)
	if status != 200 || !strings.HasSuffix(at, "/ui/") {
		t.Fatalf("sign in: ended on %s with %d, want /ui/ with 200\n%s", at, status, c.pageState())
	}
	c.waitFor(t, "the console signed in", `document.body.dataset.ready === 'true'`)
}

// reuseLogin opens an already used login URL and fails unless both the
// page and a post of its token (what the sign-in form sends) are refused.
func (c *consoleTab) reuseLogin(t *testing.T, loginURL string) {
	t.Helper()
	c.navigate(t, loginURL, 401)
	if c.count(t, `form[method="post"]`) != 0 {
		t.Fatalf("the used login URL still offers a sign-in form\n%s", c.pageState())
	}
	u, err := url.Parse(loginURL)
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"token": {u.Query().Get("token")}}.Encode()
	res := c.fetch(t, "POST", "/ui/login", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, form)
	if res.Status != 401 {
		t.Fatalf("posting the used login token: %d %s; want 401", res.Status, res.Body)
	}
}

// checkCookie checks the session cookie's attributes as the browser stored
// them, and that the page's scripts cannot read it.
func (c *consoleTab) checkCookie(t *testing.T, base string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	res, err := chromedp.Run(ctx, func(ctx context.Context, tgt *chromedp.Target) (*network.GetCookiesResult, error) {
		r, err := cdp.Call(ctx, tgt, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/ui/"}})
		return &r, err
	})
	if err != nil {
		t.Fatalf("read cookies: %v", err)
	}
	var found bool
	for _, ck := range res.Cookies {
		if ck.Name != consoleCookie {
			continue
		}
		found = true
		ttl := time.Until(time.Unix(int64(ck.Expires), 0))
		if !ck.HTTPOnly || !ck.Secure || ck.SameSite != network.CookieSameSiteStrict || ck.Path != "/" || ck.Session ||
			ttl < 7*time.Hour || ttl > 8*time.Hour+time.Minute {
			t.Fatalf("cookie %s: httpOnly=%v secure=%v sameSite=%q path=%q session=%v expires in %s; want HttpOnly, Secure, Strict, /, 8h",
				ck.Name, ck.HTTPOnly, ck.Secure, ck.SameSite, ck.Path, ck.Session, ttl)
		}
	}
	if !found {
		t.Fatalf("no %s cookie after sign-in", consoleCookie)
	}
	if c.eval(t, `document.cookie.includes('`+consoleCookie+`')`) {
		t.Fatal("the page's scripts can read the session cookie")
	}
}

// show opens a page of the console and waits until it has loaded its data.
func (c *consoleTab) show(t *testing.T, name string) {
	t.Helper()
	c.run(t, "open #/"+name, chromedp.Evaluate[chromedp.Void](`(() => {
		const s = document.getElementById('page-' + `+jsString(name)+`);
		delete s.dataset.loaded;
		if (location.hash === '#/' + `+jsString(name)+`) window.dispatchEvent(new HashChangeEvent('hashchange'));
		else location.hash = '#/' + `+jsString(name)+`;
	})()`))
	c.waitFor(t, "page "+name+" loaded", `(() => { const s = document.getElementById('page-' + `+jsString(name)+`);
		return !s.hidden && s.dataset.loaded !== undefined; })()`)
}

// playground evaluates one request in the policy playground and waits for
// the decision want, with the built input echoing the device and topic.
func (c *consoleTab) playground(t *testing.T, device, action, topic, want string) {
	t.Helper()
	c.run(t, "clear the last result", chromedp.Evaluate[chromedp.Void](`document.getElementById('pg-result').hidden = true`))
	c.setValue(t, "#pg-device", device)
	c.setValue(t, "#pg-action", action)
	c.setValue(t, "#pg-topic", topic)
	c.click(t, "#pg-submit")
	c.waitFor(t, fmt.Sprintf("playground %s %s %q: %s", device, action, topic, want), `(() => {
		if (document.getElementById('pg-result').hidden) return false;
		const input = document.getElementById('pg-input').textContent;
		return document.getElementById('pg-decision').textContent === `+jsString(want)+` &&
			input.includes(`+jsString(jsString(device))+`) && input.includes(`+jsString(jsString(topic))+`); })()`)
}

// screenshots saves one PNG per console page in dir.
func (c *consoleTab) screenshots(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A notice of the last action is not part of any page.
	c.run(t, "dismiss the notice", chromedp.Evaluate[chromedp.Void](`document.getElementById('toast').hidden = true`))
	// The overview's chart shows the sampler's points, one per 10 s: wait
	// for the one that counted the denial above.
	ctx, cancel := context.WithTimeout(c.ctx, 3*browserStep)
	defer cancel()
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		_, err := chromedp.Poll[chromedp.Void](`fetch('/v1/overview').then(r => r.json()).then(o => o.decisions.some(p => p.denied > 0))`,
			chromedp.WithPollingInterval(time.Second), chromedp.WithPollingTimeout(3*browserStep))(ctx, tgt)
		return err
	}))
	if err != nil {
		t.Fatalf("wait for a decision sample with the denial: %v", err)
	}
	for _, name := range consolePages {
		c.show(t, name)
		// Let the page settle (fonts, the chart) before the capture.
		time.Sleep(300 * time.Millisecond)
		ctx, cancel := context.WithTimeout(c.ctx, browserStep)
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		cancel()
		if err != nil {
			t.Fatalf("screenshot of %s: %v", name, err)
		}
		path := filepath.Join(dir, "console-"+name+".png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("saved %s", path)
	}
}

// fetchResult is an API answer as the page's fetch saw it.
type fetchResult struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

// fetch calls the API from the page, with the page's cookies and only the
// headers given.
// A body is sent as given.
func (c *consoleTab) fetch(t *testing.T, method, path string, headers map[string]string, body ...string) fetchResult {
	t.Helper()
	if headers == nil {
		headers = map[string]string{}
	}
	hdr, _ := json.Marshal(headers)
	b := "undefined"
	if len(body) > 0 {
		b = jsString(strings.Join(body, ""))
	}
	expr := fmt.Sprintf(`fetch(%s, {method: %s, headers: %s, body: %s, credentials: 'same-origin', cache: 'no-store', redirect: 'manual'})
		.then(async r => ({status: r.status, body: await r.text()}))`, jsString(path), jsString(method), hdr, b)
	ctx, cancel := context.WithTimeout(c.ctx, browserStep)
	defer cancel()
	res, err := chromedp.Run(ctx, chromedp.Evaluate[fetchResult](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("fetch %s %s from the page: %v", method, path, err)
	}
	return res
}

// deviceStatusJS is true once the devices table shows name with status.
func deviceStatusJS(name, status string) string {
	return `(() => { const r = document.querySelector('tr[data-device=` + jsString(name) + `]');
		return r !== null && r.querySelector('[data-testid=device-status]').textContent === ` + jsString(status) + `; })()`
}

// deviceOf reads a device's registry entry through the API.
func deviceOf(t *testing.T, env *testutil.Env, name string) (d struct {
	Status string            `json:"status"`
	Labels map[string]string `json:"labels"`
}) {
	t.Helper()
	env.API(t, env.Admin, "GET", "/v1/devices/"+name, nil).Decode(t, &d)
	return d
}

// requireStatus checks the registry's status of a device through the API.
func requireStatus(t *testing.T, env *testutil.Env, name, want string) {
	t.Helper()
	if got := deviceOf(t, env, name).Status; got != want {
		t.Fatalf("device %s is %q, want %q", name, got, want)
	}
}

// jsString is s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
