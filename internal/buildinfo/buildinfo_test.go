package buildinfo

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	vcs := func(modified string) []debug.BuildSetting {
		s := []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}}
		if modified != "" {
			s = append(s, debug.BuildSetting{Key: "vcs.modified", Value: modified})
		}
		return s
	}
	info := func(version string, settings []debug.BuildSetting) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Path: "github.com/ztgate/ztgate", Version: version}, Settings: settings}
	}
	for _, tc := range []struct {
		name     string
		ldV, ldC string
		bi       *debug.BuildInfo
		want     Info
	}{
		{"ldflags win", "v1.2.3", "abc", info("v0.0.0-20260101000000-0123456789ab+dirty", vcs("true")),
			Info{Version: "v1.2.3", Commit: "abc", GoVersion: "go1.99"}},
		{"go install @version", "", "", info("v1.4.0", nil),
			Info{Version: "v1.4.0", Commit: "unknown", GoVersion: "go1.99"}},
		{"go install @pseudo-version", "", "", info("v0.0.0-20260101000000-0123456789ab", nil),
			Info{Version: "v0.0.0-20260101000000-0123456789ab", Commit: "0123456789ab", GoVersion: "go1.99"}},
		{"checkout, clean", "", "", info("(devel)", vcs("false")),
			Info{Version: "dev", Commit: rev, GoVersion: "go1.99"}},
		{"checkout, modified", "", "", info("v0.0.0-20260101000000-0123456789ab+dirty", vcs("true")),
			Info{Version: "v0.0.0-20260101000000-0123456789ab+dirty", Commit: rev, Modified: true, GoVersion: "go1.99"}},
		{"version by ldflags, commit from vcs", "v2.0.0", "", info("(devel)", vcs("true")),
			Info{Version: "v2.0.0", Commit: rev, Modified: true, GoVersion: "go1.99"}},
		{"nothing known", "", "", nil,
			Info{Version: "dev", Commit: "unknown", GoVersion: runtime.Version()}},
		{"empty build info", "", "", info("", nil),
			Info{Version: "dev", Commit: "unknown", GoVersion: "go1.99"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.want.Platform = runtime.GOOS + "/" + runtime.GOARCH
			if got := resolve(tc.ldV, tc.ldC, tc.bi); got != tc.want {
				t.Fatalf("resolve = %+v\nwant      %+v", got, tc.want)
			}
		})
	}
}

// TestLdflags builds a program with the -X flags the Dockerfile passes and
// checks it reports them: the variables' import path is part of the
// packaging contract.
func TestLdflags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	bin := filepath.Join(t.TempDir(), "printinfo")
	ld := "-X github.com/ztgate/ztgate/internal/buildinfo.Version=v9.8.7 -X github.com/ztgate/ztgate/internal/buildinfo.Commit=feedface"
	if out, err := exec.Command("go", "build", "-ldflags", ld, "-o", bin, "./testdata/printinfo").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "v9.8.7 feedface" {
		t.Fatalf("the program printed %q, want %q", got, "v9.8.7 feedface")
	}
}
