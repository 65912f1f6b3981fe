package cluster

import (
	"crypto/tls"
	"strings"
	"testing"
)

func TestNodeConfigValidate(t *testing.T) {
	good := NodeConfig{Name: "c", Node: "a", Listen: "127.0.0.1:6222",
		Peers: []string{"127.0.0.1:6223", "[::1]:6224"}, DataDir: "d"}
	tests := []struct {
		name    string
		mutate  func(*NodeConfig)
		wantErr string // empty: valid
	}{
		{"valid", func(*NodeConfig) {}, ""},
		{"valid client listen", func(c *NodeConfig) { c.ClientListen = "127.0.0.1:0" }, ""},
		{"empty name", func(c *NodeConfig) { c.Name = "" }, "cluster: name is empty"},
		{"empty node", func(c *NodeConfig) { c.Node = "" }, "cluster: node is empty"},
		{"empty data dir", func(c *NodeConfig) { c.DataDir = "" }, "cluster: data dir is empty"},
		{"listen without port", func(c *NodeConfig) { c.Listen = "127.0.0.1" }, `cluster: listen "127.0.0.1": not host:port`},
		{"listen bad port", func(c *NodeConfig) { c.Listen = "127.0.0.1:99999" }, `bad port "99999"`},
		{"listen port zero", func(c *NodeConfig) { c.Listen = "127.0.0.1:0" }, "needs a fixed port"},
		{"listen not loopback", func(c *NodeConfig) { c.Listen = "0.0.0.0:6222" }, "must be a loopback IP"},
		{"listen any address with TLS", func(c *NodeConfig) { c.Listen = "0.0.0.0:6222"; c.TLS = &tls.Config{} }, ""},
		{"peer host name with TLS", func(c *NodeConfig) { c.Peers = []string{"ztgate-b:6222"}; c.TLS = &tls.Config{} }, ""},
		{"peer port zero with TLS", func(c *NodeConfig) { c.Peers = []string{"ztgate-b:0"}; c.TLS = &tls.Config{} }, "needs a fixed port"},
		{"listen host name", func(c *NodeConfig) { c.Listen = "localhost:6222" }, "must be a loopback IP"},
		{"peer equals listen", func(c *NodeConfig) { c.Peers = []string{"127.0.0.1:6222"} }, "own listen address"},
		{"peer equals listen other spelling", func(c *NodeConfig) { c.Listen = "[::1]:6222"; c.Peers = []string{"[0:0::1]:6222"} }, "own listen address"},
		{"no peers", func(c *NodeConfig) { c.Peers = nil }, "peers is empty"},
		{"peer twice", func(c *NodeConfig) { c.Peers = []string{"127.0.0.1:6223", "127.0.0.1:6223"} }, "listed twice"},
		{"peer not host:port", func(c *NodeConfig) { c.Peers = []string{"nats://x"} }, "cluster: peers[0]"},
		{"peer not loopback", func(c *NodeConfig) { c.Peers = []string{"10.0.0.1:6223"} }, "must be a loopback IP"},
		{"client listen not loopback", func(c *NodeConfig) { c.ClientListen = ":4222" }, "client listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			cfg.Peers = append([]string(nil), good.Peers...)
			tt.mutate(&cfg)
			err := cfg.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}
