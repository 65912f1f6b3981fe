package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ztgate.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	t.Run("full file", func(t *testing.T) {
		p := writeConfig(t, `
data_dir: /var/lib/ztgate
mqtt_addr: 0.0.0.0:8883
api_addr: "[::1]:9443"
policy_dir: ./policies
trust_domain: iot.example.com
server_names: [gw.example.com, 192.0.2.10]
svid_ttl: 12h
policy_timeout: 50ms
log_level: debug
log_format: json
`)
		got, err := LoadConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		want := Config{
			DataDir: "/var/lib/ztgate", MQTTAddr: "0.0.0.0:8883", APIAddr: "[::1]:9443",
			PolicyDir: "./policies", TrustDomain: "iot.example.com",
			ServerNames: []string{"gw.example.com", "192.0.2.10"},
			SVIDTTL:     12 * time.Hour, PolicyTimeout: 50 * time.Millisecond,
			LogLevel: "debug", LogFormat: "json",
		}
		if got.DataDir != want.DataDir || got.MQTTAddr != want.MQTTAddr || got.APIAddr != want.APIAddr ||
			got.PolicyDir != want.PolicyDir || got.TrustDomain != want.TrustDomain ||
			strings.Join(got.ServerNames, ",") != strings.Join(want.ServerNames, ",") ||
			got.SVIDTTL != want.SVIDTTL || got.PolicyTimeout != want.PolicyTimeout ||
			got.LogLevel != want.LogLevel || got.LogFormat != want.LogFormat {
			t.Fatalf("LoadConfig = %+v, want %+v", got, want)
		}
	})

	t.Run("missing keys keep defaults", func(t *testing.T) {
		got, err := LoadConfig(writeConfig(t, "trust_domain: iot.example.com\n"))
		if err != nil {
			t.Fatal(err)
		}
		want := DefaultConfig()
		want.TrustDomain = "iot.example.com"
		if got.DataDir != want.DataDir || got.MQTTAddr != want.MQTTAddr || got.APIAddr != want.APIAddr ||
			got.SVIDTTL != want.SVIDTTL || got.TrustDomain != want.TrustDomain || got.LogFormat != want.LogFormat {
			t.Fatalf("LoadConfig = %+v, want %+v", got, want)
		}
	})

	t.Run("empty file is the defaults", func(t *testing.T) {
		got, err := LoadConfig(writeConfig(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		if got.MQTTAddr != DefaultMQTTAddr || got.SVIDTTL != DefaultSVIDTTL {
			t.Fatalf("LoadConfig = %+v", got)
		}
	})

	bad := []struct {
		name, body, want string
	}{
		{"unknown key", "trust_domain: example.org\nmqtt_adr: 127.0.0.1:1883\n", "mqtt_adr"},
		{"unknown nested key", "server_names: [a]\nlogging:\n  level: debug\n", "logging"},
		{"bad trust domain", "trust_domain: Not A Domain\n", "trust_domain"},
		{"trust domain with scheme", "trust_domain: spiffe://example.org\n", "trust_domain"},
		{"bad mqtt addr", "mqtt_addr: localhost\n", "mqtt_addr"},
		{"bad api port", "api_addr: 127.0.0.1:http\n", "api_addr"},
		{"port out of range", "api_addr: 127.0.0.1:70000\n", "api_addr"},
		{"zero ttl", "svid_ttl: 0s\n", "svid_ttl"},
		{"negative ttl", "svid_ttl: -1h\n", "svid_ttl"},
		{"ttl not a duration", "svid_ttl: tomorrow\n", "svid_ttl"},
		{"negative policy timeout", "policy_timeout: -1s\n", "policy_timeout"},
		{"bad log level", "log_level: loud\n", "log_level"},
		{"bad log format", "log_format: xml\n", "log_format"},
		{"bad server name", "server_names: ['*.example.com']\n", "server_names"},
		{"empty data dir", "data_dir: ''\n", "data_dir"},
		{"two documents", "trust_domain: a.org\n---\ntrust_domain: b.org\n", "more than one"},
		{"not a mapping", "- a\n- b\n", "cannot unmarshal"},
		{"unknown decision log key", "decision_log:\n  pth: x.log\n", `unknown key "decision_log.pth"`},
		{"sample rate above 1", "decision_log:\n  sample_allow: 1.5\n", "decision_log.sample_allow"},
		{"negative sample rate", "decision_log:\n  sample_allow: -0.1\n", "decision_log.sample_allow"},
		{"zero max size", "decision_log:\n  max_size_mb: 0\n", "decision_log.max_size_mb"},
		{"negative backups", "decision_log:\n  max_backups: -1\n", "decision_log.max_backups"},
		{"enabled not a bool", "decision_log:\n  enabled: maybe\n", "decision_log"},
		{"policy_watch not a bool", "policy_watch: often\n", "policy_watch"},
		{"bridge over plain mqtt", "bridges:\n  - name: cloud\n    url: mqtt://up.example:1883\n    out: [{filter: a/#}]\n", "bridges: bridge cloud: "},
		{"bridge over websockets", "bridges:\n  - name: cloud\n    url: wss://up.example/mqtt\n    out: [{filter: a/#}]\n", "bridges: bridge cloud: "},
		{"bridge without rules", "bridges:\n  - name: cloud\n    url: mqtts://up.example\n", "no out and no in rules"},
		{"bridge qos 2", "bridges:\n  - name: cloud\n    url: mqtts://up.example\n    out: [{filter: a/#, qos: 2}]\n", "bridges: bridge cloud: out[0]"},
		{"bridge unknown key", "bridges:\n  - name: cloud\n    url: mqtts://up.example\n    uot: []\n", "uot"},
		{"two bridges one name", "bridges:\n  - {name: a, url: 'mqtts://x', out: [{filter: a}]}\n  - {name: a, url: 'mqtts://y', out: [{filter: a}]}\n", "bridges:"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tc.body))
			if err == nil {
				t.Fatal("LoadConfig succeeded, want an error")
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "app: ") || strings.Contains(msg, "\n") {
				t.Fatalf("error %q: want one line starting with \"app: \" naming %q", msg, tc.want)
			}
		})
	}

	t.Run("decision log and policy watch", func(t *testing.T) {
		got, err := LoadConfig(writeConfig(t, `
policy_watch: false
decision_log:
  enabled: true
  path: /var/log/ztgate/decisions.log
  sample_allow: 0.25
  max_size_mb: 20
  max_backups: 3
`))
		if err != nil {
			t.Fatal(err)
		}
		dl := got.DecisionLog
		if got.PolicyWatch || !dl.On() || dl.Path != "/var/log/ztgate/decisions.log" || dl.SampleAllow != 0.25 ||
			dl.MaxSizeMB != 20 || dl.MaxBackups != 3 {
			t.Fatalf("LoadConfig = %+v", got)
		}

		def, err := LoadConfig(writeConfig(t, "decision_log:\n  sample_allow: 0.5\n"))
		if err != nil {
			t.Fatal(err)
		}
		if !def.PolicyWatch || def.DecisionLog.On() || def.DecisionLog.MaxSizeMB != DefaultDecisionLogMaxSizeMB ||
			def.DecisionLog.MaxBackups != DefaultDecisionLogMaxBackups {
			t.Fatalf("defaults: %+v", def)
		}
		if p := def.EffectivePolicyDir(); p != filepath.Join(DefaultDataDir, PolicySubdir) {
			t.Fatalf("EffectivePolicyDir = %s", p)
		}
	})

	t.Run("missing file", func(t *testing.T) {
		_, err := LoadConfig(filepath.Join(t.TempDir(), "nope.yaml"))
		if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
			t.Fatalf("err = %v, want one naming the file", err)
		}
	})
}

func TestValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	ok := []func(*Config){
		func(c *Config) { c.MQTTAddr = "127.0.0.1:0" },
		func(c *Config) { c.MQTTAddr = ":8883" },
		func(c *Config) { c.APIAddr = "[::1]:0" },
		func(c *Config) { c.APIAddr = "localhost:8443" },
		func(c *Config) { c.ServerNames = []string{"gw.example.com", "10.0.0.1", "fe80::1"} },
		func(c *Config) { c.LogLevel = "WARN" },
	}
	for i, mod := range ok {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("case %d: %v", i, err)
		}
	}
	bad := []func(*Config){
		func(c *Config) { c.TrustDomain = "" },
		func(c *Config) { c.TrustDomain = "example.org/path" },
		func(c *Config) { c.MQTTAddr = "" },
		func(c *Config) { c.MQTTAddr = "bad host:8883" },
		func(c *Config) { c.APIAddr = "127.0.0.1:-1" },
		func(c *Config) { c.SVIDTTL = 0 },
		func(c *Config) { c.ServerNames = []string{""} },
		func(c *Config) { c.ServerNames = []string{"under_score.example"} },
		func(c *Config) { c.LogFormat = "" },
	}
	for i, mod := range bad {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d: Validate accepted %+v", i, c)
		}
	}
}
