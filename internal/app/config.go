package app

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"gopkg.in/yaml.v3"

	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/gateway"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/policy"
)

// Defaults of Config. The addresses are loopback so that a gateway started
// without configuration is not reachable from the network.
const (
	DefaultDataDir     = "./ztgate-data"
	DefaultMQTTAddr    = "127.0.0.1:8883"
	DefaultAPIAddr     = "127.0.0.1:8443"
	DefaultTrustDomain = "example.org"
	DefaultSVIDTTL     = 24 * time.Hour
	DefaultLogLevel    = "info"
	DefaultLogFormat   = "text"

	// DefaultDecisionLogMaxSizeMB and DefaultDecisionLogMaxBackups bound
	// the decision log file: it is rotated at this size and this many
	// rotated files are kept.
	DefaultDecisionLogMaxSizeMB  = 100
	DefaultDecisionLogMaxBackups = 5
	// DevDecisionLogFile is where `ztgate dev` writes its decision log,
	// under the data dir.
	DevDecisionLogFile = "decisions.log"
	// PolicySubdir is the policy directory under the data dir used when
	// policy_dir is empty.
	PolicySubdir = "policies"
)

// Config is everything needed to run a ztgate. Its YAML form is the file of
// `ztgate serve --config`; every flag of `ztgate dev` has a key here.
type Config struct {
	// DataDir holds the built-in CA (ca/, unless identity.ca_dir says
	// otherwise), the registry (registry.db), the broker state (broker.db,
	// see Storage), the dev admin identity (admin/, builtin source only)
	// and the federated bundles (federation/).
	DataDir string `yaml:"data_dir"`
	// MQTTAddr is the mTLS MQTT listener (host:port; port 0 picks one).
	MQTTAddr string `yaml:"mqtt_addr"`
	// APIAddr is the mTLS admin API listener.
	APIAddr string `yaml:"api_addr"`
	// PolicyDir is the directory of Rego files the gateway enforces, with
	// their *_test.rego tests, which must pass before a revision is
	// activated. Empty means DataDir/policies, which the first start seeds
	// with the embedded default policy. Modules uploaded through the API
	// are written here.
	PolicyDir string `yaml:"policy_dir"`
	// PolicyWatch reloads the policy directory when a file in it changes.
	PolicyWatch bool `yaml:"policy_watch"`
	// Console serves the web console under /ui/ on the API listener; off,
	// /ui/ answers 404 and no console session can be opened.
	Console bool `yaml:"console"`
	// TrustDomain is the gateway's own SPIFFE trust domain: the built-in
	// CA's, or the one the serving SVID of the files or Workload API
	// source must be in.
	TrustDomain string `yaml:"trust_domain"`
	// ServerNames are extra DNS names or IP addresses on the serving
	// certificate; localhost, 127.0.0.1 and ::1 are always on it.
	ServerNames []string `yaml:"server_names"`
	// SVIDTTL is the lifetime of device SVIDs signed through the API.
	SVIDTTL time.Duration `yaml:"svid_ttl"`
	// ClearRetainedOnRevoke clears the retained messages a device
	// published when it is revoked or deleted (not when it is suspended),
	// so that new subscribers are no longer handed them.
	ClearRetainedOnRevoke bool `yaml:"clear_retained_on_revoke"`
	// PolicyTimeout bounds one policy evaluation; zero means the engine's
	// default.
	PolicyTimeout time.Duration `yaml:"policy_timeout"`
	// PolicyAllowBuiltins names the restricted OPA builtins (those that
	// reach the network or the environment, read the clock or are random:
	// policy.RestrictedBuiltins) that policies and their tests may call.
	// Empty: none. Any other name is an error.
	PolicyAllowBuiltins []string `yaml:"policy_allow_builtins"`
	// DecisionCacheMaxBytes bounds the memory of the decision cache (see
	// policy.CacheOptions.MaxBytes).
	DecisionCacheMaxBytes int64 `yaml:"decision_cache_max_bytes"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`
	// DecisionLog is where policy decisions are recorded.
	DecisionLog DecisionLogConfig `yaml:"decision_log"`
	// Limits bounds what one client can make the gateway hold.
	Limits LimitsConfig `yaml:"limits"`
	// Storage keeps the broker's state (persistent sessions, retained
	// messages, delayed wills) in DataDir/broker.db across restarts.
	Storage StorageConfig `yaml:"storage"`
	// Identity is where the gateway's own SVID and its trust domain's
	// bundle come from, and who administers it from the start.
	Identity IdentityConfig `yaml:"identity"`
	// Federation is the partner trust domains whose SVIDs the gateway
	// accepts, and the bundle endpoint it serves for its own.
	Federation FederationConfig `yaml:"federation"`
	// Cluster makes the gateway one node of a cluster (see ClusterConfig);
	// nil: a single node.
	Cluster *ClusterConfig `yaml:"cluster"`
	// Bridges are the approved upstream brokers: the only addresses the
	// gateway connects to, each message across decided by the policy
	// (bridge_out, bridge_in). See docs/bridges.md.
	Bridges []bridge.Config `yaml:"bridges"`

	// Logger, when set, is used instead of one built from LogLevel and
	// LogFormat. It cannot be set from a file.
	Logger *slog.Logger `yaml:"-"`
}

