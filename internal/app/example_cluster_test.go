package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestExampleClusterConfigs holds examples/cluster to the code: each
// node's file loads and validates, the nodes agree on the cluster and each
// lists the two others as peers, and compose.yaml mounts each file into
// the service its node name says.
func TestExampleClusterConfigs(t *testing.T) {
	dir := "../../examples/cluster"
	nodes := map[string]*ClusterConfig{}
	for _, n := range []string{"a", "b", "c"} {
		cfg, err := LoadConfig(filepath.Join(dir, n+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s.yaml: %v", n, err)
		}
		cc := cfg.Cluster
		if cc == nil || cc.Node != n || cc.Name != "ztgate" || cc.EffectiveReplicas() != 3 {
			t.Fatalf("%s.yaml: cluster = %+v", n, cc)
		}
		for _, m := range []string{"a", "b", "c"} {
			want := "ztgate-" + m + ":6222"
			if has := strings.Contains(strings.Join(cc.Peers, " "), want); has != (m != n) {
				t.Fatalf("%s.yaml: peers %v, %s listed: %v", n, cc.Peers, want, has)
			}
		}
		if len(cfg.ServerNames) != 1 || cfg.ServerNames[0] != "ztgate-"+n {
			t.Fatalf("%s.yaml: server_names %v", n, cfg.ServerNames)
		}
		nodes[n] = cc
	}

	raw, err := os.ReadFile(filepath.Join(dir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Volumes []string `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for n := range nodes {
		svc, ok := compose.Services["ztgate-"+n]
		if !ok {
			t.Fatalf("compose.yaml has no service ztgate-%s", n)
		}
		if !strings.Contains(strings.Join(svc.Volumes, " "), "./"+n+".yaml:/etc/ztgate/ztgate.yaml:ro") {
			t.Fatalf("service ztgate-%s does not mount %s.yaml: %v", n, n, svc.Volumes)
		}
	}
}
