package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/buildinfo"
)

func TestVersionCommand(t *testing.T) {
	// What -ldflags -X sets is what the command prints.
	oldV, oldC := buildinfo.Version, buildinfo.Commit
	t.Cleanup(func() { buildinfo.Version, buildinfo.Commit = oldV, oldC })
	buildinfo.Version, buildinfo.Commit = "v1.2.3", "0123456789abcdef0123456789abcdef01234567"

	out := ok(t, "version")
	for _, want := range []string{"version: v1.2.3\n", "commit:  0123456789abcdef0123456789abcdef01234567\n", "go:      " + runtime.Version() + "\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("version output lacks %q:\n%s", want, out)
		}
	}
	var info map[string]any
	if err := json.Unmarshal([]byte(ok(t, "version", "--json")), &info); err != nil {
		t.Fatal(err)
	}
	if info["version"] != "v1.2.3" || info["commit"] != "0123456789abcdef0123456789abcdef01234567" ||
		info["go_version"] != runtime.Version() || info["platform"] != runtime.GOOS+"/"+runtime.GOARCH {
		t.Fatalf("version --json = %v", info)
	}

	// Unset, the build's own information or the placeholders fill in;
	// never an empty field.
	buildinfo.Version, buildinfo.Commit = "", ""
	if err := json.Unmarshal([]byte(ok(t, "version", "--json")), &info); err != nil {
		t.Fatal(err)
	}
	if info["version"] == "" || info["commit"] == "" {
		t.Fatalf("version --json without ldflags = %v", info)
	}
}

// TestCompletionScripts: each shell gets its script, and where the shell
// is installed, the script parses.
func TestCompletionScripts(t *testing.T) {
	for _, tc := range []struct {
		shell, marker string
		check         []string // a syntax check, run if the shell is installed
	}{
		{"bash", "__start_ztgate", []string{"bash", "-n"}},
		{"zsh", "#compdef ztgate", []string{"zsh", "-n"}},
		{"fish", "complete -c ztgate", []string{"fish", "--no-execute"}},
	} {
		t.Run(tc.shell, func(t *testing.T) {
			out := ok(t, "completion", tc.shell)
			if !strings.Contains(out, tc.marker) || !strings.Contains(out, "__complete") {
				t.Fatalf("completion %s lacks %q:\n%.300s", tc.shell, tc.marker, out)
			}
			if _, err := exec.LookPath(tc.check[0]); err != nil {
				t.Logf("%s not installed: syntax not checked", tc.check[0])
				return
			}
			script := filepath.Join(t.TempDir(), "ztgate."+tc.shell)
			if err := os.WriteFile(script, []byte(out), 0o600); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(tc.check[0], append(tc.check[1:], script)...).CombinedOutput(); err != nil {
				t.Fatalf("%s does not parse the script: %v\n%s", tc.check[0], err, b)
			}
		})
	}
	// The hidden command the scripts call answers with the commands.
	r := ztgate(t, nil, "", "__complete", "dev")
	if r.code != 0 || !strings.Contains(r.stdout, "device") {
		t.Fatalf("__complete dev: %+v", r)
	}
}

// TestStartLogHasVersion: the start log line of a gateway says which build
// runs.
func TestStartLogHasVersion(t *testing.T) {
	oldV, oldC := buildinfo.Version, buildinfo.Commit
	buildinfo.Version, buildinfo.Commit = "v1.2.3", "feedface"
	// Restored after the gateway stopped (cleanups run last-in first-out).
	t.Cleanup(func() { buildinfo.Version, buildinfo.Commit = oldV, oldC })

	b := runInBackground(t, "dev", "--data-dir", filepath.Join(t.TempDir(), "data"), "--mqtt-addr", "127.0.0.1:0",
		"--api-addr", "127.0.0.1:0", "--log-level", "info")
	b.waitFor(t, "stop:")
	b.stop(t)
	var started string
	for _, l := range strings.Split(b.errb.String(), "\n") {
		if strings.Contains(l, "ztgate started") {
			started = l
		}
	}
	if !strings.Contains(started, "version=v1.2.3") || !strings.Contains(started, "commit=feedface") {
		t.Fatalf("start log line %q lacks version=v1.2.3 commit=feedface; log:\n%s", started, b.errb.String())
	}
}
