package test

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
	"github.com/ztgate/ztgate/registry"
)

// Attack class (CVE-2017-7650): a device name that contains +, #, / or ..
// would widen the topic templates built from it. Enrollment refuses such
// names with 400 and a JSON error, through the API and in the registry
// itself; ordinary names with dots and dashes are the positive control.
func TestNames_EnrollmentRefusesTopicMetacharacters(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	bad := []string{
		"a+b", "+", "a#", "#", "a/b", "/", "devices/+", "a..b", "..", "a..", ".",
		"", " a", "a b", "A", "Sensor", "-a", "_a", ".a", "a\x00b", "ä",
		strings.Repeat("a", 64),
	}
	for _, name := range bad {
		res := env.API(t, env.Admin, "POST", "/v1/devices", map[string]any{"name": name})
		if res.Status != 400 {
			t.Errorf("enroll %q: status %d %s; want 400", name, res.Status, res.Body)
			continue
		}
		res.ErrorMessage(t)
		_, err := env.App.Registry().Create(registry.Device{Name: name, SPIFFEID: env.DeviceID("x"), Status: registry.StatusActive})
		if !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("registry.Create(%q): %v; want ErrInvalidName", name, err)
		}
	}
	for _, name := range []string{"a", "a.b", "a-b", "a_b", "0", strings.Repeat("a", 63)} {
		if res := env.API(t, env.Admin, "POST", "/v1/devices", map[string]any{"name": name}); res.Status != 201 {
			t.Errorf("enroll %q: status %d %s; want 201", name, res.Status, res.Body)
		}
	}
	list := env.DeviceNames(t)
	refused := map[string]bool{}
	for _, name := range bad {
		refused[name] = true
	}
	for _, name := range list {
		if refused[name] {
			t.Errorf("refused name %q is in the registry", name)
		}
	}
	if len(list) != 7 { // the six above and admin-dev
		t.Errorf("registry holds %d devices; want 7: %q", len(list), list)
	}
}

// A SPIFFE ID given at enrollment cannot smuggle what the name may not:
// dot segments, wildcards, encoded separators, another trust domain, or a
// device-namespace ID that disagrees with the name.
func TestNames_EnrollmentRefusesBadSPIFFEIDs(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	for i, id := range []string{
		"spiffe://example.org/device/a/../b",
		"spiffe://example.org/device/../admin/dev",
		"spiffe://example.org/device/a+",
		"spiffe://example.org/device/+",
		"spiffe://example.org/device/a#b",
		"spiffe://example.org/device/a%2Fb",
		"spiffe://example.org/device/%2B",
		"spiffe://example.org/controller/a+b",
		"spiffe://example.org/controller/#",
		"spiffe://other.org/controller/x",
		"spiffe://example.org",
		"spiffe://example.org/",
		"spiffe://example.org/device/someone-else",
		"https://example.org/device/x",
	} {
		name := fmt.Sprintf("n%d", i)
		res := env.API(t, env.Admin, "POST", "/v1/devices", map[string]any{"name": name, "spiffe_id": id})
		if res.Status != 400 {
			t.Errorf("enroll %s as %q: status %d %s; want 400", name, id, res.Status, res.Body)
			continue
		}
		res.ErrorMessage(t)
	}
	res := env.API(t, env.Admin, "POST", "/v1/devices", map[string]any{"name": "ok", "spiffe_id": "spiffe://example.org/controller/ok"})
	if res.Status != 201 {
		t.Fatalf("control: enroll ok: %d %s", res.Status, res.Body)
	}
}

// An SVID signed by the trusted CA whose SPIFFE ID path carries topic
// metacharacters or dot segments is refused at the TLS or CONNECT stage.
// The positive control is an enrolled device's SVID crafted by the same
// code path.
func TestNames_CraftedSVIDWithMetacharactersRefused(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t)
	env.Enroll(t, "crafted", nil)
	good := env.CertWith(t, nil)
	env.MustConnect(t, env.WithCert(t, &good), "crafted", nil).Close()

	for _, raw := range []string{
		"spiffe://example.org/device/a+",
		"spiffe://example.org/device/+",
		"spiffe://example.org/device/a/../crafted",
		"spiffe://example.org/device/./crafted",
		"spiffe://example.org/device/crafted/..",
		"spiffe://example.org/device/a%2Fb",
		"spiffe://example.org/device/#",
		"spiffe://example.org/device/a#b",
		"spiffe://example.org/device/Crafted",
	} {
		// Opaque keeps the text exactly as written in the certificate.
		u := &url.URL{Scheme: "spiffe", Opaque: strings.TrimPrefix(raw, "spiffe:")}
		cert := env.CertWith(t, func(c *x509.Certificate) { c.URIs = []*url.URL{u} })
		err := env.RequireRefused(t, env.WithCert(t, &cert), "crafted", nil, 0)
		t.Logf("%s: %v", raw, err)
	}
}

