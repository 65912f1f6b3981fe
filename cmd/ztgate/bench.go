package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/internal/bench"
)

func (c *cli) newBenchCmd() *cobra.Command {
	cfg := bench.DefaultConfig()
	policy := string(cfg.Policy)
	logLevel := "error"
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a gateway in-process: throughput, latency, losses and allocations over mTLS",
		Long: `Start a gateway in-process on 127.0.0.1 (a port the kernel picks) in a temporary
data directory, enroll --publishers devices and --subscribers controllers
(label role=controller) with real X.509-SVIDs, connect them as MQTT 5 clients
over mutual TLS, and publish --messages messages in all on
devices/NAME/telemetry/x, each received by every subscriber of
devices/+/telemetry/#. Each message carries its send time and sequence number.

Reports messages/s (a message counts once every subscriber has it),
deliveries/s, end-to-end latency p50/p90/p99/max, lost and duplicate
deliveries (both 0 at QoS 1), the gateway's policy decisions/s, allocations
and bytes allocated per message (whole process, clients included) and the
policy revision.

--policy both runs the load twice, each on a fresh gateway: first with a
policy that allows everything (the baseline: broker, TLS and enforcement
without a policy), then with the default policy, and prints the ratio
default/allow-all of throughput and of p99 latency.

--rate N paces the publishers to N messages/s in all on a fixed schedule, so
latency at one rate compares across runs; a send the publisher is too busy
for is skipped and counted, not made up later. Unpaced (0), publishers keep
at most a few thousand messages on their way to the slowest subscriber.

Cluster: --nodes N (at most 5) runs N gateways as one cluster in the process,
on loopback, sharing one CA, with JetStream replicas 3 (1 for two nodes); the
clients are spread over the nodes by --placement:
  spread  publisher i on node i mod N, subscriber j on node (j+1) mod N
          (default): most deliveries cross nodes
  same    every client on the first node: no delivery crosses
  cross   publishers on the first node, subscribers on the others: every
          delivery crosses
  both    same, then cross on fresh clusters, with the ratio cross/same of
          throughput and p99: the cost of cross-node delivery
--nodes-compare runs the load on a single node first, then on the N-node
cluster, each fresh, and prints the ratio "N nodes/1 node". The report counts
the deliveries that crossed nodes. --policy both, --nodes-compare and
--placement both compare two runs each: one of them at a time.

Each run stops at --duration-limit; Ctrl-C stops the bench.`,
		Example: `  ztgate bench --policy both
  ztgate bench --qos 1 --rate 1000 --nodes 3 --nodes-compare
  ztgate bench --qos 1 --nodes 3 --placement both
  ztgate bench --publishers 4 --subscribers 4 --messages 50000 --qos 0 --policy both
  ztgate bench --rate 5000 --qos 1 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mode, err := bench.ParsePolicyMode(policy)
			if err != nil {
				return err
			}
			cfg.Policy = mode
			if err := cfg.Validate(); err != nil {
				return err
			}
			level, ok := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo,
				"warn": slog.LevelWarn, "error": slog.LevelError}[strings.ToLower(logLevel)]
			if !ok {
				return fmt.Errorf("bench: --log-level %q: want debug, info, warn or error", logLevel)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: level}))
			if !asJSON {
				cfg.Progress = c.stdout
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// The first signal stops the bench cleanly; a second one is
			// the default action again and ends the process at once.
			context.AfterFunc(ctx, stop)
			rep, err := bench.Run(ctx, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				return rep.WriteJSON(c.stdout)
			}
			return rep.WriteText(c.stdout)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Publishers, "publishers", cfg.Publishers, "devices publishing telemetry")
	f.IntVar(&cfg.Subscribers, "subscribers", cfg.Subscribers, "controllers subscribed to devices/+/telemetry/#; each receives every message")
	f.IntVar(&cfg.Messages, "messages", cfg.Messages, "messages published in all, shared among the publishers")
	f.IntVar(&cfg.QoS, "qos", cfg.QoS, "QoS of publications and subscriptions: 0 or 1")
	f.IntVar(&cfg.Payload, "payload", cfg.Payload, "payload size in bytes (at least 20)")
	f.IntVar(&cfg.Rate, "rate", cfg.Rate, "messages/s for all publishers together; 0: as fast as the gateway delivers")
	f.StringVar(&policy, "policy", policy, "policy enforced: default, allow-all, or both (allow-all first, then default, compared)")
	f.Var((*storageFlag)(&cfg.Storage), "storage", "the gateway's durable broker state: on, fsync or off")
	f.BoolVar(&cfg.Persistent, "persistent", false, "subscribers keep persistent sessions, so that storage writes every delivery to them")
	f.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "gateways: 1, or the nodes of a cluster in the process (at most 5)")
	f.BoolVar(&cfg.NodesCompare, "nodes-compare", false, "run on a single node, then on the --nodes cluster, and compare")
	f.Var((*placementFlag)(&cfg.Placement), "placement", "clients on a cluster's nodes: spread, same, cross, or both (same, then cross, compared)")
	f.DurationVar(&cfg.DurationLimit, "duration-limit", cfg.DurationLimit, "bound on publishing and delivery in each run")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.StringVar(&logLevel, "log-level", logLevel, "level of the gateway's log on standard error: debug, info, warn or error")
	return cmd
}

// storageFlag is --storage, checked as it is parsed.
type storageFlag bench.StorageMode

func (f *storageFlag) String() string { return string(*f) }
func (f *storageFlag) Type() string   { return "on|fsync|off" }
func (f *storageFlag) Set(s string) error {
	m, err := bench.ParseStorageMode(s)
	if err != nil {
		return err
	}
	*f = storageFlag(m)
	return nil
}

// placementFlag is --placement, checked as it is parsed.
type placementFlag bench.PlacementMode

func (f *placementFlag) String() string { return string(*f) }
func (f *placementFlag) Type() string   { return "spread|same|cross|both" }
func (f *placementFlag) Set(s string) error {
	m, err := bench.ParsePlacementMode(s)
	if err != nil {
		return err
	}
	*f = placementFlag(m)
	return nil
}
