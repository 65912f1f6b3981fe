// Command device is an example ztgate device client.
//
// It connects to a ztgate gateway over mutual TLS with its X.509-SVID,
// announces itself on devices/NAME/state (retained "online", with a retained
// "offline" Last Will), publishes JSON telemetry on devices/NAME/telemetry/temp
// and obeys commands sent to devices/NAME/commands/#. Every topic it uses is
// one the default policy grants a device; nothing else is attempted.
//
// It is meant to be copied: it depends only on the standard library,
// paho.golang and go-spiffe.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "device:", err)
		os.Exit(1)
	}
}

type options struct {
	svidDir  string
	broker   string
	name     string
	interval time.Duration
	count    int
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	fs.StringVar(&o.svidDir, "svid-dir", "", "directory holding svid.pem, svid.key and bundle.pem (required)")
	fs.StringVar(&o.broker, "broker", "localhost:8883", "gateway MQTT address, host:port")
	fs.StringVar(&o.name, "name", "", "device name used in topics (default: last path segment of the SPIFFE ID)")
	fs.DurationVar(&o.interval, "interval", 5*time.Second, "telemetry interval")
	fs.IntVar(&o.count, "count", 0, "number of telemetry messages to send, then exit (0 = run until interrupted)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.svidDir == "":
		return o, errors.New("--svid-dir is required")
	case o.interval < minInterval || o.interval > maxInterval:
		return o, fmt.Errorf("--interval must be between %s and %s", minInterval, maxInterval)
	case o.count < 0:
		return o, errors.New("--count must not be negative")
	}
	return o, nil
}

func run(args []string) error {
	opts, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	host, _, err := net.SplitHostPort(opts.broker)
	if err != nil {
		return fmt.Errorf("--broker %q: %w", opts.broker, err)
	}
	tlsCfg, id, err := loadSVIDDir(opts.svidDir, host)
	if err != nil {
		return err
	}
	name := opts.name
	if name == "" {
		name = path.Base(id.Path())
	}
	if err := checkName(name); err != nil {
		return err
	}
	topics := topicsFor(name)
	log = log.With("device", name)
	log.Info("loaded SVID", "spiffe_id", id.String(), "broker", opts.broker)

	// The signal context drives the main loop only: the connection has its
	// own lifetime so that shutdown can still publish "offline" after SIGINT.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	connCtx, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()

	// Commands arrive on paho's goroutine; the main loop owns all state.
	actions := make(chan action, 16)

	cm, err := autopaho.NewConnection(connCtx, autopaho.ClientConfig{
		ServerUrls:       []*url.URL{{Scheme: "mqtts", Host: opts.broker}},
		TlsCfg:           tlsCfg,
		KeepAlive:        30,
		ReconnectBackoff: autopaho.NewExponentialBackoff(time.Second, time.Minute, 2*time.Second, 2),
		// A clean session on start; the session outlives short outages so
		// commands queued while reconnecting are still delivered.
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         300,
		// The gateway sends this if the device vanishes without a DISCONNECT.
		WillMessage: &paho.WillMessage{Topic: topics.state, Payload: []byte("offline"), QoS: 1, Retain: true},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			log.Info("connected")
			// OnConnectionUp must not block.
			go announce(connCtx, cm, topics, log)
		},
		OnConnectError: func(err error) { log.Warn("connect failed", "err", err) },
		ClientConfig: paho.ClientConfig{
			// The gateway binds the client ID to the SVID's identity, so the
			// device name is a safe, stable choice.
			ClientID: name,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					a, err := parseCommand(pr.Packet.Payload)
					if err != nil {
						log.Warn("ignoring command", "topic", pr.Packet.Topic, "err", err)
						return true, nil
					}
					select {
					case actions <- a:
					default:
						log.Warn("command dropped: device busy", "topic", pr.Packet.Topic)
					}
					return true, nil
				},
			},
			OnServerDisconnect: func(d *paho.Disconnect) {
				log.Warn("disconnected by gateway", "reason_code", fmt.Sprintf("0x%02x", d.ReasonCode))
			},
		},
	})
	if err != nil {
		return fmt.Errorf("mqtt: %w", err)
	}
	if err := cm.AwaitConnection(ctx); err != nil {
		log.Info("interrupted before connecting")
		return cm.Disconnect(context.Background())
	}

	ticker := time.NewTicker(opts.interval)
	defer ticker.Stop()
	sent := 0
	for {
		select {
		case <-ctx.Done():
			log.Info("interrupted")
			return shutdown(cm, topics, log)
		case a := <-actions:
			switch a.kind {
			case actionSetInterval:
				ticker.Reset(a.interval)
				log.Info("interval changed", "interval", a.interval)
			case actionPing:
				log.Info("ping", "id", a.id)
				publish(ctx, cm, log, &paho.Publish{Topic: topics.pong, QoS: 1, Payload: pongPayload(name, a.id, time.Now())})
			}
		case now := <-ticker.C:
			sent++
			publish(ctx, cm, log, &paho.Publish{Topic: topics.telemetry, QoS: 1, Payload: telemetryPayload(name, sent, now)})
			if opts.count > 0 && sent >= opts.count {
				return shutdown(cm, topics, log)
			}
		}
	}
}

