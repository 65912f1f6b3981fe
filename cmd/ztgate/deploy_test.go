package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/ztgate/ztgate/internal/app"
)

// The packaging files are held to the code here, as no container engine
// or systemd runs the tests: each command line they run must parse in the
// command tree, and each configuration they ship must load.
const repoRoot = "../.."

// parsesAs checks that args is a command line ztgate accepts as far as it
// can be checked without running it, and returns the command it names.
func parsesAs(t *testing.T, args []string) *cobra.Command {
	t.Helper()
	c := &cli{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
	cmd, rest, err := c.newRootCmd().Find(args)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	if err := cmd.ValidateRequiredFlags(); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return cmd
}

// flagValue is the value args give the flag --name, or "".
func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// loadShipped loads and validates a configuration file shipped with the
// packaging.
func loadShipped(t *testing.T, path string) app.Config {
	t.Helper()
	cfg, err := app.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cfg
}

// checkHealthcheckArgs checks a HEALTHCHECK command line: it is `ztgate
// healthcheck --config FILE` where FILE is cfgPath in the container, and
// what it would probe (loopback, the CA in the data dir) follows from cfg.
func checkHealthcheckArgs(t *testing.T, args []string, cfgPath string, cfg app.Config) {
	t.Helper()
	if len(args) < 2 || args[0] != "/ztgate" {
		t.Fatalf("healthcheck runs %q, want /ztgate healthcheck ...", args)
	}
	if cmd := parsesAs(t, args[1:]); cmd.Name() != "healthcheck" {
		t.Fatalf("%q runs %q, not healthcheck", args, cmd.Name())
	}
	if got := flagValue(args, "config"); got != cfgPath {
		t.Fatalf("healthcheck --config %q, want %q (the file serve runs with)", got, cfgPath)
	}
	target, ca, err := healthTarget(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(target, "https://127.0.0.1:") || !strings.HasPrefix(ca, cfg.DataDir+"/") {
		t.Fatalf("healthcheck would probe %s with the CA %s", target, ca)
	}
}

func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Continuation lines joined, as the parser reads them.
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	for _, want := range []string{
		"ARG VERSION=", "ARG COMMIT=",
		"-X github.com/ztgate/ztgate/internal/buildinfo.Version=${VERSION}",
		"-X github.com/ztgate/ztgate/internal/buildinfo.Commit=${COMMIT}",
		`org.opencontainers.image.version="${VERSION}"`, `org.opencontainers.image.revision="${COMMIT}"`,
		`org.opencontainers.image.source=`, `org.opencontainers.image.title=`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// The final stage redeclares the build args, or its labels are empty.
	final := text[strings.LastIndex(text, "\nFROM "):]
	if !strings.Contains(final, "ARG VERSION") || !strings.Contains(final, "ARG COMMIT") {
		t.Error("the final stage does not redeclare ARG VERSION and ARG COMMIT")
	}

	// The configuration baked into the image loads.
	m := regexp.MustCompile(`(?s)COPY <<'YAML' /out(/etc/ztgate/ztgate\.yaml)\n(.*?)\nYAML\n`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("no baked configuration in the Dockerfile")
	}
	cfgFile := filepath.Join(t.TempDir(), "ztgate.yaml")
	writeFile(t, cfgFile, m[2])
	cfg := loadShipped(t, cfgFile)
	if !strings.Contains(final, "VOLUME "+cfg.DataDir) {
		t.Errorf("the data dir %s is not the image's volume", cfg.DataDir)
	}

	hc := regexp.MustCompile(`(?m)^HEALTHCHECK (.*?)CMD (\[.*\])$`).FindStringSubmatch(final)
	if hc == nil {
		t.Fatal("no HEALTHCHECK ... CMD [...] in the final stage")
	}
	var args []string
	if err := json.Unmarshal([]byte(hc[2]), &args); err != nil {
		t.Fatalf("HEALTHCHECK CMD %s: %v", hc[2], err)
	}
	checkHealthcheckArgs(t, args, m[1], cfg)
	for _, opt := range []string{"--interval=", "--timeout=", "--start-period=", "--retries="} {
		if !strings.Contains(hc[1], opt) {
			t.Errorf("HEALTHCHECK without %s", opt)
		}
	}
	var entry, cmdArgs []string
	for _, l := range strings.Split(final, "\n") {
		if v, ok := strings.CutPrefix(l, "ENTRYPOINT "); ok {
			_ = json.Unmarshal([]byte(v), &entry)
		}
		if v, ok := strings.CutPrefix(l, "CMD "); ok {
			_ = json.Unmarshal([]byte(v), &cmdArgs)
		}
	}
	if len(entry) != 1 || entry[0] != "/ztgate" || parsesAs(t, cmdArgs).Name() != "serve" || flagValue(cmdArgs, "config") != m[1] {
		t.Fatalf("ENTRYPOINT %q CMD %q, want /ztgate serve --config %s", entry, cmdArgs, m[1])
	}
}

func TestComposeExample(t *testing.T) {
	dir := filepath.Join(repoRoot, "deploy", "compose")
	raw, err := os.ReadFile(filepath.Join(dir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image   string   `yaml:"image"`
			Command []string `yaml:"command"`
			Volumes []string `yaml:"volumes"`
			Ports   []string `yaml:"ports"`
			Build   struct {
				Args map[string]string `yaml:"args"`
			} `yaml:"build"`
			Healthcheck struct {
				Test     []string `yaml:"test"`
				Interval string   `yaml:"interval"`
			} `yaml:"healthcheck"`
			Restart string `yaml:"restart"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	svc, ok := compose.Services["ztgate"]
	if !ok {
		t.Fatal("compose.yaml has no service ztgate")
	}
	if svc.Image == "" || svc.Restart == "" {
		t.Errorf("service ztgate: image %q, restart %q", svc.Image, svc.Restart)
	}
	if _, ok := svc.Build.Args["VERSION"]; !ok {
		t.Error("the build does not pass VERSION")
	}

	// The config file it mounts exists and loads; its data dir is a named
	// volume declared at the top level.
	mounts := map[string]string{} // container path -> source
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			t.Fatalf("volume %q", v)
		}
		mounts[parts[1]] = parts[0]
	}
	if parsesAs(t, svc.Command).Name() != "serve" {
		t.Fatalf("command %q is not serve", svc.Command)
	}
	cfgPath := flagValue(svc.Command, "config")
	src, ok := mounts[cfgPath]
	if !ok || !strings.HasPrefix(src, "./") {
		t.Fatalf("the config %s is not mounted from a file next to compose.yaml: %v", cfgPath, svc.Volumes)
	}
	cfg := loadShipped(t, filepath.Join(dir, src))
	vol, ok := mounts[cfg.DataDir]
	if _, declared := compose.Volumes[vol]; !ok || !declared {
		t.Fatalf("data_dir %s is not a declared named volume: mounts %v, volumes %v", cfg.DataDir, svc.Volumes, compose.Volumes)
	}

	if len(svc.Healthcheck.Test) < 2 || svc.Healthcheck.Test[0] != "CMD" || svc.Healthcheck.Interval == "" {
		t.Fatalf("healthcheck %+v", svc.Healthcheck)
	}
	checkHealthcheckArgs(t, svc.Healthcheck.Test[1:], cfgPath, cfg)

	// The published ports are the configured listeners; the admin API only
	// on the host's loopback.
	_, mqttPort, _ := net.SplitHostPort(cfg.MQTTAddr)
	_, apiPort, _ := net.SplitHostPort(cfg.APIAddr)
	ports := strings.Join(svc.Ports, " ")
	if !strings.Contains(ports, mqttPort+":"+mqttPort) || !strings.Contains(ports, "127.0.0.1:"+apiPort+":"+apiPort) {
		t.Fatalf("ports %v, want MQTT %s and the API on 127.0.0.1:%s", svc.Ports, mqttPort, apiPort)
	}
}

// unitFile is a systemd unit: section -> key -> values (a key may repeat).
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not key=value in a section", path, n, l)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// last is the value of a key that systemd takes last, and whether it is set.
func (u unitFile) last(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

func TestSystemdUnit(t *testing.T) {
	dir := filepath.Join(repoRoot, "deploy", "systemd")
	unitPath := filepath.Join(dir, "ztgate.service")
	u := parseUnit(t, unitPath)
	for _, kv := range [][2]string{
		{"NoNewPrivileges", "yes"},
		{"CapabilityBoundingSet", ""},
		{"ProtectSystem", "strict"},
		{"StateDirectory", "ztgate"},
		{"Restart", "on-failure"},
		{"PrivateTmp", "yes"},
		{"ProtectHome", "yes"},
	} {
		if got, ok := u.last("Service", kv[0]); !ok || got != kv[1] {
			t.Errorf("[Service] %s=%q (set: %v), want %q", kv[0], got, ok, kv[1])
		}
	}
	dyn, _ := u.last("Service", "DynamicUser")
	user, _ := u.last("Service", "User")
	if dyn != "yes" && (user == "" || user == "root") {
		t.Errorf("the service runs as root: DynamicUser=%q User=%q", dyn, user)
	}
	if _, ok := u.last("Install", "WantedBy"); !ok {
		t.Error("no [Install] WantedBy")
	}

	start, _ := u.last("Service", "ExecStart")
	args := strings.Fields(start)
	if len(args) < 2 || !filepath.IsAbs(args[0]) || filepath.Base(args[0]) != "ztgate" || parsesAs(t, args[1:]).Name() != "serve" {
		t.Fatalf("ExecStart=%s, want /ABS/ztgate serve --config FILE", start)
	}
	// The config it runs with is the one shipped beside it: the data dir
	// is the StateDirectory, and with ports above 1024 no capability is
	// granted.
	cfgPath := flagValue(args, "config")
	if cfgPath != "/etc/ztgate/ztgate.yaml" {
		t.Fatalf("--config %s, want /etc/ztgate/ztgate.yaml (deploy/systemd/ztgate.yaml installed)", cfgPath)
	}
	cfg := loadShipped(t, filepath.Join(dir, "ztgate.yaml"))
	if cfg.DataDir != "/var/lib/ztgate" {
		t.Errorf("data_dir %s is not the StateDirectory /var/lib/ztgate", cfg.DataDir)
	}
	amb, _ := u.last("Service", "AmbientCapabilities")
	for _, addr := range []string{cfg.MQTTAddr, cfg.APIAddr} {
		_, p, _ := net.SplitHostPort(addr)
		if port, _ := strconv.Atoi(p); port < 1024 && amb != "CAP_NET_BIND_SERVICE" {
			t.Errorf("%s binds a port below 1024 without AmbientCapabilities=CAP_NET_BIND_SERVICE", addr)
		}
	}
	if amb != "" && amb != "CAP_NET_BIND_SERVICE" {
		t.Errorf("AmbientCapabilities=%s", amb)
	}

	// systemd's own check, where it is installed: no directive it does not
	// know or cannot parse. The binary is this test's, to exist.
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the unit was not verified by systemd")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "ztgate.service")
	writeFile(t, copyPath, strings.ReplaceAll(string(raw), args[0], self))
	out, _ := exec.Command(analyze, "verify", "--man=no", copyPath).CombinedOutput()
	if strings.Contains(string(out), copyPath) {
		t.Fatalf("systemd-analyze verify:\n%s", out)
	}
}