// The identity sources (IdentityConfig.Source).
const (
	// IdentityBuiltin is the built-in CA: it signs the gateway's serving
	// certificate and the devices' SVIDs.
	IdentityBuiltin = "builtin"
	// IdentityFiles is an operator's PKI: the serving certificate, its key
	// and the trust bundle in files, watched and reloaded. Nothing is
	// signed by the gateway.
	IdentityFiles = "files"
	// IdentityWorkloadAPI is a SPIRE agent (or any SPIFFE Workload API):
	// the serving SVID and the bundles are pushed by it. Nothing is signed
	// by the gateway.
	IdentityWorkloadAPI = "workload_api"
)

// The bundle endpoint profiles (FederatedDomainConfig.Profile).
const (
	ProfileHTTPSWeb    = identity.ProfileHTTPSWeb
	ProfileHTTPSSPIFFE = identity.ProfileHTTPSSPIFFE
)

// DefaultBundleRefreshHint is the refresh hint of the bundle the gateway
// serves at GET /v1/bundle.
const DefaultBundleRefreshHint = 5 * time.Minute

// IdentityConfig is the identity: section. Relative paths are relative to
// the working directory, as data_dir and policy_dir are.
type IdentityConfig struct {
	// Source is builtin, files or workload_api.
	Source string `yaml:"source"`
	// CADir is the built-in CA's directory; empty: DataDir/ca. Created if
	// missing. builtin only.
	CADir string `yaml:"ca_dir"`
	// CertFile is the gateway's serving certificate chain in PEM, leaf
	// first; KeyFile its private key; BundleFile the CA certificates of
	// the trust domain. files only, all three required.
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	BundleFile string `yaml:"bundle_file"`
	// WorkloadAPISocket is the Workload API address, e.g.
	// unix:///run/spire/agent.sock. workload_api only, required.
	WorkloadAPISocket string `yaml:"workload_api_socket"`
	// BootstrapAdmins are SPIFFE IDs registered at start, active with the
	// label role=admin, unless a device with that ID exists already.
	BootstrapAdmins []string `yaml:"bootstrap_admins"`
}

// FederationConfig is the federation: section.
type FederationConfig struct {
	// BundleEndpoint serves GET /v1/bundle (the own trust domain's SPIFFE
	// bundle) on the API listener; nil means true.
	BundleEndpoint *bool `yaml:"bundle_endpoint"`
	// BundleRefreshHint is the refresh hint in the served bundle.
	BundleRefreshHint time.Duration `yaml:"bundle_refresh_hint"`
	// TrustDomains are the partner trust domains whose SVIDs are accepted.
	TrustDomains []FederatedDomainConfig `yaml:"trust_domains"`
}

// BundleEndpointOn reports whether GET /v1/bundle is served.
func (f FederationConfig) BundleEndpointOn() bool {
	return f.BundleEndpoint == nil || *f.BundleEndpoint
}

// FederatedDomainConfig is one partner trust domain.
type FederatedDomainConfig struct {
	TrustDomain string `yaml:"trust_domain"`
	// URL is the partner's SPIFFE bundle endpoint; empty only with the
	// workload_api source, whose agent hands over the partner's bundle.
	URL string `yaml:"url"`
	// Profile is https_web or https_spiffe.
	Profile string `yaml:"profile"`
	// EndpointSPIFFEID is the bundle endpoint server's SPIFFE ID, in the
	// partner's trust domain. https_spiffe only, required.
	EndpointSPIFFEID string `yaml:"endpoint_spiffe_id"`
	// BundleFile is the partner's bundle to start from (PEM), which
	// authenticates the first fetch. https_spiffe only, required.
	BundleFile string `yaml:"bundle_file"`
	// CAFile holds the roots the endpoint's web certificate is verified
	// with; empty: the system roots. https_web only.
	CAFile string `yaml:"ca_file"`
	// RefreshInterval is how often the bundle is fetched; 0: the
	// bundle's own refresh hint, else 5m.
	RefreshInterval time.Duration `yaml:"refresh_interval"`
}

