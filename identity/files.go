package identity

import (
	"fmt"
	"os"

	"github.com/ztgate/ztgate/internal/atomicfile"
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
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := atomicfile.WriteFile(path, data, perm); err != nil {
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	return nil
}

// makePrivateDir creates dir (and parents) with mode 0700 when missing. An
// existing directory is left as it is: the files that matter are 0600.
func makePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: creating %s: %w", dir, err)
	}
	return nil
}
