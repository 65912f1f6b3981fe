#!/usr/bin/env bash
# Builds spire-server and spire-agent at the SPIRE version that go.mod next
# to this script pins, for the SPIRE end-to-end test (test/spire_test.go).
#
# The binaries go to $ZTGATE_SPIRE_CACHE/<version>/bin (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/ztgate/spire/<version>/bin) and are built
# only when that directory is not complete: a cold build takes about ten
# minutes, a warm run nothing. The version is part of the path, so bumping
# SPIRE in go.mod builds the new version next to the old one.
#
# Prints the bin directory on stdout (and nothing else), progress and
# timing on stderr:
#   export ZTGATE_SPIRE_BIN=$(tools/spire/build.sh)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

version=$(awk '$1 == "github.com/spiffe/spire" { print $2; exit }' "$here/go.mod")
if [ -z "$version" ]; then
	echo "build.sh: no github.com/spiffe/spire requirement in $here/go.mod" >&2
	exit 1
fi

cache=${ZTGATE_SPIRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ztgate/spire}
dest="$cache/$version/bin"

complete() {
	[ -x "$1/spire-server" ] && [ -x "$1/spire-agent" ]
}

if complete "$dest"; then
	echo "build.sh: SPIRE $version already built in $dest" >&2
	echo "$dest"
	exit 0
fi

mkdir -p "$cache/$version"
# Built beside the destination (same file system) so that the rename below
# is atomic: a build that is interrupted, or two that run at once, never
# leave a bin directory holding one binary or a half-written one.
tmp=$(mktemp -d "$cache/$version/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

started=$SECONDS
echo "build.sh: building SPIRE $version (cold: about ten minutes)" >&2
# The server's sqlite datastore needs cgo. The flags touch only the link
# (no -trimpath), so that packages compiled before, by an earlier version's
# build say, come from Go's build cache. The version flag is what SPIRE's
# own release build sets, so that `spire-server --version` names the release.
(
	cd "$here"
	CGO_ENABLED=1 GOBIN="$tmp/bin" go install \
		-ldflags "-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${version#v}" \
		github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
) >&2
if ! complete "$tmp/bin"; then
	echo "build.sh: the build left no spire-server or spire-agent in $tmp/bin" >&2
	exit 1
fi

# A directory left incomplete by hand is replaced, not trusted.
if [ -e "$dest" ] && ! complete "$dest"; then
	rm -rf "$dest"
fi
if ! mv -T "$tmp/bin" "$dest" 2>/dev/null; then
	# Another build finished first: its result is as good as ours.
	if complete "$dest"; then
		echo "build.sh: SPIRE $version was built by another run meanwhile" >&2
	else
		echo "build.sh: cannot move the build to $dest" >&2
		exit 1
	fi
fi
echo "build.sh: built SPIRE $version in $((SECONDS - started))s into $dest" >&2
echo "$dest"
