package app

import (
	"strings"
	"testing"
)

func TestClusterConfigValidate(t *testing.T) {
	base := func() *ClusterConfig {
		return &ClusterConfig{Name: "ztgate", Node: "a", Listen: "0.0.0.0:6222", Peers: []string{"ztgate-b:6222", "ztgate-c:6222"}}
	}
	tests := []struct {
		name    string
		mutate  func(c *ClusterConfig)
		wantErr string
	}{
		{"valid embedded", func(*ClusterConfig) {}, ""},
		{"valid external", func(c *ClusterConfig) { c.Listen, c.Peers, c.NATSURL = "", nil, "tls://nats:4222" }, ""},
		{"valid peer ids", func(c *ClusterConfig) { c.PeerIDs = []string{"spiffe://example.org/ztgate/b"} }, ""},
		{"empty name", func(c *ClusterConfig) { c.Name = "" }, "cluster.name is empty"},
		{"node with a dot", func(c *ClusterConfig) { c.Node = "a.b" }, `cluster.node "a.b"`},
		{"node empty", func(c *ClusterConfig) { c.Node = "" }, `cluster.node ""`},
		{"node upper case", func(c *ClusterConfig) { c.Node = "A" }, `cluster.node "A"`},
		{"no listen", func(c *ClusterConfig) { c.Listen = "" }, "set listen and peers"},
		{"no peers", func(c *ClusterConfig) { c.Peers = nil }, "cluster.peers is empty"},
		{"both", func(c *ClusterConfig) { c.NATSURL = "tls://nats:4222" }, "nats_url excludes listen and peers"},
		{"ca file embedded", func(c *ClusterConfig) { c.NATSCAFile = "ca.pem" }, "only for nats_url"},
		{"ca file missing", func(c *ClusterConfig) {
			c.Listen, c.Peers, c.NATSURL, c.NATSCAFile = "", nil, "tls://n:4222", "/nonexistent/ca.pem"
		}, "cluster.nats_ca_file"},
		{"replicas 2", func(c *ClusterConfig) { c.Replicas = 2 }, "want 1, 3 or 5"},
		{"replicas over nodes", func(c *ClusterConfig) { c.Replicas = 5 }, "more than the 3 nodes"},
		{"replicas default two nodes", func(c *ClusterConfig) { c.Peers = c.Peers[:1] }, "want 1, 3 or 5"},
		{"negative start timeout", func(c *ClusterConfig) { c.StartTimeout = -1 }, "start_timeout must not be negative"},
		{"peer id not spiffe", func(c *ClusterConfig) { c.PeerIDs = []string{"https://x"} }, "cluster.peer_ids[0]"},
		{"packet too large for a node", func(*ClusterConfig) {}, "at most 3145728 in cluster mode"},
		{"peer id other td", func(c *ClusterConfig) { c.PeerIDs = []string{"spiffe://other.example/ztgate"} }, "not in the gateway's trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Cluster = base()
			tt.mutate(cfg.Cluster)
			if tt.name == "packet too large for a node" {
				cfg.Limits.MaxPacketSize = 4 << 20
			}
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// An unknown key of the section is an error naming it, as everywhere.
func TestClusterConfigParse(t *testing.T) {
	cfg, err := parseConfig([]byte("cluster:\n  name: z\n  node: b\n  listen: 127.0.0.1:6222\n  peers: [127.0.0.1:6223, 127.0.0.1:6224]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster == nil || cfg.Cluster.Node != "b" || cfg.Cluster.EffectiveReplicas() != 3 || cfg.Cluster.EffectiveStartTimeout() != DefaultClusterStartTimeout {
		t.Fatalf("cluster = %+v", cfg.Cluster)
	}
	if _, err := parseConfig([]byte("cluster:\n  nodes: b\n")); err == nil || !strings.Contains(err.Error(), "nodes") {
		t.Fatalf("unknown key: %v", err)
	}
	if cfg, err := parseConfig([]byte("log_level: info\n")); err != nil || cfg.Cluster != nil {
		t.Fatalf("no cluster section: %+v, %v", cfg.Cluster, err)
	}
}