// DecisionLogConfig is the decision log: one JSON line per decision in the
// shape of OPA's decision logs. Denies are always logged, allows sampled.
//
// The log is off unless Enabled is true or a Path is given; Enabled false
// turns it off even with a Path.
type DecisionLogConfig struct {
	// Enabled turns the log on (true) or off (false); unset, a Path turns
	// it on.
	Enabled *bool `yaml:"enabled"`
	// Path is the log file, rotated by size; "" or "-" is standard output.
	Path string `yaml:"path"`
	// SampleAllow is the fraction, 0 to 1, of allows that are logged.
	SampleAllow float64 `yaml:"sample_allow"`
	// MaxSizeMB is the size at which the file is rotated.
	MaxSizeMB int `yaml:"max_size_mb"`
	// MaxBackups is how many rotated files are kept; 0 keeps them all.
	MaxBackups int `yaml:"max_backups"`
	// AggregateInterval aggregates deny floods: the first deny of a kind
	// (session, action, reasons) in an interval is logged in full, the
	// next ones are counted in one aggregate entry at its end. 0 logs
	// every deny in full.
	AggregateInterval time.Duration `yaml:"aggregate_interval"`
}

// On reports whether the decision log is to be written.
func (d DecisionLogConfig) On() bool {
	if d.Enabled != nil {
		return *d.Enabled
	}
	return d.Path != ""
}

// LimitsConfig bounds what one client can make the gateway hold. Sizes are
// in bytes, whole packets (fixed header included, as MQTT 5's Maximum Packet
// Size counts them).
type LimitsConfig struct {
	// MaxPacketSize bounds every MQTT packet a client sends; a larger one
	// ends the connection before it is read. MQTT 5 clients are told it
	// in the CONNACK. Default gateway.DefaultMaxPacketSize (256 KiB).
	MaxPacketSize int `yaml:"max_packet_size"`
	// MaxConnectPacketSize bounds the first packet of a connection, which
	// must be a CONNECT and is read before the registry or the policy is
	// asked; at most MaxPacketSize. Default
	// gateway.DefaultMaxConnectPacketSize (64 KiB).
	MaxConnectPacketSize int `yaml:"max_connect_packet_size"`

	// The guardrails below are enforced before the policy is asked; the
	// policy's optional limits rule can give an identity its own values
	// at CONNECT (docs/policy.md). 0 turns a limit off unless said
	// otherwise. Defaults: gateway.DefaultLimits.

	// MaxSessionsPerIdentity bounds the sessions (connected or kept for
	// a persistent client) one SPIFFE ID holds; one more CONNECT is
	// refused (CONNACK 0x97, MQTT 3.1.1 0x05). A takeover of a session's
	// client ID is not one more.
	MaxSessionsPerIdentity int `yaml:"max_sessions_per_identity"`
	// PublishRate and PublishBurst bound the PUBLISH packets of one
	// identity, all its sessions together, per second and at once;
	// PublishBytesRate and PublishBytesBurst their bytes. A PUBLISH over
	// the rate is held back: the gateway stops reading the connection
	// until the rate allows it (nothing is dropped or refused).
	PublishRate       float64 `yaml:"publish_rate"`
	PublishBurst      int     `yaml:"publish_burst"`
	PublishBytesRate  int     `yaml:"publish_bytes_rate"`
	PublishBytesBurst int     `yaml:"publish_bytes_burst"`
	// MaxSubscriptionsPerSession bounds the filters of one session; a
	// filter beyond it is refused (SUBACK 0x97, MQTT 3.1.1 0x80).
	MaxSubscriptionsPerSession int `yaml:"max_subscriptions_per_session"`
	// MaxOutboundQueue is the slots of a session's outbound queue, which
	// is allocated whole at its first delivery (8 bytes a slot); MaxInflight
	// bounds the QoS 1 and 2 messages a session holds unacknowledged or
	// queued while offline. Neither can be off.
	MaxOutboundQueue int `yaml:"max_outbound_queue"`
	MaxInflight      int `yaml:"max_inflight"`
	// HandshakeTimeout bounds the TLS handshake plus the CONNECT of a new
	// connection; it cannot be off.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// ConnRatePerIP and ConnBurstPerIP bound the new connections of one
	// source address (an IPv6 /64), per second and at once; one over is
	// closed before the TLS handshake.
	ConnRatePerIP  float64 `yaml:"conn_rate_per_ip"`
	ConnBurstPerIP int     `yaml:"conn_burst_per_ip"`
}

