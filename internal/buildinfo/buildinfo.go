// Package buildinfo says which build of ztgate is running: its version and
// the commit it was built from.
//
// A release build sets both with the linker:
//
//	go build -ldflags "-X github.com/ztgate/ztgate/internal/buildinfo.Version=v1.2.3 \
//	  -X github.com/ztgate/ztgate/internal/buildinfo.Commit=$(git rev-parse HEAD)"
//
// Without them, what the Go toolchain recorded fills in: the module version
// of `go install github.com/ztgate/ztgate/cmd/ztgate@v1.2.3`, the VCS
// revision of a build in a checkout.
package buildinfo

import (
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by -ldflags -X; empty when the build did not set them.
var (
	Version string
	Commit  string
)

// Placeholders for what no source could tell.
const (
	DevVersion    = "dev"
	UnknownCommit = "unknown"
)

// Info is what is known of the running build.
type Info struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	// Modified says the checkout had uncommitted changes: the commit alone
	// does not reproduce this build.
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"` // GOOS/GOARCH
}

// Get returns the running build's information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(Version, Commit, bi)
}

// resolve prefers what the linker set, then what the toolchain recorded in
// bi (nil when nothing was), then the placeholders, so that no field is
// ever empty.
func resolve(version, commit string, bi *debug.BuildInfo) Info {
	out := Info{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		if bi.GoVersion != "" {
			out.GoVersion = bi.GoVersion
		}
		// "(devel)" is what a build without a version says.
		if out.Version == "" && bi.Main.Version != "(devel)" {
			out.Version = bi.Main.Version
		}
		if out.Commit == "" {
			out.Commit, out.Modified = vcsRevision(bi)
		}
		if out.Commit == "" {
			out.Commit = pseudoVersionRev(bi.Main.Version)
		}
	}
	if out.Version == "" {
		out.Version = DevVersion
	}
	if out.Commit == "" {
		out.Commit = UnknownCommit
	}
	return out
}

// vcsRevision is the revision `go build` stamps in a checkout, and whether
// the tree had changes.
func vcsRevision(bi *debug.BuildInfo) (rev string, modified bool) {
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		modified = false
	}
	return rev, modified
}

// pseudoVersionRE matches the tail of a pseudo-version,
// vX.Y.Z-[pre.]yyyymmddhhmmss-abcdefabcdef, capturing the revision.
var pseudoVersionRE = regexp.MustCompile(`[.-]\d{14}-([0-9a-f]{12})$`)

// pseudoVersionRev is the commit prefix a pseudo-version carries (what
// `go install ...@COMMIT` records), or "".
func pseudoVersionRev(v string) string {
	v, _, _ = strings.Cut(v, "+")
	if m := pseudoVersionRE.FindStringSubmatch(v); m != nil {
		return m[1]
	}
	return ""
}
