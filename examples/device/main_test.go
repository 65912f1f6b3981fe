package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    action
		wantErr string // substring; empty means success
	}{
		{name: "set_interval", payload: `{"cmd":"set_interval","seconds":10}`,
			want: action{kind: actionSetInterval, interval: 10 * time.Second}},
		{name: "set_interval minimum", payload: `{"cmd":"set_interval","seconds":1}`,
			want: action{kind: actionSetInterval, interval: time.Second}},
		{name: "set_interval maximum", payload: `{"cmd":"set_interval","seconds":86400}`,
			want: action{kind: actionSetInterval, interval: 24 * time.Hour}},
		{name: "set_interval ignores unknown fields", payload: `{"cmd":"set_interval","seconds":3,"by":"ctl-1"}`,
			want: action{kind: actionSetInterval, interval: 3 * time.Second}},
		{name: "ping", payload: `{"cmd":"ping"}`, want: action{kind: actionPing}},
		{name: "ping with id", payload: `{"cmd":"ping","id":"req-7"}`, want: action{kind: actionPing, id: "req-7"}},

		{name: "set_interval without seconds", payload: `{"cmd":"set_interval"}`, wantErr: `needs "seconds"`},
		{name: "set_interval zero", payload: `{"cmd":"set_interval","seconds":0}`, wantErr: "between 1 and"},
		{name: "set_interval negative", payload: `{"cmd":"set_interval","seconds":-5}`, wantErr: "between 1 and"},
		{name: "set_interval too long", payload: `{"cmd":"set_interval","seconds":86401}`, wantErr: "between 1 and"},
		{name: "set_interval overflow", payload: `{"cmd":"set_interval","seconds":1e30}`, wantErr: "not valid JSON"},
		{name: "set_interval fraction", payload: `{"cmd":"set_interval","seconds":2.5}`, wantErr: "not valid JSON"},
		{name: "set_interval string", payload: `{"cmd":"set_interval","seconds":"10"}`, wantErr: "not valid JSON"},
		{name: "ping id too long", payload: `{"cmd":"ping","id":"` + strings.Repeat("x", maxIDLen+1) + `"}`, wantErr: "id longer"},
		{name: "unknown command", payload: `{"cmd":"reboot"}`, wantErr: `unknown command "reboot"`},
		{name: "command names are exact", payload: `{"cmd":"PING"}`, wantErr: "unknown command"},
		{name: "no cmd", payload: `{"seconds":10}`, wantErr: `no "cmd"`},
		{name: "empty payload", payload: ``, wantErr: "not valid JSON"},
		{name: "null", payload: `null`, wantErr: `no "cmd"`},
		{name: "array", payload: `[{"cmd":"ping"}]`, wantErr: "not valid JSON"},
		{name: "plain text", payload: `ping`, wantErr: "not valid JSON"},
		{name: "truncated", payload: `{"cmd":"ping"`, wantErr: "not valid JSON"},
		{name: "trailing data", payload: `{"cmd":"ping"}}`, wantErr: "not valid JSON"},
		{name: "too large", payload: `{"cmd":"ping","id":"` + strings.Repeat("x", maxCommandSize) + `"}`, wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCommand([]byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseCommand(%q) error = %v, want one containing %q", tt.payload, err, tt.wantErr)
				}
				if got != (action{}) {
					t.Fatalf("parseCommand(%q) = %+v with an error, want the zero action", tt.payload, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseCommand(%q) error = %v", tt.payload, err)
			}
			if got != tt.want {
				t.Fatalf("parseCommand(%q) = %+v, want %+v", tt.payload, got, tt.want)
			}
		})
	}
}

func TestCheckName(t *testing.T) {
	for _, name := range []string{"sensor-1", "a", "pump.7", "x_y"} {
		if err := checkName(name); err != nil {
			t.Errorf("checkName(%q) = %v, want nil", name, err)
		}
	}
	// Each of these would widen or break a topic such as devices/NAME/state.
	for _, name := range []string{"", ".", "..", "a/b", "+", "#", "a+b", "a#", "$SYS", "a\x00b"} {
		if err := checkName(name); err == nil {
			t.Errorf("checkName(%q) = nil, want an error", name)
		}
	}
}