// gatewayLimits is the gateway's form of the guardrails.
func (l LimitsConfig) gatewayLimits() gateway.Limits {
	return gateway.Limits{
		MaxSessionsPerIdentity:     l.MaxSessionsPerIdentity,
		PublishRate:                l.PublishRate,
		PublishBurst:               l.PublishBurst,
		PublishBytesRate:           float64(l.PublishBytesRate),
		PublishBytesBurst:          l.PublishBytesBurst,
		MaxSubscriptionsPerSession: l.MaxSubscriptionsPerSession,
		MaxOutboundQueue:           l.MaxOutboundQueue,
		MaxInflight:                l.MaxInflight,
		HandshakeTimeout:           l.HandshakeTimeout,
		ConnRatePerIP:              l.ConnRatePerIP,
		ConnBurstPerIP:             l.ConnBurstPerIP,
	}
}

// validateGuardrails checks the keys beyond the packet sizes.
func (l LimitsConfig) validateGuardrails() error {
	counts := []struct {
		key    string
		v, min int
		max    int
	}{
		{"max_sessions_per_identity", l.MaxSessionsPerIdentity, 0, math.MaxInt32},
		{"publish_burst", l.PublishBurst, 1, math.MaxInt32},
		{"publish_bytes_rate", l.PublishBytesRate, 0, math.MaxInt32},
		{"publish_bytes_burst", l.PublishBytesBurst, l.MaxPacketSize, math.MaxInt32},
		{"max_subscriptions_per_session", l.MaxSubscriptionsPerSession, 0, math.MaxInt32},
		{"max_outbound_queue", l.MaxOutboundQueue, 16, 1 << 20},
		{"max_inflight", l.MaxInflight, 16, math.MaxUint16},
		{"conn_burst_per_ip", l.ConnBurstPerIP, 1, math.MaxInt32},
	}
	for _, c := range counts {
		if c.v < c.min || c.v > c.max {
			return fmt.Errorf("limits.%s must be between %d and %d, got %d", c.key, c.min, c.max, c.v)
		}
	}
	rates := []struct {
		key string
		v   float64
	}{{"publish_rate", l.PublishRate}, {"conn_rate_per_ip", l.ConnRatePerIP}}
	for _, r := range rates {
		if math.IsNaN(r.v) || math.IsInf(r.v, 0) || r.v < 0 {
			return fmt.Errorf("limits.%s must be a non-negative number (0: off), got %v", r.key, r.v)
		}
	}
	if l.HandshakeTimeout <= 0 || l.HandshakeTimeout > 5*time.Minute {
		return fmt.Errorf("limits.handshake_timeout must be between 1ns and 5m, got %s", l.HandshakeTimeout)
	}
	return nil
}

// StorageConfig is the durable broker state (see internal/brokerstore).
type StorageConfig struct {
	// Enabled keeps persistent sessions (subscriptions, queued and
	// in-flight messages), retained messages and pending delayed wills in
	// DataDir/broker.db, so that a restart or a crash loses nothing
	// acknowledged. Off, they live in memory only. Default true.
	Enabled bool `yaml:"enabled"`
	// Fsync makes every write reach the disk before the gateway
	// acknowledges what it stores (writes queued together share one
	// fsync), so that a power loss loses nothing acknowledged either.
	// Off (the default), what was acknowledged survives the process being
	// killed, not the machine losing power.
	Fsync bool `yaml:"fsync"`
}

func (s StorageConfig) validate() error {
	if s.Fsync && !s.Enabled {
		return errors.New("storage.fsync: true needs storage.enabled: true")
	}
	return nil
}

// minPacketLimit is the smallest value of a packet size limit. Anything
// below refuses ordinary CONNECTs, so it is taken for a mistake of unit
// (max_packet_size: 1, meaning a MiB) rather than meant.
const minPacketLimit = 1 << 10

