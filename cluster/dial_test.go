package cluster

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

func TestCheckNATSURL(t *testing.T) {
	tests := []struct {
		url     string
		tls     bool
		wantErr string
	}{
		{"nats://127.0.0.1:4222", false, ""},
		{"nats://[::1]:4222, nats://127.0.0.2:4222", false, ""},
		{"tls://nats.example.com:4222", true, ""},
		{"", false, "nats_url is empty"},
		{"nats://nats.example.com:4222", false, "allowed only to a loopback IP"},
		{"nats://10.0.0.1:4222", true, "allowed only to a loopback IP"},
		{"tls://nats.example.com:4222", false, "needs a TLS configuration"},
		{"ws://127.0.0.1:4222", false, `scheme "ws"`},
		{"127.0.0.1:4222", false, "want nats://host:port"},
		{"nats://user:secret@10.0.0.1:4222", false, "xxxxx"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			err := checkNATSURL(tt.url, tt.tls)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
	if _, err := Dial(context.Background(), DialConfig{URL: "nats://127.0.0.1:1", TLS: &tls.Config{}}); err == nil || !strings.Contains(err.Error(), "node is empty") {
		t.Fatalf("Dial without a node name: %v", err)
	}
}

// A node on an external NATS gets a working JetStream handle and the same
// readiness wait as an embedded one.
func TestDialExternalNATS(t *testing.T) {
	ports := freeLoopbackPorts(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := StartNode(ctx, NodeConfig{Name: "c", Node: "a", Listen: ports[0], Peers: ports[1:], DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := strings.Replace(srv.srv.ClientURL(), "nats://", "nats://"+srv.token+"@", 1)
	n, err := Dial(ctx, DialConfig{URL: url, Node: "ext"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.Name() != "ext" || n.Peers() != nil || n.ClusterAddr() != nil {
		t.Fatalf("external node: name %q peers %v addr %v", n.Name(), n.Peers(), n.ClusterAddr())
	}
	if err := n.Conn().Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
}
