// Command device is an example ztgate device client.
//
// It connects to a ztgate gateway over mutual TLS with its X.509-SVID,
// announces itself on devices/NAME/state (retained "online", with a retained
// "offline" Last Will), publishes JSON telemetry on devices/NAME/telemetry/temp
// and obeys commands sent to devices/NAME/commands/#. Every topic it uses is
// one the default policy grants a device; nothing else is attempted.
//
// At half-life of its SVID it makes a new key, has the ztgate API sign a
// CSR for it (POST /v1/svid/renew, authenticated with the current SVID),
// stores the result in the SVID directory and moves its MQTT connection to
// the new SVID, resuming the same session so that no QoS 1 command is lost.
//
// It is meant to be copied: it depends only on the standard library,
// paho.golang and ztgate's svidrenew package (which renews the SVID the
// same way `ztgate renew` does).
package main

import (
	"context"
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
	"strings"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ztgate/ztgate/identity/svidrenew"
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
	api      string
	name     string
	interval time.Duration
	count    int
}

// defaultAPI is where `ztgate dev` serves its API.
const defaultAPI = "https://localhost:8443"

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	fs.StringVar(&o.svidDir, "svid-dir", "", "directory holding svid.pem, svid.key and bundle.pem (required)")
	fs.StringVar(&o.broker, "broker", "localhost:8883", "gateway MQTT address, host:port")
	fs.StringVar(&o.api, "api", defaultAPI, "ztgate API that renews the SVID at half-life (empty: never renew)")
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
	if o.api != "" {
		if _, err := parseAPIURL(o.api); err != nil {
			return o, err
		}
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
	d, err := newDevice(opts, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return d.run(ctx)
}

// device is one running device client.
type device struct {
	opts   options
	log    *slog.Logger
	name   string
	topics topics
	svids  *svidStore
	conns  *conns
	renew  *renewer // nil: the SVID is never renewed

	// onCommand, when set, sees every PUBLISH on the command topics as it
	// arrives, before it is parsed.
	onCommand func(*paho.Publish)
}

func newDevice(opts options, log *slog.Logger) (*device, error) {
	host, _, err := net.SplitHostPort(opts.broker)
	if err != nil {
		return nil, fmt.Errorf("--broker %q: %w", opts.broker, err)
	}
	tlsCfg, svids, err := loadSVIDDir(opts.svidDir, host)
	if err != nil {
		return nil, err
	}
	sv := svids.current()
	name := opts.name
	if name == "" {
		name = path.Base(sv.ID.Path())
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	log = log.With("device", name)
	d := &device{
		opts:   opts,
		log:    log,
		name:   name,
		topics: topicsFor(name),
		svids:  svids,
		conns:  &conns{tls: tlsCfg},
	}
	if opts.api != "" {
		if d.renew, err = newRenewer(opts.api, svids, log); err != nil {
			return nil, err
		}
	}
	log.Info("loaded SVID", "spiffe_id", sv.ID.String(), "serial", sv.Serial(),
		"expires_at", sv.Leaf().NotAfter.UTC(), "broker", opts.broker)
	return d, nil
}

// run connects and works until ctx ends or --count messages are sent.
func (d *device) run(ctx context.Context) error {
	log, topics := d.log, d.topics
	// ctx drives the main loop only: the connection has its own lifetime
	// so that shutdown can still publish "offline" after SIGINT.
	connCtx, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()

	// Commands arrive on paho's goroutine; the main loop owns all state.
	actions := make(chan action, 16)

	cm, err := autopaho.NewConnection(connCtx, autopaho.ClientConfig{
		ServerUrls: []*url.URL{{Scheme: "mqtts", Host: d.opts.broker}},
		// Every connection is dialled here, with the current SVID, and
		// remembered so that a renewal can restart it.
		AttemptConnection: d.conns.dial,
		KeepAlive:         30,
		ReconnectBackoff:  autopaho.NewExponentialBackoff(time.Second, time.Minute, 2*time.Second, 2),
		// A clean session on start; later connections resume it (Clean
		// Start 0), so commands queued while reconnecting, after a renewal
		// or a short outage, are still delivered.
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         300,
		// The gateway sends this if the device vanishes without a DISCONNECT.
		WillMessage: &paho.WillMessage{Topic: topics.state, Payload: []byte("offline"), QoS: 1, Retain: true},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ca *paho.Connack) {
			log.Info("connected", "session_present", ca.SessionPresent, "svid_serial", d.svids.current().Serial())
			// OnConnectionUp must not block.
			go announce(connCtx, cm, topics, log)
		},
		OnConnectError: func(err error) { log.Warn("connect failed", "err", err) },
		ClientConfig: paho.ClientConfig{
			// The gateway binds the client ID to the SVID's identity, so the
			// device name is a safe, stable choice.
			ClientID: d.name,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					if d.onCommand != nil {
						d.onCommand(pr.Packet)
					}
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
			OnServerDisconnect: func(disc *paho.Disconnect) {
				reason := ""
				if disc.Properties != nil {
					reason = disc.Properties.ReasonString
				}
				log.Warn("disconnected by gateway", "reason_code", fmt.Sprintf("0x%02x", disc.ReasonCode), "reason", reason)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("mqtt: %w", err)
	}

	if d.renew != nil {
		// The renewal loop starts before the first connection: an SVID
		// already past half-life is renewed right away.
		renewCtx, cancelRenew := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			d.renew.run(renewCtx, d.renewed)
		}()
		defer func() {
			cancelRenew()
			<-done
		}()
	}

	if err := cm.AwaitConnection(ctx); err != nil {
		log.Info("interrupted before connecting")
		return cm.Disconnect(context.Background())
	}

	ticker := time.NewTicker(d.opts.interval)
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
				publish(ctx, cm, log, &paho.Publish{Topic: topics.pong, QoS: 1, Payload: pongPayload(d.name, a.id, time.Now())})
			}
		case now := <-ticker.C:
			sent++
			publish(ctx, cm, log, &paho.Publish{Topic: topics.telemetry, QoS: 1, Payload: telemetryPayload(d.name, sent, now)})
			if d.opts.count > 0 && sent >= d.opts.count {
				return shutdown(cm, topics, log)
			}
		}
	}
}

// renewed switches the MQTT connection to a new SVID: the current
// connection ends cleanly and autopaho's reconnect presents the new one.
func (d *device) renewed(sv *svidrenew.SVID) {
	restarted := d.conns.restart()
	d.log.Info("SVID renewed", "serial", sv.Serial(), "expires_at", sv.Leaf().NotAfter.UTC(),
		"reconnecting", restarted)
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