func (l LimitsConfig) validate() error {
	if l.MaxPacketSize < minPacketLimit || l.MaxPacketSize > gateway.MaxPacketSizeLimit {
		return fmt.Errorf("limits.max_packet_size must be between %d and %d bytes, got %d",
			minPacketLimit, gateway.MaxPacketSizeLimit, l.MaxPacketSize)
	}
	if l.MaxConnectPacketSize < minPacketLimit || l.MaxConnectPacketSize > l.MaxPacketSize {
		return fmt.Errorf("limits.max_connect_packet_size must be between %d and limits.max_packet_size (%d) bytes, got %d",
			minPacketLimit, l.MaxPacketSize, l.MaxConnectPacketSize)
	}
	return l.validateGuardrails()
}

// aggregateInterval is AggregateInterval as decisionlog.Config takes it:
// there zero is the default and a negative interval turns aggregation off.
func (d DecisionLogConfig) aggregateInterval() time.Duration {
	if d.AggregateInterval == 0 {
		return -1
	}
	return d.AggregateInterval
}

// DefaultConfig returns the defaults of every key: the configuration of
// `ztgate serve` with an empty file. `ztgate dev` also writes a decision log
// (see DevDecisionLogFile).
func DefaultConfig() Config {
	bundleEndpoint := true
	return Config{
		DataDir:     DefaultDataDir,
		MQTTAddr:    DefaultMQTTAddr,
		APIAddr:     DefaultAPIAddr,
		TrustDomain: DefaultTrustDomain,
		SVIDTTL:     DefaultSVIDTTL,
		PolicyWatch: true,
		Console:     true,
		LogLevel:    DefaultLogLevel,
		LogFormat:   DefaultLogFormat,
		DecisionLog: DecisionLogConfig{
			MaxSizeMB:         DefaultDecisionLogMaxSizeMB,
			MaxBackups:        DefaultDecisionLogMaxBackups,
			AggregateInterval: decisionlog.DefaultAggregateInterval,
		},
		Storage: StorageConfig{Enabled: true},
		Limits: LimitsConfig{
			MaxPacketSize:        gateway.DefaultMaxPacketSize,
			MaxConnectPacketSize: gateway.DefaultMaxConnectPacketSize,

			MaxSessionsPerIdentity:     gateway.DefaultMaxSessionsPerIdentity,
			PublishRate:                gateway.DefaultPublishRate,
			PublishBurst:               gateway.DefaultPublishBurst,
			PublishBytesRate:           gateway.DefaultPublishBytesRate,
			PublishBytesBurst:          gateway.DefaultPublishBytesBurst,
			MaxSubscriptionsPerSession: gateway.DefaultMaxSubscriptionsPerSession,
			MaxOutboundQueue:           gateway.DefaultMaxOutboundQueue,
			MaxInflight:                gateway.DefaultMaxInflight,
			HandshakeTimeout:           gateway.DefaultHandshakeTimeout,
			ConnRatePerIP:              gateway.DefaultConnRatePerIP,
			ConnBurstPerIP:             gateway.DefaultConnBurstPerIP,
		},
		// Empty, not nil: what `policy_allow_builtins: []` reads as.
		PolicyAllowBuiltins:   []string{},
		DecisionCacheMaxBytes: policy.DefaultCacheMaxBytes,
		// A revoked identity's words should not outlive it.
		ClearRetainedOnRevoke: true,
		// Empty, not nil, as above.
		Identity: IdentityConfig{Source: IdentityBuiltin, BootstrapAdmins: []string{}},
		Federation: FederationConfig{
			BundleEndpoint:    &bundleEndpoint,
			BundleRefreshHint: DefaultBundleRefreshHint,
			TrustDomains:      []FederatedDomainConfig{},
		},
	}
}

// EffectivePolicyDir is the policy directory the gateway uses: PolicyDir,
// or DataDir/policies when it is empty.
func (c Config) EffectivePolicyDir() string {
	if c.PolicyDir != "" {
		return c.PolicyDir
	}
	return filepath.Join(c.DataDir, PolicySubdir)
}

// LoadConfig reads a YAML configuration file. Keys missing from the file keep
// their defaults; an unknown key is an error that names it, so that a typo
// never silently falls back to a default.
func LoadConfig(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("app: read config: %w", err)
	}
	cfg, err := parseConfig(raw)
	if err != nil {
		return Config{}, fmt.Errorf("app: config %s: %w", path, err)
	}
	return cfg, nil
}

func parseConfig(raw []byte) (Config, error) {
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, yamlError(raw, err)
	}
	// A second document would be silently ignored; refuse it instead.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("more than one YAML document")
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)
	lineRE         = regexp.MustCompile(`^line (\d+): `)
)

