package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
)

func (c *cli) newDevCmd() *cobra.Command {
	cfg := app.DefaultConfig()
	dlEnabled := true
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local gateway, creating the CA, the registry and an admin identity on first run",
		Long: `Run a gateway for local use. The first run creates, under --data-dir, the built-in
CA (ca/), the device registry (registry.db), the broker state (broker.db:
persistent sessions, retained messages, delayed wills), an admin identity
(admin/svid.pem, svid.key, bundle.pem) that the device commands use, and the
policy directory policies/ with a copy of the default policy and its tests;
later runs reuse them, edits included. The policy directory is watched: a
change is enforced within a second or two if it compiles and its tests pass.
Decisions (every deny) are logged to decisions.log in the data dir.
Prints how to enroll a device and connect with it, then serves until
interrupted (Ctrl-C or SIGTERM).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.DecisionLog.Enabled = &dlEnabled
			if cfg.DecisionLog.On() && cfg.DecisionLog.Path == "" {
				cfg.DecisionLog.Path = filepath.Join(cfg.DataDir, app.DevDecisionLogFile)
			}
			return c.runGateway(cmd.Context(), cfg, true)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the CA, the registry, the admin identity, the policy and the decision log")
	f.StringVar(&cfg.MQTTAddr, "mqtt-addr", cfg.MQTTAddr, "MQTT (mTLS) listen address")
	f.StringVar(&cfg.APIAddr, "api-addr", cfg.APIAddr, "admin API (HTTPS) listen address")
	f.StringVar(&cfg.PolicyDir, "policy-dir", cfg.PolicyDir, "directory of Rego policy files and their tests (default DATA-DIR/policies, seeded with the default policy)")
	f.BoolVar(&cfg.PolicyWatch, "policy-watch", cfg.PolicyWatch, "reload the policy directory when it changes")
	f.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain of the built-in CA")
	f.StringArrayVar(&cfg.ServerNames, "server-name", nil, "extra DNS name or IP address on the serving certificate (repeatable)")
	f.DurationVar(&cfg.SVIDTTL, "svid-ttl", cfg.SVIDTTL, "lifetime of device SVIDs signed through the API")
	f.DurationVar(&cfg.PolicyTimeout, "policy-timeout", cfg.PolicyTimeout, "bound on one policy evaluation (0: the engine's default)")
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn or error")
	f.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format: text or json")
	f.BoolVar(&dlEnabled, "decision-log-enabled", dlEnabled, "write the decision log")
	f.StringVar(&cfg.DecisionLog.Path, "decision-log", "", `decision log file, "-" for standard output (default DATA-DIR/decisions.log)`)
	f.Float64Var(&cfg.DecisionLog.SampleAllow, "decision-log-sample-allow", cfg.DecisionLog.SampleAllow, "fraction of allows logged, 0 to 1 (denies are always logged)")
	f.BoolVar(&cfg.Storage.Enabled, "storage", cfg.Storage.Enabled, "keep persistent sessions, retained messages and delayed wills in DATA-DIR/broker.db across restarts")
	f.BoolVar(&cfg.Storage.Fsync, "storage-fsync", cfg.Storage.Fsync, "fsync the broker state before acknowledging, so that a power loss loses nothing acknowledged")
	return cmd
}

func (c *cli) newServeCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the gateway as configured in a YAML file",
		Long: `Run the gateway as configured in a YAML file. Keys (all optional; defaults shown):

  data_dir: ./ztgate-data
  mqtt_addr: 127.0.0.1:8883
  api_addr: 127.0.0.1:8443
  policy_dir: ""            # empty: DATA_DIR/policies, seeded with the default policy
  policy_watch: true        # reload the policy directory when it changes
  trust_domain: example.org
  server_names: []          # extra DNS names / IPs on the serving certificate
  svid_ttl: 24h
  policy_timeout: 0s        # 0: the engine's default
  log_level: info           # debug | info | warn | error
  log_format: text          # text | json
  decision_log:
    enabled: false          # true, or a path, turns it on
    path: ""                # "" or "-": standard output; else a file, rotated
    sample_allow: 0         # fraction of allows logged; denies always are
    max_size_mb: 100        # rotate the file at this size
    max_backups: 5          # rotated files kept; 0 keeps all
  limits:
    max_packet_size: 1048576        # bytes; a larger packet ends the connection
    max_connect_packet_size: 65536  # bytes; bound on the first packet, the CONNECT
  storage:
    enabled: true           # keep sessions, retained messages, delayed wills in DATA_DIR/broker.db
    fsync: false            # true: fsync before acknowledging (survives power loss)
  identity:
    source: builtin         # builtin | files | workload_api
    ca_dir: ""              # builtin: the CA's directory (empty: DATA_DIR/ca)
    cert_file: ""           # files: the serving certificate chain (PEM), reloaded on change
    key_file: ""            # files: its private key
    bundle_file: ""         # files: the trust domain's CA certificates (PEM)
    workload_api_socket: "" # workload_api: e.g. unix:///run/spire/agent.sock
    bootstrap_admins: []    # SPIFFE IDs registered active with role=admin at start if absent
  federation:
    bundle_endpoint: true   # serve the own bundle at GET /v1/bundle
    bundle_refresh_hint: 5m
    trust_domains: []       # partners: trust_domain, url, profile (https_web | https_spiffe),
                            # endpoint_spiffe_id, bundle_file, ca_file, refresh_interval
  cluster:                  # absent: one node. See docs/cluster.md
    name: ztgate            # the same on every node
    node: a                 # this node's name, unique
    listen: 0.0.0.0:6222    # embedded NATS route address (mTLS with the node's SVID)
    peers: []               # route addresses of the other nodes
    nats_url: ""            # instead of listen/peers: an existing NATS cluster (tls://)
    nats_ca_file: ""        # roots for a tls:// nats_url; empty: the system roots
    replicas: 3             # JetStream replicas: 1, 3 or 5
    peer_ids: []            # SPIFFE IDs admitted on routes; empty: this node's own
    start_timeout: 2m       # wait at start for a quorum

With identity.source files or workload_api the gateway signs nothing: devices
are registered with "ztgate device register" and the first admin is one of
bootstrap_admins. ztgate.example.yaml documents every key.

An unknown key is an error. Serves until interrupted (SIGINT or SIGTERM).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := app.LoadConfig(path)
			if err != nil {
				return err
			}
			return c.runGateway(cmd.Context(), cfg, false)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "YAML configuration file")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// runGateway starts the app and serves until ctx ends or a signal arrives.
