// Package atomicfile replaces files so that a reader, or a crash, sees
// either the old file or the complete new one, never a torn write.
//
// It imports nothing of the project, so every package may use it.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"unicode/utf8"
)

// maxHint bounds the part of the target's name kept in the temporary name:
// "." + hint + ".tmp-" + up to 10 random digits must stay within the 255
// bytes most file systems allow in a name, which the target may use in full.
const maxHint = 200

// WriteFile replaces (or creates) path with data and mode perm: a temporary
// file in the same directory, hidden by its leading dot ("."+base+".tmp-*",
// which the policy loader and watcher skip), written and synced, renamed
// over path, then the directory synced so that the rename itself survives a
// crash. On error the temporary file is removed and an existing file at path
// is left as it was (unless the error is from the final directory sync, when
// the new file is in place but perhaps not yet durable).
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+tempHint(filepath.Base(path))+".tmp-*")
	if err != nil {
		return fmt.Errorf("atomicfile: creating the temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// CreateTemp makes the file 0600 and the mode is set before the data
	// is written, so secret bytes are never readable with a wider mode,
	// even for a moment; a wider perm is granted to a file still empty.
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	return SyncDir(dir)
}

// SyncDir makes the entries of dir durable: a rename (of a file, or of a
// whole directory staged beside its final place) survives a crash only once
// the directory holding it is synced.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	return nil
}

// tempHint is name cut to at most maxHint bytes on a character boundary, so
// that the temporary name stays valid UTF-8 where the target's is.
func tempHint(name string) string {
	if len(name) <= maxHint {
		return name
	}
	n := maxHint
	for n > 0 && !utf8.RuneStart(name[n]) {
		n--
	}
	return name[:n]
}