// yamlError turns yaml.v3's multi-line type errors into one line that names
// the offending key.
func yamlError(raw []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		if sm := unknownFieldRE.FindStringSubmatch(m); sm != nil {
			key := sm[2]
			// A nested key is named with its parent: decision_log.pth.
			if n, err := strconv.Atoi(sm[1]); err == nil {
				if top := keyAtLine(raw, n); top != "" && top != key {
					key = top + "." + key
				}
			}
			m = fmt.Sprintf("line %s: unknown key %q", sm[1], key)
		} else if sm := lineRE.FindStringSubmatch(m); sm != nil {
			if n, err := strconv.Atoi(sm[1]); err == nil {
				if key := keyAtLine(raw, n); key != "" {
					m = fmt.Sprintf("line %d: %s: %s", n, key, strings.TrimPrefix(m, sm[0]))
				}
			}
		}
		msgs = append(msgs, m)
	}
	return errors.New(strings.Join(msgs, "; "))
}

// keyAtLine is the top-level key whose value spans line n, for error
// messages; "" when there is none.
func keyAtLine(raw []byte, n int) string {
	var doc yaml.Node
	if yaml.Unmarshal(raw, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return ""
	}
	m := doc.Content[0]
	key := ""
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Line > n {
			break
		}
		key = m.Content[i].Value
	}
	return key
}

// Validate reports the first problem with c, naming the key.
func (c Config) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("app: %w", err)
	}
	return nil
}

