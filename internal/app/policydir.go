package app

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/ztgate/ztgate/internal/atomicfile"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// seedPolicyDir creates dir with the embedded default policy (the *.rego
// files at the root of policy/defaultpolicy, its tests included, so that the
// first edit is checked against them) unless dir already exists. An existing
// directory is never touched: it is the operator's, edits and uploaded
// modules included. The files are written to a sibling temporary directory
// that is renamed into place, so a crash mid-way leaves either no policy
// directory (seeded again on the next start) or a complete one.
//
// It reports whether it seeded.
func seedPolicyDir(dir string) (bool, error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("app: policy dir: %w", err)
	}
	names, err := fs.Glob(defaultpolicy.FS, "*.rego")
	if err != nil {
		return false, fmt.Errorf("app: default policy: %w", err)
	}
	if len(names) == 0 {
		return false, errors.New("app: default policy: no .rego file embedded")
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return false, fmt.Errorf("app: policy dir: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".seed-")
	if err != nil {
		return false, fmt.Errorf("app: policy dir: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	for _, name := range names {
		src, err := fs.ReadFile(defaultpolicy.FS, name)
		if err != nil {
			return false, fmt.Errorf("app: default policy: %w", err)
		}
		// 0600 in a 0700 directory: the policy is the operator's alone.
		// tmp is fresh and ours, so WriteFile cannot replace anyone's file.
		if err := atomicfile.WriteFile(filepath.Join(tmp, path.Base(name)), src, 0o600); err != nil {
			return false, fmt.Errorf("app: seed policy dir: %w", err)
		}
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return false, fmt.Errorf("app: seed policy dir: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return false, fmt.Errorf("app: seed policy dir: %w", err)
	}
	if err := atomicfile.SyncDir(parent); err != nil {
		return false, fmt.Errorf("app: seed policy dir: %w", err)
	}
	return true, nil
}