func TestTopicsFor(t *testing.T) {
	got := topicsFor("sensor-1")
	want := topics{
		state:     "devices/sensor-1/state",
		telemetry: "devices/sensor-1/telemetry/temp",
		pong:      "devices/sensor-1/telemetry/pong",
		commands:  "devices/sensor-1/commands/#",
	}
	if got != want {
		t.Fatalf("topicsFor = %+v, want %+v", got, want)
	}
}

func TestPayloadsAreJSON(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	var tel telemetry
	if err := json.Unmarshal(telemetryPayload("sensor-1", 3, now), &tel); err != nil {
		t.Fatal(err)
	}
	if tel.Device != "sensor-1" || tel.Seq != 3 || !tel.Time.Equal(now) || tel.TemperatureC < 19 || tel.TemperatureC > 23 {
		t.Fatalf("telemetry = %+v", tel)
	}
	var p pong
	if err := json.Unmarshal(pongPayload("sensor-1", "req-7", now), &p); err != nil {
		t.Fatal(err)
	}
	if p.Device != "sensor-1" || p.ID != "req-7" || !p.Time.Equal(now) {
		t.Fatalf("pong = %+v", p)
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--svid-dir", "d"})
	if err != nil {
		t.Fatal(err)
	}
	if o.broker != "localhost:8883" || o.api != "https://localhost:8443" || o.interval != 5*time.Second || o.count != 0 || o.name != "" {
		t.Fatalf("defaults = %+v", o)
	}
	for _, args := range [][]string{
		{},
		{"--svid-dir", "d", "--interval", "0s"},
		{"--svid-dir", "d", "--interval", "48h"},
		{"--svid-dir", "d", "--count", "-1"},
		{"--svid-dir", "d", "--api", "http://localhost:8443"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) = nil error, want one", args)
		}
	}
	// An empty --api turns renewal off.
	if o, err := parseFlags([]string{"--svid-dir", "d", "--api", ""}); err != nil || o.api != "" {
		t.Fatalf("--api \"\": %+v, %v", o, err)
	}
}

// TestLoadSVIDDir writes an SVID directory the way `ztgate device enroll`
// lays it out and checks the resulting client configuration.
func TestLoadSVIDDir(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "example.org")
	chainPEM, keyPEM := ca.issue("spiffe://example.org/device/sensor-1", nil)
	leafBlock, _ := pem.Decode(chainPEM)
	leafDER := leafBlock.Bytes
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("svid.pem", chainPEM)
	write("svid.key", keyPEM)
	write("bundle.pem", ca.bundlePEM())

	cfg, store, err := loadSVIDDir(dir, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	sv := store.current()
	if sv.ID.String() != "spiffe://example.org/device/sensor-1" {
		t.Fatalf("id = %s", sv.ID)
	}
	if cfg.ServerName != "localhost" || cfg.MinVersion != tls.VersionTLS12 || cfg.RootCAs == nil {
		t.Fatalf("unexpected TLS config: %+v", cfg)
	}
	if cfg.InsecureSkipVerify {
		t.Fatal("server verification must stay on")
	}
	// The certificate comes from the store at each handshake, so that a
	// renewed SVID is used without a new configuration.
	if len(cfg.Certificates) != 0 || cfg.GetClientCertificate == nil {
		t.Fatalf("client certificate is not taken from the store: %+v", cfg)
	}
	got, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || len(got.Certificate) != 2 || !bytes.Equal(got.Certificate[0], leafDER) || got.Leaf == nil {
		t.Fatalf("GetClientCertificate = %v, %v; want the SVID chain with its leaf parsed", got, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "svid.pem")); err != nil || !sv.Obtained.Equal(fi.ModTime()) {
		t.Fatalf("obtained = %s, want the modification time of svid.pem (%v)", sv.Obtained, err)
	}

	// A bundle with no certificate is refused, not silently replaced by the
	// system roots.
	write("bundle.pem", []byte("not a certificate\n"))
	if _, _, err := loadSVIDDir(dir, "localhost"); err == nil || !strings.Contains(err.Error(), "no CA certificate") {
		t.Fatalf("empty bundle: err = %v", err)
	}
	if _, _, err := loadSVIDDir(t.TempDir(), "localhost"); err == nil {
		t.Fatal("missing files: want an error")
	}
}
