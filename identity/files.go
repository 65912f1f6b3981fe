package identity

import (
	"fmt"
	"os"
	"path/filepath"
)

// File names inside a CA directory and an SVID directory.
const (
	CACertFile  = "ca.pem"
	CAKeyFile   = "ca.key"
	SVIDFile    = "svid.pem"
	SVIDKeyFile = "svid.key"
	BundleFile  = "bundle.pem"
)

// writeFileAtomic replaces path with data so that a reader (or a crash)
// sees either the old file or the complete new one, never a torn write.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// CreateTemp makes the file 0600, so secret bytes are never exposed
	// with a wider mode, even for a moment.
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	// The rename is durable only once the directory entry is.
	if err = syncDir(dir); err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// makePrivateDir creates dir (and parents) with mode 0700 when missing. An
// existing directory is left as it is: the files that matter are 0600.
func makePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: creating %s: %w", dir, err)
	}
	return nil
}
