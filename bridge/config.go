package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ztgate/ztgate/policy"
)

// Defaults and limits of a bridge's configuration.
const (
	DefaultPort             = "8883"
	DefaultProtocolVersion  = 5
	DefaultQueueMaxMessages = 100_000
	MaxQueueMaxMessages     = 10_000_000
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Config is one bridge to an upstream broker, as the YAML config's
// bridges: list has it.
type Config struct {
	Name             string    `yaml:"name" json:"name"`
	URL              string    `yaml:"url" json:"url"`
	CAFile           string    `yaml:"ca_file" json:"ca_file,omitempty"`
	CertFile         string    `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile          string    `yaml:"key_file" json:"key_file,omitempty"`
	ClientID         string    `yaml:"client_id" json:"client_id,omitempty"`
	ProtocolVersion  int       `yaml:"protocol_version" json:"protocol_version,omitempty"`
	Out              []OutRule `yaml:"out" json:"out,omitempty"`
	In               []InRule  `yaml:"in" json:"in,omitempty"`
	QueueMaxMessages int       `yaml:"queue_max_messages" json:"queue_max_messages,omitempty"`
}

// OutRule forwards local topics matching Filter upstream as
// RemotePrefix+topic, with at most QoS.
type OutRule struct {
	Filter       string `yaml:"filter" json:"filter"`
	RemotePrefix string `yaml:"remote_prefix" json:"remote_prefix,omitempty"`
	QoS          byte   `yaml:"qos" json:"qos"`
}

// InRule subscribes upstream to Filter with QoS and publishes what arrives
// locally with StripPrefix removed.
type InRule struct {
	Filter      string `yaml:"filter" json:"filter"`
	StripPrefix string `yaml:"strip_prefix" json:"strip_prefix,omitempty"`
	QoS         byte   `yaml:"qos" json:"qos"`
}

// Validate checks c and reports the first problem as a one-line error. It
// does not change c; withDefaults fills the defaults it accepts.
func (c Config) Validate() error {
	if err := c.validate(); err != nil {
		name := c.Name
		if name == "" {
			name = "(unnamed)"
		}
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	return nil
}

func (c Config) validate() error {
	if !nameRE.MatchString(c.Name) {
		return fmt.Errorf("name %q: want lower-case letters, digits, '-' and '_', 1 to 63, starting with a letter or digit", c.Name)
	}
	if _, err := parseURL(c.URL); err != nil {
		return err
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("cert_file and key_file: set both or neither")
	}
	switch c.ProtocolVersion {
	case 0, 4, 5:
	default:
		return fmt.Errorf("protocol_version %d: want 4 (MQTT 3.1.1) or 5", c.ProtocolVersion)
	}
	if c.ClientID != "" && (len(c.ClientID) > 65535 || strings.IndexByte(c.ClientID, 0) >= 0) {
		return errors.New("client_id: too long or contains NUL")
	}
	switch {
	case c.QueueMaxMessages < 0:
		return fmt.Errorf("queue_max_messages %d: must not be negative", c.QueueMaxMessages)
	case c.QueueMaxMessages > MaxQueueMaxMessages:
		return fmt.Errorf("queue_max_messages %d: at most %d", c.QueueMaxMessages, MaxQueueMaxMessages)
	}
	if len(c.Out) == 0 && len(c.In) == 0 {
		return errors.New("no out and no in rules: the bridge would carry nothing")
	}
	for i, r := range c.Out {
		if err := checkRule(r.Filter, r.QoS, "remote_prefix", r.RemotePrefix); err != nil {
			return fmt.Errorf("out[%d]: %w", i, err)
		}
	}
	for i, r := range c.In {
		if err := checkRule(r.Filter, r.QoS, "strip_prefix", r.StripPrefix); err != nil {
			return fmt.Errorf("in[%d]: %w", i, err)
		}
	}
	return nil
}

// checkRule checks one out or in rule. QoS 2 is refused because the queue
// gives at-least-once delivery: exactly-once across a restart would need
// the upstream session's state on disk as well, and promising it without
// that would be a lie.
func checkRule(filter string, qos byte, prefixKey, prefix string) error {
	if !policy.ValidTopicFilter(filter) {
		return fmt.Errorf("filter %q: not a valid MQTT topic filter", filter)
	}
	if first, _, _ := strings.Cut(filter, "/"); strings.EqualFold(first, "$share") {
		return fmt.Errorf("filter %q: shared subscriptions are not supported", filter)
	}
	if qos > 1 {
		return fmt.Errorf("qos %d: want 0 or 1 (QoS 2 is not offered: the queue delivers at least once)", qos)
	}
	if strings.ContainsAny(prefix, "+#\x00") {
		return fmt.Errorf("%s %q: must not contain '+', '#' or NUL", prefixKey, prefix)
	}
	return nil
}

// withDefaults returns c with the defaults filled in.
func (c Config) withDefaults() Config {
	if c.ProtocolVersion == 0 {
		c.ProtocolVersion = DefaultProtocolVersion
	}
	if c.QueueMaxMessages == 0 {
		c.QueueMaxMessages = DefaultQueueMaxMessages
	}
	if c.ClientID == "" {
		c.ClientID = "ztgate-" + c.Name
	}
	return c
}

// ValidateAll validates every bridge and that their names are unique.
func ValidateAll(cfgs []Config) error {
	seen := make(map[string]bool, len(cfgs))
	for _, c := range cfgs {
		if err := c.Validate(); err != nil {
			return err
		}
		if seen[c.Name] {
			return fmt.Errorf("bridge %s: name used by two bridges", c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

// parseURL accepts mqtts://host[:port] only and returns host:port. No other
// scheme: a bridge is TLS or nothing, and ws:// is not offered.
func parseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("url %q: %w", raw, err)
	}
	switch {
	case u.Scheme != "mqtts":
		return "", fmt.Errorf("url %q: want mqtts://host:port (TLS only)", raw)
	case u.User != nil:
		return "", fmt.Errorf("url %q: no user info: the bridge authenticates with its client certificate", raw)
	case u.Hostname() == "":
		return "", fmt.Errorf("url %q: no host", raw)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return "", fmt.Errorf("url %q: want mqtts://host:port with no path or query", raw)
	}
	port := u.Port()
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return "", fmt.Errorf("url %q: empty port", raw)
		}
		port = DefaultPort
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("url %q: port %q out of range", raw, port)
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// validShareName reports whether s may be part of a client ID and of a
// shared subscription's group name: no topic level separator or wildcard.
func validShareName(s string) bool {
	return s != "" && len(s) <= 64 && utf8.ValidString(s) && !strings.ContainsAny(s, "/+#\x00")
}
