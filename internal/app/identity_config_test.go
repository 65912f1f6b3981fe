package app

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// identity: and federation: — their defaults, a file that sets every key,
// and each refused value with an error naming its key.
func TestIdentityConfig(t *testing.T) {
	d := DefaultConfig()
	if d.Identity.Source != IdentityBuiltin || d.Identity.CADir != "" || len(d.Identity.BootstrapAdmins) != 0 {
		t.Fatalf("identity defaults %+v", d.Identity)
	}
	if !d.Federation.BundleEndpointOn() || d.Federation.BundleRefreshHint != 5*time.Minute || len(d.Federation.TrustDomains) != 0 {
		t.Fatalf("federation defaults %+v", d.Federation)
	}

	got, err := LoadConfig(writeConfig(t, `
trust_domain: iot.example.com
identity:
  source: files
  cert_file: pki/gw.pem
  key_file: pki/gw.key
  bundle_file: pki/bundle.pem
  bootstrap_admins: [spiffe://iot.example.com/ops/alice, spiffe://partner.example/ops/bob]
federation:
  bundle_endpoint: false
  bundle_refresh_hint: 1m
  trust_domains:
    - trust_domain: partner.example
      url: https://spire.partner.example:8443
      profile: https_spiffe
      endpoint_spiffe_id: spiffe://partner.example/spire/server
      bundle_file: partner.pem
      refresh_interval: 30s
    - trust_domain: web.example
      url: https://web.example/bundle
      profile: https_web
      ca_file: web-roots.pem
`))
	if err != nil {
		t.Fatal(err)
	}
	wantID := IdentityConfig{Source: "files", CertFile: "pki/gw.pem", KeyFile: "pki/gw.key", BundleFile: "pki/bundle.pem",
		BootstrapAdmins: []string{"spiffe://iot.example.com/ops/alice", "spiffe://partner.example/ops/bob"}}
	if !reflect.DeepEqual(got.Identity, wantID) {
		t.Errorf("identity = %+v, want %+v", got.Identity, wantID)
	}
	wantFed := []FederatedDomainConfig{
		{TrustDomain: "partner.example", URL: "https://spire.partner.example:8443", Profile: "https_spiffe",
			EndpointSPIFFEID: "spiffe://partner.example/spire/server", BundleFile: "partner.pem", RefreshInterval: 30 * time.Second},
		{TrustDomain: "web.example", URL: "https://web.example/bundle", Profile: "https_web", CAFile: "web-roots.pem"},
	}
	if got.Federation.BundleEndpointOn() || got.Federation.BundleRefreshHint != time.Minute ||
		!reflect.DeepEqual(got.Federation.TrustDomains, wantFed) {
		t.Errorf("federation = %+v", got.Federation)
	}

	// A Workload API source may federate without a URL: SPIRE hands over
	// the partner's bundle.
	if _, err := LoadConfig(writeConfig(t, "identity:\n  source: workload_api\n  workload_api_socket: unix:///run/spire/agent.sock\n"+
		"federation:\n  trust_domains:\n    - trust_domain: partner.example\n")); err != nil {
		t.Errorf("workload_api with a URL-less federated domain: %v", err)
	}

	const files = "identity:\n  source: files\n  cert_file: c.pem\n  key_file: k.pem\n  bundle_file: b.pem\n"
	const fed = "federation:\n  trust_domains:\n    - "
	for _, tc := range []struct{ yaml, want string }{
		{"identity:\n  source: spire\n", `identity.source "spire": want builtin, files or workload_api`},
		{"identity:\n  source: \"\"\n", `identity.source "": want builtin, files or workload_api`},
		{"identity:\n  source: files\n  key_file: k.pem\n  bundle_file: b.pem\n", "identity.cert_file is required with identity.source files"},
		{"identity:\n  source: files\n  cert_file: c.pem\n  bundle_file: b.pem\n", "identity.key_file is required with identity.source files"},
		{"identity:\n  source: files\n  cert_file: c.pem\n  key_file: k.pem\n", "identity.bundle_file is required with identity.source files"},
		{"identity:\n  source: workload_api\n", "identity.workload_api_socket is required with identity.source workload_api"},
		{"identity:\n  source: workload_api\n  workload_api_socket: /run/agent.sock\n", "identity.workload_api_socket"},
		{files + "  ca_dir: /var/ca\n", "identity.ca_dir is for identity.source builtin only"},
		{"identity:\n  cert_file: c.pem\n", "identity.cert_file is for identity.source files only"},
		{"identity:\n  workload_api_socket: unix:///a.sock\n", "identity.workload_api_socket is for identity.source workload_api only"},
		{"identity:\n  bootstrap_admins: [alice]\n", `identity.bootstrap_admins[0] "alice"`},
		{"identity:\n  bootstrap_admins: [\"spiffe://example.org\"]\n", `identity.bootstrap_admins[0] "spiffe://example.org": no path`},
		{"identity:\n  bootstrap_admins: [spiffe://elsewhere.org/ops/a]\n", `identity.bootstrap_admins[0] "spiffe://elsewhere.org/ops/a": trust domain "elsewhere.org" is not served`},
		{"identity:\n  bootstrap_admins: [spiffe://example.org/a, spiffe://example.org/a]\n", "identity.bootstrap_admins[1]: spiffe://example.org/a is listed twice"},
		{"federation:\n  bundle_refresh_hint: 0s\n", "federation.bundle_refresh_hint"},
		{fed + "trust_domain: \"spiffe://partner.org/x\"\n      url: https://p.org\n      profile: https_web\n", "federation.trust_domains[0].trust_domain"},
		{fed + "trust_domain: example.org\n      url: https://p.org\n      profile: https_web\n", "federation.trust_domains[0].trust_domain \"example.org\" is the gateway's own trust domain"},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_web\n    - trust_domain: p.org\n      url: https://p.org\n      profile: https_web\n", "federation.trust_domains[1].trust_domain \"p.org\" is listed twice"},
		{fed + "trust_domain: p.org\n      url: http://p.org/bundle\n      profile: https_web\n", "federation.trust_domains[0].url \"http://p.org/bundle\": want an https:// URL"},
		{fed + "trust_domain: p.org\n      profile: https_web\n", "federation.trust_domains[0].url is required unless identity.source is workload_api"},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https\n", `federation.trust_domains[0].profile "https": want https_web or https_spiffe`},
		{fed + "trust_domain: p.org\n      url: https://p.org\n", `federation.trust_domains[0].profile "": want https_web or https_spiffe`},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_spiffe\n      bundle_file: p.pem\n", "federation.trust_domains[0].endpoint_spiffe_id is required with profile https_spiffe"},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://other.org/spire\n      bundle_file: p.pem\n", `federation.trust_domains[0].endpoint_spiffe_id "spiffe://other.org/spire": not in trust domain "p.org"`},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://p.org/spire\n", "federation.trust_domains[0].bundle_file is required with profile https_spiffe"},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_web\n      bundle_file: p.pem\n", "federation.trust_domains[0].bundle_file is for profile https_spiffe only"},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_spiffe\n      endpoint_spiffe_id: spiffe://p.org/spire\n      bundle_file: p.pem\n      ca_file: r.pem\n", "federation.trust_domains[0].ca_file is for profile https_web only"},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_web\n      refresh_interval: -1s\n", "federation.trust_domains[0].refresh_interval"},
		{"identity:\n  source: workload_api\n  workload_api_socket: unix:///a.sock\n" + fed + "trust_domain: p.org\n      profile: https_web\n", "federation.trust_domains[0].profile is for a url only"},
		{fed + "trust_domain: p.org\n      url: https://p.org\n      profile: https_web\n      bogus: 1\n", "bogus"},
	} {
		_, err := LoadConfig(writeConfig(t, tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n  got  %v\n  want an error with %q", tc.yaml, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %q is more than one line", tc.yaml, err)
		}
	}
}

// Every key of the configuration, nested ones included, is documented in
// ztgate.example.yaml (set, or shown in a comment where its default is
// empty).
func TestExampleConfigDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../../ztgate.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	var walk func(typ reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if key == "" || key == "-" {
				continue
			}
			re := regexp.MustCompile(`(?m)^[ #-]*` + regexp.QuoteMeta(key) + `:`)
			if !re.Match(raw) {
				missing = append(missing, prefix+key)
			}
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]() {
				walk(ft, prefix+key+".")
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	if len(missing) > 0 {
		t.Fatalf("ztgate.example.yaml does not document %q", missing)
	}
}