// loadSVIDDir builds the client TLS config from DIR/svid.pem (leaf first,
// then intermediates), DIR/svid.key and DIR/bundle.pem, and returns the
// SPIFFE ID of the SVID. The gateway is verified as any TLS server is: its
// certificate must chain to the bundle and name serverName.
func loadSVIDDir(dir, serverName string) (*tls.Config, spiffeid.ID, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"))
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("load SVID: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, spiffeid.ID{}, fmt.Errorf("load SVID: %w", err)
		}
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("load SVID: %w", err)
	}
	bundle, err := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("load bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return nil, spiffeid.ID{}, fmt.Errorf("load bundle: no certificates in %s", filepath.Join(dir, "bundle.pem"))
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   serverName,
	}, id, nil
}

// checkName refuses names that would change the meaning of a topic. The
// gateway refuses them too; failing here gives a clearer error.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/+#$\x00") {
		return fmt.Errorf("device name %q cannot be used in a topic", name)
	}
	return nil
}

type topics struct {
	state, telemetry, pong, commands string
}

func topicsFor(name string) topics {
	base := "devices/" + name + "/"
	return topics{
		state:     base + "state",
		telemetry: base + "telemetry/temp",
		pong:      base + "telemetry/pong",
		commands:  base + "commands/#",
	}
}

// announce subscribes to the device's commands and marks it online. It runs
// after every (re)connect because a fresh session has no subscriptions.
func announce(ctx context.Context, cm *autopaho.ConnectionManager, t topics, log *slog.Logger) {
	suback, err := cm.Subscribe(ctx, &paho.Subscribe{
		Subscriptions: []paho.SubscribeOptions{{Topic: t.commands, QoS: 1}},
	})
	switch {
	case err != nil:
		log.Error("subscribe failed", "filter", t.commands, "err", err)
	case len(suback.Reasons) > 0 && suback.Reasons[0] >= 0x80:
		log.Error("subscribe refused", "filter", t.commands, "reason_code", fmt.Sprintf("0x%02x", suback.Reasons[0]))
	default:
		log.Info("subscribed", "filter", t.commands)
	}
	publish(ctx, cm, log, &paho.Publish{Topic: t.state, QoS: 1, Retain: true, Payload: []byte("online")})
}

func publish(ctx context.Context, cm *autopaho.ConnectionManager, log *slog.Logger, p *paho.Publish) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cm.Publish(ctx, p); err != nil {
		// A refusal by policy arrives here too (reason code 0x87).
		log.Warn("publish failed", "topic", p.Topic, "err", err)
		return
	}
	log.Debug("published", "topic", p.Topic)
}

// shutdown marks the device offline and disconnects cleanly. A clean
// DISCONNECT discards the Last Will, so "offline" is published explicitly.
func shutdown(cm *autopaho.ConnectionManager, t topics, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	waitCtx, cancelWait := context.WithTimeout(ctx, 2*time.Second)
	defer cancelWait()
	if err := cm.AwaitConnection(waitCtx); err == nil {
		publish(ctx, cm, log, &paho.Publish{Topic: t.state, QoS: 1, Retain: true, Payload: []byte("offline")})
	}
	if err := cm.Disconnect(ctx); err != nil {
		return fmt.Errorf("disconnect: %w", err)
	}
	log.Info("disconnected")
	return nil
}

// Telemetry and replies are small JSON documents.

type telemetry struct {
	Device       string    `json:"device"`
	Seq          int       `json:"seq"`
	TemperatureC float64   `json:"temperature_c"`
	Time         time.Time `json:"time"`
}

func telemetryPayload(name string, seq int, now time.Time) []byte {
	// A slow, plausible wave around 21 °C stands in for a real sensor.
	temp := 21 + 1.5*math.Sin(float64(now.Unix())/300)
	b, _ := json.Marshal(telemetry{Device: name, Seq: seq, TemperatureC: math.Round(temp*100) / 100, Time: now.UTC()})
	return b
}

type pong struct {
	Device string    `json:"device"`
	ID     string    `json:"id,omitempty"`
	Time   time.Time `json:"time"`
}

func pongPayload(name, id string, now time.Time) []byte {
	b, _ := json.Marshal(pong{Device: name, ID: id, Time: now.UTC()})
	return b
}
