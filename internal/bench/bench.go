// Package bench is the load generator behind `ztgate bench`: it starts a
// gateway in-process on loopback, in a temporary data directory, enrolls
// publishing devices and subscribing controllers with real X.509-SVIDs,
// drives real MQTT 5 clients over mutual TLS and reports what the gateway
// delivered: throughput, end-to-end latency, losses and duplicates, policy
// decisions and allocations per message.
//
// Every message carries its publisher, its sequence number and its send
// time, so each subscriber can tell a loss from a duplicate and measure
// latency on one monotonic clock. A run is bounded by its message count and
// its duration limit, and stops early when its context ends.
//
// With PolicyBoth the same load runs twice, each against a fresh gateway:
// first with a policy that allows everything (the cost of the broker, TLS
// and the enforcement hook alone), then with the default policy, so the
// price of the policy is the ratio of the two.
//
// With Nodes above 1 the gateway is a cluster of that many nodes in the
// process, on loopback, sharing one CA, and the clients are placed on the
// nodes (Placement). NodesCompare runs the same load on a single node
// first, so the ratio is the price of the cluster; PlacementBoth runs it
// with every client on one node, then with every subscriber on another
// node than the publishers, so the ratio is the price of crossing nodes.
package bench

import (
	"fmt"
	"io"
	"log/slog"
	"time"
)

// PolicyMode selects the policy the gateway enforces during a bench.
type PolicyMode string

const (
	// PolicyDefault is ztgate's embedded default policy.
	PolicyDefault PolicyMode = "default"
	// PolicyAllowAll is one module, `allow := true`: the baseline.
	PolicyAllowAll PolicyMode = "allow-all"
	// PolicyBoth runs PolicyAllowAll, then PolicyDefault, and compares.
	PolicyBoth PolicyMode = "both"
)

// Limits on a configuration. They keep one bench within the memory and
// connections of a single machine: each subscriber keeps one bit per
// message to tell duplicates from first deliveries.
const (
	MaxClients          = 256
	MaxMessages         = 10_000_000
	MaxTrackedDelivered = 100_000_000 // subscribers × messages
	MaxPayload          = 1 << 20
	MaxRate             = 10_000_000
	MaxDurationLimit    = 24 * time.Hour
	// MaxNodes bounds a bench cluster: every node is a gateway and an
	// embedded NATS server in this one process.
	MaxNodes = 5
)

// headerSize is the part of every payload the bench reads back: send time
// (8 bytes), publisher index (4), sequence number (8).
const headerSize = 20

// Config is one bench. DefaultConfig gives the values `ztgate bench` starts
// from; Validate must accept it before Run.
type Config struct {
	// Publishers is the number of devices publishing, each on
	// devices/NAME/telemetry/x.
	Publishers int
	// Subscribers is the number of controllers subscribed to
	// devices/+/telemetry/#: each receives every message.
	Subscribers int
	// Messages is the number published in all, shared among publishers.
	Messages int
	// QoS of publications and subscriptions: 0 or 1.
	QoS int
	// Payload is the size of each message in bytes, at least headerSize.
	Payload int
	// Rate paces all publishers together to this many messages per
	// second; 0 publishes as fast as the gateway delivers.
	Rate int
	// Policy is the policy the gateway enforces.
	Policy PolicyMode
	// DurationLimit bounds the publishing and delivery of each run; a run
	// cut short reports what it measured and says so.
	DurationLimit time.Duration
	// Storage is the gateway's durable broker state: StorageOn (the
	// product's default), StorageFsync or StorageOff.
	Storage StorageMode
	// Persistent makes the subscribers' sessions persistent (Clean Start,
	// then a one-hour session expiry), so that with storage every
	// delivery to them is written before it is sent.
	Persistent bool
	// Nodes is the number of gateways: 1 is a single node, more a
	// cluster of that many nodes in the process.
	Nodes int
	// NodesCompare runs the load on a single node, then on the Nodes-node
	// cluster, and compares them.
	NodesCompare bool
	// Placement puts the clients on the nodes of a cluster.
	Placement PlacementMode

	// Logger receives the gateway's log; nil discards it.
	Logger *slog.Logger
	// Progress, if set, receives one line as each run starts.
	Progress io.Writer
}

// DefaultConfig is the configuration `ztgate bench` runs without flags.
func DefaultConfig() Config {
	return Config{
		Publishers:    4,
		Subscribers:   4,
		Messages:      20000,
		QoS:           0,
		Payload:       64,
		Rate:          0,
		Policy:        PolicyDefault,
		DurationLimit: 60 * time.Second,
		Storage:       StorageOn,
		Nodes:         1,
		Placement:     PlacementSpread,
	}
}

// StorageMode selects the gateway's storage (app.StorageConfig).
type StorageMode string

const (
	StorageOn    StorageMode = "on"
	StorageFsync StorageMode = "fsync"
	StorageOff   StorageMode = "off"
)

// ParseStorageMode reads a storage mode as `ztgate bench --storage` takes it.
func ParseStorageMode(s string) (StorageMode, error) {
	switch m := StorageMode(s); m {
	case StorageOn, StorageFsync, StorageOff:
		return m, nil
	}
	return "", fmt.Errorf("bench: --storage %q: want on, fsync or off", s)
}

// ParsePolicyMode reads a policy mode as `ztgate bench --policy` takes it.
func ParsePolicyMode(s string) (PolicyMode, error) {
	switch m := PolicyMode(s); m {
	case PolicyDefault, PolicyAllowAll, PolicyBoth:
		return m, nil
	}
	return "", fmt.Errorf("bench: --policy %q: want default, allow-all or both", s)
}

// Validate reports the first setting that is out of range, named as the
// `ztgate bench` flag that sets it.
func (c Config) Validate() error {
	switch {
	case c.Publishers < 1 || c.Publishers > MaxClients:
		return fmt.Errorf("bench: --publishers must be between 1 and %d, got %d", MaxClients, c.Publishers)
	case c.Subscribers < 1 || c.Subscribers > MaxClients:
		return fmt.Errorf("bench: --subscribers must be between 1 and %d, got %d", MaxClients, c.Subscribers)
	case c.Messages < 1 || c.Messages > MaxMessages:
		return fmt.Errorf("bench: --messages must be between 1 and %d, got %d", MaxMessages, c.Messages)
	case int64(c.Messages)*int64(c.Subscribers) > MaxTrackedDelivered:
		return fmt.Errorf("bench: --messages × --subscribers must be at most %d, got %d", MaxTrackedDelivered, int64(c.Messages)*int64(c.Subscribers))
	case c.QoS != 0 && c.QoS != 1:
		return fmt.Errorf("bench: --qos must be 0 or 1, got %d", c.QoS)
	case c.Payload < headerSize || c.Payload > MaxPayload:
		return fmt.Errorf("bench: --payload must be between %d (the bench's own header) and %d bytes, got %d", headerSize, MaxPayload, c.Payload)
	case c.Rate < 0 || c.Rate > MaxRate:
		return fmt.Errorf("bench: --rate must be between 0 (unlimited) and %d messages/s, got %d", MaxRate, c.Rate)
	case c.DurationLimit <= 0 || c.DurationLimit > MaxDurationLimit:
		return fmt.Errorf("bench: --duration-limit must be positive and at most %s, got %s", MaxDurationLimit, c.DurationLimit)
	}
	if _, err := ParsePolicyMode(string(c.Policy)); err != nil {
		return err
	}
	if _, err := ParseStorageMode(string(c.Storage)); err != nil {
		return err
	}
	return c.validateCluster()
}