func (c *cli) runGateway(ctx context.Context, cfg app.Config, hints bool) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.Logger == nil {
		cfg.Logger = cfg.NewLogger(c.stderr)
	}
	a, err := app.Start(ctx, cfg)
	if err != nil {
		return err
	}
	name := "ztgate"
	if hints {
		name = "ztgate dev"
	}
	fmt.Fprintf(c.stdout, "%s: MQTT (mTLS) on %s, admin API on %s\n", name, a.MQTTAddr(), a.APIURL())
	if hints {
		c.printHints(c.stdout, cfg, a)
	}
	<-ctx.Done()
	fmt.Fprintf(c.stdout, "%s: shutting down\n", name)
	return a.Close()
}

// printHints prints the exact commands that enroll a device and connect with
// it to the gateway that is running, flags included where the defaults of
// the device commands would not reach it.
func (c *cli) printHints(w io.Writer, cfg app.Config, a *app.App) {
	// Flags the device commands need to reach this gateway, beyond their
	// defaults.
	var reach string
	if u := a.APIURL(); u != defaultAPIURL {
		reach += " --api " + shellQuote(u)
	}
	if filepath.Clean(a.AdminDir()) != filepath.Clean(defaultAdminDir) {
		reach += " --admin-dir " + shellQuote(a.AdminDir())
	}
	enroll := func(name, labels string) string {
		return fmt.Sprintf("%s device enroll %s%s --out ./%s%s", c.self, name, labels, name, reach)
	}
	host, port := mqttHostPort(a.MQTTAddr())
	sub := func(dir, topic string) string {
		return fmt.Sprintf("-h %s -p %s --cafile %s/bundle.pem --cert %s/svid.pem --key %s/svid.key -t %s",
			shellQuote(host), port, dir, dir, dir, shellQuote(topic))
	}
	fmt.Fprintf(w, "  data dir:          %s (admin identity in %s)\n", shellQuote(cfg.DataDir), shellQuote(a.AdminDir()))
	fmt.Fprintf(w, "  enroll a device:   %s\n", enroll("sensor-1", ""))
	fmt.Fprintf(w, "  publish as it:     mosquitto_pub %s -m 21.5\n", sub("sensor-1", "devices/sensor-1/telemetry/temp"))
	fmt.Fprintf(w, "  a controller:      %s\n", enroll("ctl-1", " --label role=controller"))
	fmt.Fprintf(w, "                     mosquitto_sub %s -v\n", sub("ctl-1", "devices/+/telemetry/#"))
	// Bootstrap: the admin makes a token, the device enrolls itself with
	// it, trusting only the CA of this pin.
	apiHost, apiPort := mqttHostPort(a.APIAddr())
	fmt.Fprintf(w, "  bootstrap token:   %s device token sensor-2%s\n", c.self, reach)
	fmt.Fprintf(w, "    on the device:   %s enroll --api %s --token TOKEN --ca-pin %s --out ./sensor-2\n",
		c.self, shellQuote("https://"+net.JoinHostPort(apiHost, apiPort)), identity.CAPin(a.CA().Certificate()))
	if cfg.DecisionLog.On() {
		where := cfg.DecisionLog.Path
		if where == "" || where == "-" {
			where = "standard output"
		}
		fmt.Fprintf(w, "  decision log:      %s\n", shellQuote(where))
	}
	fmt.Fprintf(w, "  policy:            %s (watched: %v)\n", shellQuote(cfg.EffectivePolicyDir()), cfg.PolicyWatch)
	fmt.Fprintf(w, "  stop:              Ctrl-C\n")
}

// mqttHostPort is the host name and port a local MQTT client should use: a
// loopback or unspecified listener is reached as localhost, a name that is
// on the serving certificate.
func mqttHostPort(addr net.Addr) (string, string) {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "localhost", addr.String()
	}
	ip := net.ParseIP(host)
	if host == "" || strings.EqualFold(host, "localhost") || ip != nil && (ip.IsLoopback() || ip.IsUnspecified()) {
		host = "localhost"
	}
	return host, port
}
