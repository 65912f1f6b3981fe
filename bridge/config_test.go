package bridge

import (
	"strings"
	"testing"
)

func validConfig() Config {
	return Config{
		Name: "cloud", URL: "mqtts://broker.example.com:8883",
		Out: []OutRule{{Filter: "devices/+/telemetry/#", RemotePrefix: "plant-a/", QoS: 1}},
		In:  []InRule{{Filter: "plant-a/devices/+/commands/#", StripPrefix: "plant-a/", QoS: 1}},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string // "" for valid
	}{
		{"valid", func(*Config) {}, ""},
		{"default port", func(c *Config) { c.URL = "mqtts://broker.example.com" }, ""},
		{"IPv6 host", func(c *Config) { c.URL = "mqtts://[::1]:1883" }, ""},
		{"trailing slash", func(c *Config) { c.URL = "mqtts://h:8883/" }, ""},
		{"protocol 4", func(c *Config) { c.ProtocolVersion = 4 }, ""},
		{"only out", func(c *Config) { c.In = nil }, ""},
		{"only in", func(c *Config) { c.Out = nil }, ""},
		{"qos 0", func(c *Config) { c.Out[0].QoS = 0 }, ""},
		{"cert and key", func(c *Config) { c.CertFile, c.KeyFile = "c.pem", "k.pem" }, ""},
		{"queue at max", func(c *Config) { c.QueueMaxMessages = MaxQueueMaxMessages }, ""},
		{"name with - and _", func(c *Config) { c.Name = "aws-iot_1" }, ""},

		{"empty name", func(c *Config) { c.Name = "" }, "bridge (unnamed): name"},
		{"upper-case name", func(c *Config) { c.Name = "Cloud" }, "name"},
		{"name starting with -", func(c *Config) { c.Name = "-cloud" }, "name"},
		{"name with /", func(c *Config) { c.Name = "a/b" }, "name"},
		{"name too long", func(c *Config) { c.Name = strings.Repeat("a", 64) }, "name"},
		{"ws", func(c *Config) { c.URL = "ws://broker.example.com:8080" }, "want mqtts://"},
		{"wss", func(c *Config) { c.URL = "wss://broker.example.com:443" }, "want mqtts://"},
		{"mqtt", func(c *Config) { c.URL = "mqtt://broker.example.com:1883" }, "want mqtts://"},
		{"tcp", func(c *Config) { c.URL = "tcp://broker.example.com:1883" }, "want mqtts://"},
		{"ssl", func(c *Config) { c.URL = "ssl://broker.example.com:8883" }, "want mqtts://"},
		{"no scheme", func(c *Config) { c.URL = "broker.example.com:8883" }, "url"},
		{"empty url", func(c *Config) { c.URL = "" }, "want mqtts://"},
		{"no host", func(c *Config) { c.URL = "mqtts://:8883" }, "no host"},
		{"user info", func(c *Config) { c.URL = "mqtts://u:p@broker.example.com:8883" }, "no user info"},
		{"path", func(c *Config) { c.URL = "mqtts://broker.example.com:8883/mqtt" }, "no path"},
		{"query", func(c *Config) { c.URL = "mqtts://broker.example.com:8883?x=1" }, "no path or query"},
		{"port 0", func(c *Config) { c.URL = "mqtts://broker.example.com:0" }, "out of range"},
		{"port too big", func(c *Config) { c.URL = "mqtts://broker.example.com:65536" }, "out of range"},
		{"empty port", func(c *Config) { c.URL = "mqtts://broker.example.com:" }, "empty port"},
		{"protocol 3", func(c *Config) { c.ProtocolVersion = 3 }, "protocol_version 3"},
		{"protocol 6", func(c *Config) { c.ProtocolVersion = 6 }, "protocol_version 6"},
		{"out qos 2", func(c *Config) { c.Out[0].QoS = 2 }, "out[0]: qos 2: want 0 or 1 (QoS 2 is not offered"},
		{"in qos 2", func(c *Config) { c.In[0].QoS = 2 }, "in[0]: qos 2"},
		{"empty filter", func(c *Config) { c.Out[0].Filter = "" }, "not a valid MQTT topic filter"},
		{"# not last", func(c *Config) { c.Out[0].Filter = "a/#/b" }, "not a valid MQTT topic filter"},
		{"+ inside a level", func(c *Config) { c.In[0].Filter = "a/b+/c" }, "in[0]: filter"},
		{"shared out", func(c *Config) { c.Out[0].Filter = "$share/g/devices/#" }, "shared subscriptions"},
		{"shared in, any case", func(c *Config) { c.In[0].Filter = "$SHARE/g/devices/#" }, "shared subscriptions"},
		{"wildcard in remote_prefix", func(c *Config) { c.Out[0].RemotePrefix = "plant-+/" }, "remote_prefix"},
		{"wildcard in strip_prefix", func(c *Config) { c.In[0].StripPrefix = "#" }, "strip_prefix"},
		{"cert without key", func(c *Config) { c.CertFile = "c.pem" }, "cert_file and key_file"},
		{"key without cert", func(c *Config) { c.KeyFile = "k.pem" }, "cert_file and key_file"},
		{"negative queue", func(c *Config) { c.QueueMaxMessages = -1 }, "queue_max_messages"},
		{"queue too big", func(c *Config) { c.QueueMaxMessages = MaxQueueMaxMessages + 1 }, "at most 10000000"},
		{"no rules", func(c *Config) { c.Out, c.In = nil, nil }, "no out and no in rules"},
		{"NUL in client id", func(c *Config) { c.ClientID = "a\x00b" }, "client_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.edit(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v; want valid", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate: valid; want an error with %q", tt.wantErr)
			case err != nil && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Validate: %v; want an error with %q", err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("Validate: %q; want one line", err)
			}
		})
	}
}

func TestValidateAllRefusesDuplicateNames(t *testing.T) {
	a, b := validConfig(), validConfig()
	if err := ValidateAll([]Config{a}); err != nil {
		t.Fatalf("one bridge: %v", err)
	}
	b.Name = "other"
	if err := ValidateAll([]Config{a, b}); err != nil {
		t.Fatalf("two names: %v", err)
	}
	b.Name = a.Name
	if err := ValidateAll([]Config{a, b}); err == nil || !strings.Contains(err.Error(), "name used by two bridges") {
		t.Fatalf("ValidateAll: %v; want the duplicate name refused", err)
	}
}

func TestDefaults(t *testing.T) {
	c := validConfig().withDefaults()
	if c.ClientID != "ztgate-cloud" || c.ProtocolVersion != 5 || c.QueueMaxMessages != 100_000 {
		t.Errorf("defaults: client_id %q protocol %d queue %d; want ztgate-cloud, 5, 100000", c.ClientID, c.ProtocolVersion, c.QueueMaxMessages)
	}
	if addr, err := parseURL("mqtts://broker.example.com"); err != nil || addr != "broker.example.com:8883" {
		t.Errorf("parseURL without port: %q, %v; want port 8883", addr, err)
	}
}

func TestNewNeedsAClientCertificate(t *testing.T) {
	f := newFixture(t)
	deps := f.deps()
	deps.ClientCertificate = nil
	c := validConfig()
	c.In = nil
	if _, err := New([]Config{c}, deps); err == nil || !strings.Contains(err.Error(), "no client certificate") {
		t.Fatalf("New: %v; want refused for want of a client certificate", err)
	}
	// Positive control: the gateway's SVID will do.
	m, err := New([]Config{c}, f.deps())
	if err != nil {
		t.Fatalf("New with Deps.ClientCertificate: %v", err)
	}
	_ = m.Close()
}
