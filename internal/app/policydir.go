package app

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/ztgate/ztgate/examples/policies"
)

// seedPolicyDir creates dir with the embedded default policy (the *.rego
// files at the root of examples/policies, its tests included, so that the
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
	names, err := fs.Glob(policies.FS, "*.rego")
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
		src, err := fs.ReadFile(policies.FS, name)
		if err != nil {
			return false, fmt.Errorf("app: default policy: %w", err)
		}
		if err := writeSynced(filepath.Join(tmp, path.Base(name)), src); err != nil {
			return false, fmt.Errorf("app: seed policy dir: %w", err)
		}
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return false, fmt.Errorf("app: seed policy dir: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return false, fmt.Errorf("app: seed policy dir: %w", err)
	}
	if err := syncDir(parent); err != nil {
		return false, fmt.Errorf("app: seed policy dir: %w", err)
	}
	return true, nil
}

func writeSynced(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