// A device named a cannot reach the topics of a.b, ab, a-b or a_b (and the
// other way round): names are compared as whole topic levels.
func TestNames_SimilarNamesStayApart(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t, testutil.WithExtraPolicy("zz_spy.rego", testutil.SpyPolicy))
	names := []string{"a", "a.b", "ab", "a-b", "a_b"}
	devs := map[string]*testutil.Device{}
	for _, n := range names {
		devs[n] = env.Enroll(t, n, nil)
	}
	ctlDev := env.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"})
	spyDev := env.EnrollID(t, "spy", "spiffe://example.org/observer/spy", map[string]string{"role": "spy"})
	spy := env.MustConnect(t, spyDev, "spy", nil)
	spy.Sub(t, "#")
	ctl := env.MustConnect(t, ctlDev, "ctl", nil)

	for _, me := range names {
		c := env.MustConnect(t, devs[me], "dev-"+me, nil)
		for _, other := range names {
			if other == me {
				continue
			}
			codes := c.SubscribeCodes(t, "devices/"+other+"/commands/#", "devices/"+me+"/commands/#")
			if codes[0] != 0x87 || codes[1] != 0x01 {
				t.Errorf("%s subscribing to %s's commands: %#x; want [0x87 0x01]", me, other, codes)
			}
			c.PubDenied(t, msg{Topic: "devices/" + other + "/telemetry/t", Payload: "forged by " + me})
			c.PubDenied(t, msg{Topic: "devices/" + other + "/state", Payload: "forged by " + me})
			control := "devices/" + me + "/telemetry/control-" + other
			c.Pub(t, msg{Topic: control, Payload: "ok", QoS: 1})
			spy.Msgs.Expect(t, control, wait)
		}
		for _, other := range names {
			ctl.Pub(t, msg{Topic: "devices/" + other + "/commands/c", Payload: "for " + other, QoS: 1})
			spy.Msgs.Expect(t, "devices/"+other+"/commands/c", wait)
		}
		c.Msgs.ExpectPayload(t, "devices/"+me+"/commands/c", "for "+me, wait)
		c.Msgs.ExpectNone(t, quiet)
		c.Close()
	}
	spy.Msgs.ExpectNone(t, quiet)
}

// The topic template uses a name that the SPIFFE ID and the registry agree
// on. A record whose name and ID disagree (the API refuses to make one; it
// is written to the registry directly here) gets neither name's topics,
// while a consistent device publishes (positive control).
func TestNames_IDAndRegistryNameMustAgree(t *testing.T) {
	t.Parallel()
	env := testutil.Start(t, testutil.WithExtraPolicy("zz_spy.rego", testutil.SpyPolicy))
	spyDev := env.EnrollID(t, "spy", "spiffe://example.org/observer/spy", map[string]string{"role": "spy"})
	spy := env.MustConnect(t, spyDev, "spy", nil)
	spy.Sub(t, "#")
	good := env.Enroll(t, "good", nil)

	if _, err := env.App.Registry().Create(registry.Device{Name: "alias-x", SPIFFEID: env.DeviceID("victim"), Status: registry.StatusActive}); err != nil {
		t.Fatal(err)
	}
	odd := env.Issue(t, env.DeviceID("victim"))
	c := env.MustConnect(t, odd, "odd", nil)
	for _, topic := range []string{"devices/victim/telemetry/t", "devices/alias-x/telemetry/t", "devices/victim/state", "devices/alias-x/state"} {
		c.PubDenied(t, msg{Topic: topic, Payload: "forged"})
	}
	codes := c.SubscribeCodes(t, "devices/victim/commands/#", "devices/alias-x/commands/#")
	if codes[0] != 0x87 || codes[1] != 0x87 {
		t.Errorf("SUBSCRIBE with a disagreeing record: %#x; want [0x87 0x87]", codes)
	}

	g := env.MustConnect(t, good, "good", nil)
	g.Pub(t, msg{Topic: "devices/good/telemetry/t", Payload: "ok", QoS: 1})
	spy.Msgs.Expect(t, "devices/good/telemetry/t", wait)
	spy.Msgs.ExpectNone(t, quiet)
}
