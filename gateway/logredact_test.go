package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi logs a packet it could not process ("error processing packet")
// with the whole packet in it. Payloads and credentials are the devices'
// data, not the operator's: the gateway log must never hold them.
func TestRefusedPacketLoggedWithoutItsContents(t *testing.T) {
	const marker = "SECRET-MARKER-7f3a"
	cases := []struct {
		name    string
		version byte
		pk      packets.Packet
	}{
		{
			name:    "MQTT 5 PUBLISH to a wildcard topic",
			version: 5,
			pk: packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName:   "devices/sensor-1/telemetry/+",
				Payload:     []byte("payload " + marker),
				Properties:  packets.Properties{CorrelationData: []byte("corr " + marker)},
			},
		},
		{
			name:    "MQTT 3.1.1 PUBLISH to a wildcard topic",
			version: 4,
			pk: packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName:   "devices/sensor-1/telemetry/#",
				Payload:     []byte("payload " + marker),
			},
		},
		{
			name:    "a second CONNECT carrying a password",
			version: 5,
			pk: packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Connect},
				Connect: packets.ConnectParams{
					ProtocolName: []byte("MQTT"), Keepalive: 30, Clean: true, ClientIdentifier: "sensor-1",
					UsernameFlag: true, Username: []byte("user"), PasswordFlag: true, Password: []byte("password " + marker),
				},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, engine(t))
			c := e.dial311(e.enroll("sensor-1", nil))
			c.Version = tc.version
			if code := c.Connect(t, "sensor-1"); code != 0 {
				t.Fatalf("CONNACK %#x", code)
			}
			c.Write(t, tc.pk)
			c.ExpectClosed(t)
			// Positive control: mochi did log the refusal.
			poll(t, "mochi's warning", func() bool { return strings.Contains(e.logs.String(), "error processing packet") })
			logs := e.logs.String()
			if !strings.Contains(logs, "pk.type=") {
				t.Errorf("the warning does not say what the packet was:\n%s", logs)
			}
			for _, form := range secretForms(marker) {
				if i := strings.Index(logs, form); i >= 0 {
					line := logs[strings.LastIndexByte(logs[:i], '\n')+1:]
					t.Fatalf("packet contents (%q) in the gateway log: %.300s...", form, line)
				}
			}
		})
	}
}

// secretForms is s as a log line may show it: as text, as the decimal
// bytes fmt prints for a []byte, in hex and in base64 (JSON's []byte).
func secretForms(s string) []string {
	dec := fmt.Sprint([]byte(s))
	return []string{s, dec[1 : len(dec)-1], hex.EncodeToString([]byte(s)), base64.StdEncoding.EncodeToString([]byte(s))}
}

// The handler on its own, for what mochi may log and how: every value that
// could hold a packet's contents, as an attribute, in a group, or bound
// with With, in text and in JSON.
func TestRedactHandler(t *testing.T) {
	const secret = "SECRETSECRETSECRET" // a multiple of 3 bytes: base64 shows it whole
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    7,
		TopicName:   "devices/sensor-1/telemetry/t",
		Payload:     []byte(secret),
		Properties:  packets.Properties{CorrelationData: []byte(secret), User: []packets.UserProperty{{Key: "k", Val: secret}}},
	}
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{Password: []byte(secret), Username: []byte(secret), WillPayload: []byte(secret)}}
	cases := []struct {
		name string
		log  func(*slog.Logger)
		want string // in the output: what the value became
	}{
		{"packet", func(l *slog.Logger) { l.Warn("m", "pk", pk) }, "payload_bytes"},
		{"packet pointer", func(l *slog.Logger) { l.Warn("m", "packet", &pk) }, "payload_bytes"},
		{"CONNECT", func(l *slog.Logger) { l.Warn("m", "pk", connect) }, "Connect"},
		{"will", func(l *slog.Logger) {
			l.Error("m", "will", mqtt.Will{TopicName: "devices/sensor-1/state", Payload: []byte(secret)})
		}, "payload_bytes"},
		{"bytes", func(l *slog.Logger) { l.Warn("m", "b", []byte(secret)) }, "[]uint8 (not logged)"},
		{"any other value", func(l *slog.Logger) { l.Warn("m", "v", struct{ S string }{secret}) }, "(not logged)"},
		{"in a group", func(l *slog.Logger) { l.Warn("m", slog.Group("g", "pk", pk)) }, "payload_bytes"},
		{"bound with With", func(l *slog.Logger) { l.With("pk", pk).Warn("m") }, "payload_bytes"},
		{"bound in a group", func(l *slog.Logger) { l.WithGroup("g").With("pk", &pk).Warn("m") }, "payload_bytes"},
		{"nil packet pointer", func(l *slog.Logger) { l.Warn("m", "pk", (*packets.Packet)(nil)) }, "(not logged)"},
	}
	for _, tc := range cases {
		for _, format := range []string{"text", "json"} {
			t.Run(tc.name+"/"+format, func(t *testing.T) {
				var buf bytes.Buffer
				var h slog.Handler = slog.NewTextHandler(&buf, nil)
				if format == "json" {
					h = slog.NewJSONHandler(&buf, nil)
				}
				tc.log(slog.New(newRedactHandler(h)))
				out := buf.String()
				for _, form := range secretForms(secret) {
					if strings.Contains(out, form) {
						t.Fatalf("secret (%q) logged: %s", form, out)
					}
				}
				if !strings.Contains(out, tc.want) {
					t.Fatalf("output %s: want %q in it", out, tc.want)
				}
			})
		}
	}

	// Positive control: what is not a packet passes unchanged.
	var buf bytes.Buffer
	slog.New(newRedactHandler(slog.NewTextHandler(&buf, nil))).Warn("m", "client", "c1", "n", 3, "error", errors.New("boom"))
	if out := buf.String(); !strings.Contains(out, "client=c1 n=3 error=boom") {
		t.Fatalf("plain attributes changed: %s", out)
	}
}