func (c Config) validate() error {
	if strings.TrimSpace(c.DataDir) == "" {
		return errors.New("data_dir is empty")
	}
	if err := validateAddr(c.MQTTAddr); err != nil {
		return fmt.Errorf("mqtt_addr: %w", err)
	}
	if err := validateAddr(c.APIAddr); err != nil {
		return fmt.Errorf("api_addr: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return fmt.Errorf("trust_domain %q: %w", c.TrustDomain, err)
	}
	if td.Name() != c.TrustDomain {
		// TrustDomainFromString also takes a SPIFFE ID; a config names the
		// trust domain itself.
		return fmt.Errorf("trust_domain %q: want a bare trust domain name such as %q", c.TrustDomain, td.Name())
	}
	for _, n := range c.ServerNames {
		if err := validateServerName(n); err != nil {
			return fmt.Errorf("server_names: %w", err)
		}
	}
	if c.SVIDTTL <= 0 {
		return fmt.Errorf("svid_ttl must be positive, got %s", c.SVIDTTL)
	}
	if c.PolicyTimeout < 0 {
		return fmt.Errorf("policy_timeout must not be negative, got %s", c.PolicyTimeout)
	}
	if err := policy.CheckAllowBuiltins(c.PolicyAllowBuiltins); err != nil {
		return fmt.Errorf("policy_allow_builtins: %w", err)
	}
	if c.DecisionCacheMaxBytes < minCacheBytes {
		return fmt.Errorf("decision_cache_max_bytes must be at least %d, got %d", minCacheBytes, c.DecisionCacheMaxBytes)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log_format %q: want text or json", c.LogFormat)
	}
	dl := c.DecisionLog
	if math.IsNaN(dl.SampleAllow) || dl.SampleAllow < 0 || dl.SampleAllow > 1 {
		return fmt.Errorf("decision_log.sample_allow must be between 0 and 1, got %v", dl.SampleAllow)
	}
	if dl.MaxSizeMB <= 0 {
		return fmt.Errorf("decision_log.max_size_mb must be positive, got %d", dl.MaxSizeMB)
	}
	if dl.MaxBackups < 0 {
		return fmt.Errorf("decision_log.max_backups must not be negative, got %d", dl.MaxBackups)
	}
	if dl.AggregateInterval < 0 {
		return fmt.Errorf("decision_log.aggregate_interval must not be negative, got %s", dl.AggregateInterval)
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if err := c.Storage.validate(); err != nil {
		return err
	}
	own := spiffeid.RequireTrustDomainFromString(c.TrustDomain)
	if err := c.Identity.validate(); err != nil {
		return err
	}
	if err := c.Federation.validate(own, c.Identity.Source); err != nil {
		return err
	}
	if err := c.Identity.validateAdmins(c.ServedTrustDomains()); err != nil {
		return err
	}
	if err := c.Cluster.validate(c.ServedTrustDomains()); err != nil {
		return err
	}
	if c.Cluster != nil && c.Limits.MaxPacketSize > maxClusterPacket {
		// A PUBLISH crosses nodes as one NATS message with its envelope.
		return fmt.Errorf("limits.max_packet_size %d: at most %d in cluster mode", c.Limits.MaxPacketSize, maxClusterPacket)
	}
	if err := bridge.ValidateAll(c.Bridges); err != nil {
		return fmt.Errorf("bridges: %w", err)
	}
	return nil
}

// maxClusterPacket leaves room in a NATS message for the envelope of a
// message between nodes.
const maxClusterPacket = cluster.MaxPayload - 1<<20

// ServedTrustDomains are the trust domains whose SVIDs the gateway accepts:
// its own, then the federated ones in the order of the configuration. The
// configuration must be valid.
func (c Config) ServedTrustDomains() []spiffeid.TrustDomain {
	tds := []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString(c.TrustDomain)}
	for _, fd := range c.Federation.TrustDomains {
		tds = append(tds, spiffeid.RequireTrustDomainFromString(fd.TrustDomain))
	}
	return tds
}

// validate checks the source and that the keys given are the source's: a
// key of another source would be ignored, which is never what was meant.
func (id IdentityConfig) validate() error {
	keys := []struct {
		key, value, source string
	}{
		{"ca_dir", id.CADir, IdentityBuiltin},
		{"cert_file", id.CertFile, IdentityFiles},
		{"key_file", id.KeyFile, IdentityFiles},
		{"bundle_file", id.BundleFile, IdentityFiles},
		{"workload_api_socket", id.WorkloadAPISocket, IdentityWorkloadAPI},
	}
	switch id.Source {
	case IdentityBuiltin, IdentityFiles, IdentityWorkloadAPI:
	default:
		return fmt.Errorf("identity.source %q: want builtin, files or workload_api", id.Source)
	}
	for _, k := range keys {
		switch {
		case k.source != id.Source && k.value != "":
			return fmt.Errorf("identity.%s is for identity.source %s only, not %s", k.key, k.source, id.Source)
		case k.source == id.Source && k.source != IdentityBuiltin && strings.TrimSpace(k.value) == "":
			return fmt.Errorf("identity.%s is required with identity.source %s", k.key, id.Source)
		}
	}
	if id.Source == IdentityWorkloadAPI {
		if err := workloadapi.ValidateAddress(id.WorkloadAPISocket); err != nil {
			return fmt.Errorf("identity.workload_api_socket %q: %w; want unix:///path/to/agent.sock or tcp://IP:PORT",
				id.WorkloadAPISocket, err)
		}
	}
	return nil
}

// validateAdmins checks that each bootstrap admin is a SPIFFE ID with a
// path in a trust domain the gateway serves: another could never connect.
func (id IdentityConfig) validateAdmins(served []spiffeid.TrustDomain) error {
	seen := map[spiffeid.ID]bool{}
	for i, raw := range id.BootstrapAdmins {
		key := fmt.Sprintf("identity.bootstrap_admins[%d]", i)
		sid, err := spiffeid.FromString(raw)
		switch {
		case err != nil:
			return fmt.Errorf("%s %q: %w", key, raw, err)
		case sid.Path() == "":
			return fmt.Errorf("%s %q: no path; an admin is a workload, not a trust domain", key, raw)
		case !slices.Contains(served, sid.TrustDomain()):
			return fmt.Errorf("%s %q: trust domain %q is not served (trust_domain or federation.trust_domains)",
				key, raw, sid.TrustDomain().Name())
		case seen[sid]:
			return fmt.Errorf("%s: %s is listed twice", key, sid)
		}
		seen[sid] = true
	}
	return nil
}

// validate checks the federation against the own trust domain and the
// identity source, which decides whether a domain may come without a URL.
func (f FederationConfig) validate(own spiffeid.TrustDomain, source string) error {
	if f.BundleRefreshHint < time.Second {
		return fmt.Errorf("federation.bundle_refresh_hint must be at least 1s, got %s", f.BundleRefreshHint)
	}
	seen := map[spiffeid.TrustDomain]bool{}
	for i, fd := range f.TrustDomains {
		key := fmt.Sprintf("federation.trust_domains[%d]", i)
		td, err := spiffeid.TrustDomainFromString(fd.TrustDomain)
		switch {
		case err != nil:
			return fmt.Errorf("%s.trust_domain %q: %w", key, fd.TrustDomain, err)
		case td.Name() != fd.TrustDomain:
			return fmt.Errorf("%s.trust_domain %q: want a bare trust domain name such as %q", key, fd.TrustDomain, td.Name())
		case td == own:
			return fmt.Errorf("%s.trust_domain %q is the gateway's own trust domain", key, fd.TrustDomain)
		case seen[td]:
			return fmt.Errorf("%s.trust_domain %q is listed twice", key, fd.TrustDomain)
		}
		seen[td] = true
		if err := fd.validate(key, td, source); err != nil {
			return err
		}
	}
	return nil
}

func (fd FederatedDomainConfig) validate(key string, td spiffeid.TrustDomain, source string) error {
	if fd.RefreshInterval < 0 || fd.RefreshInterval > 0 && fd.RefreshInterval < time.Second {
		return fmt.Errorf("%s.refresh_interval must be 0 (the bundle's hint) or at least 1s, got %s", key, fd.RefreshInterval)
	}
	if fd.URL == "" {
		if source != IdentityWorkloadAPI {
			return fmt.Errorf("%s.url is required unless identity.source is workload_api (whose agent hands over the bundle)", key)
		}
		for _, k := range []struct{ key, value string }{
			{"profile", fd.Profile}, {"endpoint_spiffe_id", fd.EndpointSPIFFEID},
			{"bundle_file", fd.BundleFile}, {"ca_file", fd.CAFile},
		} {
			if k.value != "" {
				return fmt.Errorf("%s.%s is for a url only; without one the Workload API hands over the bundle", key, k.key)
			}
		}
		if fd.RefreshInterval != 0 {
			return fmt.Errorf("%s.refresh_interval is for a url only", key)
		}
		return nil
	}
	u, err := url.Parse(fd.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
		return fmt.Errorf("%s.url %q: want an https:// URL", key, fd.URL)
	}
	switch fd.Profile {
	case ProfileHTTPSWeb:
		if fd.EndpointSPIFFEID != "" {
			return fmt.Errorf("%s.endpoint_spiffe_id is for profile https_spiffe only", key)
		}
		if fd.BundleFile != "" {
			return fmt.Errorf("%s.bundle_file is for profile https_spiffe only", key)
		}
	case ProfileHTTPSSPIFFE:
		if fd.CAFile != "" {
			return fmt.Errorf("%s.ca_file is for profile https_web only", key)
		}
		if fd.EndpointSPIFFEID == "" {
			return fmt.Errorf("%s.endpoint_spiffe_id is required with profile https_spiffe", key)
		}
		eid, err := spiffeid.FromString(fd.EndpointSPIFFEID)
		if err != nil {
			return fmt.Errorf("%s.endpoint_spiffe_id %q: %w", key, fd.EndpointSPIFFEID, err)
		}
		if !eid.MemberOf(td) {
			return fmt.Errorf("%s.endpoint_spiffe_id %q: not in trust domain %q", key, fd.EndpointSPIFFEID, td.Name())
		}
		// The first fetch is authenticated with this bundle; without it
		// the endpoint could not be trusted at all.
		if strings.TrimSpace(fd.BundleFile) == "" {
			return fmt.Errorf("%s.bundle_file is required with profile https_spiffe (the partner's bundle that authenticates the first fetch)", key)
		}
	default:
		return fmt.Errorf("%s.profile %q: want https_web or https_spiffe", key, fd.Profile)
	}
	return nil
}

// minCacheBytes is the smallest decision_cache_max_bytes: a sixty-fourth of
// it, the largest decision kept, still holds a long topic.
const minCacheBytes = 1 << 20

func validateAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port", addr)
	}
	if host != "" && net.ParseIP(host) == nil && validateDNSName(host) != nil {
		return fmt.Errorf("%q: bad host %q", addr, host)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: bad port %q", addr, port)
	}
	return nil
}

func validateServerName(n string) error {
	if net.ParseIP(n) != nil {
		return nil
	}
	if err := validateDNSName(n); err != nil {
		return fmt.Errorf("%q: %w", n, err)
	}
	return nil
}

// validateDNSName accepts host names as they may appear in a certificate's
// DNS SAN: labels of letters, digits and hyphens.
func validateDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return errors.New("not a DNS name or IP address")
	}
	for _, label := range strings.Split(strings.TrimSuffix(n, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("not a DNS name or IP address")
		}
		for _, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-'
			if !ok {
				return errors.New("not a DNS name or IP address")
			}
		}
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
}

// NewLogger builds the logger c describes, writing to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	level, err := parseLevel(c.LogLevel)
	if err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
